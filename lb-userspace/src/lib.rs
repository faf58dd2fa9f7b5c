//! The hola controller library: Maglev tables, the one owner of the data
//! plane's maps, and stats.

pub mod programs;
