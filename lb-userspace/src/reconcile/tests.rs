//! Reconcile without root: each test states a wanted change and checks the
//! exact map writes planned for it. Tables are small (7 or 13 slots) so
//! that whole write lists can be read.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use lb_common::backend::{BACKEND_F_DOWN, BACKEND_F_NEXTHOP};

use super::*;
use crate::{
    config::Config,
    health::{AgentMode, AgentStatus, Checks, Health},
    maglev::{self, MaglevBackend},
    model::Nexthop,
};

const CAP: Capacity = Capacity {
    max_vips: 8,
    max_backends: 16,
    ring_capacity: 64,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A configuration of VIPs written as TOML (the global table added).
fn config(vips: &str) -> Config {
    crate::config::parse(
        &format!("[global]\ninterfaces = [\"eth0\"]\n{vips}"),
        "test",
    )
    .expect("valid test configuration")
}

/// One VIP 198.18.1.1:80/tcp, table size 7, with these backends
/// (address, weight) and extra VIP keys.
fn one_vip(extra: &str, backends: &[(&str, u32)]) -> Config {
    let mut s = format!("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\ntable_size = 7\n{extra}\n");
    for (a, w) in backends {
        s += &format!("[[vip.backend]]\naddress = \"{a}\"\nweight = {w}\n");
    }
    config(&s)
}

fn key(c: &Config, vip: usize) -> VipAddr {
    c.vips[vip].key()
}

/// Plans `config` against `tables` with `checks` (no next hops), commits
/// the plan, and returns its writes.
fn step(tables: &mut Tables, c: &Config, checks: &Checks) -> Vec<Write> {
    step_with(tables, c, checks, &HashMap::new())
}

fn step_with(
    tables: &mut Tables,
    c: &Config,
    checks: &Checks,
    nexthops: &HashMap<IpAddr, Nexthop>,
) -> Vec<Write> {
    let p = plan(tables, &desired(c, checks, nexthops)).expect("plan");
    let writes = p.writes.clone();
    tables.commit(p);
    writes
}

/// The ids in a VIP's slots as the tables hold them.
fn ring(tables: &Tables, vip: VipAddr) -> Vec<u32> {
    tables.vip(&vip).expect("vip").ring.clone()
}

fn id_of(tables: &Tables, vip: VipAddr, addr: &str) -> u32 {
    tables
        .vip(&vip)
        .expect("vip")
        .backends
        .iter()
        .find(|b| b.spec.addr == ip(addr))
        .expect("backend")
        .id
}

/// The slot writes that turn `before` into `after` for a VIP at `base`.
fn slot_writes(base: u32, before: &[u32], after: &[u32]) -> Vec<Write> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| b != a)
        .map(|(i, (_, &a))| Write::Slot {
            index: base + i as u32,
            id: a,
        })
        .collect()
}

/// The Maglev table for (id, address, weight) backends of a port-80 VIP.
fn maglev(backends: &[(u32, &str, u32)], size: u32) -> Vec<u32> {
    let input: Vec<MaglevBackend> = backends
        .iter()
        .map(|&(id, a, weight)| MaglevBackend {
            id,
            key: maglev::backend_key(ip(a), 80),
            weight,
        })
        .collect();
    maglev::build(&input, size).expect("maglev")
}

fn spec(addr: &str, up: bool) -> BackendSpec {
    BackendSpec {
        addr: ip(addr),
        weight: 0,
        nexthop: None,
        up,
        port: 0,
        server_id: 0,
    }
}

/// Checks with a health state for every backend of every VIP.
fn checked(c: &Config) -> Checks {
    let mut checks = Checks::default();
    for v in &c.vips {
        for b in &v.backends {
            checks
                .health
                .insert((v.key(), b.address), Health::new(1, 1));
        }
    }
    checks
}

fn set_health(checks: &mut Checks, vip: VipAddr, addr: &str, up: bool) {
    let h = checks.health.get_mut(&(vip, ip(addr))).expect("checked");
    h.machine.observe(up);
    assert_eq!(h.machine.up, up);
}

