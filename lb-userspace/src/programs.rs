//! The eBPF objects built by `build.rs`, embedded once. The daemon and every
//! test load these same bytes.

/// The balancer (`hola_lb`).
pub static HOLA: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hola"));
/// The backend-side decapsulator (`hola_decap`).
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hola-decap"));
/// Benchmark baselines (`bench_pass`, `bench_macswap`).
pub static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hola-bench"));
