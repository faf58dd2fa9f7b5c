//! The difference between what the kernel's tables hold and what they should
//! hold, as an ordered list of typed map writes. Pure: [`Tables`] is
//! userspace's copy of the VIP, backend and Maglev maps; a [`Planner`]
//! works on an overlay of it and never touches the kernel. The data plane
//! executes a [`Plan`] in order and then commits it to its copy.
//!
//! The order of the writes is what keeps a packet from ever seeing a
//! half-written state: a backend's entry is written before any Maglev slot
//! names it and cleared only after no slot does; a new VIP's table is
//! zeroed before the VIP entry points to it (its new flows are dropped and
//! counted until its slots are written, right after); a table change
//! writes only the slots whose owner changed (each slot is one atomic
//! 32-bit store). A VIP whose wanted state equals its copy gets no write
//! at all.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use lb_common::{
    AddrVips, Backend, VipMeta, VipSlot,
    vip::{ADDR_F_OVERFLOW, ADDR_SLOTS},
};

use super::{
    alloc::{IdPool, RingSpace},
    tables::{BackendState, Tables, VipState, backend_entry},
};
use crate::{
    maglev::{self, MaglevBackend, MaglevError},
    model::{BackendSpec, VipAddr, VipSpec},
};

/// A wanted change the tables cannot take: refused before anything is
/// written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("VIP {0} already exists")]
    VipExists(VipAddr),
    #[error("VIP {0} does not exist")]
    NoSuchVip(VipAddr),
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

/// One map write. The data plane executes them in the plan's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// `RINGS[index] = id` (0: no backend).
    Slot { index: u32, id: u32 },
    /// `PREV_RINGS[index] = id`: the slot's owner before the VIP's last
    /// table change (0: that change left the slot as it was).
    PrevSlot { index: u32, id: u32 },
    /// `PREV_UNTIL[vip_id]` = now + `grace` on the kernel's monotonic
    /// clock, when the write is made (0 for a zero `grace`: no previous
    /// table).
    PrevUntil { vip_id: u32, grace: Duration },
    /// `VIP_STATS[id]` zeroed on every CPU (a new VIP).
    ZeroVipStats { id: u32 },
    /// `BACKEND_STATS[id]` and `HANDSHAKES[id]` zeroed (a new backend),
    /// a removed backend's counters there folded into `RETIRED` first.
    ZeroBackendStats { id: u32 },
    /// `BACKENDS[id] = entry`.
    Backend { id: u32, entry: Backend },
    /// `BACKENDS[id]` emptied: no slot names it any more. (The data plane
    /// leaves a marker of its VIP there until the id is handed out again,
    /// so that its counters stay its VIP's: `dataplane/retire.rs`.)
    ClearBackend { id: u32 },
    /// `TX_PORTS[ifindex] = ifindex`: a backend's egress interface.
    TxPort { ifindex: u32 },
    /// `VIPS[vip] = meta`.
    Vip { vip: VipAddr, meta: VipMeta },
    /// `VIPS[vip]` deleted.
    RemoveVip { vip: VipAddr },
    /// `VIP_ADDRS4/6[addr]` replaced whole (`None`: deleted).
    AddrVips {
        addr: IpAddr,
        entry: Option<AddrVips>,
    },
    /// `NAT_STATE` and the `NAT_SOURCES*` sets made these.
    Nat(NatState),
}

/// Whether any VIP translates (only then does the program look up replies),
/// and from which addresses replies come: every backend of a NAT VIP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatState {
    pub any: bool,
    pub sources: BTreeSet<IpAddr>,
}