#[test]
fn a_new_vip_gets_a_zeroed_table_its_entry_then_its_backends() {
    let c = one_vip("", &[("198.18.0.11", 1)]);
    let mut t = Tables::new(CAP);
    let w = step(&mut t, &c, &Checks::default());
    let vip = key(&c, 0);
    let state = t.vip(&vip).expect("added").clone();
    let mut want: Vec<Write> = (0..7).map(|i| Write::Slot { index: i, id: 0 }).collect();
    want.push(Write::ZeroVipStats { id: 1 });
    want.push(Write::Vip {
        vip,
        meta: state.meta(),
    });
    let mut addr = lb_common::AddrVips {
        count: 1,
        ..Default::default()
    };
    addr.slots[0] = lb_common::VipSlot {
        port: 80u16.to_be(),
        proto: lb_common::PROTO_TCP,
        _pad: 0,
        meta: state.meta(),
    };
    want.push(Write::AddrVips {
        addr: ip("198.18.1.1"),
        entry: Some(addr),
    });
    want.push(Write::ZeroBackendStats { id: 1 });
    want.push(Write::Backend {
        id: 1,
        entry: backend_entry(&spec("198.18.0.11", true), 1),
    });
    want.extend((0..7).map(|i| Write::Slot { index: i, id: 1 }));
    assert_eq!(w, want);
    assert_eq!(state.ring, vec![1; 7]);
}

#[test]
fn the_same_state_again_writes_nothing() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 2)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    assert_eq!(step(&mut t, &c, &Checks::default()), []);
}

#[test]
fn an_added_backend_gets_its_entry_then_only_the_slots_it_takes() {
    let mut c = one_vip("", &[("198.18.0.11", 1)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    let vip = key(&c, 0);
    let before = ring(&t, vip);
    c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let w = step(&mut t, &c, &Checks::default());
    let after = maglev(&[(1, "198.18.0.11", 1), (2, "198.18.0.12", 1)], 7);
    let mut want = vec![
        Write::ZeroBackendStats { id: 2 },
        Write::Backend {
            id: 2,
            entry: backend_entry(&spec("198.18.0.12", true), 1),
        },
    ];
    want.extend(slot_writes(0, &before, &after));
    assert_eq!(w, want, "backend 1's entry is not rewritten");
    assert!(w.len() > 2, "backend 2 takes some slots");
    assert!(
        w[2..]
            .iter()
            .all(|s| matches!(s, Write::Slot { id: 2, .. })),
        "every moved slot goes to the new backend: {w:?}"
    );
}

#[test]
fn a_removed_backend_is_cleared_after_its_slots_moved() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    let vip = key(&c, 0);
    let before = ring(&t, vip);
    let c2 = one_vip("", &[("198.18.0.11", 1)]);
    let w = step(&mut t, &c2, &Checks::default());
    let mut want = slot_writes(0, &before, &[1; 7]);
    want.push(Write::ClearBackend { id: 2 });
    assert_eq!(w, want);
    assert_eq!(ring(&t, vip), vec![1; 7]);
}

#[test]
fn a_weight_change_moves_slots_and_rewrites_no_entry() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    let before = ring(&t, key(&c, 0));
    let c2 = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 5)]);
    let w = step(&mut t, &c2, &Checks::default());
    let after = maglev(&[(1, "198.18.0.11", 1), (2, "198.18.0.12", 5)], 7);
    assert_eq!(w, slot_writes(0, &before, &after));
    assert_eq!(ring(&t, key(&c, 0)), after);
}

#[test]
fn weight_zero_and_drain_take_every_slot_away_and_keep_the_entry() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let drained = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 0)]);
    let mut by_flag = c.clone();
    by_flag.vips[0].backends[1].drain = true;
    for next in [drained, by_flag] {
        let mut t = Tables::new(CAP);
        step(&mut t, &c, &Checks::default());
        let before = ring(&t, key(&c, 0));
        let w = step(&mut t, &next, &Checks::default());
        assert_eq!(w, slot_writes(0, &before, &[1; 7]), "slots only");
        assert!(
            t.vip(&key(&c, 0)).expect("vip").backends.len() == 2,
            "the drained backend stays (its established flows keep going)"
        );
    }
}

