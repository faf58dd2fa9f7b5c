//! Every map of the balancer. Writer and reader are named on each; the same
//! table is in docs/maps.md. Sizes here are placeholders: userspace sets the
//! real capacities at load time (`EbpfLoader::map_max_entries`).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::{
    AddrVips, Backend, BackendStats, FlowKey, FlowKey4, FlowValue, HandshakeStats, NatValue,
    Reason, ReasonStats, RetiredStats, VipKey, VipMeta, VipStats,
    flow::{FloodState, NatScratch},
    frag::{FRAG_CAPACITY, FragKey, FragValue},
    trace::{TraceFilter, TraceState},
    vip::{DirectVips4, DirectVips6},
};

/// (address, port, protocol) → VIP, for every VIP. Written by userspace
/// (dataplane.rs); read by the program only for addresses with more VIPs
/// than `VIP_ADDRS*` entries hold. Not preallocated, so an update never
/// recycles an element a concurrent reader still holds.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// IPv4 address (network order, as loaded from the packet) → the VIPs at
/// that address. Written by userspace (whole entries: an update is atomic
/// for readers), read by the program: one lookup both decides that a packet
/// is not for a VIP and finds its VIP.
#[map]
pub static VIP_ADDRS4: HashMap<u32, AddrVips> = HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// A bitmap of the VIP addresses (`lb_common::vip::vip_filter_bit`): a
/// destination whose bit is clear is not a VIP address, known from one
/// inlined array read instead of a hash lookup in `VIP_ADDRS*` (most
/// traffic through an interface is not for a VIP). Written by userspace
/// (a bit set before its address's `VIP_ADDRS*` entry is written, cleared
/// after it is deleted), read by the program.
#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(lb_common::vip::VIP_FILTER_WORDS, 0);

/// A direct-mapped copy of `VIP_ADDRS4` (`lb_common::vip::vip_direct_slot`
/// of the address → the address and its VIPs), so that a VIP's packet
/// finds its VIP with an inlined array read and no hash lookup. Written in
/// place by userspace through a memory mapping, as a sequence lock (see
/// `DirectVips4`); a slot two VIP addresses share, or one being written,
/// sends the program to `VIP_ADDRS4`.
#[map]
pub static VIP_DIRECT4: Array<DirectVips4> =
    Array::with_max_entries(lb_common::vip::VIP_DIRECT_SLOTS, BPF_F_MMAPABLE);

/// IPv6 addresses' slots; as `VIP_DIRECT4`.
#[map]
pub static VIP_DIRECT6: Array<DirectVips6> =
    Array::with_max_entries(lb_common::vip::VIP_DIRECT_SLOTS, BPF_F_MMAPABLE);

/// IPv6 address → the VIPs at that address. As `VIP_ADDRS4`.
#[map]
pub static VIP_ADDRS6: HashMap<[u8; 16], AddrVips> =
    HashMap::with_max_entries(1024, BPF_F_NO_PREALLOC);

/// Backend id → backend (address, next-hop MACs, egress, owning VIP).
/// Written by userspace, read by the program. Id 0 is never used.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(4096, 0);

/// All VIPs' Maglev tables, one after another: slot → backend id (0: none).
/// A VIP's table is `[ring_base, ring_base + ring_size)`. Written by
/// userspace (only changed slots), read by the program on a flow-table miss.
#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(65537, 0);

/// Each VIP's previous Maglev table, in the same slots as its table in
/// `RINGS`: the backend a slot named before the VIP's last table change,
/// or 0 where that change left the slot as it was. Consulted only for a
/// non-SYN TCP packet that misses the flow table while the VIP's
/// `PREV_UNTIL` has not passed. Written by userspace (only the slots
/// whose previous owner changes), read by the program.
#[map]
pub static PREV_RINGS: Array<u32> = Array::with_max_entries(65537, 0);

/// VIP id → until when (CLOCK_MONOTONIC; read with `bpf_ktime_get_coarse_ns`) its
/// `PREV_RINGS` slots hold: the table change's time plus the grace period
/// (0: no previous table). Written by userspace with each table change,
/// read by the program on a non-SYN TCP miss.
#[map]
pub static PREV_UNTIL: Array<u64> = Array::with_max_entries(1024, 0);

