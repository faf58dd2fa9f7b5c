//! The hola controller library: Maglev tables, the one owner of the data
//! plane's maps, next-hop resolution, the daemon, its API and stats.

#![warn(clippy::too_many_lines)]

pub mod api;
pub mod bgp;
pub mod client;
pub mod cluster;
pub mod command;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod doctor;
pub mod health;
pub mod helpers;
pub mod maglev;
pub mod model;
pub mod neigh;
pub mod owner;
pub mod preview;
pub mod programs;
pub mod reconcile;
pub mod state;
pub mod stats;
pub mod top;
pub mod trace;