#[test]
fn health_down_flags_the_entry_and_up_restores_the_same_table() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let vip = key(&c, 0);
    let mut checks = checked(&c);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &checks);
    let before = ring(&t, vip);
    set_health(&mut checks, vip, "198.18.0.12", false);
    let w = step(&mut t, &c, &checks);
    let mut down = spec("198.18.0.12", false);
    down.weight = 1;
    let mut want = vec![Write::Backend {
        id: 2,
        entry: backend_entry(&down, 1),
    }];
    want.extend(slot_writes(0, &before, &[1; 7]));
    assert_eq!(w, want);
    match &w[0] {
        Write::Backend { entry, .. } => assert_ne!(entry.flags & BACKEND_F_DOWN, 0),
        other => panic!("{other:?}"),
    }
    set_health(&mut checks, vip, "198.18.0.12", true);
    let w = step(&mut t, &c, &checks);
    let mut want = vec![Write::Backend {
        id: 2,
        entry: backend_entry(&spec("198.18.0.12", true), 1),
    }];
    want.extend(slot_writes(0, &[1; 7], &before));
    assert_eq!(w, want);
    assert_eq!(
        ring(&t, vip),
        before,
        "the same table as before the failure"
    );
}

#[test]
fn a_backup_takes_every_slot_only_when_no_primary_can() {
    let mut c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    c.vips[0].backends[1].backup = true;
    let vip = key(&c, 0);
    let mut checks = checked(&c);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &checks);
    assert_eq!(ring(&t, vip), vec![1; 7], "the backup waits");
    set_health(&mut checks, vip, "198.18.0.11", false);
    let w = step(&mut t, &c, &checks);
    let mut down = spec("198.18.0.11", false);
    down.weight = 1;
    let mut want = vec![Write::Backend {
        id: 1,
        entry: backend_entry(&down, 1),
    }];
    want.extend((0..7).map(|i| Write::Slot { index: i, id: 2 }));
    assert_eq!(w, want, "the backup's own entry is not rewritten");
}

#[test]
fn an_agent_percentage_moves_slots_only() {
    let c = one_vip(
        "[vip.agent]\nport = 9999\n",
        &[("198.18.0.11", 100), ("198.18.0.12", 100)],
    );
    let vip = key(&c, 0);
    let mut checks = Checks::default();
    for b in ["198.18.0.11", "198.18.0.12"] {
        checks.agents.insert(
            (vip, ip(b)),
            AgentStatus::new(c.vips[0].agent.as_ref().expect("agent")),
        );
    }
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &checks);
    let before = ring(&t, vip);
    checks
        .agents
        .get_mut(&(vip, ip("198.18.0.12")))
        .expect("agent")
        .percent = 10;
    let w = step(&mut t, &c, &checks);
    let after = maglev(&[(1, "198.18.0.11", 100), (2, "198.18.0.12", 10)], 7);
    assert_eq!(w, slot_writes(0, &before, &after));
    assert!(!w.is_empty(), "a tenth of the weight loses slots");
}

