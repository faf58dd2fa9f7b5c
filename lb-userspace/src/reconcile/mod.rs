//! Reconcile: from what is wanted to the map writes that make it so. Pure:
//! no kernel, no clock of its own, no I/O.
//!
//! - [`desired`]: the configuration, the checks' state and the next hops
//!   known → each VIP's spec and its backends' weights, health and next hops;
//! - [`plan`](plan::plan): userspace's copy of the kernel tables + that →
//!   the ordered writes, VIP by VIP, touching only what differs;
//! - [`alloc`]: the id and ring-space allocators the plan uses.
//!
//! The data plane executes a plan; nothing else decides what it writes.

pub mod alloc;
pub mod plan;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

pub use self::plan::{
    BackendState, Capacity, DesiredVip, NatState, Plan, PlanError, Planner, Tables, VipState,
    Write, backend_entry, plan,
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
                })
                .collect();
            (spec.vip, DesiredVip { spec, backends })
        })
        .collect()
}

#[cfg(test)]
mod tests;
