//! Network-namespace labs, written once for hola's privileged tests
//! (`hola-tests`) and for `cargo xtask lab`.
//!
//! - [`netns`]: namespaces named `<prefix>-<host>` and removed on drop
//!   (unless [`Namespaces::keep`] says they outlive the program), veth
//!   pairs, a bridge, addresses, routes, sysctls, and running a command
//!   inside one of them;
//! - [`lab`]: the lab a balancer is tried in: a client, the balancer and
//!   backends on one bridge, VIPs on the backends' loopback;
//! - [`cluster`]: the cluster lab: a client behind a router that spreads a
//!   VIP over balancer nodes (ECMP), the nodes and backends on one bridge.
//!
//! Every function here only builds topology and returns an [`Error`] that
//! names the command and its stderr: the tests panic with it, xtask reports
//! it. Loading XDP programs and starting daemons stay with the callers.
//! Addresses are in 198.18.0.0/15 and 2001:db8::/32 (documentation and
//! benchmarking ranges), and nothing leaves the namespaces made here.

pub mod bird;
pub mod cluster;
mod cmd;
pub mod lab;
pub mod netns;

pub use cmd::{Error, run, show};
pub use netns::Namespaces;