#[test]
fn an_agent_drain_keeps_the_entry_up_and_an_agent_down_flags_it() {
    let c = one_vip(
        "[vip.agent]\nport = 9999\n",
        &[("198.18.0.11", 1), ("198.18.0.12", 1)],
    );
    let vip = key(&c, 0);
    let agent = c.vips[0].agent.clone().expect("agent");
    let mut checks = Checks::default();
    for b in ["198.18.0.11", "198.18.0.12"] {
        checks.agents.insert((vip, ip(b)), AgentStatus::new(&agent));
    }
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &checks);
    let before = ring(&t, vip);
    let b2 = (vip, ip("198.18.0.12"));
    checks.agents.get_mut(&b2).expect("agent").mode = AgentMode::Drain;
    let w = step(&mut t, &c, &checks);
    assert_eq!(w, slot_writes(0, &before, &[1; 7]), "drain: slots only");
    checks.agents.get_mut(&b2).expect("agent").mode = AgentMode::Down;
    let w = step(&mut t, &c, &checks);
    let mut down = spec("198.18.0.12", false);
    down.weight = 0;
    assert_eq!(
        w,
        [Write::Backend {
            id: 2,
            entry: backend_entry(&down, 1)
        }],
        "down: flagged, no slot to move"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_through_slot_writes_only() {
    let c = one_vip(
        "[vip.health]\ntype = \"tcp\"\nslow_start = \"30s\"\n",
        &[("198.18.0.11", 100), ("198.18.0.12", 100)],
    );
    let vip = key(&c, 0);
    let mut checks = checked(&c);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &checks);
    set_health(&mut checks, vip, "198.18.0.12", false);
    step(&mut t, &c, &checks);
    // Up again: the health result sets when it came up.
    let key2 = (vip, ip("198.18.0.12"));
    let probe = crate::health::Probe {
        ok: true,
        detail: "connected".into(),
        latency_ms: 1,
    };
    assert_eq!(checks.health_result(key2, probe), Some(true));
    let w = step(&mut t, &c, &checks);
    let at_start = maglev(&[(1, "198.18.0.11", 100), (2, "198.18.0.12", 10)], 7);
    let mut up = spec("198.18.0.12", true);
    up.weight = 10;
    let mut want = vec![Write::Backend {
        id: 2,
        entry: backend_entry(&up, 1),
    }];
    want.extend(slot_writes(0, &[1; 7], &at_start));
    assert_eq!(w, want, "a tenth of the weight at first");
    tokio::time::advance(Duration::from_secs(30)).await;
    let w = step(&mut t, &c, &checks);
    let full = maglev(&[(1, "198.18.0.11", 100), (2, "198.18.0.12", 100)], 7);
    assert_eq!(
        w,
        slot_writes(0, &at_start, &full),
        "full weight: slots only"
    );
}

#[test]
fn a_health_change_in_one_vip_writes_nothing_of_another_sharing_the_backend() {
    let c = config(
        "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\ntable_size = 7\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\n\
         [[vip.backend]]\naddress = \"198.18.0.12\"\n\
         [[vip]]\naddress = \"198.18.1.2\"\nport = 80\ntable_size = 13\n\
         [[vip.backend]]\naddress = \"198.18.0.11\"\n\
         [[vip.backend]]\naddress = \"198.18.0.12\"\n",
    );
    let (a, b) = (key(&c, 0), key(&c, 1));
    let mut checks = checked(&c);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &checks);
    let b_ids: Vec<u32> = t
        .vip(&b)
        .expect("b")
        .backends
        .iter()
        .map(|x| x.id)
        .collect();
    let b_base = t.vip(&b).expect("b").ring_base;
    let b_ring = ring(&t, b);
    set_health(&mut checks, a, "198.18.0.12", false);
    let p = plan(&t, &desired(&c, &checks, &HashMap::new())).expect("plan");
    assert_eq!(
        p.vips().copied().collect::<Vec<_>>(),
        [a],
        "only VIP a changes"
    );
    let a_id = id_of(&t, a, "198.18.0.12");
    for w in &p.writes {
        match w {
            Write::Backend { id, .. } => assert_eq!(*id, a_id, "{w:?}"),
            Write::Slot { index, .. } => assert!(*index < 7, "a slot of VIP a only: {w:?}"),
            other => panic!("nothing but VIP a's entry and slots: {other:?}"),
        }
        if let Write::Backend { id, .. } = w {
            assert!(!b_ids.contains(id));
        }
    }
    assert!(b_base >= 7);
    t.commit(p);
    assert_eq!(ring(&t, b), b_ring);
}

