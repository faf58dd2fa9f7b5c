//! Userspace's copy of the kernel's VIP, backend and Maglev maps, with the
//! allocators of their index spaces, and how entries are encoded: what a
//! [`Plan`] is computed against and committed to.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use lb_common::{
    Backend, VipMeta,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_DOWN, BACKEND_F_NEXTHOP},
    vip::{
        VIP_F_QUIC, VIP_F_SRC_HASH, VIP_MODE_DSR, VIP_MODE_FULLNAT, VIP_MODE_MASK, VIP_MODE_NAT,
        VIP_MODE_TUNNEL,
    },
};

use super::{
    alloc::{IdPool, RingSpace},
    plan::{NatState, Plan},
};
use crate::model::{BackendSpec, Mode, Nexthop, VipAddr, VipSpec, addr_bytes, addr_from_bytes};

/// Sizes of the shared index spaces, from the load-time configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub max_vips: u32,
    pub max_backends: u32,
    pub ring_capacity: u32,
}

/// A backend as the kernel holds it, with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendState {
    pub id: u32,
    pub spec: BackendSpec,
}

/// A VIP as the kernel holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipState {
    pub spec: VipSpec,
    pub id: u32,
    pub ring_base: u32,
    /// What the kernel's slots hold: diffed against on every change.
    pub ring: Vec<u32>,
    /// What the VIP's `PREV_RINGS` slots hold (the owner before the last
    /// change of each slot that change moved, else 0); `None` when not
    /// known (adopted maps, or no grace period): then a change writes
    /// them all.
    pub prev: Option<Vec<u32>>,
    pub backends: Vec<BackendState>,
    /// A plan for this VIP failed part-way: the kernel may hold anything
    /// between the old and the new state, so every entry and slot is
    /// written again next time.
    pub dirty: bool,
}

impl VipState {
    pub fn meta(&self) -> VipMeta {
        let mode = match self.spec.mode {
            Mode::Dsr => VIP_MODE_DSR,
            Mode::Tunnel => VIP_MODE_TUNNEL,
            Mode::Nat => VIP_MODE_NAT,
            Mode::FullNat => VIP_MODE_FULLNAT,
        };
        let flags =
            mode | if self.spec.src_hash {
                VIP_F_SRC_HASH
            } else {
                0
            } | if self.spec.quic { VIP_F_QUIC } else { 0 };
        VipMeta {
            vip_id: self.id,
            flags,
            ring_base: self.ring_base,
            ring_size: self.spec.table_size,
        }
    }

    /// The address of backend `id`, if it is one of this VIP's.
    pub fn backend_addr(&self, id: u32) -> Option<IpAddr> {
        self.backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.spec.addr)
    }
}

/// The mode a VIP entry's flags carry.
pub fn mode_of(meta: &VipMeta) -> Mode {
    match meta.flags & VIP_MODE_MASK {
        VIP_MODE_TUNNEL => Mode::Tunnel,
        VIP_MODE_NAT => Mode::Nat,
        VIP_MODE_FULLNAT => Mode::FullNat,
        _ => Mode::Dsr,
    }
}

