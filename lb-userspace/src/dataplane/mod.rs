//! The one owner of the balancer's kernel state: it loads the program, holds
//! every map handle, and is the only writer of the maps. What it writes to
//! the VIP, backend and Maglev maps is decided by a [`Plan`] (the pure
//! `reconcile` module); it executes plans in order and keeps their result.
//!
//! Split by map family:
//! - [`load`]: loading, pinning, adoption of pinned maps, attaching;
//! - [`tables`]: `VIPS`, `VIP_ADDRS*`, `BACKENDS`, `RINGS`, `TX_PORTS`,
//!   `NAT_STATE`/`NAT_SOURCES*`, the counters zeroed for new ids: the
//!   writes of a plan, and queries of the tables;
//! - [`nat`]: the `NAT` table (sweeps, peers' translations);
//! - [`flows`]: `FLOWS4`, `FLOWS`, `PEER_FLOWS`, `FLOW_EVENTS` and the cluster switch;
//! - [`counters`]: every per-CPU counter, summed;
//! - [`vip_filter`]: `VIP_FILTER`, the bitmap of VIP addresses;
//! - [`vip_direct`]: `VIP_DIRECT*`, direct-mapped copies of `VIP_ADDRS*`;
//! - [`quic`]: `QUIC_SERVERS`, the server IDs of `quic` VIPs;
//! - [`layout`], [`upgrade`]: the pinned maps' layouts, and upgrades that
//!   convert them.

mod batch;
mod counters;
mod flows;
mod inspect;
pub mod layout;
mod load;
mod mtu;
mod nat;
mod quic;
mod retire;
mod tables;
mod trace;
pub mod upgrade;
mod vip_direct;
mod vip_filter;

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, ProgramArray},
    programs::ProgramError,
};
use lb_common::{
    AddrVips, Backend, BackendStats, FlowKey, FlowValue, HandshakeStats, NatValue, ReasonStats,
    VipKey, VipMeta, VipStats,
};

pub use self::{
    flows::{FlowTables, monotonic_ns},
    inspect::{PinnedMap, PinsPreview, build_tag, pinned_maps, pins_preview},
    load::unpin_all,
    vip_direct::VipDirectWriter4,
};
pub use crate::model::{BackendSpec, Mode, Nexthop, Proto, VipAddr, VipSpec, addr_bytes};
use crate::reconcile::{PlanError, Tables};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Flow-table entries per possible CPU.
    pub flow_capacity_per_cpu: u32,
    /// IPv6 flow-table entries per possible CPU; `None`: derived from
    /// `flow_capacity_per_cpu` (`load::flows6_capacity`).
    pub flow_capacity_v6_per_cpu: Option<u32>,
    /// Most VIPs at once.
    pub max_vips: u32,
    /// Most backends at once, over all VIPs.
    pub max_backends: u32,
    /// Maglev slots over all VIPs (each VIP takes its table size).
    pub ring_capacity: u32,
    /// Interfaces a backend may name as egress (size of the devmap).
    pub max_tx_ports: u32,
    /// Base of the IPv4 tunnel source addresses and the prefix length kept
    /// from it; the host bits come from the flow hash.
    pub tunnel_src_v4: (std::net::Ipv4Addr, u8),
    /// As `tunnel_src_v4`, over the last 32 bits of an IPv6 address.
    pub tunnel_src_v6: (std::net::Ipv6Addr, u8),
    /// NAT mode: entries of the `NAT` table (one per translated flow).
    pub nat_capacity: u32,
    /// NAT mode: a TCP flow's entry expires after this long idle.
    pub nat_tcp_idle: Duration,
    /// NAT mode: a UDP flow's entry expires after this long idle.
    pub nat_udp_idle: Duration,
    /// NAT mode: a TCP flow's entry expires this long after its first FIN
    /// or RST.
    pub nat_closed_linger: Duration,
    /// fullnat: the source addresses requests get.
    pub fullnat_src_v4: Option<std::net::Ipv4Addr>,
    pub fullnat_src_v6: Option<std::net::Ipv6Addr>,
    /// fullnat: the source ports (inclusive), split evenly among the
    /// possible CPUs.
    pub fullnat_ports: (u16, u16),
    /// How long a VIP keeps its previous Maglev table after a change (0:
    /// not at all).
    pub table_grace: Duration,
    /// New flows each CPU records per second at most (0: no limit).
    pub new_flow_rate: u32,
    /// Entries of `PEER_FLOWS` (cluster peers' flows, in total):
    /// [`PEER_FLOWS_OFF`] without a `[cluster]`.
    pub peer_flows: u32,
}

