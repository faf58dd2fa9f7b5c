//! Names of the maps and programs in the hola eBPF object, in one place. The
//! doc comment on each map's definition in `lb-ebpf/src/maps.rs` says who
//! writes and who reads it; `docs/maps.md` has the whole table.

pub const VIPS: &str = "VIPS";
pub const VIP_ADDRS4: &str = "VIP_ADDRS4";
pub const VIP_ADDRS6: &str = "VIP_ADDRS6";
pub const BACKENDS: &str = "BACKENDS";
pub const RINGS: &str = "RINGS";
pub const FLOWS: &str = "FLOWS";
pub const VIP_STATS: &str = "VIP_STATS";
pub const BACKEND_STATS: &str = "BACKEND_STATS";
pub const REASONS: &str = "REASONS";
pub const TX_PORTS: &str = "TX_PORTS";
pub const NAT: &str = "NAT";
pub const NAT_STATE: &str = "NAT_STATE";

/// The `SETTINGS` global (see [`crate::Settings`]).
pub const SETTINGS: &str = "SETTINGS";

/// Program names.
pub const PROG_LB: &str = "hola_lb";
pub const PROG_DECAP: &str = "hola_decap";
pub const PROG_PASS: &str = "bench_pass";
pub const PROG_MACSWAP: &str = "bench_macswap";
