//! Loading the balancer: its maps created (or the pinned ones of a previous
//! daemon adopted, with their contents), its programs loaded, the tail-call
//! slots filled; attaching it; removing every pin.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, ProgramArray},
    programs::{ProgramError, Xdp, xdp::XdpMode},
};
use lb_common::{
    PROTO_TCP, Reason, Settings, VipKey, VipMeta, backend::BACKEND_F_ACTIVE, maps as names,
    quic::QuicServerKey,
};

use super::{
    Dataplane, DataplaneConfig, DataplaneError, FLOW_EVENTS_BYTES,
    layout::{self, Action},
    map_err, upgrade,
};
use crate::{
    model::{Proto, VipAddr, addr_from_bytes},
    programs,
    reconcile::{Capacity, Tables},
};

fn mask_of(prefix: u8) -> u32 {
    if prefix >= 32 { 0 } else { u32::MAX >> prefix }
}

/// The programs `hola_lb` tail-calls, by their `ICMP_PROGS` slot.
const TAIL_CALLED: [(u32, &str); 7] = [
    (names::ICMP_TO_CLIENT, names::PROG_ICMP_TO_CLIENT),
    (names::ICMP_TO_BACKEND, names::PROG_ICMP_TO_BACKEND),
    (names::NAT_REQUEST, names::PROG_NAT_REQUEST),
    (names::NAT_REPLY, names::PROG_NAT_REPLY),
    (names::TOO_BIG, names::PROG_TOO_BIG),
    (names::FRAG, names::PROG_FRAG),
    (names::FRAG_REPLY, names::PROG_FRAG_REPLY),
];

impl Dataplane {
    /// Loads the balancer program and creates its maps with `cfg`'s
    /// capacities. Nothing is attached yet.
    pub fn load(cfg: DataplaneConfig) -> Result<Self, DataplaneError> {
        Self::load_object(cfg, programs::HOLA)
    }

    /// [`Dataplane::load`] of another build of the balancer's object (the
    /// same maps and programs): `bench-dataplane` loads
    /// [`programs::HOLA_NO_TRACE`] beside [`programs::HOLA`] this way.
    pub fn load_object(cfg: DataplaneConfig, object: &[u8]) -> Result<Self, DataplaneError> {
        let mut dp = Self::load_with(cfg, None, object)?;
        dp.vip_filter_rebuild()?;
        dp.vip_direct_rebuild()?;
        Ok(dp)
    }

    /// Loads the balancer with every map pinned under `pin_dir/maps`. Maps
    /// already pinned there (a previous daemon's) are reused, with their
    /// contents: the VIPs, backends, tables, flows and counters in them are
    /// adopted, so a restart moves no flow and resets no counter.
    pub fn load_pinned(cfg: DataplaneConfig, pin_dir: &Path) -> Result<Self, DataplaneError> {
        let mut dp = Self::load_with(cfg, Some(pin_dir), programs::HOLA)?;
        dp.adopt()?;
        dp.vip_filter_rebuild()?;
        dp.vip_direct_rebuild()?;
        Ok(dp)
    }

