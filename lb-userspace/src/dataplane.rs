//! The one owner of the balancer's kernel state: it loads the program, holds
//! every map handle, and turns VIPs, backends and weights into typed map
//! writes. Nothing else in hola writes a map.
//!
//! Update order is what keeps a packet from ever seeing a half-written state:
//! a backend's entry is written before any Maglev slot names it and cleared
//! only after no slot does; a VIP's table is complete before the VIP entry
//! points to it; a table change writes only the slots whose owner changed
//! (each slot is one atomic 32-bit store).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramError, Xdp, xdp::XdpMode},
};
use lb_common::{
    AddrVips, Backend, BackendStats, FAMILY_V4, FAMILY_V6, FlowKey, FlowValue, HandshakeStats,
    NatValue, PROTO_TCP, PROTO_UDP, Reason, ReasonStats, Settings, VipKey, VipMeta, VipSlot,
    VipStats,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_DOWN, BACKEND_F_NEXTHOP},
    maps as names,
    vip::{
        ADDR_F_OVERFLOW, ADDR_SLOTS, VIP_F_SRC_HASH, VIP_MODE_DSR, VIP_MODE_FULLNAT, VIP_MODE_MASK,
        VIP_MODE_NAT, VIP_MODE_TUNNEL,
    },
};

use crate::{
    maglev::{self, MaglevBackend, MaglevError},
    programs,
};

/// Load-time capacities and settings of the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Flow-table entries per possible CPU.
    pub flow_capacity_per_cpu: u32,
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
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            flow_capacity_per_cpu: 1 << 20,
            max_vips: 256,
            max_backends: 4096,
            ring_capacity: 16 * maglev::DEFAULT_TABLE_SIZE,
            max_tx_ports: 64,
            tunnel_src_v4: ("198.18.255.0".parse().expect("literal"), 24),
            tunnel_src_v6: ("2001:db8:ffff::".parse().expect("literal"), 112),
            nat_capacity: 1 << 20,
            nat_tcp_idle: Duration::from_secs(900),
            nat_udp_idle: Duration::from_secs(60),
            nat_closed_linger: Duration::from_secs(10),
            fullnat_src_v4: None,
            fullnat_src_v6: None,
            fullnat_ports: (20000, 59999),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Direct server return: MACs rewritten, the backend holds the VIP.
    Dsr,
    /// IP-in-IP / IPv6-in-IPv6 to the backend, which runs `hola-decap`.
    Tunnel,
    /// Destination NAT to the backend's address (and port); its replies
    /// come back through the balancer and are translated back.
    Nat,
    /// As `Nat`, and the source becomes the balancer's fullnat address and
    /// a port of its range.
    FullNat,
}

/// Identity of a VIP: (address, port, protocol). Port 0 is all ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipAddr {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for VipAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.proto),
        }
    }
}

/// A VIP as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub vip: VipAddr,
    pub mode: Mode,
    /// Hash on the client address only (client affinity).
    pub src_hash: bool,
    /// Maglev table size M, a prime.
    pub table_size: u32,
}

/// How frames reach a backend: resolved from the kernel's routing and
/// neighbour tables by `neigh::resolve`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nexthop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// Egress interface; 0 means "the interface the packet came in on".
    pub ifindex: u32,
}

/// A backend of a VIP as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: IpAddr,
    /// Relative share of new flows; 0 drains (established flows stay).
    pub weight: u32,
    /// `None` until resolved: packets to it are dropped and counted.
    pub nexthop: Option<Nexthop>,
    /// False when health checks say it is down: its established flows are
    /// re-balanced and it has no slot in the Maglev table (as at weight 0).
    pub up: bool,
    /// NAT mode: the port the backend listens on; 0 keeps the VIP's port
    /// (the packet's, for an all-ports VIP). Ignored by other modes.
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the hola eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
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
    #[error(
        "pinned map {path} holds {pinned} entries but the configuration asks for {wanted}; capacities cannot change under a running data plane: run `hola down` first (this drops every flow) or restore the old setting"
    )]
    PinnedSize {
        path: std::path::PathBuf,
        pinned: u32,
        wanted: u32,
    },
    #[error("attaching to {iface}: {message}")]
    Attach { iface: String, message: String },
    #[error("map TX_PORTS: {0}")]
    TxPorts(aya::maps::xdp::XdpMapError),
    #[error("map {0} is missing from the hola eBPF object (built from another version?)")]
    MissingMap(&'static str),
    #[error("reading the number of possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("VIP {0} already exists")]
    VipExists(VipAddr),
    #[error("VIP {0} does not exist")]
    NoSuchVip(VipAddr),
    #[error("backend {backend} is not in VIP {vip}")]
    NoSuchBackend { vip: VipAddr, backend: IpAddr },
    #[error("backend {backend} is listed twice for VIP {vip}")]
    DuplicateBackend { vip: VipAddr, backend: IpAddr },
    #[error(
        "backend {backend} is {} but VIP {vip} is {}; a backend must be of the VIP's address family",
        family_name(.backend), family_name(&.vip.addr)
    )]
    FamilyMismatch { vip: VipAddr, backend: IpAddr },
    #[error("VIP {vip}: {source}")]
    Maglev { vip: VipAddr, source: MaglevError },
    #[error("no room for {what}: all {capacity} in use (raise `{setting}` in the configuration)")]
    Full {
        what: &'static str,
        capacity: u32,
        setting: &'static str,
    },
}