impl Default for DataplaneConfig {
    /// The configuration file's defaults (`config::defaults`).
    fn default() -> Self {
        use crate::config::defaults as d;
        Self {
            flow_capacity_per_cpu: d::FLOW_CAPACITY_PER_CPU,
            flow_capacity_v6_per_cpu: None,
            max_vips: d::MAX_VIPS,
            max_backends: d::MAX_BACKENDS,
            ring_capacity: d::RING_CAPACITY,
            max_tx_ports: MAX_TX_PORTS,
            tunnel_src_v4: (d::TUNNEL_SOURCE_V4.addr, d::TUNNEL_SOURCE_V4.prefix),
            tunnel_src_v6: (d::TUNNEL_SOURCE_V6.addr, d::TUNNEL_SOURCE_V6.prefix),
            nat_capacity: d::NAT_CAPACITY,
            nat_tcp_idle: d::NAT_TCP_TIMEOUT,
            nat_udp_idle: d::NAT_UDP_TIMEOUT,
            nat_closed_linger: d::NAT_CLOSED_TIMEOUT,
            fullnat_src_v4: None,
            fullnat_src_v6: None,
            fullnat_ports: d::FULLNAT_PORTS,
            table_grace: d::TABLE_GRACE,
            new_flow_rate: d::NEW_FLOW_RATE,
            peer_flows: PEER_FLOWS_OFF,
        }
    }
}

impl DataplaneConfig {
    /// The data-plane settings of a whole configuration: `[global]`'s, and
    /// `PEER_FLOWS` sized from `[cluster]` (`peer_flow_capacity`, by
    /// default as many entries as `FLOWS4` (IPv4 flows) on this machine's possible CPUs).
    pub fn from_config(c: &crate::config::Config) -> Result<Self, DataplaneError> {
        Ok(Self::for_cpus(c, possible_cpus()?))
    }

    /// [`DataplaneConfig::from_config`] on a machine of `ncpus` possible
    /// CPUs.
    fn for_cpus(c: &crate::config::Config, ncpus: u32) -> Self {
        let mut dp = Self::from_global(&c.global);
        if let Some(cluster) = &c.cluster {
            dp.peer_flows = cluster
                .peer_flow_capacity
                .unwrap_or_else(|| dp.flow_capacity_per_cpu.saturating_mul(ncpus));
        }
        dp
    }

    /// The data-plane settings of a configuration's `[global]` table, as
    /// for a node without `[cluster]` (`PEER_FLOWS` of [`PEER_FLOWS_OFF`]
    /// entries).
    pub fn from_global(g: &crate::config::Global) -> Self {
        DataplaneConfig {
            flow_capacity_per_cpu: g.flow_capacity_per_cpu,
            flow_capacity_v6_per_cpu: g.flow_capacity_v6_per_cpu,
            max_vips: g.max_vips,
            max_backends: g.max_backends,
            ring_capacity: g.ring_capacity,
            max_tx_ports: MAX_TX_PORTS,
            tunnel_src_v4: (g.tunnel_source_v4.addr, g.tunnel_source_v4.prefix),
            tunnel_src_v6: (g.tunnel_source_v6.addr, g.tunnel_source_v6.prefix),
            nat_capacity: g.nat_capacity,
            nat_tcp_idle: g.nat_tcp_timeout,
            nat_udp_idle: g.nat_udp_timeout,
            nat_closed_linger: g.nat_closed_timeout,
            fullnat_src_v4: g.fullnat_source_v4,
            fullnat_src_v6: g.fullnat_source_v6,
            fullnat_ports: g.fullnat_port_range(),
            table_grace: g.table_grace,
            new_flow_rate: g.new_flow_rate,
            peer_flows: PEER_FLOWS_OFF,
        }
    }
}

/// `PEER_FLOWS`'s entries without a `[cluster]`: the fewest the kernel
/// allows. The program names the map, so it must exist, but nothing writes
/// it and the program reads it only while `CLUSTER_STATE` is on. (An LRU
/// hash is always preallocated: at `FLOWS4`' size it would cost as much
/// kernel memory as the flow table, for nothing.)
pub const PEER_FLOWS_OFF: u32 = 1;