#[test]
fn a_removed_vip_empties_its_table_clears_its_backends_then_goes() {
    let c = one_vip("", &[("198.18.0.11", 1)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    let vip = key(&c, 0);
    let w = step(&mut t, &config(""), &Checks::default());
    let mut want: Vec<Write> = (0..7).map(|i| Write::Slot { index: i, id: 0 }).collect();
    want.push(Write::ClearBackend { id: 1 });
    want.push(Write::RemoveVip { vip });
    want.push(Write::AddrVips {
        addr: ip("198.18.1.1"),
        entry: None,
    });
    assert_eq!(w, want);
    assert!(t.vip(&vip).is_none());
    // Its id and ring space are free again: a new VIP fits in CAP.
    let w = step(&mut t, &c, &Checks::default());
    assert!(
        w.contains(&Write::ZeroVipStats { id: 2 }),
        "ids are reused late"
    );
}

#[test]
fn a_mode_change_removes_and_adds_the_vip() {
    let c = one_vip("", &[("198.18.0.11", 1)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    let tunnel = one_vip("mode = \"tunnel\"\n", &[("198.18.0.11", 1)]);
    let w = step(&mut t, &tunnel, &Checks::default());
    let vip = key(&c, 0);
    let remove = w
        .iter()
        .position(|x| *x == Write::RemoveVip { vip })
        .expect("removed");
    let add = w
        .iter()
        .position(|x| matches!(x, Write::Vip { .. }))
        .expect("added");
    assert!(remove < add);
    let state = t.vip(&vip).expect("vip");
    assert_eq!(state.spec.mode, crate::model::Mode::Tunnel);
    assert_eq!((state.id, state.backends[0].id), (2, 2), "fresh ids");
}

#[test]
fn nat_sources_follow_the_backends_of_nat_vips() {
    let c = one_vip("mode = \"nat\"\n", &[("198.18.0.11", 1)]);
    let mut t = Tables::new(CAP);
    let w = step(&mut t, &c, &Checks::default());
    let nat = |addrs: &[&str]| {
        Write::Nat(NatState {
            any: true,
            sources: addrs.iter().map(|a| ip(a)).collect(),
        })
    };
    assert_eq!(
        w.iter()
            .filter(|x| matches!(x, Write::Nat(_)))
            .collect::<Vec<_>>(),
        [&nat(&[]), &nat(&["198.18.0.11"])],
        "on with the VIP, then its backend"
    );
    let c2 = one_vip(
        "mode = \"nat\"\n",
        &[("198.18.0.11", 1), ("198.18.0.12", 1)],
    );
    let w = step(&mut t, &c2, &Checks::default());
    assert_eq!(w.last(), Some(&nat(&["198.18.0.11", "198.18.0.12"])));
    let w = step(&mut t, &config(""), &Checks::default());
    assert_eq!(
        w.last(),
        Some(&Write::Nat(NatState::default())),
        "off with the last NAT VIP"
    );
}

#[test]
fn a_resolved_next_hop_rewrites_the_entry_and_no_slot() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    let nh = Nexthop {
        dmac: [2, 0, 0, 0, 0, 0x12],
        smac: [2, 0, 0, 0, 0, 2],
        ifindex: 7,
    };
    let hops = HashMap::from([(ip("198.18.0.12"), nh)]);
    let w = step_with(&mut t, &c, &Checks::default(), &hops);
    let mut with = spec("198.18.0.12", true);
    with.weight = 1;
    with.nexthop = Some(nh);
    let entry = backend_entry(&with, 1);
    assert_ne!(entry.flags & BACKEND_F_NEXTHOP, 0);
    assert_eq!(
        w,
        [
            Write::Backend { id: 2, entry },
            Write::TxPort { ifindex: 7 }
        ]
    );
}

#[test]
fn a_refused_change_plans_nothing() {
    let c = one_vip("", &[("198.18.0.11", 1)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    let vip = key(&c, 0);
    let mut bad = desired(&c, &Checks::default(), &HashMap::new());
    bad.get_mut(&vip)
        .expect("vip")
        .backends
        .push(spec("2001:db8::11", true));
    assert_eq!(
        plan(&t, &bad).expect_err("refused"),
        PlanError::FamilyMismatch {
            vip,
            backend: ip("2001:db8::11")
        }
    );
    let mut dup = desired(&c, &Checks::default(), &HashMap::new());
    let first = dup[&vip].backends[0];
    dup.get_mut(&vip).expect("vip").backends.push(first);
    assert!(matches!(
        plan(&t, &dup),
        Err(PlanError::DuplicateBackend { .. })
    ));
    let mut many = desired(&c, &Checks::default(), &HashMap::new());
    many.get_mut(&vip)
        .expect("vip")
        .backends
        .extend((12..=28).map(|i| spec(&format!("198.18.0.{i}"), true)));
    assert_eq!(
        plan(&t, &many).expect_err("full"),
        PlanError::Full {
            what: "more backends",
            capacity: 16,
            setting: "max_backends"
        },
        "17 more backends where 15 ids are free"
    );
    assert_eq!(step(&mut t, &c, &Checks::default()), [], "unchanged");
}

#[test]
fn after_a_failed_write_every_entry_and_slot_is_written_again() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let mut t = Tables::new(CAP);
    let p = plan(&t, &desired(&c, &Checks::default(), &HashMap::new())).expect("plan");
    t.commit_failed(p);
    let w = step(&mut t, &c, &Checks::default());
    let vip = key(&c, 0);
    let backends = w
        .iter()
        .filter(|x| matches!(x, Write::Backend { .. }))
        .count();
    let slots = w.iter().filter(|x| matches!(x, Write::Slot { .. })).count();
    assert_eq!((backends, slots), (2, 7), "{w:?}");
    assert!(
        w.contains(&Write::Nat(NatState::default())),
        "NAT state unknown"
    );
    assert!(
        w.iter().any(|x| matches!(x, Write::Vip { .. }))
            && w.iter().any(|x| matches!(x, Write::AddrVips { .. })),
        "the VIP's own entries are written again too: {w:?}"
    );
    assert!(!t.has_dirty());
    assert_eq!(step(&mut t, &c, &Checks::default()), [], "clean again");
    assert!(!t.vip(&vip).expect("vip").dirty);
}

#[test]
fn adopted_tables_rebuild_the_same_table_without_writes() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 3)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    let vip = key(&c, 0);
    let state = t.vip(&vip).expect("vip").clone();
    let entries: Vec<(u32, lb_common::Backend)> = state
        .backends
        .iter()
        .map(|b| (b.id, backend_entry(&b.spec, state.id)))
        .collect();
    let mut adopted = Tables::adopt(CAP, vec![(vip, state.meta(), state.ring.clone())], &entries);
    let w = step(&mut adopted, &c, &Checks::default());
    assert_eq!(
        w,
        [Write::Nat(NatState::default())],
        "only the NAT state, unknown after adoption"
    );
    assert_eq!(ring(&adopted, vip), state.ring);
}

#[test]
fn a_backend_whose_next_hop_is_being_resolved_takes_no_flow_until_it_is() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let vip = key(&c, 0);
    let hop = |last: u8| Nexthop {
        dmac: [2, 0, 0, 0, 0, last],
        smac: [2, 0, 0, 0, 0, 2],
        ifindex: 0,
    };
    let mut hops = HashMap::from([(ip("198.18.0.11"), hop(0x11))]);
    let held = std::collections::HashSet::from([ip("198.18.0.12")]);
    let mut t = Tables::new(CAP);
    let mut want = desired(&c, &Checks::default(), &hops);
    hold_unresolved(&mut want, &held);
    let p = plan(&t, &want).expect("plan");
    t.commit(p);
    assert_eq!(ring(&t, vip), vec![1; 7], "the held backend has no slot");
    let held_entry = &t.vip(&vip).expect("vip").backends[1];
    assert_eq!(
        (held_entry.spec.weight, held_entry.spec.nexthop),
        (0, None),
        "its entry is there, without a next hop, at weight 0"
    );
    // Resolved: its entry gets the next hop, then it takes its slots.
    hops.insert(ip("198.18.0.12"), hop(0x12));
    let mut want = desired(&c, &Checks::default(), &hops);
    hold_unresolved(&mut want, &held);
    assert_eq!(
        want[&vip].backends[1].weight, 1,
        "a resolved one is not held"
    );
    let w = step_with(&mut t, &c, &Checks::default(), &hops);
    let after = maglev(&[(1, "198.18.0.11", 1), (2, "198.18.0.12", 1)], 7);
    let mut resolved = spec("198.18.0.12", true);
    resolved.weight = 1;
    resolved.nexthop = Some(hop(0x12));
    let mut expected = vec![Write::Backend {
        id: 2,
        entry: backend_entry(&resolved, 1),
    }];
    expected.extend(slot_writes(0, &[1; 7], &after));
    assert_eq!(w, expected);
}

#[test]
fn ids_a_failed_plan_freed_stay_out_of_use() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    // Removing backend 2 fails part-way: its id may still be in a slot.
    let fewer = one_vip("", &[("198.18.0.11", 1)]);
    let p = plan(&t, &desired(&fewer, &Checks::default(), &HashMap::new())).expect("plan");
    assert!(p.writes.contains(&Write::ClearBackend { id: 2 }));
    t.commit_failed(p);
    // A new backend gets a fresh id, not 2.
    let other = one_vip("", &[("198.18.0.11", 1), ("198.18.0.13", 1)]);
    step(&mut t, &other, &Checks::default());
    assert_eq!(id_of(&t, key(&c, 0), "198.18.0.13"), 3);
}

