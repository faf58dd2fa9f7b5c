//! The hola controller library: Maglev tables, the one owner of the data
//! plane's maps, next-hop resolution, and stats.

pub mod dataplane;
pub mod maglev;
pub mod neigh;
pub mod programs;