/// The writes that make a VIP's `PREV_RINGS` slots the table it holds
/// before `next` is written (only the slots `next` changes name an owner;
/// the others hold 0, "as now"), and its `PREV_UNTIL` expire `grace` from
/// now. Only the slots that differ from what they hold are written; none
/// at all when `next` changes no slot, or without a grace period.
///
/// When no moved slot had an owner (the VIP had no backend: its first
/// table, or its first after all its backends went), no flow can have
/// been placed by the table being replaced, so there is nothing to keep:
/// the VIP's grace period is ended instead (one `PREV_UNTIL` write, which
/// also ends an earlier period, as a period of empty slots would), and the
/// program's miss path skips the clock and `PREV_RINGS` reads it would
/// otherwise pay for every TCP miss until the period ran out.
fn previous_table(state: &mut VipState, next: &[u32], grace: Duration) -> Vec<Write> {
    let moved = state.ring.iter().zip(next).any(|(have, want)| have != want);
    if grace.is_zero() || !moved {
        return Vec::new();
    }
    let want: Vec<u32> = state
        .ring
        .iter()
        .zip(next)
        .map(|(&have, &want)| if have != want { have } else { 0 })
        .collect();
    if want.iter().all(|&id| id == 0) {
        // The slots keep what they hold (`state.prev` still says what that
        // is): they are not read while `PREV_UNTIL` is 0.
        return vec![Write::PrevUntil {
            vip_id: state.id,
            grace: Duration::ZERO,
        }];
    }
    let mut writes: Vec<Write> = want
        .iter()
        .enumerate()
        .filter(|&(i, &id)| state.dirty || state.prev.as_ref().is_none_or(|p| p[i] != id))
        .map(|(i, &id)| Write::PrevSlot {
            index: state.ring_base + i as u32,
            id,
        })
        .collect();
    writes.push(Write::PrevUntil {
        vip_id: state.id,
        grace,
    });
    state.prev = Some(want);
    writes
}

/// Writes to make, and the copy of the tables once they are made.
#[derive(Debug)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub(super) changed: BTreeMap<VipAddr, Option<VipState>>,
    pub(super) vip_ids: IdPool,
    pub(super) backend_ids: IdPool,
    pub(super) ring_space: RingSpace,
    pub(super) nat: Option<NatState>,
}

impl Plan {
    /// The VIPs the plan writes anything of (added, changed or removed).
    pub fn vips(&self) -> impl Iterator<Item = &VipAddr> {
        self.changed.keys()
    }
}

/// A VIP as it should be: its spec and its backends with the weights,
/// health and next hops the data plane is to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredVip {
    pub spec: VipSpec,
    pub backends: Vec<BackendSpec>,
}

/// The writes that make `tables` hold `desired` and nothing else. VIPs that
/// already hold what is wanted get no write; a VIP whose mode, hash or
/// table size changes is removed and added again.
pub fn plan(tables: &Tables, desired: &BTreeMap<VipAddr, DesiredVip>) -> Result<Plan, PlanError> {
    let mut p = Planner::new(tables);
    for (vip, have) in &tables.vips {
        if desired.get(vip).is_none_or(|d| d.spec != have.spec) {
            p.remove_vip(vip)?;
        }
    }
    for (vip, d) in desired {
        if p.vip(vip).is_none() {
            p.add_vip(d.spec)?;
        }
        p.set_backends(vip, &d.backends)?;
    }
    if p.nat_now().is_none() {
        // Adopted maps, or a plan that failed part-way: write it once.
        p.write_nat_state();
    }
    Ok(p.finish())
}

/// Builds a plan step by step on an overlay of the tables: a VIP is copied
/// into the overlay when first changed, so a plan about one VIP costs
/// nothing for the others.
pub struct Planner<'a> {
    base: &'a Tables,
    changed: BTreeMap<VipAddr, Option<VipState>>,
    vip_ids: IdPool,
    backend_ids: IdPool,
    ring_space: RingSpace,
    writes: Vec<Write>,
}

impl<'a> Planner<'a> {
    pub fn new(base: &'a Tables) -> Self {
        Planner {
            base,
            changed: BTreeMap::new(),
            vip_ids: base.vip_ids.clone(),
            backend_ids: base.backend_ids.clone(),
            ring_space: base.ring_space.clone(),
            writes: Vec::new(),
        }
    }

    fn vip(&self, vip: &VipAddr) -> Option<&VipState> {
        match self.changed.get(vip) {
            Some(s) => s.as_ref(),
            None => self.base.vips.get(vip),
        }
    }

    fn vip_mut(&mut self, vip: &VipAddr) -> Option<&mut VipState> {
        if !self.changed.contains_key(vip) {
            let s = self.base.vips.get(vip)?.clone();
            self.changed.insert(*vip, Some(s));
        }
        self.changed.get_mut(vip)?.as_mut()
    }

    /// Every VIP as the plan leaves it.
    fn all_vips(&self) -> impl Iterator<Item = &VipState> {
        let base = self
            .base
            .vips
            .iter()
            .filter(|(k, _)| !self.changed.contains_key(k))
            .map(|(_, v)| v);
        base.chain(self.changed.values().flatten())
    }