/// SYNs that arrived during their VIP's grace period in a slot its last
/// table change moved: 5-tuple → the backend the current table gave.
/// Their first non-SYN packet finds its SYN's backend here rather than
/// the previous table's (it is no flow older than the change). A bounded
/// LRU of its own, apart from `FLOWS`, so that a SYN flood during a grace
/// period evicts only other such SYNs. Written and read by the program.
#[map]
pub static GRACE_SYNS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(4096, BPF_F_NO_COMMON_LRU);

/// Per CPU: the flows recorded in the current second, for the insert rate
/// limit (`SETTINGS.new_flow_rate`). Written and read by the program only.
#[map]
pub static FLOOD: PerCpuArray<FloodState> = PerCpuArray::with_max_entries(1, 0);

/// IPv6 flows: 5-tuple → backend id and flow hash. An LRU hash with
/// per-CPU LRU lists (no common LRU), so CPUs do not contend on eviction
/// while a flow that moves to another CPU still finds its entry. Written
/// by the program on a miss, read by the program; userspace reads it for
/// `hola flow`. IPv4 flows are in `FLOWS4`.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(65536, BPF_F_NO_COMMON_LRU);

/// IPv4 flows, as `FLOWS` with a 16-byte key (`FlowKey4`): the kernel
/// hashes 4 words of it where a `FlowKey` costs 10, and its elements are
/// 24 bytes smaller. Written by the program on a miss, read by the
/// program; userspace reads it for `hola flow`.
#[map]
pub static FLOWS4: LruHashMap<FlowKey4, FlowValue> =
    LruHashMap::with_max_entries(65536, BPF_F_NO_COMMON_LRU);

/// Cluster: flows learned from peers (5-tuple → this node's backend id and
/// the flow hash), consulted on a `FLOWS` miss before the Maglev table; a
/// hit is copied into `FLOWS`. Written by userspace from what peers send,
/// read by the program. LRU like `FLOWS`, one list for all CPUs; sized at
/// load from `[cluster]` (`peer_flow_capacity`, by default as large as
/// `FLOWS`), and one entry without a cluster: an LRU hash is always
/// preallocated.
#[map]
pub static PEER_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(65536, 0);