fn family_name(a: &IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// What a sweep of the NAT table found.
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

struct BackendState {
    id: u32,
    spec: BackendSpec,
}

impl VipState {
    fn meta(&self) -> VipMeta {
        let mode = match self.spec.mode {
            Mode::Dsr => VIP_MODE_DSR,
            Mode::Tunnel => VIP_MODE_TUNNEL,
            Mode::Nat => VIP_MODE_NAT,
            Mode::FullNat => VIP_MODE_FULLNAT,
        };
        let flags = mode
            | if self.spec.src_hash {
                VIP_F_SRC_HASH
            } else {
                0
            };
        VipMeta {
            vip_id: self.id,
            flags,
            ring_base: self.ring_base,
            ring_size: self.spec.table_size,
        }
    }
}

struct VipState {
    spec: VipSpec,
    id: u32,
    ring_base: u32,
    /// What the kernel's slots hold now: diffed against on every change.
    ring: Vec<u32>,
    backends: Vec<BackendState>,
}

/// The loaded balancer and every handle to its maps.
/// Size of the `FLOW_EVENTS` ring buffer: about 27,000 events of 152
/// bytes, drained every 20 ms while a cluster is configured.
pub const FLOW_EVENTS_BYTES: u32 = 4 << 20;

pub struct Dataplane {
    ebpf: Ebpf,
    vips_map: HashMap<MapData, VipKey, VipMeta>,
    addrs4: HashMap<MapData, u32, AddrVips>,
    addrs6: HashMap<MapData, [u8; 16], AddrVips>,
    backends_map: Array<MapData, Backend>,
    rings: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    handshakes: PerCpuArray<MapData, HandshakeStats>,
    reasons: PerCpuArray<MapData, ReasonStats>,
    tx_ports: DevMapHash<MapData>,
    nat: HashMap<MapData, FlowKey, NatValue>,
    nat_state: Array<MapData, u32>,
    nat_sources4: HashMap<MapData, u32, u8>,
    nat_sources6: HashMap<MapData, [u8; 16], u8>,
    peer_flows: HashMap<MapData, FlowKey, FlowValue>,
    flow_events: aya::maps::RingBuf<MapData>,
    cluster_state: Array<MapData, u32>,
    cluster_lost: PerCpuArray<MapData, u64>,
    /// Held so that its slots stay filled while the data plane is not
    /// pinned (a program array empties when its last user goes).
    _icmp_progs: ProgramArray<MapData>,
    cfg: DataplaneConfig,
    ncpus: usize,
    vips: BTreeMap<VipAddr, VipState>,
    vip_ids: IdPool,
    backend_ids: IdPool,
    ring_space: RingSpace,
}

fn vip_key(v: &VipAddr) -> VipKey {
    let (addr, family) = addr_bytes(v.addr);
    VipKey {
        addr,
        port: v.port.to_be(),
        proto: v.proto.number(),
        family,
    }
}

/// An address as the program sees it: network order, IPv4 in the first four
/// bytes.
pub fn addr_bytes(a: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

fn mask_of(prefix: u8) -> u32 {
    if prefix >= 32 { 0 } else { u32::MAX >> prefix }
}

impl Dataplane {
    /// Loads the balancer program and creates its maps with `cfg`'s
    /// capacities. Nothing is attached yet.
    pub fn load(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        Self::load_with(cfg, None)
    }

    /// Loads the balancer with every map pinned under `pin_dir/maps`. Maps
    /// already pinned there (a previous daemon's) are reused, with their
    /// contents: the VIPs, backends, tables, flows and counters in them are
    /// adopted, so a restart moves no flow and resets no counter.
    pub fn load_pinned(cfg: DataplaneConfig, pin_dir: &Path) -> Result<Self, DataplaneError> {
        let mut dp = Self::load_with(cfg, Some(pin_dir))?;
        dp.adopt()?;
        Ok(dp)
    }

    fn load_with(cfg: DataplaneConfig, pin_dir: Option<&Path>) -> Result<Self, DataplaneError> {
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        let (v4, p4) = cfg.tunnel_src_v4;
        let (v6, p6) = cfg.tunnel_src_v6;
        let settings = Settings {
            tunnel_src_v4: v4.octets(),
            tunnel_src_v4_mask: mask_of(p4),
            tunnel_src_v6: v6.octets(),
            tunnel_src_v6_mask: mask_of(p6.saturating_sub(96)),
            _pad: 0,
            nat_tcp_idle_ns: cfg.nat_tcp_idle.as_nanos() as u64,
            nat_udp_idle_ns: cfg.nat_udp_idle.as_nanos() as u64,
            nat_closed_linger_ns: cfg.nat_closed_linger.as_nanos() as u64,
            fullnat_src_v4: cfg.fullnat_src_v4.map_or([0; 4], |a| a.octets()),
            fullnat_port_lo: cfg.fullnat_ports.0,
            fullnat_port_span: ((u32::from(cfg.fullnat_ports.1) - u32::from(cfg.fullnat_ports.0)
                + 1)
                / ncpus as u32)
                .min(u32::from(u16::MAX)) as u16,
            fullnat_src_v6: cfg.fullnat_src_v6.map_or([0; 16], |a| a.octets()),
        };
        let flows = cfg.flow_capacity_per_cpu.saturating_mul(ncpus as u32);
        let sizes = [
            (names::FLOWS, flows),
            (names::VIPS, cfg.max_vips),
            (names::VIP_ADDRS4, cfg.max_vips),
            (names::VIP_ADDRS6, cfg.max_vips),
            (names::VIP_STATS, cfg.max_vips + 1),
            (names::BACKENDS, cfg.max_backends + 1),
            (names::BACKEND_STATS, cfg.max_backends + 1),
            (names::RINGS, cfg.ring_capacity),
            (names::TX_PORTS, cfg.max_tx_ports),
            (names::REASONS, Reason::COUNT),
            (names::NAT, cfg.nat_capacity),
            (names::NAT_STATE, 1),
            (names::ICMP_PROGS, 4),
            (names::HANDSHAKES, cfg.max_backends + 1),
            (names::NAT_SCRATCH, 1),
            (names::NAT_SOURCES4, cfg.max_backends),
            (names::NAT_SOURCES6, cfg.max_backends),
            (names::FULLNAT_CURSOR, 1),
            (names::PEER_FLOWS, flows),
            (names::FLOW_EVENTS, FLOW_EVENTS_BYTES),
            (names::CLUSTER_STATE, 1),
            (names::CLUSTER_LOST, 1),
        ];
        let mut loader = EbpfLoader::new();
        let mut pins = Vec::new();
        for (name, size) in sizes {
            loader.map_max_entries(name, size);
            if let Some(dir) = pin_dir {
                let path = dir.join("maps").join(name);
                check_pinned_size(&path, name, size)?;
                pins.push((name, path));
            }
        }
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir.join("maps")).map_err(|e| DataplaneError::PinDir {
                dir: dir.to_path_buf(),
                source: e,
            })?;
        }
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .override_global(names::SETTINGS, &settings, true)
            .load(programs::HOLA)?;
        let prog: &mut Xdp = program(&mut ebpf, names::PROG_LB)?;
        prog.load().map_err(|source| DataplaneError::Program {
            name: names::PROG_LB,
            source,
        })?;
        // The ICMP programs `hola_lb` tail-calls, in their slots (which a
        // pinned `ICMP_PROGS` of a previous daemon holds until replaced).
        let mut icmp_progs: ProgramArray<MapData> = {
            let m = ebpf
                .take_map(names::ICMP_PROGS)
                .ok_or(DataplaneError::MissingMap(names::ICMP_PROGS))?;
            m.try_into().map_err(|source| DataplaneError::Map {
                name: names::ICMP_PROGS,
                source,
            })?
        };
        for (slot, name) in [
            (names::ICMP_TO_CLIENT, names::PROG_ICMP_TO_CLIENT),
            (names::ICMP_TO_BACKEND, names::PROG_ICMP_TO_BACKEND),
            (names::NAT_REQUEST, names::PROG_NAT_REQUEST),
            (names::NAT_REPLY, names::PROG_NAT_REPLY),
        ] {
            let p: &mut Xdp = program(&mut ebpf, name)?;
            p.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
            let fd = p
                .fd()
                .map_err(|source| DataplaneError::Program { name, source })?;
            icmp_progs
                .set(slot, fd, 0)
                .map_err(map_err(names::ICMP_PROGS))?;
        }

        macro_rules! take {
            ($name:expr) => {{
                let m = ebpf
                    .take_map($name)
                    .ok_or(DataplaneError::MissingMap($name))?;
                m.try_into().map_err(|source| DataplaneError::Map {
                    name: $name,
                    source,
                })?
            }};
        }
        Ok(Self {
            vips_map: take!(names::VIPS),
            addrs4: take!(names::VIP_ADDRS4),
            addrs6: take!(names::VIP_ADDRS6),
            backends_map: take!(names::BACKENDS),
            rings: take!(names::RINGS),
            flows: take!(names::FLOWS),
            vip_stats: take!(names::VIP_STATS),
            backend_stats: take!(names::BACKEND_STATS),
            handshakes: take!(names::HANDSHAKES),
            reasons: take!(names::REASONS),
            tx_ports: take!(names::TX_PORTS),
            nat: take!(names::NAT),
            nat_state: take!(names::NAT_STATE),
            nat_sources4: take!(names::NAT_SOURCES4),
            nat_sources6: take!(names::NAT_SOURCES6),
            peer_flows: take!(names::PEER_FLOWS),
            flow_events: take!(names::FLOW_EVENTS),
            cluster_state: take!(names::CLUSTER_STATE),
            cluster_lost: take!(names::CLUSTER_LOST),
            _icmp_progs: icmp_progs,
            ebpf,
            vip_ids: IdPool::new(cfg.max_vips),
            backend_ids: IdPool::new(cfg.max_backends),
            ring_space: RingSpace::new(cfg.ring_capacity),
            cfg,
            ncpus,
            vips: BTreeMap::new(),
        })
    }

    /// Rebuilds the userspace view (VIPs, backend ids, table mirrors) from
    /// maps a previous daemon left pinned. Nothing is written.
    fn adopt(&mut self) -> Result<(), DataplaneError> {
        let vips: Vec<(VipKey, VipMeta)> = self
            .vips_map
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VIPS))?;
        let mut backends: BTreeMap<u32, Vec<BackendState>> = BTreeMap::new();
        for id in 1..=self.cfg.max_backends {
            let b = self
                .backends_map
                .get(&id, 0)
                .map_err(map_err(names::BACKENDS))?;
            if b.flags & BACKEND_F_ACTIVE == 0 {
                continue;
            }
            let addr = if b.family == FAMILY_V4 {
                IpAddr::from([b.addr[0], b.addr[1], b.addr[2], b.addr[3]])
            } else {
                IpAddr::from(b.addr)
            };
            let nexthop = (b.flags & BACKEND_F_NEXTHOP != 0).then_some(Nexthop {
                dmac: b.dmac,
                smac: b.smac,
                ifindex: b.ifindex,
            });
            self.backend_ids.mark(id);
            backends.entry(b.vip_id).or_default().push(BackendState {
                id,
                // The weight is not in the kernel; the owner re-applies the
                // configured weights, which rebuild the same table.
                spec: BackendSpec {
                    addr,
                    weight: 0,
                    nexthop,
                    up: b.flags & BACKEND_F_DOWN == 0,
                    port: u16::from_be(b.port),
                },
            });
        }
        for (key, meta) in vips {
            let addr = if key.family == FAMILY_V4 {
                IpAddr::from([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
            } else {
                IpAddr::from(key.addr)
            };
            let proto = if key.proto == PROTO_TCP {
                Proto::Tcp
            } else {
                Proto::Udp
            };
            let vip = VipAddr {
                addr,
                port: u16::from_be(key.port),
                proto,
            };
            let mode = match meta.flags & VIP_MODE_MASK {
                VIP_MODE_TUNNEL => Mode::Tunnel,
                VIP_MODE_NAT => Mode::Nat,
                VIP_MODE_FULLNAT => Mode::FullNat,
                _ => Mode::Dsr,
            };
            let spec = VipSpec {
                vip,
                mode,
                src_hash: meta.flags & VIP_F_SRC_HASH != 0,
                table_size: meta.ring_size,
            };
            let mut ring = Vec::with_capacity(meta.ring_size as usize);
            for i in 0..meta.ring_size {
                ring.push(
                    self.rings
                        .get(&(meta.ring_base + i), 0)
                        .map_err(map_err(names::RINGS))?,
                );
            }
            self.vip_ids.mark(meta.vip_id);
            self.ring_space.reserve(meta.ring_base, meta.ring_size);
            self.vips.insert(
                vip,
                VipState {
                    spec,
                    id: meta.vip_id,
                    ring_base: meta.ring_base,
                    ring,
                    backends: backends.remove(&meta.vip_id).unwrap_or_default(),
                },
            );
        }
        Ok(())
    }

    /// Attaches the balancer to `iface`, keeping the attachment as a bpf_link
    /// pinned at `pin`. When a link is already pinned there (a previous
    /// daemon's), the new program replaces the old one in it atomically: no
    /// packet is dropped. Otherwise `modes` are tried in order (driver, then
    /// generic). Returns the mode in use and, when a mode before it failed,
    /// why.
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        modes: &[XdpMode],
        pin: &Path,
    ) -> Result<(String, Option<String>), DataplaneError> {
        use aya::programs::{
            links::{FdLink, LinkError, PinnedLink},
            xdp::XdpLink,
        };
        let attach_err = |message: String| DataplaneError::Attach {
            iface: iface.to_string(),
            message,
        };
        let prog = self.program()?;
        if pin.exists() {
            let pinned = PinnedLink::from_pin(pin).map_err(|e| {
                attach_err(format!("opening the pinned link {}: {e}", pin.display()))
            })?;
            let link = XdpLink::try_from(FdLink::from(pinned))
                .map_err(|e| attach_err(format!("{} is not an XDP link: {e}", pin.display())))?;
            let id = prog.attach_to_link(link).map_err(|e| {
                attach_err(format!("replacing the program in the pinned link: {e}"))
            })?;
            // The pin keeps the link (and so the attachment) alive after this
            // daemon exits; our handle is only closed then.
            let kept: FdLink = prog
                .take_link(id)
                .map_err(|e| attach_err(e.to_string()))?
                .try_into()
                .map_err(|e: LinkError| attach_err(e.to_string()))?;
            drop(kept);
            return Ok(("existing link (program replaced in place)".into(), None));
        }
        let mut last = String::new();
        for mode in modes {
            match prog.attach(iface, *mode) {
                Ok(id) => {
                    let link: FdLink = prog
                        .take_link(id)
                        .map_err(|e| attach_err(e.to_string()))?
                        .try_into()
                        .map_err(|e: LinkError| {
                            attach_err(format!("the kernel gave no bpf_link for XDP ({e}); Linux 5.9 or newer is needed"))
                        })?;
                    if let Some(dir) = pin.parent() {
                        std::fs::create_dir_all(dir).map_err(|e| DataplaneError::PinDir {
                            dir: dir.to_path_buf(),
                            source: e,
                        })?;
                    }
                    let pinned = link.pin(pin).map_err(|e| {
                        attach_err(format!("pinning the link at {}: {e}", pin.display()))
                    })?;
                    drop(pinned);
                    let earlier = (!last.is_empty()).then_some(last);
                    return Ok((format!("{mode:?}").to_lowercase(), earlier));
                }
                Err(e) => {
                    if !last.is_empty() {
                        last.push_str("; ");
                    }
                    last.push_str(&format!("{mode:?} mode: {e}"));
                }
            }
        }
        Err(attach_err(last))
    }

    /// The loaded XDP program, for attaching or for BPF_PROG_TEST_RUN.
    pub fn program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        program(&mut self.ebpf, names::PROG_LB)
    }

    /// The loaded XDP program, shared, for BPF_PROG_TEST_RUN.
    pub fn program_ref(&self) -> &Xdp {
        self.ebpf
            .program(names::PROG_LB)
            .and_then(|p| p.try_into().ok())
            .expect("the balancer program is loaded by Dataplane::load")
    }

    /// Attaches the balancer to `iface` in `mode`.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), DataplaneError> {
        self.program()?
            .attach(iface, mode)
            .map(drop)
            .map_err(|source| DataplaneError::Program {
                name: names::PROG_LB,
                source,
            })
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// Adds a VIP with no backends (its packets are dropped and counted
    /// until backends are set).
    pub fn add_vip(&mut self, spec: VipSpec) -> Result<(), DataplaneError> {
        let vip = spec.vip;
        if self.vips.contains_key(&vip) {
            return Err(DataplaneError::VipExists(vip));
        }
        if !maglev::is_prime(spec.table_size) {
            return Err(DataplaneError::Maglev {
                vip,
                source: MaglevError::NotPrime(spec.table_size),
            });
        }
        let id = self.vip_ids.alloc().ok_or(DataplaneError::Full {
            what: "another VIP",
            capacity: self.cfg.max_vips,
            setting: "max_vips",
        })?;
        let Some(ring_base) = self.ring_space.alloc(spec.table_size) else {
            self.vip_ids.free(id);
            return Err(DataplaneError::Full {
                what: "another Maglev table",
                capacity: self.cfg.ring_capacity,
                setting: "ring_capacity",
            });
        };
        let result = self.install_vip(spec, id, ring_base);
        if result.is_err() {
            self.vip_ids.free(id);
            self.ring_space.free(ring_base, spec.table_size);
        }
        result
    }

    fn install_vip(
        &mut self,
        spec: VipSpec,
        id: u32,
        ring_base: u32,
    ) -> Result<(), DataplaneError> {
        // The slots may hold ids from a VIP that had this region before.
        for i in 0..spec.table_size {
            self.rings
                .set(ring_base + i, 0, 0)
                .map_err(map_err(names::RINGS))?;
        }
        self.vip_stats
            .set(
                id,
                PerCpuValues::try_from(vec![VipStats::default(); self.ncpus]).expect("ncpus > 0"),
                0,
            )
            .map_err(map_err(names::VIP_STATS))?;
        let state = VipState {
            spec,
            id,
            ring_base,
            ring: vec![0; spec.table_size as usize],
            backends: Vec::new(),
        };
        self.vips_map
            .insert(vip_key(&spec.vip), state.meta(), 0)
            .map_err(map_err(names::VIPS))?;
        self.vips.insert(spec.vip, state);
        self.write_addr_vips(spec.vip.addr)?;
        self.write_nat_state()
    }

    /// Lets the program redirect to `ifindex` (an interface the balancer is
    /// attached to): NAT replies leave through the interface their request
    /// came in on, which may be another one than the reply's.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(DataplaneError::TxPorts)
    }

    /// Tells the program whether any VIP is in NAT mode (only then are
    /// packets not for a VIP looked up as replies), and from which
    /// addresses replies come: every backend of a NAT VIP. A backend
    /// removed from every NAT VIP stops being one (its late replies pass).
    fn write_nat_state(&mut self) -> Result<(), DataplaneError> {
        let nat_vips = || {
            self.vips
                .values()
                .filter(|v| matches!(v.spec.mode, Mode::Nat | Mode::FullNat))
        };
        let any = nat_vips().next().is_some();
        let want: std::collections::BTreeSet<IpAddr> = nat_vips()
            .flat_map(|v| v.backends.iter().map(|b| b.spec.addr))
            .collect();
        let mut have4 = Vec::new();
        for k in self.nat_sources4.keys() {
            have4.push(k.map_err(map_err(names::NAT_SOURCES4))?);
        }
        let mut have6 = Vec::new();
        for k in self.nat_sources6.keys() {
            have6.push(k.map_err(map_err(names::NAT_SOURCES6))?);
        }
        for a in &want {
            match a {
                IpAddr::V4(v4) => {
                    let k = u32::from_ne_bytes(v4.octets());
                    if !have4.contains(&k) {
                        self.nat_sources4
                            .insert(k, 1, 0)
                            .map_err(map_err(names::NAT_SOURCES4))?;
                    }
                }
                IpAddr::V6(v6) => {
                    let k = v6.octets();
                    if !have6.contains(&k) {
                        self.nat_sources6
                            .insert(k, 1, 0)
                            .map_err(map_err(names::NAT_SOURCES6))?;
                    }
                }
            }
        }
        for k in have4 {
            if !want.contains(&IpAddr::from(k.to_ne_bytes())) {
                ignore_missing(self.nat_sources4.remove(&k))
                    .map_err(map_err(names::NAT_SOURCES4))?;
            }
        }
        for k in have6 {
            if !want.contains(&IpAddr::from(k)) {
                ignore_missing(self.nat_sources6.remove(&k))
                    .map_err(map_err(names::NAT_SOURCES6))?;
            }
        }
        self.nat_state
            .set(0, u32::from(any), 0)
            .map_err(map_err(names::NAT_STATE))
    }

    /// Deletes the NAT entries that have expired and counts the others, and
    /// finds SYNs the backend left unanswered for `syn_timeout` (each is
    /// counted once: its SYN time is cleared). Reads the whole table.
    pub fn sweep_nat(&mut self, syn_timeout: Duration) -> Result<NatSweep, DataplaneError> {
        let now = monotonic_ns();
        let s = lb_common::flow::NatTimeouts {
            tcp_idle_ns: self.cfg.nat_tcp_idle.as_nanos() as u64,
            udp_idle_ns: self.cfg.nat_udp_idle.as_nanos() as u64,
            closed_linger_ns: self.cfg.nat_closed_linger.as_nanos() as u64,
        };
        let mut expired = Vec::new();
        let mut unanswered = Vec::new();
        let mut live = 0u64;
        for entry in self.nat.iter() {
            let (k, v) = match entry {
                Ok(kv) => kv,
                // An entry evicted while we walk: skip it.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(names::NAT)(e)),
            };
            if lb_common::flow::nat_expired(&v, k.proto, now, &s) {
                expired.push(k);
            } else {
                live += 1;
                if v.syn_ns != 0 && now.saturating_sub(v.syn_ns) > syn_timeout.as_nanos() as u64 {
                    unanswered.push((k, v));
                }
            }
        }
        let mut out = NatSweep {
            live,
            ..NatSweep::default()
        };
        for (k, mut v) in unanswered {
            let id = v.backend_id;
            v.syn_ns = 0;
            // Only if the entry is still there (BPF_EXIST): a flow that
            // ended meanwhile is not brought back.
            if self.nat.insert(k, v, 2).is_ok()
                && let Some(addr) = self.backend_addr_by_id(id)
            {
                *out.unanswered.entry(addr).or_default() += 1;
            }
        }
        for k in &expired {
            match self.nat.remove(k) {
                Ok(()) => {
                    out.removed += 1;
                    out.gone.push(*k);
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::NAT)(e)),
            }
        }
        Ok(out)
    }

    /// Switches cluster replication in the program on (events are written
    /// and `PEER_FLOWS` is consulted) or off.
    pub fn set_cluster(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.cluster_state
            .set(0, u32::from(on), 0)
            .map_err(map_err(names::CLUSTER_STATE))
    }

    /// Events the program could not write because `FLOW_EVENTS` was full,
    /// summed over CPUs, since the map was created.
    pub fn events_lost(&self) -> Result<u64, DataplaneError> {
        let per_cpu = self
            .cluster_lost
            .get(&0, 0)
            .map_err(map_err(names::CLUSTER_LOST))?;
        Ok(per_cpu.iter().sum())
    }

    /// Up to `max` records from the `FLOW_EVENTS` ring buffer.
    pub fn next_events(&mut self, max: usize) -> Vec<lb_common::flow::FlowEvent> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.flow_events.next() else {
                break;
            };
            if item.len() >= std::mem::size_of::<lb_common::flow::FlowEvent>() {
                // SAFETY: the record holds at least a FlowEvent's bytes (a
                // plain-old-data type); read unaligned.
                out.push(unsafe {
                    std::ptr::read_unaligned(item.as_ptr().cast::<lb_common::flow::FlowEvent>())
                });
            }
        }
        out
    }

    /// The id of `addr` among `vip`'s backends.
    pub fn backend_id(&self, vip: &VipAddr, addr: IpAddr) -> Option<u32> {
        self.vips
            .get(vip)?
            .backends
            .iter()
            .find(|b| b.spec.addr == addr)
            .map(|b| b.id)
    }

    /// The VIP and address of the backend with id `id`.
    pub fn backend_of(&self, id: u32) -> Option<(VipAddr, IpAddr)> {
        self.backend_addr_by_id(id)
    }

    /// Writes a flow learned from a cluster peer into `PEER_FLOWS`.
    pub fn install_peer_flow(
        &mut self,
        key: &FlowKey,
        value: FlowValue,
    ) -> Result<(), DataplaneError> {
        self.peer_flows
            .insert(key, value, 0)
            .map_err(map_err(names::PEER_FLOWS))
    }

    /// The `PEER_FLOWS` entry of a 5-tuple, if any.
    pub fn peer_flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.peer_flows.get(key, 0).ok()
    }

    /// Writes a NAT translation (learned from a cluster peer).
    pub fn install_nat(&mut self, reply: &FlowKey, value: &NatValue) -> Result<(), DataplaneError> {
        self.nat
            .insert(reply, value, 0)
            .map_err(map_err(names::NAT))
    }

    /// Removes a NAT translation a peer removed, if it has expired here
    /// too; `false` when it is kept (live here: a flow this node carries,
    /// or refreshed by its replies) or absent. A peer's copy can expire
    /// while the flow lives on another node: its removal must not end it.
    pub fn remove_nat_if_expired(&mut self, reply: &FlowKey) -> Result<bool, DataplaneError> {
        let Ok(v) = self.nat.get(reply, 0) else {
            return Ok(false);
        };
        let t = lb_common::flow::NatTimeouts {
            tcp_idle_ns: self.cfg.nat_tcp_idle.as_nanos() as u64,
            udp_idle_ns: self.cfg.nat_udp_idle.as_nanos() as u64,
            closed_linger_ns: self.cfg.nat_closed_linger.as_nanos() as u64,
        };
        if !lb_common::flow::nat_expired(&v, reply.proto, monotonic_ns(), &t) {
            return Ok(false);
        }
        self.remove_nat(reply)
    }

    /// Removes a NAT translation; `false` when there was none.
    pub fn remove_nat(&mut self, reply: &FlowKey) -> Result<bool, DataplaneError> {
        match self.nat.remove(reply) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(names::NAT)(e)),
        }
    }

    /// Every `FLOWS` entry (a whole-table walk: for a peer's snapshot).
    pub fn flow_entries(&self) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
        walk(self.flows.iter(), names::FLOWS)
    }

    /// Every `NAT` entry (a whole-table walk: for a peer's snapshot).
    pub fn nat_entries(&self) -> Result<Vec<(FlowKey, NatValue)>, DataplaneError> {
        walk(self.nat.iter(), names::NAT)
    }

    /// The VIP and address of the backend with id `id`.
    fn backend_addr_by_id(&self, id: u32) -> Option<(VipAddr, IpAddr)> {
        self.vips.iter().find_map(|(vip, v)| {
            v.backends
                .iter()
                .find(|b| b.id == id)
                .map(|b| (*vip, b.spec.addr))
        })
    }

    /// The NAT entry of a reply 5-tuple, if any.
    pub fn nat_entry(&self, reply: &FlowKey) -> Option<NatValue> {
        self.nat.get(reply, 0).ok()
    }

    /// Removes a VIP, its table and its backends.
    pub fn remove_vip(&mut self, vip: &VipAddr) -> Result<(), DataplaneError> {
        if !self.vips.contains_key(vip) {
            return Err(DataplaneError::NoSuchVip(*vip));
        }
        self.set_backends(vip, &[])?;
        let state = self.vips.remove(vip).expect("checked above");
        self.vips_map
            .remove(&vip_key(vip))
            .map_err(map_err(names::VIPS))?;
        self.write_addr_vips(vip.addr)?;
        self.write_nat_state()?;
        self.vip_ids.free(state.id);
        self.ring_space.free(state.ring_base, state.spec.table_size);
        Ok(())
    }

    /// Makes `backends` the whole backend set of `vip`: new ones are added,
    /// missing ones removed, weights and next hops updated. Validated in full
    /// before anything is written.
    pub fn set_backends(
        &mut self,
        vip: &VipAddr,
        backends: &[BackendSpec],
    ) -> Result<(), DataplaneError> {
        let state = self.vips.get(vip).ok_or(DataplaneError::NoSuchVip(*vip))?;
        for (i, b) in backends.iter().enumerate() {
            if b.addr.is_ipv4() != vip.addr.is_ipv4() {
                return Err(DataplaneError::FamilyMismatch {
                    vip: *vip,
                    backend: b.addr,
                });
            }
            if backends[..i].iter().any(|o| o.addr == b.addr) {
                return Err(DataplaneError::DuplicateBackend {
                    vip: *vip,
                    backend: b.addr,
                });
            }
        }
        let new_count = backends
            .iter()
            .filter(|b| !state.backends.iter().any(|o| o.spec.addr == b.addr))
            .count();
        if new_count > self.backend_ids.available() {
            return Err(DataplaneError::Full {
                what: "more backends",
                capacity: self.cfg.max_backends,
                setting: "max_backends",
            });
        }
        let vip_id = state.id;
        let table_size = state.spec.table_size;
        let old: Vec<(IpAddr, u32)> = state.backends.iter().map(|b| (b.spec.addr, b.id)).collect();

        // Ids: kept for backends that stay, fresh for new ones.
        let mut next = Vec::with_capacity(backends.len());
        for b in backends {
            let id = match old.iter().find(|(a, _)| *a == b.addr) {
                Some((_, id)) => *id,
                None => self
                    .backend_ids
                    .alloc()
                    .expect("availability checked above"),
            };
            next.push(BackendState { id, spec: *b });
        }
        let maglev_input: Vec<MaglevBackend> = next
            .iter()
            .map(|b| MaglevBackend {
                id: b.id,
                key: maglev::backend_key(b.spec.addr, vip.port),
                // A down backend takes no new flow, whatever its weight.
                weight: if b.spec.up { b.spec.weight } else { 0 },
            })
            .collect();
        let table = maglev::build(&maglev_input, table_size)
            .map_err(|source| DataplaneError::Maglev { vip: *vip, source })?;

        // 1. Backend entries (new and changed) before any slot names them.
        for b in &next {
            let is_new = !old.iter().any(|(a, _)| *a == b.spec.addr);
            if is_new {
                self.backend_stats
                    .set(
                        b.id,
                        PerCpuValues::try_from(vec![BackendStats::default(); self.ncpus])
                            .expect("ncpus > 0"),
                        0,
                    )
                    .map_err(map_err(names::BACKEND_STATS))?;
                self.handshakes
                    .set(
                        b.id,
                        PerCpuValues::try_from(vec![HandshakeStats::default(); self.ncpus])
                            .expect("ncpus > 0"),
                        0,
                    )
                    .map_err(map_err(names::HANDSHAKES))?;
            }
            let entry = backend_entry(&b.spec, vip_id);
            self.backends_map
                .set(b.id, entry, 0)
                .map_err(map_err(names::BACKENDS))?;
            if let Some(nh) = b.spec.nexthop
                && nh.ifindex != 0
            {
                self.tx_ports
                    .insert(nh.ifindex, nh.ifindex, None, 0)
                    .map_err(DataplaneError::TxPorts)?;
            }
        }
        // 2. Only the slots whose owner changed.
        let state = self.vips.get_mut(vip).expect("checked above");
        for (i, (&want, have)) in table.iter().zip(state.ring.iter_mut()).enumerate() {
            if want != *have {
                self.rings
                    .set(state.ring_base + i as u32, want, 0)
                    .map_err(map_err(names::RINGS))?;
                *have = want;
            }
        }
        // 3. Removed backends: no slot names them any more.
        for (addr, id) in &old {
            if !next.iter().any(|b| b.spec.addr == *addr) {
                self.backends_map
                    .set(*id, Backend::default(), 0)
                    .map_err(map_err(names::BACKENDS))?;
                self.backend_ids.free(*id);
            }
        }
        state.backends = next;
        if matches!(state.spec.mode, Mode::Nat | Mode::FullNat) {
            self.write_nat_state()?;
        }
        Ok(())
    }

    /// The VIPs and their backends as currently programmed.
    pub fn vips(&self) -> impl Iterator<Item = (&VipSpec, Vec<BackendSpec>)> {
        self.vips
            .values()
            .map(|v| (&v.spec, v.backends.iter().map(|b| b.spec).collect()))
    }

    /// The backend a VIP's Maglev table gives a flow, without the flow table.
    pub fn maglev_backend(&self, vip: &VipAddr, key: &FlowKey) -> Option<IpAddr> {
        let state = self.vips.get(vip)?;
        let hash = lb_common::hash::flow_hash(key, state.spec.src_hash);
        let id = state.ring[(hash % state.spec.table_size) as usize];
        state
            .backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.spec.addr)
    }

    /// `vip`'s Maglev table as the kernel holds it (slot → backend
    /// address), read back from the `RINGS` map.
    pub fn kernel_table(&self, vip: &VipAddr) -> Result<Vec<Option<IpAddr>>, DataplaneError> {
        let state = self.vips.get(vip).ok_or(DataplaneError::NoSuchVip(*vip))?;
        let mut out = Vec::with_capacity(state.spec.table_size as usize);
        for i in 0..state.spec.table_size {
            let id = self
                .rings
                .get(&(state.ring_base + i), 0)
                .map_err(map_err(names::RINGS))?;
            out.push(
                state
                    .backends
                    .iter()
                    .find(|b| b.id == id)
                    .map(|b| b.spec.addr),
            );
        }
        Ok(out)
    }

    /// The Maglev slot a flow hashes to in `vip`'s table, and its backend.
    pub fn maglev_slot(&self, vip: &VipAddr, key: &FlowKey) -> Option<(u32, Option<IpAddr>)> {
        let state = self.vips.get(vip)?;
        let hash = lb_common::hash::flow_hash(key, state.spec.src_hash);
        let slot = hash % state.spec.table_size;
        let id = state.ring[slot as usize];
        Some((
            slot,
            state
                .backends
                .iter()
                .find(|b| b.id == id)
                .map(|b| b.spec.addr),
        ))
    }

    /// The address of backend `id` if it belongs to `vip`.
    pub fn backend_by_id(&self, vip: &VipAddr, id: u32) -> Option<IpAddr> {
        self.vips
            .get(vip)?
            .backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.spec.addr)
    }

    /// The flow-table entry for a 5-tuple, if any.
    pub fn flow_entry(&self, key: &FlowKey) -> Option<FlowValue> {
        self.flows.get(key, 0).ok()
    }

    /// Every counter, summed over CPUs.
    pub fn stats(&self) -> Result<Stats, DataplaneError> {
        let mut out = Stats::default();
        for r in Reason::ALL {
            let per_cpu = self
                .reasons
                .get(&(r as u32), 0)
                .map_err(map_err(names::REASONS))?;
            let mut sum = ReasonStats::default();
            for v in per_cpu.iter() {
                sum.packets += v.packets;
                sum.bytes += v.bytes;
            }
            out.reasons.insert(r.name(), sum);
        }
        for (addr, v) in &self.vips {
            let per_cpu = self
                .vip_stats
                .get(&v.id, 0)
                .map_err(map_err(names::VIP_STATS))?;
            let mut c = VipCounters::default();
            for s in per_cpu.iter() {
                c.stats.packets += s.packets;
                c.stats.bytes += s.bytes;
                c.stats.new_flows += s.new_flows;
                c.stats.no_backend += s.no_backend;
            }
            for b in &v.backends {
                let per_cpu = self
                    .backend_stats
                    .get(&b.id, 0)
                    .map_err(map_err(names::BACKEND_STATS))?;
                let mut sum = BackendStats::default();
                for s in per_cpu.iter() {
                    sum.packets += s.packets;
                    sum.bytes += s.bytes;
                    sum.new_flows += s.new_flows;
                }
                c.backends.insert(b.spec.addr, sum);
                if matches!(v.spec.mode, Mode::Nat | Mode::FullNat) {
                    let per_cpu = self
                        .handshakes
                        .get(&b.id, 0)
                        .map_err(map_err(names::HANDSHAKES))?;
                    let mut h = HandshakeStats::default();
                    for s in per_cpu.iter() {
                        for (t, x) in h.buckets.iter_mut().zip(s.buckets) {
                            *t += x;
                        }
                        h.syn_acks += s.syn_acks;
                        h.rsts += s.rsts;
                    }
                    c.handshakes.insert(b.spec.addr, h);
                }
            }
            out.vips.insert(*addr, c);
        }
        Ok(out)
    }

    /// Rewrites the `VIP_ADDRS*` entry of `addr` from the VIPs there (one
    /// whole-value update, so the program sees the old set or the new one).
    /// All-ports VIPs take slots first, so an overflowing address still
    /// answers them from the slots.
    fn write_addr_vips(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let mut here: Vec<&VipState> = self
            .vips
            .values()
            .filter(|v| v.spec.vip.addr == addr)
            .collect();
        here.sort_by_key(|v| (v.spec.vip.port != 0, v.spec.vip.port, v.spec.vip.proto));
        let mut entry = AddrVips {
            count: here.len().min(ADDR_SLOTS) as u32,
            ..Default::default()
        };
        if here.len() > ADDR_SLOTS {
            entry.flags |= ADDR_F_OVERFLOW;
        }
        for (slot, v) in entry.slots.iter_mut().zip(&here) {
            *slot = VipSlot {
                port: v.spec.vip.port.to_be(),
                proto: v.spec.vip.proto.number(),
                _pad: 0,
                meta: v.meta(),
            };
        }
        let empty = here.is_empty();
        match addr {
            IpAddr::V4(a) => {
                let k = u32::from_ne_bytes(a.octets());
                if empty {
                    ignore_missing(self.addrs4.remove(&k))
                } else {
                    self.addrs4.insert(k, entry, 0)
                }
                .map_err(map_err(names::VIP_ADDRS4))
            }
            IpAddr::V6(a) => {
                let k = a.octets();
                if empty {
                    ignore_missing(self.addrs6.remove(&k))
                } else {
                    self.addrs6.insert(k, entry, 0)
                }
                .map_err(map_err(names::VIP_ADDRS6))
            }
        }
    }

    /// Borrow of the underlying object, for tests that need another map.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Refuses to reuse a pinned map whose capacity differs from the one asked