    /// Adds a VIP with no backends (its packets are dropped and counted
    /// until backends are set): a zeroed table first, then the VIP entry.
    pub fn add_vip(&mut self, spec: VipSpec) -> Result<(), PlanError> {
        let vip = spec.vip;
        if self.vip(&vip).is_some() {
            return Err(PlanError::VipExists(vip));
        }
        if !maglev::is_prime(spec.table_size) {
            return Err(PlanError::Maglev {
                vip,
                source: MaglevError::NotPrime(spec.table_size),
            });
        }
        let id = self.vip_ids.alloc().ok_or(PlanError::Full {
            what: "another VIP",
            capacity: self.base.capacity.max_vips,
            setting: "max_vips",
        })?;
        let Some(ring_base) = self.ring_space.alloc(spec.table_size) else {
            return Err(PlanError::Full {
                what: "another Maglev table",
                capacity: self.base.capacity.ring_capacity,
                setting: "ring_capacity",
            });
        };
        // The slots may hold ids from a VIP that had this region before.
        self.writes
            .extend((0..spec.table_size).map(|i| Write::Slot {
                index: ring_base + i,
                id: 0,
            }));
        self.writes.push(Write::ZeroVipStats { id });
        let mut prev = None;
        if !self.base.grace.is_zero() {
            // Nor may its previous table name another VIP's backends.
            self.writes
                .extend((0..spec.table_size).map(|i| Write::PrevSlot {
                    index: ring_base + i,
                    id: 0,
                }));
            self.writes.push(Write::PrevUntil {
                vip_id: id,
                grace: Duration::ZERO,
            });
            prev = Some(vec![0; spec.table_size as usize]);
        }
        let state = VipState {
            spec,
            id,
            ring_base,
            ring: vec![0; spec.table_size as usize],
            prev,
            backends: Vec::new(),
            dirty: false,
        };
        self.writes.push(Write::Vip {
            vip,
            meta: state.meta(),
        });
        self.changed.insert(vip, Some(state));
        self.write_addr_vips(vip.addr);
        Ok(())
    }

    /// Removes a VIP: its table emptied and its backends cleared first,
    /// then its entry.
    pub fn remove_vip(&mut self, vip: &VipAddr) -> Result<(), PlanError> {
        if self.vip(vip).is_none() {
            return Err(PlanError::NoSuchVip(*vip));
        }
        self.set_backends(vip, &[])?;
        let state = self
            .vip_mut(vip)
            .map(|s| (s.id, s.ring_base, s.spec.table_size))
            .expect("checked above");
        self.changed.insert(*vip, None);
        self.writes.push(Write::RemoveVip { vip: *vip });
        self.write_addr_vips(vip.addr);
        self.vip_ids.free(state.0);
        self.ring_space.free(state.1, state.2);
        Ok(())
    }