/// The `BACKENDS` entry of a backend of VIP `vip_id`. The weight is not in
/// it: weights live only in the Maglev table they shape.
pub fn backend_entry(spec: &BackendSpec, vip_id: u32) -> Backend {
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

/// What a `BACKENDS` entry says of its backend (weight 0: not in the
/// kernel; the owner's first plan applies the configured weights, which
/// rebuild the same table).
pub fn spec_of_entry(b: &Backend) -> BackendSpec {
    BackendSpec {
        addr: addr_from_bytes(b.addr, b.family),
        weight: 0,
        nexthop: (b.flags & BACKEND_F_NEXTHOP != 0).then_some(Nexthop {
            dmac: b.dmac,
            smac: b.smac,
            ifindex: b.ifindex,
        }),
        up: b.flags & BACKEND_F_DOWN == 0,
        port: u16::from_be(b.port),
        // Not in the entry: `QUIC_SERVERS` holds it (read back on its own).
        server_id: 0,
    }
}

/// Userspace's copy of the kernel's VIP, backend and Maglev maps, with the
/// allocators of their index spaces.
#[derive(Clone, Debug)]
pub struct Tables {
    pub(super) vips: BTreeMap<VipAddr, VipState>,
    pub(super) vip_ids: IdPool,
    pub(super) backend_ids: IdPool,
    pub(super) ring_space: RingSpace,
    pub(super) capacity: Capacity,
    /// The NAT state last written; `None` when not known (adopted maps).
    pub(super) nat: Option<NatState>,
    /// How long a VIP keeps its previous Maglev table after a change (0:
    /// no previous table is kept).
    pub(super) grace: Duration,
}

impl Tables {
    /// The copy of freshly created, empty maps.
    pub fn new(capacity: Capacity) -> Self {
        Tables {
            vips: BTreeMap::new(),
            vip_ids: IdPool::new(capacity.max_vips),
            backend_ids: IdPool::new(capacity.max_backends),
            ring_space: RingSpace::new(capacity.ring_capacity),
            capacity,
            nat: Some(NatState::default()),
            grace: Duration::ZERO,
        }
    }

    /// The same tables, each VIP keeping its previous Maglev table for
    /// `grace` after a change.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The copy of maps a previous daemon left: its VIPs (with their
    /// slots, read back) and its active backend entries by id.
    pub fn adopt(
        capacity: Capacity,
        vips: Vec<(VipAddr, VipMeta, Vec<u32>)>,
        backends: &[(u32, Backend)],
    ) -> Self {
        let mut t = Tables::new(capacity);
        t.nat = None;
        for (vip, meta, ring) in vips {
            t.vip_ids.mark(meta.vip_id);
            t.ring_space.reserve(meta.ring_base, meta.ring_size);
            let mut state = VipState {
                spec: VipSpec {
                    vip,
                    mode: mode_of(&meta),
                    src_hash: meta.flags & VIP_F_SRC_HASH != 0,
                    table_size: meta.ring_size,
                    quic: meta.flags & VIP_F_QUIC != 0,
                },
                id: meta.vip_id,
                ring_base: meta.ring_base,
                ring,
                prev: None,
                backends: Vec::new(),
                dirty: false,
            };
            for (id, b) in backends.iter().filter(|(_, b)| b.vip_id == meta.vip_id) {
                t.backend_ids.mark(*id);
                state.backends.push(BackendState {
                    id: *id,
                    spec: spec_of_entry(b),
                });
            }
            t.vips.insert(vip, state);
        }
        // Active entries of no VIP (left by a daemon that stopped part-way
        // through a change) keep their ids out of use.
        for (id, _) in backends {
            t.backend_ids.mark(*id);
        }
        t
    }

    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    pub fn vip(&self, vip: &VipAddr) -> Option<&VipState> {
        self.vips.get(vip)
    }

    /// Whether a plan failed part-way for a VIP that has not been written
    /// in full since.
    pub fn has_dirty(&self) -> bool {
        self.vips.values().any(|v| v.dirty)
    }

    pub fn vips(&self) -> impl Iterator<Item = &VipState> {
        self.vips.values()
    }

    /// The VIP and address of the backend with id `id`.
    pub fn backend_by_id(&self, id: u32) -> Option<(VipAddr, IpAddr)> {
        self.vips
            .iter()
            .find_map(|(vip, v)| v.backend_addr(id).map(|a| (*vip, a)))
    }

    /// Takes a plan that was written in full.
    pub fn commit(&mut self, plan: Plan) {
        self.take(plan, false);
    }

    /// Takes a plan whose writes stopped part-way: the VIPs it touched are
    /// written in full by the next plan, whatever it wants of them.
    pub fn commit_failed(&mut self, plan: Plan) {
        self.take(plan, true);
    }

    fn take(&mut self, plan: Plan, failed: bool) {
        for (vip, state) in plan.changed {
            match state {
                Some(mut s) => {
                    s.dirty |= failed;
                    self.vips.insert(vip, s);
                }
                None => {
                    self.vips.remove(&vip);
                }
            }
        }
        if failed {
            // Ids the plan freed may still be named by the kernel's
            // slots: they stay out of use (as before the plan).
            let mut ids = plan.backend_ids;
            ids.keep_used(&self.backend_ids);
            self.backend_ids = ids;
            let mut ids = plan.vip_ids;
            ids.keep_used(&self.vip_ids);
            self.vip_ids = ids;
        } else {
            self.vip_ids = plan.vip_ids;
            self.backend_ids = plan.backend_ids;
        }
        self.ring_space = plan.ring_space;
        self.nat = if failed { None } else { plan.nat };
    }
}
