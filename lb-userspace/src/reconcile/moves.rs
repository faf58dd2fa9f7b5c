//! What a change would move, before it is made: for each VIP, the Maglev
//! slots whose owner changes and the flows of the flow table that would
//! go to another backend, computed from the kernel tables as they are and
//! as a plan would leave them. Pure: the caller reads the flow table.
//!
//! A flow keeps its backend while that backend is in its VIP and not down
//! (whatever its weight, as the data plane decides: see `lookup.rs`);
//! otherwise it goes where the VIP's new table sends its hash. So a weight
//! change moves slots but no established flow, and removing a backend
//! moves exactly its flows.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{FlowKey, FlowValue, hash::flow_hash};
use serde::{Deserialize, Serialize};

use super::tables::{Tables, VipState};
use crate::model::{VipAddr, addr_from_bytes};

/// What one VIP's table and flows would do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VipMoves {
    /// The VIP, as hola writes it.
    pub vip: String,
    /// Slots of its table, and how many would change owner.
    pub slots: u64,
    pub slots_moved: u64,
    /// Flows of the VIP read from the flow table, and how many of them
    /// would go to another backend.
    pub flows: u64,
    pub flows_moved: u64,
    /// Per backend: slots gained (positive) or lost (negative).
    pub slot_change: BTreeMap<IpAddr, i64>,
    /// Per backend: moved flows it would lose, and gain.
    pub flows_lost: BTreeMap<IpAddr, u64>,
    pub flows_gained: BTreeMap<IpAddr, u64>,
}

impl VipMoves {
    /// The share of slots that would change owner, in percent.
    pub fn slot_percent(&self) -> f64 {
        percent(self.slots_moved, self.slots)
    }

