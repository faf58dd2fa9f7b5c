//! The eBPF objects built by `build.rs`, embedded once. The daemon and every
//! test load these same bytes.

/// The balancer (`hola_lb`).
pub static HOLA: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hola"));
/// The balancer built with its `hola trace` hooks compiled out (lb-ebpf's
/// `no-trace` feature): only `bench-dataplane` loads it, to measure what the
/// hooks cost while no trace runs. The daemon never references it, so its
/// binary does not hold it.
pub static HOLA_NO_TRACE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hola-no-trace"));
/// The backend-side decapsulator (`hola_decap`).
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hola-decap"));
/// Benchmark baselines (`bench_pass`, `bench_macswap`).
pub static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hola-bench"));