/// Cluster: the entries the program creates (`FlowEvent`: new `FLOWS4`/`FLOWS` and
/// `NAT` entries), for userspace to replicate to peers. Written by the
/// program while `CLUSTER_STATE` is on; read by userspace. An event that
/// finds the buffer full is lost and counted in `CLUSTER_LOST`.
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Cluster: events lost because `FLOW_EVENTS` was full (one per-CPU
/// counter). Written by the program, read by userspace (`events_lost`).
#[map]
pub static CLUSTER_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// One element: non-zero while this node replicates to cluster peers, so
/// that `PEER_FLOWS` is consulted and events are written only then.
/// Written by userspace.
#[map]
pub static CLUSTER_STATE: Array<u32> = Array::with_max_entries(1, 0);

/// NAT mode: the reply's 5-tuple (source the backend, destination the
/// client) → how to translate it back (`NatValue`). Shared by all CPUs (a
/// reply may arrive on another CPU than its request). Written by the
/// program on the request path (and touched on both), read on the reply
/// path; userspace counts entries and deletes expired ones.
#[map]
pub static NAT: LruHashMap<FlowKey, NatValue> =
    LruHashMap::with_max_entries(65536, BPF_F_NO_COMMON_LRU);

/// NAT mode: the translations of handshakes in progress (a TCP SYN that
/// missed the flow table), keyed like `NAT` by the reply's 5-tuple, and
/// for fullnat also by the client's ([`NAT_F_FORWARD`] entries: the port
/// and backend the SYN was given). Its own bounded LRU, so that SYNs
/// (a spoofed flood among them) evict only other unanswered SYNs, never an
/// established translation. The client's first non-SYN packet moves the
/// entry to `NAT` (and for fullnat its port to `FULLNAT_FLOWS`). Written
/// and read by the program (the reply path translates a SYN-ACK from
/// here); userspace sweeps it for unanswered SYNs.
///
/// [`NAT_F_FORWARD`]: lb_common::flow::NAT_F_FORWARD
#[map]
pub static NAT_SYN: LruHashMap<FlowKey, NatValue> =
    LruHashMap::with_max_entries(16384, BPF_F_NO_COMMON_LRU);

/// fullnat: the client's 5-tuple → its backend id and the source port it
/// was given (in `FlowValue::hash`): fullnat's own flow table, apart from
/// `FLOWS`, so that no other mode's new flows evict it, and written once
/// per flow, when its translation is recorded. Sized as `NAT`. Written by
/// the NAT request program, read by `hola_lb` (and the ICMP programs).
#[map]
pub static FULLNAT_FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(65536, BPF_F_NO_COMMON_LRU);

/// The addresses of every backend of a `nat` or `fullnat` VIP (IPv4, as
/// loaded from the packet): only packets from these are looked up as NAT
/// replies. Written by userspace with the backend sets; read by the
/// program for packets not addressed to a VIP while a NAT VIP exists.
#[map]
pub static NAT_SOURCES4: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// As `NAT_SOURCES4`, IPv6.
#[map]
pub static NAT_SOURCES6: HashMap<[u8; 16], u8> = HashMap::with_max_entries(4096, 0);

/// One element: non-zero while any VIP is in NAT mode, so that packets not
/// for a VIP are looked up in `NAT` only then. Written by userspace.
#[map]
pub static NAT_STATE: Array<u32> = Array::with_max_entries(1, 0);

/// The programs `hola_lb` tail-calls, each with a stack of its own: the
/// ICMP programs (slots `ICMP_TO_CLIENT`, `ICMP_TO_BACKEND`) and the NAT
/// request and reply programs (`NAT_REQUEST`, `NAT_REPLY`). Written by
/// userspace when it loads the programs.
#[map]
pub static ICMP_PROGS: ProgramArray =
    ProgramArray::with_max_entries(lb_common::maps::ICMP_PROGS_LEN, 0);

/// What `hola_lb` hands the NAT request program it tail-calls (one
/// per-CPU element; a tail call runs on the same CPU, not preempted).
#[map]
pub static NAT_SCRATCH: PerCpuArray<NatScratch> = PerCpuArray::with_max_entries(1, 0);

/// fullnat: each CPU's cursor in its source-port range.
#[map]
pub static FULLNAT_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// NAT mode, per CPU: the jiffies count (`[0]`) at which this CPU last read
/// `CLOCK_MONOTONIC_COARSE`, and what it read (`[1]`): the coarse clock
/// moves only at a tick, so within one jiffy its value is reused and the
/// helper call (about a third of the reply path) is spared. Written and
/// read by the NAT programs (`nat::coarse_now`).
#[map]
pub static NAT_CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// NAT mode, per-CPU, per backend id: the SYN → SYN-ACK latency histogram
/// and the SYNs answered by RST (passive health). Written by the program
/// on the reply path, read by userspace; zeroed when an id is (re)assigned.
#[map]
pub static HANDSHAKES: PerCpuArray<HandshakeStats> = PerCpuArray::with_max_entries(4096, 0);

/// Per-CPU counters per VIP id. Written by the program, read by userspace.
#[map]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(1024, 0);

/// Per-CPU counters per backend id. Written by the program, read by userspace.
#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(4096, 0);

/// Per-CPU counters per verdict reason. Written by the program, read by userspace.
#[map]
pub static REASONS: PerCpuArray<ReasonStats> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

// ---- Counters of removed backends (issue 15: one counter write per forward) ----

/// Per VIP id: what the VIP's removed backends forwarded (`RetiredStats`),
/// folded in by userspace once such a backend can no longer be chosen.
/// Written and read by userspace only: the program never touches it (it
/// is here so that it is created, pinned and upgraded with the others).
#[map]
pub static RETIRED: Array<RetiredStats> = Array::with_max_entries(1024, 0);

/// Egress interfaces for XDP_REDIRECT: ifindex → ifindex. Written by
/// userspace for every interface a backend names; read by bpf_redirect_map.
#[map]
pub static TX_PORTS: DevMapHash = DevMapHash::with_max_entries(64, 0);

// ---- QUIC connection-ID routing ----

/// `quic` VIPs: (VIP id, server ID) → the backend id that owns the server
/// ID (`lb_common::quic`). Written by userspace (the owner, after each
/// reconcile, from the backends' `server_id`), read by the program for a
/// short-header packet of a `quic` VIP. A removed backend's entries are
/// deleted; a down backend's stay (the program checks the backend's state
/// and falls back). Not preallocated: entries are replaced whole.
#[map]
pub static QUIC_SERVERS: HashMap<lb_common::quic::QuicServerKey, u32> =
    HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);