/// for: aya would reuse it silently, and the program would then be sized
/// differently from its maps.
fn check_pinned_size(path: &Path, name: &'static str, wanted: u32) -> Result<(), DataplaneError> {
    if !path.exists() {
        return Ok(());
    }
    let info = aya::maps::MapInfo::from_pin(path).map_err(map_err(name))?;
    let pinned = info.max_entries();
    if pinned != wanted {
        return Err(DataplaneError::PinnedSize {
            path: PathBuf::from(path),
            pinned,
            wanted,
        });
    }
    Ok(())
}

/// Removes everything `hola run` pinned under `pin_dir` (links first, so the
/// program detaches, then maps). Returns what it removed.
pub fn unpin_all(pin_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    for sub in ["links", "maps"] {
        let dir = pin_dir.join(sub);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries {
                let p = e?.path();
                std::fs::remove_file(&p)?;
                removed.push(p);
            }
            std::fs::remove_dir(&dir)?;
        }
    }
    // Anything else there was not ours; leave it and say so by failing.
    std::fs::remove_dir(pin_dir)?;
    Ok(removed)
}

fn backend_entry(spec: &BackendSpec, vip_id: u32) -> Backend {
    let (addr, family) = addr_bytes(spec.addr);
    let mut b = Backend {
        addr,
        vip_id,
        flags: BACKEND_F_ACTIVE,
        family,
        ..Default::default()
    };
    if !spec.up {
        b.flags |= BACKEND_F_DOWN;
    }
    b.port = spec.port.to_be();
    if let Some(nh) = spec.nexthop {
        b.dmac = nh.dmac;
        b.smac = nh.smac;
        b.ifindex = nh.ifindex;
        b.flags |= BACKEND_F_NEXTHOP;
    }
    b
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

/// The entries of a map walk; entries evicted while walking are skipped.
fn walk<K, V>(
    it: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
    name: &'static str,
) -> Result<Vec<(K, V)>, DataplaneError> {
    let mut out = Vec::new();
    for e in it {
        match e {
            Ok(kv) => out.push(kv),
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(out)
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

/// Free regions of the `RINGS` array, first fit, merged on free.
struct RingSpace {
    free: Vec<(u32, u32)>,
}

impl RingSpace {
    fn new(capacity: u32) -> Self {
        Self {
            free: vec![(0, capacity)],
        }
    }

    fn alloc(&mut self, size: u32) -> Option<u32> {
        let i = self.free.iter().position(|&(_, len)| len >= size)?;
        let (base, len) = self.free[i];
        if len == size {
            self.free.remove(i);
        } else {
            self.free[i] = (base + size, len - size);
        }
        Some(base)
    }

    /// Takes `[base, base + size)` out of the free regions (adoption).
    fn reserve(&mut self, base: u32, size: u32) {
        let end = base + size;
        let mut next = Vec::with_capacity(self.free.len() + 1);
        for &(b, l) in &self.free {
            let e = b + l;
            if e <= base || b >= end {
                next.push((b, l));
                continue;
            }
            if b < base {
                next.push((b, base - b));
            }
            if e > end {
                next.push((end, e - end));
            }
        }
        self.free = next;
    }

    fn free(&mut self, base: u32, size: u32) {
        self.free.push((base, size));
        self.free.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.free.len());
        for &(b, l) in &self.free {
            match merged.last_mut() {
                Some((mb, ml)) if *mb + *ml == b => *ml += l,
                _ => merged.push((b, l)),
            }
        }
        self.free = merged;
    }
}

/// Ids 1..=capacity, handed out round-robin so that a freed id is reused as
/// late as possible (a stale flow entry then finds the slot empty, or taken
/// by another VIP, and is re-balanced).
struct IdPool {
    capacity: u32,
    used: Vec<bool>,
    cursor: u32,
    in_use: u32,
}

impl IdPool {
    fn new(capacity: u32) -> Self {
        Self {
            capacity,
            used: vec![false; capacity as usize + 1],
            cursor: 0,
            in_use: 0,
        }
    }

    fn available(&self) -> usize {
        (self.capacity - self.in_use) as usize
    }

    fn alloc(&mut self) -> Option<u32> {
        if self.in_use == self.capacity {
            return None;
        }
        loop {
            self.cursor = self.cursor % self.capacity + 1;
            if !self.used[self.cursor as usize] {
                self.used[self.cursor as usize] = true;
                self.in_use += 1;
                return Some(self.cursor);
            }
        }
    }

    /// Marks an id adopted from the kernel as in use.
    fn mark(&mut self, id: u32) {
        if id >= 1 && id <= self.capacity && !std::mem::replace(&mut self.used[id as usize], true) {
            self.in_use += 1;
            self.cursor = self.cursor.max(id);
        }
    }

    fn free(&mut self, id: u32) {
        if std::mem::replace(&mut self.used[id as usize], false) {
            self.in_use -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_space_first_fit_and_merge() {
        let mut r = RingSpace::new(100);
        assert_eq!(r.alloc(30), Some(0));
        assert_eq!(r.alloc(30), Some(30));
        assert_eq!(r.alloc(50), None, "only 40 left");
        r.free(0, 30);
        assert_eq!(r.alloc(40), Some(60));
        r.free(30, 30);
        // 0..60 merged back into one region.
        assert_eq!(r.alloc(60), Some(0));
        assert_eq!(r.alloc(1), None);
    }

    #[test]
    fn ids_are_reused_as_late_as_possible() {
        let mut p = IdPool::new(3);
        assert_eq!((p.alloc(), p.alloc()), (Some(1), Some(2)));
        p.free(1);
        assert_eq!(p.alloc(), Some(3), "a fresh id before the freed one");
        assert_eq!(p.alloc(), Some(1));
        assert_eq!(p.alloc(), None);
        assert_eq!(p.available(), 0);
        p.free(2);
        p.free(2);
        assert_eq!(p.available(), 1, "a double free is harmless");
    }

    #[test]
    fn tunnel_source_masks() {
        assert_eq!(mask_of(24), 0xff);
        assert_eq!(mask_of(32), 0);
        assert_eq!(mask_of(0), u32::MAX);
    }
}