const GRACE: Duration = Duration::from_secs(60);

/// The `PREV_RINGS` writes that make a VIP's previous table hold, at base
/// 0, `want` where it differs from `have`.
fn prev_writes(have: &[u32], want: &[u32]) -> Vec<Write> {
    have.iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (h, w))| h != w)
        .map(|(i, (_, &w))| Write::PrevSlot {
            index: i as u32,
            id: w,
        })
        .collect()
}

/// The previous table of a change from `before` to `after`: the old
/// owner where the slot moved, 0 where it did not.
fn moved_from(before: &[u32], after: &[u32]) -> Vec<u32> {
    before
        .iter()
        .zip(after)
        .map(|(&b, &a)| if b != a { b } else { 0 })
        .collect()
}

#[test]
fn with_a_grace_period_a_new_vip_also_gets_an_empty_previous_table() {
    let c = one_vip("", &[]);
    let mut t = Tables::new(CAP).with_grace(GRACE);
    let w = step(&mut t, &c, &Checks::default());
    let mut want: Vec<Write> = (0..7).map(|i| Write::Slot { index: i, id: 0 }).collect();
    want.push(Write::ZeroVipStats { id: 1 });
    want.extend((0..7).map(|i| Write::PrevSlot { index: i, id: 0 }));
    want.push(Write::PrevUntil {
        vip_id: 1,
        grace: Duration::ZERO,
    });
    assert_eq!(w[..want.len()], want[..], "then the VIP's entries: {w:?}");
    assert!(matches!(w[want.len()], Write::Vip { .. }));
}

