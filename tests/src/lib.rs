//! Helpers shared by the privileged tests: packet builders, network
//! namespaces, and running programs through BPF_PROG_TEST_RUN.

pub mod bench;
pub mod bird;
pub mod cluster;
pub mod daemon;
pub mod fixture;
pub mod netns;
pub mod packet;
pub mod topo;
pub mod upgrade_base;
