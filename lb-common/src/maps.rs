//! Names of the maps and programs in the hola eBPF object, in one place. The
//! doc comment on each map's definition in `lb-ebpf/src/maps.rs` says who
//! writes and who reads it; `docs/maps.md` has the whole table.

pub const VIPS: &str = "VIPS";
pub const VIP_ADDRS4: &str = "VIP_ADDRS4";
pub const VIP_ADDRS6: &str = "VIP_ADDRS6";
pub const VIP_FILTER: &str = "VIP_FILTER";
pub const VIP_DIRECT4: &str = "VIP_DIRECT4";
pub const VIP_DIRECT6: &str = "VIP_DIRECT6";
pub const BACKENDS: &str = "BACKENDS";
pub const RINGS: &str = "RINGS";
pub const PREV_RINGS: &str = "PREV_RINGS";
pub const PREV_UNTIL: &str = "PREV_UNTIL";
pub const FLOOD: &str = "FLOOD";
pub const GRACE_SYNS: &str = "GRACE_SYNS";
pub const FLOWS: &str = "FLOWS";
pub const FLOWS4: &str = "FLOWS4";
pub const VIP_STATS: &str = "VIP_STATS";
pub const BACKEND_STATS: &str = "BACKEND_STATS";
pub const REASONS: &str = "REASONS";
pub const RETIRED: &str = "RETIRED";
pub const TX_PORTS: &str = "TX_PORTS";
pub const PROBE_EGRESS: &str = "PROBE_EGRESS";
pub const NAT: &str = "NAT";
pub const NAT_SYN: &str = "NAT_SYN";
pub const FULLNAT_FLOWS: &str = "FULLNAT_FLOWS";
pub const NAT_STATE: &str = "NAT_STATE";
pub const ICMP_PROGS: &str = "ICMP_PROGS";
pub const NAT_SCRATCH: &str = "NAT_SCRATCH";
pub const NAT_SOURCES4: &str = "NAT_SOURCES4";
pub const NAT_SOURCES6: &str = "NAT_SOURCES6";
pub const FULLNAT_CURSOR: &str = "FULLNAT_CURSOR";
pub const NAT_CLOCK: &str = "NAT_CLOCK";
pub const HANDSHAKES: &str = "HANDSHAKES";
pub const PEER_FLOWS: &str = "PEER_FLOWS";
pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
pub const CLUSTER_STATE: &str = "CLUSTER_STATE";
pub const CLUSTER_LOST: &str = "CLUSTER_LOST";
pub const QUIC_SERVERS: &str = "QUIC_SERVERS";
pub const EGRESS_MTU: &str = "EGRESS_MTU";
pub const EGRESS_MTU_MIN: &str = "EGRESS_MTU_MIN";
pub const TOO_BIG_RATE: &str = "TOO_BIG_RATE";
pub const TOO_BIG_MTU: &str = "TOO_BIG_MTU";
pub const FRAGS: &str = "FRAGS";
pub const FRAG_SCRATCH: &str = "FRAG_SCRATCH";

// `hola trace` (lb-common/src/trace.rs).
pub const TRACE_FILTER: &str = "TRACE_FILTER";
pub const TRACE_STATE: &str = "TRACE_STATE";
pub const TRACE_RING: &str = "TRACE_RING";

/// Slots of `ICMP_PROGS`: the programs `hola_lb` tail-calls for ICMP
/// errors about NAT flows.
pub const ICMP_TO_CLIENT: u32 = 0;
/// See [`ICMP_TO_CLIENT`].
pub const ICMP_TO_BACKEND: u32 = 1;
/// Slot of `ICMP_PROGS` holding the NAT request program (all tail-called
/// programs share the one array).
pub const NAT_REQUEST: u32 = 2;
/// Slot of the NAT reply program.
pub const NAT_REPLY: u32 = 3;
/// Slot of the tunnel "too big" program.
pub const TOO_BIG: u32 = 4;
/// Slot of the fragment program.
pub const FRAG: u32 = 5;
/// Slot of the fragmented-reply program.
pub const FRAG_REPLY: u32 = 6;
/// Slots of `ICMP_PROGS`, one per tail-called program above.
pub const ICMP_PROGS_LEN: u32 = 7;

/// The `SETTINGS` global (see [`crate::Settings`]).
pub const SETTINGS: &str = "SETTINGS";

/// Program names.
pub const PROG_LB: &str = "hola_lb";
pub const PROG_DECAP: &str = "hola_decap";
pub const PROG_ICMP_TO_CLIENT: &str = "hola_icmp_to_client";
pub const PROG_ICMP_TO_BACKEND: &str = "hola_icmp_to_backend";
pub const PROG_NAT_REQUEST: &str = "hola_nat_request";
pub const PROG_NAT_REPLY: &str = "hola_nat_reply";
pub const PROG_TOO_BIG: &str = "hola_too_big";
/// The tc egress program that carries probes through the VIP (on `lo`).
pub const PROG_PROBE: &str = "hola_probe";
pub const PROG_FRAG: &str = "hola_frag";
pub const PROG_FRAG_REPLY: &str = "hola_frag_reply";
pub const PROG_PASS: &str = "bench_pass";
pub const PROG_MACSWAP: &str = "bench_macswap";