#[test]
fn a_table_change_writes_the_previous_table_and_its_expiry_before_the_slots() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let mut t = Tables::new(CAP).with_grace(GRACE);
    step(&mut t, &c, &Checks::default());
    let vip = key(&c, 0);
    let first = ring(&t, vip);
    assert_eq!(
        t.vip(&vip).expect("vip").prev.as_deref(),
        Some(&[0u32; 7][..]),
        "the first table replaced only empty slots: no previous owner"
    );

    // A weight change: the moved slots' old owners, the expiry, the slots.
    let c2 = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 5)]);
    let w = step(&mut t, &c2, &Checks::default());
    let second = maglev(&[(1, "198.18.0.11", 1), (2, "198.18.0.12", 5)], 7);
    let prev1 = moved_from(&first, &second);
    assert!(prev1.contains(&1), "slots moved from 1 to 2");
    let mut want = prev_writes(&[0; 7], &prev1);
    want.push(Write::PrevUntil {
        vip_id: 1,
        grace: GRACE,
    });
    want.extend(slot_writes(0, &first, &second));
    assert_eq!(w, want);

    // Back again: slots moved by either change are written, the others not.
    let w = step(&mut t, &c, &Checks::default());
    let prev2 = moved_from(&second, &first);
    let mut want = prev_writes(&prev1, &prev2);
    want.push(Write::PrevUntil {
        vip_id: 1,
        grace: GRACE,
    });
    want.extend(slot_writes(0, &second, &first));
    assert_eq!(w, want);
    assert_eq!(t.vip(&vip).expect("vip").prev.as_deref(), Some(&prev2[..]));
}