// Tunnel "too big" (issue 16 item 2). Not pinned: userspace writes them
// anew at every start, from the interfaces' MTUs.

/// Egress interface (ifindex) → its MTU: every interface a tunnel packet
/// can leave by (the ones hola is attached to, and every egress a backend's
/// next hop names; `TX_PORTS`). Written by userspace at start and
/// whenever an MTU changes (re-read every second); read by `hola_lb` for a
/// `tunnel` VIP's packet larger than `EGRESS_MTU_MIN`.
#[map]
pub static EGRESS_MTU: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// One element: the smallest MTU in `EGRESS_MTU` (0: none known, nothing
/// is checked). A tunnel packet whose encapsulated size fits it needs no
/// lookup in `EGRESS_MTU`. Written by userspace with `EGRESS_MTU`; read by
/// `hola_lb`.
#[map]
pub static EGRESS_MTU_MIN: Array<u32> = Array::with_max_entries(1, 0);

/// Per CPU: the "too big" answers sent in the current second (the rate
/// limit of `hola_too_big`). Written and read by the program only.
#[map]
pub static TOO_BIG_RATE: PerCpuArray<FloodState> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the egress MTU `hola_lb` found exceeded, for the `hola_too_big`
/// program it tail-calls (a tail call runs on the same CPU, right after).
#[map]
pub static TOO_BIG_MTU: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

// ---------------------------------------------------------------------------
// Health probes through the VIP (`hola_probe`, lb-ebpf/src/probe.rs). The
// program also reads `BACKENDS` (the backend a probe's mark names).

/// One element: the interface the balancer is attached to, where a probe
/// goes whose backend's `ifindex` is 0 (reached through that interface).
/// Written by userspace when it attaches `hola_probe`; read by it.
#[map]
pub static PROBE_EGRESS: Array<u32> = Array::with_max_entries(1, 0);
// ---- Fragments ----

/// A fragmented datagram (addresses, protocol, fragment id) → where it
/// went (`FragValue`: the backend and how it was forwarded, or a NAT
/// reply's translation), for its later fragments, which carry no ports.
/// Written by `hola_frag` at a datagram's first fragment (or its first
/// later fragment, when that came first); read by `hola_frag` for the
/// fragments after it; entries older than `FRAG_LIFETIME_NS` are not
/// followed, and the LRU evicts the oldest when full. One LRU list for all
/// CPUs (the fragments of a datagram may arrive on different CPUs).
/// Userspace does not touch it.
#[map]
pub static FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(FRAG_CAPACITY, 0);

/// Per CPU: where `hola_frag_reply` builds the entry it records (its
/// stack has no room for it). Written and read by the program only.
#[map]
pub static FRAG_SCRATCH: PerCpuArray<FragValue> = PerCpuArray::with_max_entries(1, 0);
// ---- `hola trace` (lb-ebpf/src/trace.rs) ----

/// One element: the trace filter (`enabled` 0 while no trace runs: the
/// only field the program reads then). Written by userspace (the daemon,
/// while it serves `hola trace`), read by the program. Not pinned: a trace
/// lives and dies with its daemon.
#[map]
pub static TRACE_FILTER: Array<TraceFilter> = Array::with_max_entries(1, 0);

/// Per CPU: whether the packet in hand is traced, and the decision noted
/// for it (carried across a tail call). Written and read by the program;
/// userspace reads the count of records lost.
#[map]
pub static TRACE_STATE: PerCpuArray<TraceState> = PerCpuArray::with_max_entries(1, 0);

/// The traced packets' records (`TraceRecord`: before, and after with the
/// decision). Written by the program while a trace runs, read by userspace.
#[map]
pub static TRACE_RING: RingBuf = RingBuf::with_byte_size(lb_common::trace::TRACE_RING_BYTES, 0);
