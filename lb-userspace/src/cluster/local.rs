//! Between this node's maps and the wire: the entries a node's events and
//! snapshot become, and what a peer's entries become here. Backends travel
//! as (VIP, address), never as this node's ids, which differ between nodes
//! whose backends were added in another order.

use lb_common::{
    FlowKey, FlowValue, NatValue,
    flow::{FLOW_EVENT_FLOW, FLOW_EVENT_NAT, FlowEvent, NAT_F_FULLNAT, NAT_F_SYN},
};

use super::wire::{Entry, WireNat, WireVip};
use crate::dataplane::{Dataplane, monotonic_ns};

fn nat_entry(dp: &Dataplane, reply: &FlowKey, v: &NatValue, now_ns: u64) -> Option<Entry> {
    // A fullnat flow's replies go to the node's own source address: no
    // other node could receive them (docs/cluster.md).
    if v.flags & NAT_F_FULLNAT != 0 {
        return None;
    }
    let (vip, backend) = dp.backend_of(v.backend_id)?;
    Some(Entry::Nat {
        vip: WireVip::from_vip(&vip),
        reply: reply.into(),
        backend,
        nat: WireNat {
            vip_addr: v.vip_addr,
            vip_port: v.vip_port,
            flags: v.flags,
            dmac: v.dmac,
            idle_ms: now_ns.saturating_sub(v.last_ns) / 1_000_000,
            closed: v.closed_ns != 0,
            client_addr: v.client_addr,
            client_port: v.client_port,
        },
    })
}

/// What a ring-buffer record becomes on the wire; `None` for a backend
/// that is gone already or a fullnat translation.
pub fn event_entry(dp: &Dataplane, e: &FlowEvent, now_ns: u64) -> Option<Entry> {
    match e.kind {
        FLOW_EVENT_FLOW => {
            let (vip, backend) = dp.backend_of(e.backend_id)?;
            Some(Entry::Flow {
                vip: WireVip::from_vip(&vip),
                key: (&e.key).into(),
                backend,
                hash: e.hash,
            })
        }
        FLOW_EVENT_NAT => nat_entry(dp, &e.key, &e.nat, now_ns),
        _ => None,
    }
}

/// Every entry this node holds, for a peer that just connected.
pub fn snapshot(dp: &Dataplane) -> Vec<Entry> {
    let now = monotonic_ns();
    let mut out = Vec::new();
    match dp.flow_entries() {
        Ok(flows) => {
            for (k, v) in flows {
                if let Some((vip, backend)) = dp.backend_of(v.backend_id) {
                    out.push(Entry::Flow {
                        vip: WireVip::from_vip(&vip),
                        key: (&k).into(),
                        backend,
                        hash: v.hash,
                    });
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cluster snapshot: reading the flow table"),
    }
    match dp.nat_entries() {
        Ok(nat) => out.extend(nat.iter().filter_map(|(k, v)| nat_entry(dp, k, v, now))),
        Err(e) => tracing::warn!(error = %e, "cluster snapshot: reading the NAT table"),
    }
    out
}

/// What entries from a peer did here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub installed: u64,
    /// Naming a VIP or backend this node does not have.
    pub unknown: u64,
}

/// Writes a peer's entries into this node's maps. `smac` and `ifindex`
/// are this node's (the interface NAT replies leave through).
pub fn install(dp: &mut Dataplane, entries: &[Entry], smac: [u8; 6], ifindex: u32) -> Installed {
    let now = monotonic_ns();
    let mut r = Installed::default();
    for e in entries {
        let done = match e {
            Entry::Flow {
                vip,
                key,
                backend,
                hash,
            } => {
                let Some(id) = vip.to_vip().and_then(|v| dp.backend_id(&v, *backend)) else {
                    r.unknown += 1;
                    continue;
                };
                dp.install_peer_flow(
                    &FlowKey::from(key),
                    FlowValue {
                        backend_id: id,
                        hash: *hash,
                    },
                )
            }
            Entry::Nat {
                vip,
                reply,
                backend,
                nat,
            } => {
                let Some(id) = vip.to_vip().and_then(|v| dp.backend_id(&v, *backend)) else {
                    r.unknown += 1;
                    continue;
                };
                let last = now.saturating_sub(nat.idle_ms.saturating_mul(1_000_000));
                // A handshake in progress goes where this node keeps its
                // own (its SYN-ACK may come back through here).
                let install = if nat.flags & NAT_F_SYN != 0 {
                    Dataplane::install_nat_syn
                } else {
                    Dataplane::install_nat
                };
                install(
                    dp,
                    &FlowKey::from(reply),
                    &NatValue {
                        vip_addr: nat.vip_addr,
                        vip_port: nat.vip_port,
                        flags: nat.flags,
                        ifindex,
                        dmac: nat.dmac,
                        smac,
                        last_ns: last,
                        closed_ns: if nat.closed { last } else { 0 },
                        backend_id: id,
                        fwd_port: 0,
                        syn_ns: 0,
                        client_addr: nat.client_addr,
                        client_port: nat.client_port,
                        _pad2: [0; 6],
                    },
                )
            }
            // Only what has expired here too: a peer's idle copy must not
            // end a flow this node still carries.
            Entry::NatGone { reply } => dp.remove_nat_if_expired(&FlowKey::from(reply)).map(|_| ()),
        };
        match done {
            Ok(()) => r.installed += 1,
            Err(e) => tracing::warn!(error = %e, "cluster: installing an entry from a peer"),
        }
    }
    r
}