/// The number of possible CPUs (what per-CPU maps and per-CPU LRU lists
/// are sized for).
pub fn possible_cpus() -> Result<u32, DataplaneError> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Interfaces a backend may name as egress (the size of `TX_PORTS`); not a
/// setting.
pub const MAX_TX_PORTS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the hola eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("waiting for an RCU grace period before folding a removed backend's counters: {0}")]
    RcuWait(String),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error(
        "creating the pin directory {dir}: {source} (is bpffs mounted there? hola run mounts it at /sys/fs/bpf)"
    )]
    PinDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Pinned maps this build cannot take over (refused before anything
    /// changed), or an upgrade across layouts that failed.
    #[error(transparent)]
    Upgrade(#[from] upgrade::UpgradeError),
    #[error("attaching to {iface}: {message}")]
    Attach { iface: String, message: String },
    #[error("map TX_PORTS: {0}")]
    TxPorts(aya::maps::xdp::XdpMapError),
    #[error("map {0} is missing from the hola eBPF object (built from another version?)")]
    MissingMap(&'static str),
    #[error(
        "map {name}: mapping it into memory failed: {source} (it must be created with \
         BPF_F_MMAPABLE; a map pinned by another build is removed by `hola down`)"
    )]
    Mmap {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("reading the number of possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("backend {backend} is not in VIP {vip}")]
    NoSuchBackend { vip: VipAddr, backend: IpAddr },
    /// A wanted state the tables cannot take (refused; nothing written).
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl DataplaneError {
    /// Whether the request was refused (a value the tables cannot take)
    /// rather than the kernel failing.
    pub fn is_refusal(&self) -> bool {
        matches!(self, DataplaneError::Plan(_))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatSweep {
    /// Entries not expired.
    pub live: u64,
    /// Expired entries deleted.
    pub removed: u64,
    /// SYNs left unanswered too long, per (VIP, backend).
    pub unanswered: BTreeMap<(VipAddr, IpAddr), u64>,
    /// The reply keys of the entries deleted (cluster peers delete them
    /// too).
    pub gone: Vec<FlowKey>,
}

/// Counters summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub reasons: BTreeMap<&'static str, ReasonStats>,
    pub vips: BTreeMap<VipAddr, VipCounters>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipCounters {
    pub stats: VipStats,
    pub backends: BTreeMap<IpAddr, BackendStats>,
    /// NAT VIPs: what the program saw of each backend's TCP handshakes.
    pub handshakes: BTreeMap<IpAddr, HandshakeStats>,
}

/// Size of the `FLOW_EVENTS` ring buffer: about 27,000 events of 152
/// bytes, drained every 20 ms while a cluster is configured.
pub const FLOW_EVENTS_BYTES: u32 = 4 << 20;

/// The loaded balancer and every handle to its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    vips_map: HashMap<MapData, VipKey, VipMeta>,
    addrs4: HashMap<MapData, u32, AddrVips>,
    addrs6: HashMap<MapData, [u8; 16], AddrVips>,
    backends_map: Array<MapData, Backend>,
    rings: Array<MapData, u32>,
    prev_rings: Array<MapData, u32>,
    /// `RINGS` and `PREV_RINGS` again, for batch updates (aya's `Array`
    /// does not lend its descriptor).
    rings_fd: std::os::fd::OwnedFd,
    prev_rings_fd: std::os::fd::OwnedFd,
    prev_until: Array<MapData, u64>,
    /// The grace periods this daemon started and has not ended yet: VIP id
    /// → its `PREV_UNTIL`.
    graces: BTreeMap<u32, u64>,
    vip_filter: Array<MapData, u64>,
    /// `VIP_DIRECT4` and `VIP_DIRECT6`, memory-mapped.
    direct4: vip_direct::DirectSlots<lb_common::vip::DirectVips4>,
    direct6: vip_direct::DirectSlots<lb_common::vip::DirectVips6>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    flows4: HashMap<MapData, lb_common::FlowKey4, FlowValue>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    handshakes: PerCpuArray<MapData, HandshakeStats>,
    reasons: PerCpuArray<MapData, ReasonStats>,
    /// `RETIRED`, and what it holds (only this owner writes it).
    retired: Array<MapData, lb_common::RetiredStats>,
    retired_copy: Vec<lb_common::RetiredStats>,
    /// Removed backends whose counters are not folded into `RETIRED` yet:
    /// id → VIP id (their `BACKENDS` markers).
    retired_ids: BTreeMap<u32, u32>,
    /// A marker was written since the last RCU grace period waited for.
    rcu_pending: bool,
    rcu: retire::RcuWait,
    tx_ports: DevMapHash<MapData>,
    nat: HashMap<MapData, FlowKey, NatValue>,
    nat_syn: HashMap<MapData, FlowKey, NatValue>,
    fullnat_flows: HashMap<MapData, FlowKey, FlowValue>,
    nat_state: Array<MapData, u32>,
    nat_sources4: HashMap<MapData, u32, u8>,
    nat_sources6: HashMap<MapData, [u8; 16], u8>,
    peer_flows: HashMap<MapData, FlowKey, FlowValue>,
    flow_events: aya::maps::RingBuf<MapData>,
    cluster_state: Array<MapData, u32>,
    cluster_lost: PerCpuArray<MapData, u64>,
    quic_servers: HashMap<MapData, lb_common::quic::QuicServerKey, u32>,
    /// What `QUIC_SERVERS` holds.
    quic_copy: BTreeMap<lb_common::quic::QuicServerKey, u32>,
    trace_filter: Array<MapData, lb_common::trace::TraceFilter>,
    trace_state: PerCpuArray<MapData, lb_common::trace::TraceState>,
    trace_ring: aya::maps::RingBuf<MapData>,
    /// Held so that its slots stay filled while the data plane is not
    /// pinned (a program array empties when its last user goes).
    _icmp_progs: ProgramArray<MapData>,
    /// With pins, until [`Dataplane::finish_pinned`]: the upgrade to end
    /// once the program is attached, or only the layout to record.
    upgrade: Option<upgrade::Pending>,
    cfg: DataplaneConfig,
    ncpus: usize,
    /// What the VIP, backend and Maglev maps hold.
    tables: Tables,
}

impl Dataplane {
    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// Userspace's copy of the VIP, backend and Maglev maps.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Borrow of the underlying object, for tests that need another map.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