    /// Makes `backends` the whole backend set of `vip`: new ones are added,
    /// missing ones removed, weights, health and next hops updated. Checked
    /// in full before any write is planned; nothing at all when the VIP
    /// already holds exactly this.
    pub fn set_backends(
        &mut self,
        vip: &VipAddr,
        backends: &[BackendSpec],
    ) -> Result<(), PlanError> {
        let state = self.vip(vip).ok_or(PlanError::NoSuchVip(*vip))?;
        let unchanged = !state.dirty
            && state.backends.len() == backends.len()
            && state
                .backends
                .iter()
                .zip(backends)
                .all(|(b, w)| b.spec == *w);
        if unchanged {
            return Ok(());
        }
        for (i, b) in backends.iter().enumerate() {
            if b.addr.is_ipv4() != vip.addr.is_ipv4() {
                return Err(PlanError::FamilyMismatch {
                    vip: *vip,
                    backend: b.addr,
                });
            }
            if backends[..i].iter().any(|o| o.addr == b.addr) {
                return Err(PlanError::DuplicateBackend {
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
            return Err(PlanError::Full {
                what: "more backends",
                capacity: self.base.capacity.max_backends,
                setting: "max_backends",
            });
        }
        let old = state.backends.clone();
        let (vip_id, dirty, table_size) = (state.id, state.dirty, state.spec.table_size);
        // Ids: kept for backends that stay, fresh for new ones.
        let next: Vec<BackendState> = backends
            .iter()
            .map(|b| BackendState {
                id: match old.iter().find(|o| o.spec.addr == b.addr) {
                    Some(o) => o.id,
                    None => self
                        .backend_ids
                        .alloc()
                        .expect("availability checked above"),
                },
                spec: *b,
            })
            .collect();
        let maglev_input: Vec<MaglevBackend> = next
            .iter()
            .map(|b| MaglevBackend {
                id: b.id,
                key: maglev::backend_key(b.spec.addr, vip.port),
                // A down backend takes no new flow, whatever its weight.
                weight: if b.spec.up { b.spec.weight } else { 0 },
            })
            .collect();
        let table = match maglev::build(&maglev_input, table_size) {
            Ok(t) => t,
            Err(source) => {
                for b in next.iter().filter(|b| !old.iter().any(|o| o.id == b.id)) {
                    self.backend_ids.free(b.id);
                }
                return Err(PlanError::Maglev { vip: *vip, source });
            }
        };
        // 1. Backend entries (new and changed) before any slot names them.
        for b in &next {
            let before = old.iter().find(|o| o.id == b.id);
            if before.is_none() {
                self.writes.push(Write::ZeroBackendStats { id: b.id });
            }
            let entry = backend_entry(&b.spec, vip_id);
            if dirty || before.is_none_or(|o| backend_entry(&o.spec, vip_id) != entry) {
                self.writes.push(Write::Backend { id: b.id, entry });
                if let Some(nh) = b.spec.nexthop
                    && nh.ifindex != 0
                {
                    self.writes.push(Write::TxPort {
                        ifindex: nh.ifindex,
                    });
                }
            }
        }
        // 2. Only the slots whose owner changed, after the previous table
        // that names their old owners (and its new expiry).
        let grace = self.base.grace;
        let state = self.vip_mut(vip).expect("checked above");
        let prev = previous_table(state, &table, grace);
        let mut slots = prev;
        for (i, (&want, have)) in table.iter().zip(state.ring.iter_mut()).enumerate() {
            if dirty || want != *have {
                slots.push(Write::Slot {
                    index: state.ring_base + i as u32,
                    id: want,
                });
                *have = want;
            }
        }
        state.backends = next;
        state.dirty = false;
        let is_nat = state.spec.mode.is_nat();
        let meta = state.meta();
        self.writes.extend(slots);
        if dirty {
            // The VIP's own entries may be missing too.
            self.writes.push(Write::Vip { vip: *vip, meta });
            self.write_addr_vips(vip.addr);
        }
        // 3. Removed backends: no slot names them any more.
        let kept: Vec<u32> = self
            .vip(vip)
            .map(|s| s.backends.iter().map(|b| b.id).collect())
            .unwrap_or_default();
        for o in old.iter().filter(|o| !kept.contains(&o.id)) {
            self.writes.push(Write::ClearBackend { id: o.id });
            self.backend_ids.free(o.id);
        }
        if is_nat {
            self.write_nat_state();
        }
        Ok(())
    }

    /// Rewrites the `VIP_ADDRS*` entry of `addr` from the VIPs there (one
    /// whole-value update, so the program sees the old set or the new one).
    /// All-ports VIPs take slots first, so an overflowing address still
    /// answers them from the slots.
    fn write_addr_vips(&mut self, addr: IpAddr) {
        let mut here: Vec<&VipState> = self
            .all_vips()
            .filter(|v| v.spec.vip.addr == addr)
            .collect();
        here.sort_by_key(|v| (v.spec.vip.port != 0, v.spec.vip.port, v.spec.vip.proto));
        let entry = (!here.is_empty()).then(|| {
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
            entry
        });
        self.writes.push(Write::AddrVips { addr, entry });
        self.write_nat_state();
    }

    /// The NAT state the plan leaves, written when it differs from the one
    /// in the kernel (or that is not known).
    fn write_nat_state(&mut self) {
        let nat_vips = || self.all_vips().filter(|v| v.spec.mode.is_nat());
        let want = NatState {
            any: nat_vips().next().is_some(),
            sources: nat_vips()
                .flat_map(|v| v.backends.iter().map(|b| b.spec.addr))
                .collect(),
        };
        if self.nat_now().as_ref() != Some(&want) {
            self.writes.push(Write::Nat(want));
        }
    }

    /// The NAT state once the writes planned so far are made.
    fn nat_now(&self) -> Option<NatState> {
        self.writes
            .iter()
            .rev()
            .find_map(|w| match w {
                Write::Nat(n) => Some(Some(n.clone())),
                _ => None,
            })
            .unwrap_or_else(|| self.base.nat.clone())
    }

    pub fn finish(self) -> Plan {
        let nat = self.nat_now();
        Plan {
            writes: self.writes,
            changed: self.changed,
            vip_ids: self.vip_ids,
            backend_ids: self.backend_ids,
            ring_space: self.ring_space,
            nat,
        }
    }
}