    fn load_with(
        cfg: DataplaneConfig,
        pin_dir: Option<&Path>,
        object: &[u8],
    ) -> Result<Self, DataplaneError> {
        let ncpus = super::possible_cpus()?;
        let settings = settings(&cfg, ncpus);
        let mut loader = EbpfLoader::new();
        for (name, size) in map_sizes(&cfg, ncpus) {
            loader.map_max_entries(name, size);
        }
        // With pins: what becomes of each pinned map (refused here, before
        // anything changes, when one cannot be carried over), and where
        // each of this build's maps is pinned: in place, or staged apart
        // when it replaces a pinned map of another layout.
        let plan = match pin_dir {
            Some(dir) => Some(plan_pins(&cfg, ncpus, dir)?),
            None => None,
        };
        let mut pins = Vec::new();
        if let (Some(dir), Some((plan, _))) = (pin_dir, &plan) {
            for (name, action) in &plan.actions {
                let sub = match action {
                    Action::Convert(_) | Action::Derive { .. } | Action::Fresh => upgrade::STAGE,
                    Action::Reuse | Action::Create => "maps",
                };
                pins.push((name.as_str(), dir.join(sub).join(name)));
            }
        }
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .override_global(names::SETTINGS, &settings, true)
            .load(object)?;
        let prog: &mut Xdp = program(&mut ebpf, names::PROG_LB)?;
        prog.load().map_err(|source| DataplaneError::Program {
            name: names::PROG_LB,
            source,
        })?;
        let icmp_progs = fill_tail_calls(&mut ebpf)?;

        let upgrade = match (pin_dir, plan) {
            (Some(dir), Some((plan, current))) if plan.migrates() => {
                Some(upgrade::stage(dir, &plan, current, ncpus as usize)?)
            }
            (Some(dir), Some((_, current))) => {
                Some(upgrade::Pending::record_only(dir, current, ncpus as usize))
            }
            _ => None,
        };

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
        let quic_servers: HashMap<MapData, QuicServerKey, u32> = take!(names::QUIC_SERVERS);
        // A pinned map a previous daemon left: the copy starts as it is.
        let quic_copy = quic_servers
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::QUIC_SERVERS))?;
        let rings_fd = super::batch::array_fd(&ebpf, names::RINGS)?;
        let direct4 = super::vip_direct::DirectSlots::map(&ebpf, names::VIP_DIRECT4)?;
        let direct6 = super::vip_direct::DirectSlots::map(&ebpf, names::VIP_DIRECT6)?;
        let prev_rings_fd = super::batch::array_fd(&ebpf, names::PREV_RINGS)?;
        Ok(Self {
            quic_servers,
            quic_copy,
            vips_map: take!(names::VIPS),
            addrs4: take!(names::VIP_ADDRS4),
            addrs6: take!(names::VIP_ADDRS6),
            backends_map: take!(names::BACKENDS),
            rings: take!(names::RINGS),
            prev_rings: take!(names::PREV_RINGS),
            rings_fd,
            prev_rings_fd,
            prev_until: take!(names::PREV_UNTIL),
            graces: Default::default(),
            vip_filter: take!(names::VIP_FILTER),
            direct4,
            direct6,
            flows: take!(names::FLOWS),
            flows4: take!(names::FLOWS4),
            vip_stats: take!(names::VIP_STATS),
            backend_stats: take!(names::BACKEND_STATS),
            handshakes: take!(names::HANDSHAKES),
            reasons: take!(names::REASONS),
            retired: take!(names::RETIRED),
            retired_copy: vec![Default::default(); cfg.max_vips as usize + 1],
            retired_ids: Default::default(),
            rcu_pending: true,
            rcu: super::retire::RcuWait::new()
                .map_err(|e| DataplaneError::RcuWait(e.to_string()))?,
            tx_ports: take!(names::TX_PORTS),
            nat: take!(names::NAT),
            nat_syn: take!(names::NAT_SYN),
            fullnat_flows: take!(names::FULLNAT_FLOWS),
            nat_state: take!(names::NAT_STATE),
            nat_sources4: take!(names::NAT_SOURCES4),
            nat_sources6: take!(names::NAT_SOURCES6),
            peer_flows: take!(names::PEER_FLOWS),
            flow_events: take!(names::FLOW_EVENTS),
            cluster_state: take!(names::CLUSTER_STATE),
            cluster_lost: take!(names::CLUSTER_LOST),
            trace_filter: take!(names::TRACE_FILTER),
            trace_state: take!(names::TRACE_STATE),
            trace_ring: take!(names::TRACE_RING),
            _icmp_progs: icmp_progs,
            upgrade,
            ebpf,
            tables: Tables::new(capacity(&cfg)).with_grace(cfg.table_grace),
            cfg,
            ncpus: ncpus as usize,
        })
    }

    /// Rebuilds the copy of the tables (VIPs, backend ids, slots) from maps
    /// a previous daemon left pinned. Nothing is written.
    fn adopt(&mut self) -> Result<(), DataplaneError> {
        let vips: Vec<(VipKey, VipMeta)> = self
            .vips_map
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VIPS))?;
        let mut backends = Vec::new();
        let mut markers = std::collections::BTreeMap::new();
        for id in 1..=self.cfg.max_backends {
            let b = self
                .backends_map
                .get(&id, 0)
                .map_err(map_err(names::BACKENDS))?;
            if b.flags & BACKEND_F_ACTIVE != 0 {
                backends.push((id, b));
            } else if let Some(v) = Self::marker_of(&b) {
                markers.insert(id, v);
            }
        }
        self.adopt_retired(markers)?;
        let mut adopted = Vec::with_capacity(vips.len());
        for (key, meta) in vips {
            let vip = VipAddr {
                addr: addr_from_bytes(key.addr, key.family),
                port: u16::from_be(key.port),
                proto: if key.proto == PROTO_TCP {
                    Proto::Tcp
                } else {
                    Proto::Udp
                },
            };
            let ring = self.adopt_ring(meta.ring_base, meta.ring_size)?;
            adopted.push((vip, meta, ring));
        }
        self.tables =
            Tables::adopt(capacity(&self.cfg), adopted, &backends).with_grace(self.cfg.table_grace);
        Ok(())
    }

    /// A VIP's Maglev table as `RINGS` holds it: one batched read (or, on
    /// a kernel without batch lookups, one read per slot).
    fn adopt_ring(&self, base: u32, size: u32) -> Result<Vec<u32>, DataplaneError> {
        use std::os::fd::AsFd as _;
        match super::batch::lookup_u32_array(self.rings_fd.as_fd(), base, size) {
            Ok(ring) => Ok(ring),
            Err(e) if super::batch::unsupported(&e) => (base..base + size)
                .map(|i| self.rings.get(&i, 0).map_err(map_err(names::RINGS)))
                .collect(),
            Err(io_error) => Err(DataplaneError::Map {
                name: names::RINGS,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error,
                }),
            }),
        }
    }

    /// Once the balancer is attached to every interface: ends an upgrade
    /// across layouts (what the old program added meanwhile carried over,
    /// the new maps pinned in the old ones' place, which frees them), and
    /// records this build's layout beside the pins. Nothing to do without
    /// pins.
    pub fn finish_pinned(&mut self) -> Result<(), DataplaneError> {
        match self.upgrade.take() {
            Some(u) => Ok(u.finish()?),
            None => Ok(()),
        }
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

    /// Loads `hola_probe` (checks through the VIP) with `egress_ifindex`,
    /// where a probe whose backend is reached through the balancer's own
    /// interface leaves; nothing is attached (BPF_PROG_TEST_RUN can run it).
    pub fn load_probe(
        &mut self,
        egress_ifindex: u32,
    ) -> Result<&mut aya::programs::SchedClassifier, DataplaneError> {
        let name = names::PROG_PROBE;
        let mut egress: aya::maps::Array<&mut MapData, u32> = self
            .ebpf
            .map_mut(names::PROBE_EGRESS)
            .ok_or(DataplaneError::MissingMap(names::PROBE_EGRESS))?
            .try_into()
            .map_err(|source| DataplaneError::Map {
                name: names::PROBE_EGRESS,
                source,
            })?;
        egress
            .set(0, egress_ifindex, 0)
            .map_err(map_err(names::PROBE_EGRESS))?;
        let p: &mut aya::programs::SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Program {
                name,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        if p.fd().is_err() {
            p.load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(p)
    }

    /// Loads `hola_probe` ([`Self::load_probe`]) and attaches it to the
    /// egress of `lo` (IPv4 probes leave by it) and of the balancer's
    /// interface `egress` (IPv6 probes: see `health::through`) as tcx
    /// links, which last as long as this daemon.
    pub fn attach_probe(
        &mut self,
        egress_ifindex: u32,
        egress: &str,
    ) -> Result<(), DataplaneError> {
        use aya::programs::{LinkOrder, TcAttachType, tc::TcAttachOptions};
        let name = names::PROG_PROBE;
        let p = self.load_probe(egress_ifindex)?;
        for iface in ["lo", egress] {
            p.attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map(drop)
            .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(())
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
}

/// Loads the programs `hola_lb` tail-calls and puts them in their slots of
/// `ICMP_PROGS` (which a pinned `ICMP_PROGS` of a previous daemon holds
/// until replaced); the map, held so that its slots stay filled.
fn fill_tail_calls(ebpf: &mut Ebpf) -> Result<ProgramArray<MapData>, DataplaneError> {
    let mut icmp_progs: ProgramArray<MapData> = {
        let m = ebpf
            .take_map(names::ICMP_PROGS)
            .ok_or(DataplaneError::MissingMap(names::ICMP_PROGS))?;
        m.try_into().map_err(|source| DataplaneError::Map {
            name: names::ICMP_PROGS,
            source,
        })?
    };
    for (slot, name) in TAIL_CALLED {
        let p: &mut Xdp = program(ebpf, name)?;
        p.load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let fd = p
            .fd()
            .map_err(|source| DataplaneError::Program { name, source })?;
        icmp_progs
            .set(slot, fd, 0)
            .map_err(map_err(names::ICMP_PROGS))?;
    }
    Ok(icmp_progs)
}

/// The `SETTINGS` global the program is loaded with.
pub(super) fn settings(cfg: &DataplaneConfig, ncpus: u32) -> Settings {
    let (v4, p4) = cfg.tunnel_src_v4;
    let (v6, p6) = cfg.tunnel_src_v6;
    Settings {
        tunnel_src_v4: v4.octets(),
        tunnel_src_v4_mask: mask_of(p4),
        tunnel_src_v6: v6.octets(),
        tunnel_src_v6_mask: mask_of(p6.saturating_sub(96)),
        new_flow_rate: cfg.new_flow_rate,
        nat_tcp_idle_ns: cfg.nat_tcp_idle.as_nanos() as u64,
        nat_udp_idle_ns: cfg.nat_udp_idle.as_nanos() as u64,
        nat_closed_linger_ns: cfg.nat_closed_linger.as_nanos() as u64,
        fullnat_src_v4: cfg.fullnat_src_v4.map_or([0; 4], |a| a.octets()),
        fullnat_port_lo: cfg.fullnat_ports.0,
        fullnat_port_span: ((u32::from(cfg.fullnat_ports.1) - u32::from(cfg.fullnat_ports.0) + 1)
            / ncpus)
            .min(u32::from(u16::MAX)) as u16,
        fullnat_src_v6: cfg.fullnat_src_v6.map_or([0; 16], |a| a.octets()),
    }
}

/// Every map's capacity, from the load-time settings.
pub(super) fn map_sizes(cfg: &DataplaneConfig, ncpus: u32) -> [(&'static str, u32); 34] {
    [
        (names::FLOWS4, flows4_capacity(cfg, ncpus)),
        (names::FLOWS, flows6_capacity(cfg, ncpus)),
        (names::VIPS, cfg.max_vips),
        (names::VIP_ADDRS4, cfg.max_vips),
        (names::VIP_ADDRS6, cfg.max_vips),
        (names::VIP_FILTER, lb_common::vip::VIP_FILTER_WORDS),
        (names::VIP_DIRECT4, lb_common::vip::VIP_DIRECT_SLOTS),
        (names::VIP_DIRECT6, lb_common::vip::VIP_DIRECT_SLOTS),
        (names::VIP_STATS, cfg.max_vips + 1),
        (names::BACKENDS, cfg.max_backends + 1),
        (names::BACKEND_STATS, cfg.max_backends + 1),
        (names::RINGS, cfg.ring_capacity),
        (names::PREV_RINGS, cfg.ring_capacity),
        (names::PREV_UNTIL, cfg.max_vips + 1),
        (names::FLOOD, 1),
        (names::GRACE_SYNS, grace_syns_capacity(cfg, ncpus)),
        (names::TX_PORTS, cfg.max_tx_ports),
        (names::REASONS, Reason::COUNT),
        (names::RETIRED, cfg.max_vips + 1),
        (names::NAT, cfg.nat_capacity),
        (names::NAT_SYN, nat_syn_capacity(cfg)),
        (names::FULLNAT_FLOWS, cfg.nat_capacity),
        (names::NAT_STATE, 1),
        (names::ICMP_PROGS, names::ICMP_PROGS_LEN),
        (names::HANDSHAKES, cfg.max_backends + 1),
        (names::NAT_SCRATCH, 1),
        (names::NAT_SOURCES4, cfg.max_backends),
        (names::NAT_SOURCES6, cfg.max_backends),
        (names::FULLNAT_CURSOR, 1),
        (names::PEER_FLOWS, cfg.peer_flows),
        (names::FLOW_EVENTS, FLOW_EVENTS_BYTES),
        (names::CLUSTER_STATE, 1),
        (names::CLUSTER_LOST, 1),
        // At most one server ID per backend.
        (names::QUIC_SERVERS, cfg.max_backends.max(1)),
    ]
}

/// `FLOWS4`' entries (IPv4 flows): `flow_capacity_per_cpu` per possible
/// CPU, what the setting has always meant.
pub fn flows4_capacity(cfg: &DataplaneConfig, ncpus: u32) -> u32 {
    cfg.flow_capacity_per_cpu.saturating_mul(ncpus)
}

/// `FLOWS`' entries (IPv6 flows): `flow_capacity_v6_per_cpu` per possible
/// CPU when it is set; else a quarter of `FLOWS4`'s, but at least
/// 4,096 per possible CPU or as many as `FLOWS4` when that is fewer (so a
/// small table, as tests and labs use, holds as many flows of either
/// family). An IPv6 entry takes 112 bytes of kernel memory, an IPv4 one
/// 88 (its key is 16 bytes, not 40): at a quarter, the two tables take 116
/// bytes per configured entry where the one table of `FlowKey`s they
/// replace took 112 (docs/benchmarks.md, "Kernel memory"), not 200 as two
/// full-size tables would.
pub fn flows6_capacity(cfg: &DataplaneConfig, ncpus: u32) -> u32 {
    if let Some(per_cpu) = cfg.flow_capacity_v6_per_cpu {
        return per_cpu.saturating_mul(ncpus);
    }
    let v4 = flows4_capacity(cfg, ncpus);
    (v4 / 4).max(v4.min(4096u32.saturating_mul(ncpus)))
}

/// `GRACE_SYNS`' entries: a sixteenth of `FLOWS`, at least 4,096 (only
/// SYNs during a grace period, in the slots a change moved, go there).
pub fn grace_syns_capacity(cfg: &DataplaneConfig, ncpus: u32) -> u32 {
    (flows4_capacity(cfg, ncpus) / 16).max(4096)
}

/// `NAT_SYN`'s entries: a quarter of `NAT`'s, at least 1,024 (handshakes
/// in progress are few beside established flows, and a flood of SYNs only
/// evicts other SYNs there).
pub fn nat_syn_capacity(cfg: &DataplaneConfig) -> u32 {
    (cfg.nat_capacity / 4).max(1024)
}

fn capacity(cfg: &DataplaneConfig) -> Capacity {
    Capacity {
        max_vips: cfg.max_vips,
        max_backends: cfg.max_backends,
        ring_capacity: cfg.ring_capacity,
    }
}

/// The plan for the maps pinned under `pin_dir` and this build's layout
/// (with `cfg`'s capacities), and the pin directories made ready. Maps
/// staged by an upgrade that did not finish are removed: the old maps are
/// still pinned in place, and this start copies them again.
fn plan_pins(
    cfg: &DataplaneConfig,
    ncpus: u32,
    dir: &Path,
) -> Result<(layout::Plan, layout::Layout), DataplaneError> {
    let current = upgrade::current_layout(cfg, ncpus)?;
    let plan = match upgrade::pinned_layout(dir)? {
        Some(old) => {
            let plan = layout::plan(&old, &current, layout::CONVERTERS)
                .map_err(upgrade::UpgradeError::from)?;
            if plan.migrates() {
                tracing::info!(from_build = %old.build, to_build = %current.build,
                    replaced = plan.actions.iter().filter(|(_, a)| matches!(a, Action::Convert(_) | Action::Fresh)).count(),
                    derived = plan.actions.iter().filter(|(_, a)| matches!(a, Action::Derive { .. })).count(),
                    created = plan.actions.iter().filter(|(_, a)| *a == Action::Create).count(),
                    "the pinned maps have another layout: upgrading them");
            }
            plan
        }
        None => layout::plan(
            &layout::Layout {
                build: String::new(),
                maps: Vec::new(),
            },
            &current,
            &[],
        )
        .map_err(upgrade::UpgradeError::from)?,
    };
    let mkdir = |d: PathBuf| {
        std::fs::create_dir_all(&d).map_err(|e| DataplaneError::PinDir { dir: d, source: e })
    };
    mkdir(dir.join("maps"))?;
    let stage = dir.join(upgrade::STAGE);
    if stage.exists() {
        for e in std::fs::read_dir(&stage).map_err(|e| DataplaneError::PinDir {
            dir: stage.clone(),
            source: e,
        })? {
            let p = e
                .and_then(|e| std::fs::remove_file(e.path()).map(|()| e.path()))
                .map_err(|e| DataplaneError::PinDir {
                    dir: stage.clone(),
                    source: e,
                })?;
            tracing::info!(pin = %p.display(), "removed a map staged by an upgrade that did not finish");
        }
    }
    if plan.migrates() {
        mkdir(stage)?;
    }
    Ok((plan, current))
}

/// Removes everything `hola run` pinned under `pin_dir` (links first, so the
/// program detaches, then maps). Returns what it removed.
pub fn unpin_all(pin_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    for sub in ["links", "maps", upgrade::STAGE] {
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

pub(super) fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_source_masks() {
        assert_eq!(mask_of(24), 0xff);
        assert_eq!(mask_of(32), 0);
        assert_eq!(mask_of(0), u32::MAX);
    }

    fn size_of(sizes: &[(&'static str, u32)], name: &str) -> u32 {
        sizes
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not in map_sizes"))
            .1
    }

    /// `PEER_FLOWS` takes one entry without `[cluster]`; with one, as many
    /// as `FLOWS4` (per-CPU capacity × possible CPUs) or `peer_flow_capacity`.
    #[test]
    fn peer_flows_sized_from_the_cluster() {
        let global = "[global]\ninterfaces = [\"eth0\"]\nflow_capacity_per_cpu = 1000\n";
        const BIG: &str = "[global]\ninterfaces = [\"eth0\"]\nflow_capacity_per_cpu = 100000\n";
        const MID: &str = "[global]\ninterfaces = [\"eth0\"]\nflow_capacity_per_cpu = 5000\n";
        let cluster = "[cluster]\nid = \"a\"\nkey = \"0123456789abcdef\"\n";
        let sizes = |text: &str, ncpus: u32| {
            let c = crate::config::parse(text, "hola.toml").unwrap_or_else(|e| panic!("{e}"));
            map_sizes(&DataplaneConfig::for_cpus(&c, ncpus), ncpus)
        };

        let alone = sizes(global, 4);
        assert_eq!(size_of(&alone, names::FLOWS4), 4000);
        // IPv6: a quarter, but at least 4,096 per CPU or all of FLOWS4's.
        assert_eq!(size_of(&alone, names::FLOWS), 4000);
        assert_eq!(size_of(&sizes(BIG, 4), names::FLOWS4), 400_000);
        assert_eq!(size_of(&sizes(BIG, 4), names::FLOWS), 100_000);
        assert_eq!(size_of(&sizes(MID, 2), names::FLOWS4), 10_000);
        assert_eq!(size_of(&sizes(MID, 2), names::FLOWS), 8192);
        assert_eq!(size_of(&alone, names::PEER_FLOWS), 1);
        // Set on its own: that many per CPU, more or fewer than FLOWS4.
        let v6 = |n: u32| format!("{BIG}flow_capacity_v6_per_cpu = {n}\n");
        assert_eq!(size_of(&sizes(&v6(300_000), 4), names::FLOWS), 1_200_000);
        assert_eq!(size_of(&sizes(&v6(300_000), 4), names::FLOWS4), 400_000);
        assert_eq!(size_of(&sizes(&v6(10), 2), names::FLOWS), 20);

        let default = sizes(&format!("{global}{cluster}"), 4);
        assert_eq!(size_of(&default, names::FLOWS), 4000);
        assert_eq!(size_of(&default, names::PEER_FLOWS), 4000);
        assert_eq!(
            size_of(&sizes(&format!("{global}{cluster}"), 2), names::PEER_FLOWS),
            2000
        );

        let set = sizes(&format!("{global}{cluster}peer_flow_capacity = 5000\n"), 4);
        assert_eq!(size_of(&set, names::FLOWS), 4000);
        assert_eq!(size_of(&set, names::PEER_FLOWS), 5000);

        // The defaults of the configuration file, and Dataplane's own.
        let d = DataplaneConfig::default();
        assert_eq!(d.peer_flows, super::super::PEER_FLOWS_OFF);
        assert_eq!(size_of(&map_sizes(&d, 2), names::PEER_FLOWS), 1);
        assert_eq!(
            size_of(&map_sizes(&d, 2), names::FLOWS4),
            2 * crate::config::defaults::FLOW_CAPACITY_PER_CPU
        );
        assert_eq!(
            size_of(&map_sizes(&d, 2), names::FLOWS),
            crate::config::defaults::FLOW_CAPACITY_PER_CPU / 2
        );
        // Every other map is sized the same with or without a cluster.
        for ((name, a), (_, b)) in alone.iter().zip(&set) {
            if *name != names::PEER_FLOWS {
                assert_eq!(a, b, "{name}");
            }
        }
    }
}
