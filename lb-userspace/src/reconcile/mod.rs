//! Reconcile: from what is wanted to the map writes that make it so. Pure:
//! no kernel, no clock of its own, no I/O.
//!
//! - [`desired`]: the configuration, the checks' state and the next hops
//!   known → each VIP's spec and its backends' weights, health and next hops;
//! - [`plan`](plan::plan): userspace's copy of the kernel tables + that →
//!   the ordered writes, VIP by VIP, touching only what differs;
//! - [`tables`]: that copy of the kernel tables, and how entries are
//!   encoded;
//! - [`alloc`]: the id and ring-space allocators the plan uses;
//! - [`moves`]: what a plan would move (slots, flows), for a preview.
//!
//! The data plane executes a plan; nothing else decides what it writes.

pub mod alloc;
pub mod moves;
pub mod plan;
pub mod tables;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

pub use self::{
    plan::{DesiredVip, NatState, Plan, PlanError, Planner, Write, plan},
    tables::{BackendState, Capacity, Tables, VipState, backend_entry},
};
use crate::{
    config::{Config, HashKind, VipConfig},
    health::Checks,
    model::{BackendSpec, Nexthop, VipAddr, VipSpec},
};

/// The spec a configured VIP gets in the data plane.
pub fn vip_spec(config: &Config, v: &VipConfig) -> VipSpec {
    VipSpec {
        vip: v.key(),
        mode: v.mode.into(),
        src_hash: v.hash == HashKind::Source,
        table_size: config.table_size(v),
        quic: v.quic,
    }
}

/// What the data plane should hold: every configured VIP with each of its
/// backends at the weight and health the checks give it, and its next hop
/// when known (a backend without one is installed without, its packets
/// dropped and counted, until it resolves).
pub fn desired(
    config: &Config,
    checks: &Checks,
    nexthops: &HashMap<IpAddr, Nexthop>,
) -> BTreeMap<VipAddr, DesiredVip> {
    config
        .vips
        .iter()
        .map(|v| {
            let spec = vip_spec(config, v);
            let backends = v
                .backends
                .iter()
                .zip(checks.effective(v))
                .map(|(b, (weight, up))| BackendSpec {
                    addr: b.address,
                    weight,
                    nexthop: nexthops.get(&b.address).copied(),
                    up,
                    port: b.port.unwrap_or(0),
                    server_id: if v.quic { b.server_id.unwrap_or(0) } else { 0 },
                })
                .collect();
            (spec.vip, DesiredVip { spec, backends })
        })
        .collect()
}

/// Backends in `held` (just added, next hop being resolved) that have no
/// next hop yet take no new flow: their entries are written, their weight
/// is 0. A packet sent to a backend without a next hop would be dropped.
pub fn hold_unresolved(want: &mut BTreeMap<VipAddr, DesiredVip>, held: &HashSet<IpAddr>) {
    for b in want.values_mut().flat_map(|d| &mut d.backends) {
        if b.nexthop.is_none() && held.contains(&b.addr) {
            b.weight = 0;
        }
    }
}

#[cfg(test)]
mod tests;
