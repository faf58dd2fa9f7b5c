//! The VIP, backend and Maglev maps (`VIPS`, `VIP_ADDRS4/6`, `BACKENDS`,
//! `RINGS`, `TX_PORTS`, `NAT_STATE`, `NAT_SOURCES4/6`, and the counters
//! zeroed for a new id): a plan's writes executed in order, and what the
//! tables say about VIPs, backends and slots.

use std::{net::IpAddr, os::fd::AsFd as _};

use aya::maps::PerCpuValues;
use lb_common::{AddrVips, BackendStats, FlowKey, HandshakeStats, VipKey, VipStats, maps as names};

use super::{Dataplane, DataplaneError, batch, ignore_missing, map_err, monotonic_ns};
use crate::{
    model::{BackendSpec, VipAddr, VipSpec, addr_bytes},
    reconcile::{NatState, Plan, PlanError, Planner, Write},
};

fn vip_key(v: &VipAddr) -> VipKey {
    let (addr, family) = addr_bytes(v.addr);
    VipKey {
        addr,
        port: v.port.to_be(),
        proto: v.proto.number(),
        family,
    }
}

/// How many writes from the start of `writes` are slot writes of one kind
/// (`Slot`, or `PrevSlot`): 0 when the first is neither.
fn slot_run(writes: &[Write]) -> usize {
    let same = |a: &Write, b: &Write| {
        matches!(
            (a, b),
            (Write::Slot { .. }, Write::Slot { .. })
                | (Write::PrevSlot { .. }, Write::PrevSlot { .. })
        )
    };
    match writes.first() {
        Some(w @ (Write::Slot { .. } | Write::PrevSlot { .. })) => {
            writes.iter().take_while(|o| same(w, o)).count()
        }
        _ => 0,
    }
}

impl Dataplane {
    /// Makes every write of `plan`, in order, and keeps its result. When a
    /// write fails the rest are not made, and the VIPs the plan touched are
    /// written in full by the next plan (the kernel may hold part of it).
    ///
    /// A run of slot writes to one map (`RINGS` or `PREV_RINGS`) is made in
    /// one batch: the order is kept, and nothing after a failed entry is
    /// written, as with one write at a time.
    pub fn apply(&mut self, plan: Plan) -> Result<(), DataplaneError> {
        let mut rest = &plan.writes[..];
        while let Some(first) = rest.first() {
            let run = slot_run(rest);
            let done = if run > 1 {
                self.write_slots(&rest[..run])
            } else {
                self.write(first)
            };
            if let Err(e) = done {
                self.tables.commit_failed(plan);
                return Err(e);
            }
            rest = &rest[run.max(1)..];
        }
        self.tables.commit(plan);
        self.sync_quic()
    }

