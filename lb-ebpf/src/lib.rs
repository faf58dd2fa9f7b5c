//! The library part only exists so that `lb-userspace` can name this crate as
//! a build dependency (cargo then rebuilds the daemon when the programs'
//! dependencies change). The programs are the binaries.
#![no_std]