#[test]
fn a_table_replacing_an_empty_one_ends_the_grace_period_instead_of_starting_one() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let mut t = Tables::new(CAP).with_grace(GRACE);
    let w = step(&mut t, &c, &Checks::default());
    let ends = Write::PrevUntil {
        vip_id: 1,
        grace: Duration::ZERO,
    };
    // add_vip ends it once (a new VIP's previous table is empty), and the
    // first table, which replaces only empty slots, ends it again rather
    // than starting 60 s of a previous table that names no backend.
    assert_eq!(w.iter().filter(|x| **x == ends).count(), 2, "{w:?}");
    assert!(
        !w.iter()
            .any(|x| matches!(x, Write::PrevUntil { grace, .. } if *grace == GRACE)),
        "no grace period: {w:?}"
    );
    let vip = key(&c, 0);
    let first = ring(&t, vip);

    // Every backend gone, then back: the table they come back to replaces
    // empty slots again, so that change starts no grace period either.
    let empty = one_vip("", &[]);
    let w = step(&mut t, &empty, &Checks::default());
    let mut want = prev_writes(&[0; 7], &first);
    want.push(Write::PrevUntil {
        vip_id: 1,
        grace: GRACE,
    });
    want.extend(slot_writes(0, &first, &[0; 7]));
    assert_eq!(
        w[..want.len()],
        want[..],
        "going empty keeps the flows' backends for the grace period"
    );
    let w = step(&mut t, &c, &Checks::default());
    assert!(w.contains(&ends), "{w:?}");
    assert!(
        !w.iter().any(|x| matches!(x, Write::PrevSlot { .. })),
        "the previous slots are left as they are: {w:?}"
    );
    assert_eq!(
        t.vip(&vip).expect("vip").prev.as_deref(),
        Some(&first[..]),
        "and the copy still says what they hold"
    );
}

#[test]
fn a_change_that_moves_no_slot_keeps_the_previous_table_and_its_expiry() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let mut t = Tables::new(CAP).with_grace(GRACE);
    step(&mut t, &c, &Checks::default());
    let c2 = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 5)]);
    step(&mut t, &c2, &Checks::default());
    // A next hop resolved: an entry rewritten, no slot moved.
    let nh = Nexthop {
        dmac: [2, 0, 0, 0, 0, 1],
        smac: [2, 0, 0, 0, 0, 2],
        ifindex: 0,
    };
    let nexthops = HashMap::from([(ip("198.18.0.11"), nh)]);
    let w = step_with(&mut t, &c2, &Checks::default(), &nexthops);
    assert!(
        w.iter().all(|w| matches!(w, Write::Backend { .. })),
        "no PREV_RINGS or PREV_UNTIL write: {w:?}"
    );
}

#[test]
fn adopted_tables_write_the_whole_previous_table_at_their_first_change() {
    let c = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 1)]);
    let mut t = Tables::new(CAP);
    step(&mut t, &c, &Checks::default());
    let vip = key(&c, 0);
    let state = t.vip(&vip).expect("vip").clone();
    let backends: Vec<(u32, lb_common::Backend)> = state
        .backends
        .iter()
        .map(|b| (b.id, backend_entry(&b.spec, state.id)))
        .collect();
    let mut adopted = Tables::adopt(
        CAP,
        vec![(vip, state.meta(), state.ring.clone())],
        &backends,
    )
    .with_grace(GRACE);
    let c2 = one_vip("", &[("198.18.0.11", 1), ("198.18.0.12", 5)]);
    let w = step(&mut adopted, &c2, &Checks::default());
    let second = maglev(&[(1, "198.18.0.11", 1), (2, "198.18.0.12", 5)], 7);
    let prev = moved_from(&state.ring, &second);
    let mut want: Vec<Write> = prev
        .iter()
        .enumerate()
        .map(|(i, &id)| Write::PrevSlot {
            index: i as u32,
            id,
        })
        .collect();
    want.push(Write::PrevUntil {
        vip_id: 1,
        grace: GRACE,
    });
    want.extend(slot_writes(0, &state.ring, &second));
    // Adopted maps: the NAT state is not known, so it is written once.
    want.push(Write::Nat(NatState::default()));
    assert_eq!(w, want);
}