    /// Writes a run of `Slot` (or of `PrevSlot`) writes in one batch; one
    /// at a time where the kernel has no batch update.
    fn write_slots(&mut self, run: &[Write]) -> Result<(), DataplaneError> {
        let (mut keys, mut values) = (Vec::with_capacity(run.len()), Vec::with_capacity(run.len()));
        for w in run {
            if let Write::Slot { index, id } | Write::PrevSlot { index, id } = w {
                keys.push(*index);
                values.push(*id);
            }
        }
        let (fd, name) = match run[0] {
            Write::Slot { .. } => (self.rings_fd.as_fd(), names::RINGS),
            _ => (self.prev_rings_fd.as_fd(), names::PREV_RINGS),
        };
        match batch::update_u32_array(fd, &keys, &values) {
            Ok(()) => Ok(()),
            Err(e) if batch::unsupported(&e) => run.iter().try_for_each(|w| self.write(w)),
            Err(io_error) => Err(DataplaneError::Map {
                name,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_batch",
                    io_error,
                }),
            }),
        }
    }

    /// Plans with `f` on the current tables, then applies.
    fn change(
        &mut self,
        f: impl FnOnce(&mut Planner<'_>) -> Result<(), PlanError>,
    ) -> Result<(), DataplaneError> {
        let mut p = Planner::new(&self.tables);
        f(&mut p)?;
        let plan = p.finish();
        self.apply(plan)
    }

    /// Adds a VIP with no backends (its packets are dropped and counted
    /// until backends are set).
    pub fn add_vip(&mut self, spec: VipSpec) -> Result<(), DataplaneError> {
        self.change(|p| p.add_vip(spec))
    }

    /// Removes a VIP, its table and its backends.
    pub fn remove_vip(&mut self, vip: &VipAddr) -> Result<(), DataplaneError> {
        self.change(|p| p.remove_vip(vip))
    }

    /// Makes `backends` the whole backend set of `vip`: new ones are added,
    /// missing ones removed, weights and next hops updated. Checked in full
    /// before anything is written.
    pub fn set_backends(
        &mut self,
        vip: &VipAddr,
        backends: &[BackendSpec],
    ) -> Result<(), DataplaneError> {
        self.change(|p| p.set_backends(vip, backends))
    }

    /// Lets the program redirect to `ifindex` (an interface the balancer is
    /// attached to): NAT replies leave through the interface their request
    /// came in on, which may be another one than the reply's.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        self.write(&Write::TxPort { ifindex })
    }

    fn write(&mut self, w: &Write) -> Result<(), DataplaneError> {
        match w {
            Write::Slot { index, id } => self
                .rings
                .set(*index, *id, 0)
                .map_err(map_err(names::RINGS)),
            Write::PrevSlot { index, id } => self
                .prev_rings
                .set(*index, *id, 0)
                .map_err(map_err(names::PREV_RINGS)),
            Write::PrevUntil { vip_id, grace } => {
                // The program compares it with bpf_ktime_get_coarse_ns:
                // CLOCK_MONOTONIC as of the last tick.
                let until = if grace.is_zero() {
                    0
                } else {
                    monotonic_ns().saturating_add(grace.as_nanos() as u64)
                };
                self.prev_until
                    .set(*vip_id, until, 0)
                    .map_err(map_err(names::PREV_UNTIL))?;
                if until == 0 {
                    self.graces.remove(vip_id);
                } else {
                    self.graces.insert(*vip_id, until);
                }
                Ok(())
            }
            Write::ZeroVipStats { id } => {
                self.fold_vip(*id)?;
                self.vip_stats
                    .set(*id, self.zeroed::<VipStats>(), 0)
                    .map_err(map_err(names::VIP_STATS))
            }
            Write::ZeroBackendStats { id } => {
                self.fold_backend(*id, true)?;
                self.backend_stats
                    .set(*id, self.zeroed::<BackendStats>(), 0)
                    .map_err(map_err(names::BACKEND_STATS))?;
                self.handshakes
                    .set(*id, self.zeroed::<HandshakeStats>(), 0)
                    .map_err(map_err(names::HANDSHAKES))
            }
            Write::Backend { id, entry } => self
                .backends_map
                .set(*id, *entry, 0)
                .map_err(map_err(names::BACKENDS)),
            // A marker of its VIP stays until its counters are folded
            // (`retire.rs`).
            Write::ClearBackend { id } => self.retire_backend(*id),
            Write::TxPort { ifindex } => self
                .tx_ports
                .insert(*ifindex, *ifindex, None, 0)
                .map_err(DataplaneError::TxPorts),
            Write::Vip { vip, meta } => self
                .vips_map
                .insert(vip_key(vip), *meta, 0)
                .map_err(map_err(names::VIPS)),
            // Gone already (a retry after a failed plan): nothing to do.
            Write::RemoveVip { vip } => {
                ignore_missing(self.vips_map.remove(&vip_key(vip))).map_err(map_err(names::VIPS))
            }
            Write::AddrVips { addr, entry } => self.write_addr_vips(*addr, entry.as_ref()),
            Write::Nat(state) => self.write_nat_state(state),
        }
    }

    /// Ends the grace periods that have passed: their `PREV_UNTIL` back to
    /// 0, so that the program no longer reads the clock for a SYN of the
    /// VIP (it stops using the previous table at the expiry anyway).
    /// Returns how many ended.
    pub fn end_grace_periods(&mut self) -> Result<usize, DataplaneError> {
        let now = monotonic_ns();
        let over: Vec<u32> = self
            .graces
            .iter()
            .filter(|&(_, &until)| until <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in &over {
            // (A newer change's period replaced the entry: not over yet.)
            self.prev_until
                .set(*id, 0, 0)
                .map_err(map_err(names::PREV_UNTIL))?;
            self.graces.remove(id);
        }
        Ok(over.len())
    }

    /// A per-CPU value of zeroes for every possible CPU.
    pub(super) fn zeroed<T: Default + Clone + aya::Pod>(&self) -> PerCpuValues<T> {
        PerCpuValues::try_from(vec![T::default(); self.ncpus]).expect("ncpus > 0")
    }

    fn write_addr_vips(
        &mut self,
        addr: IpAddr,
        entry: Option<&AddrVips>,
    ) -> Result<(), DataplaneError> {
        // The filter stays a superset of the addresses: a bit is set
        // before its entry appears, cleared after it is gone.
        if entry.is_some() {
            self.vip_filter_add(addr)?;
        }
        match addr {
            IpAddr::V4(a) => {
                let k = u32::from_ne_bytes(a.octets());
                match entry {
                    None => ignore_missing(self.addrs4.remove(&k)),
                    Some(e) => self.addrs4.insert(k, *e, 0),
                }
                .map_err(map_err(names::VIP_ADDRS4))?;
            }
            IpAddr::V6(a) => {
                let k = a.octets();
                match entry {
                    None => ignore_missing(self.addrs6.remove(&k)),
                    Some(e) => self.addrs6.insert(k, *e, 0),
                }
                .map_err(map_err(names::VIP_ADDRS6))?;
            }
        }
        // The direct slot follows the hash map (see `vip_direct`).
        self.vip_direct_update(addr, entry)?;
        if entry.is_none() {
            self.vip_filter_remove(addr)?;
        }
        Ok(())
    }

    /// Makes `NAT_SOURCES*` hold exactly `state.sources` (read back and
    /// diffed: the sets are kernel state the copy may not know, after an
    /// adoption), then `NAT_STATE` say whether any VIP translates.
    fn write_nat_state(&mut self, state: &NatState) -> Result<(), DataplaneError> {
        let mut have4 = Vec::new();
        for k in self.nat_sources4.keys() {
            have4.push(k.map_err(map_err(names::NAT_SOURCES4))?);
        }
        let mut have6 = Vec::new();
        for k in self.nat_sources6.keys() {
            have6.push(k.map_err(map_err(names::NAT_SOURCES6))?);
        }
        for a in &state.sources {
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
            if !state.sources.contains(&IpAddr::from(k.to_ne_bytes())) {
                ignore_missing(self.nat_sources4.remove(&k))
                    .map_err(map_err(names::NAT_SOURCES4))?;
            }
        }
        for k in have6 {
            if !state.sources.contains(&IpAddr::from(k)) {
                ignore_missing(self.nat_sources6.remove(&k))
                    .map_err(map_err(names::NAT_SOURCES6))?;
            }
        }
        self.nat_state
            .set(0, u32::from(state.any), 0)
            .map_err(map_err(names::NAT_STATE))
    }

    /// The VIPs and their backends as currently programmed.
    pub fn vips(&self) -> impl Iterator<Item = (&VipSpec, Vec<BackendSpec>)> {
        self.tables
            .vips()
            .map(|v| (&v.spec, v.backends.iter().map(|b| b.spec).collect()))
    }

    /// The id of `addr` among `vip`'s backends.
    pub fn backend_id(&self, vip: &VipAddr, addr: IpAddr) -> Option<u32> {
        self.tables
            .vip(vip)?
            .backends
            .iter()
            .find(|b| b.spec.addr == addr)
            .map(|b| b.id)
    }

    /// The VIP and address of the backend with id `id`.
    pub fn backend_of(&self, id: u32) -> Option<(VipAddr, IpAddr)> {
        self.tables.backend_by_id(id)
    }

    /// The address of backend `id` if it belongs to `vip`.
    pub fn backend_by_id(&self, vip: &VipAddr, id: u32) -> Option<IpAddr> {
        self.tables.vip(vip)?.backend_addr(id)
    }

    /// The backend a VIP's Maglev table gives a flow, without the flow table.
    pub fn maglev_backend(&self, vip: &VipAddr, key: &FlowKey) -> Option<IpAddr> {
        self.maglev_slot(vip, key)?.1
    }

    /// The Maglev slot a flow hashes to in `vip`'s table, and its backend.
    pub fn maglev_slot(&self, vip: &VipAddr, key: &FlowKey) -> Option<(u32, Option<IpAddr>)> {
        let state = self.tables.vip(vip)?;
        let hash = lb_common::hash::flow_hash(key, state.spec.src_hash);
        let slot = hash % state.spec.table_size;
        Some((slot, state.backend_addr(state.ring[slot as usize])))
    }

    /// `vip`'s Maglev table as the kernel holds it (slot → backend
    /// address), read back from the `RINGS` map.
    pub fn kernel_table(&self, vip: &VipAddr) -> Result<Vec<Option<IpAddr>>, DataplaneError> {
        let state = self.tables.vip(vip).ok_or(PlanError::NoSuchVip(*vip))?;
        let mut out = Vec::with_capacity(state.spec.table_size as usize);
        for i in 0..state.spec.table_size {
            let id = self
                .rings
                .get(&(state.ring_base + i), 0)
                .map_err(map_err(names::RINGS))?;
            out.push(state.backend_addr(id));
        }
        Ok(out)
    }
}