    /// The share of the VIP's flows that would move, in percent.
    pub fn flow_percent(&self) -> f64 {
        percent(self.flows_moved, self.flows)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Where a flow of `vip` goes in `state`: its recorded backend while that
/// one is in the VIP and up, else the table's backend for its hash.
fn backend_of(state: &VipState, key: &FlowKey, value: &FlowValue) -> Option<IpAddr> {
    let kept = state
        .backends
        .iter()
        .find(|b| b.id == value.backend_id && b.spec.up);
    if let Some(b) = kept {
        return Some(b.spec.addr);
    }
    let size = state.spec.table_size;
    if size == 0 || state.ring.is_empty() {
        return None;
    }
    let slot = flow_hash(key, state.spec.src_hash) % size;
    state.backend_addr(*state.ring.get(slot as usize)?)
}

/// The VIP a flow-table key belongs to among `vips`: the one of its
/// address, port and protocol, else its address and protocol on port 0.
fn vip_of(key: &FlowKey, vips: &[VipAddr]) -> Option<VipAddr> {
    let addr = addr_from_bytes(key.dst, key.family);
    let port = u16::from_be(key.dport);
    let mine = |p: u16| {
        vips.iter()
            .find(|v| v.addr == addr && v.port == p && v.proto.number() == key.proto)
    };
    mine(port).or_else(|| mine(0)).copied()
}

/// For every VIP in both `old` and `new`: the slots that change owner and
/// which of `flows` (flow-table entries) would move, and to whom.
pub fn moves(old: &Tables, new: &Tables, flows: &[(FlowKey, FlowValue)]) -> Vec<VipMoves> {
    let both: Vec<VipAddr> = old
        .vips()
        .map(|v| v.spec.vip)
        .filter(|k| new.vip(k).is_some())
        .collect();
    let mut out: BTreeMap<VipAddr, VipMoves> = BTreeMap::new();
    for k in &both {
        let (o, n) = (old.vip(k).expect("in old"), new.vip(k).expect("in new"));
        let m = out.entry(*k).or_default();
        m.vip = k.to_string();
        m.slots = u64::from(n.spec.table_size);
        let owner = |s: &VipState, i: usize| s.ring.get(i).and_then(|id| s.backend_addr(*id));
        for i in 0..n.spec.table_size as usize {
            let (was, will) = (owner(o, i), owner(n, i));
            if was != will || o.spec.table_size != n.spec.table_size {
                m.slots_moved += 1;
                if let Some(a) = was {
                    *m.slot_change.entry(a).or_default() -= 1;
                }
                if let Some(a) = will {
                    *m.slot_change.entry(a).or_default() += 1;
                }
            }
        }
        m.slot_change.retain(|_, d| *d != 0);
    }
    for (key, value) in flows {
        let Some(k) = vip_of(key, &both) else {
            continue;
        };
        let (o, n) = (old.vip(&k).expect("in old"), new.vip(&k).expect("in new"));
        let m = out.get_mut(&k).expect("every VIP of both");
        m.flows += 1;
        let (was, will) = (backend_of(o, key, value), backend_of(n, key, value));
        if was != will {
            m.flows_moved += 1;
            if let Some(a) = was {
                *m.flows_lost.entry(a).or_default() += 1;
            }
            if let Some(a) = will {
                *m.flows_gained.entry(a).or_default() += 1;
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{BackendSpec, Mode, Proto, VipSpec},
        reconcile::{Capacity, DesiredVip, plan},
    };

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    const VIP: VipAddr = VipAddr {
        addr: IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 1, 1)),
        port: 80,
        proto: Proto::Tcp,
    };

    /// The tables after planning `backends` (address, weight, up) on `base`
    /// for a 13-slot table.
    fn tables(base: &Tables, backends: &[(u8, u32, bool)]) -> Tables {
        let want = BTreeMap::from([(
            VIP,
            DesiredVip {
                spec: VipSpec {
                    vip: VIP,
                    mode: Mode::Dsr,
                    src_hash: false,
                    table_size: 13,
                    quic: false,
                },
                backends: backends
                    .iter()
                    .map(|&(a, weight, up)| BackendSpec {
                        addr: addr(a),
                        weight,
                        nexthop: None,
                        up,
                        port: 0,
                        server_id: 0,
                    })
                    .collect(),
            },
        )]);
        let mut t = base.clone();
        t.commit(plan(base, &want).expect("plan"));
        t
    }

    fn empty() -> Tables {
        Tables::new(Capacity {
            max_vips: 4,
            max_backends: 16,
            ring_capacity: 64,
        })
    }

    /// A flow to the VIP from 198.18.2.`i`:`1000 + i`, recorded on the
    /// backend `old` gives it (as the data plane records it on a miss).
    fn flows(old: &Tables, n: u8) -> Vec<(FlowKey, FlowValue)> {
        let state = old.vip(&VIP).expect("vip");
        (0..n)
            .map(|i| {
                let mut key = FlowKey {
                    sport: (1000 + u16::from(i)).to_be(),
                    dport: 80u16.to_be(),
                    proto: 6,
                    family: lb_common::FAMILY_V4,
                    ..Default::default()
                };
                key.src[..4].copy_from_slice(&[198, 18, 2, i]);
                key.dst[..4].copy_from_slice(&[198, 18, 1, 1]);
                let hash = flow_hash(&key, false);
                let backend_id = state.ring[(hash % 13) as usize];
                (key, FlowValue { backend_id, hash })
            })
            .collect()
    }

    /// The table as addresses' last bytes, for exact comparisons.
    fn owners(t: &Tables) -> Vec<u8> {
        let s = t.vip(&VIP).expect("vip");
        s.ring
            .iter()
            .map(|id| match s.backend_addr(*id) {
                Some(IpAddr::V4(a)) => a.octets()[3],
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn removing_a_backend_moves_its_slots_and_exactly_its_flows() {
        let old = tables(&empty(), &[(11, 1, true), (12, 1, true), (13, 1, true)]);
        let new = tables(&old, &[(11, 1, true), (12, 1, true)]);
        assert_eq!(
            owners(&old),
            [11, 13, 11, 13, 12, 11, 13, 12, 11, 12, 12, 13, 11]
        );
        // Four slots of .13 and slot 5 (.11 → .12): 5 of 13 change owner.
        assert_eq!(
            owners(&new),
            [11, 11, 11, 12, 12, 12, 11, 12, 11, 12, 12, 11, 11]
        );
        let m = &moves(&old, &new, &flows(&old, 40))[0];
        assert_eq!(m.vip, "198.18.1.1:80/tcp");
        assert_eq!((m.slots, m.slots_moved), (13, 5));
        assert_eq!(
            m.slot_change,
            BTreeMap::from([(addr(11), 2), (addr(12), 2), (addr(13), -4)])
        );
        // Only .13's 13 flows move; the flows on slot 5 stay on .11.
        assert_eq!((m.flows, m.flows_moved), (40, 13));
        assert_eq!(m.flows_lost, BTreeMap::from([(addr(13), 13)]));
        assert_eq!(
            m.flows_gained,
            BTreeMap::from([(addr(11), 10), (addr(12), 3)])
        );
        assert_eq!(m.flow_percent(), 32.5);
        assert_eq!(format!("{:.1}", m.slot_percent()), "38.5");
    }

    #[test]
    fn a_weight_change_moves_slots_but_no_established_flow() {
        let old = tables(&empty(), &[(11, 1, true), (12, 1, true)]);
        let new = tables(&old, &[(11, 3, true), (12, 1, true)]);
        assert_eq!(
            owners(&old),
            [11, 11, 11, 12, 12, 12, 11, 12, 11, 12, 12, 11, 11]
        );
        assert_eq!(
            owners(&new),
            [11, 11, 11, 12, 12, 11, 11, 11, 11, 11, 12, 11, 11]
        );
        let m = &moves(&old, &new, &flows(&old, 30))[0];
        assert_eq!((m.slots, m.slots_moved), (13, 3));
        assert_eq!(
            m.slot_change,
            BTreeMap::from([(addr(11), 3), (addr(12), -3)])
        );
        assert_eq!((m.flows, m.flows_moved), (30, 0));
        assert_eq!(m.flow_percent(), 0.0);
    }

    #[test]
    fn a_backend_down_loses_its_flows_and_other_vips_flows_are_not_counted() {
        let old = tables(&empty(), &[(11, 1, true), (12, 1, true)]);
        let new = tables(&old, &[(11, 1, true), (12, 1, false)]);
        let mut f = flows(&old, 20);
        let mut other = f[0];
        other.0.dport = 81u16.to_be();
        f.push(other);
        let m = &moves(&old, &new, &f)[0];
        assert_eq!(owners(&new), [11; 13]);
        assert_eq!((m.slots, m.slots_moved), (13, 6));
        assert_eq!((m.flows, m.flows_moved), (20, 6));
        assert_eq!(m.flows_lost, BTreeMap::from([(addr(12), 6)]));
        assert_eq!(m.flows_gained, BTreeMap::from([(addr(11), 6)]));
        assert_eq!(m.flow_percent(), 30.0);
    }
}
