//! `hola trace`'s data-plane side through BPF_PROG_TEST_RUN: a packet that
//! matches `TRACE_FILTER` leaves two `TRACE_RING` records, its bytes as it
//! arrived and as the verdict left them, with the reason, action, VIP,
//! backend and Maglev slot; the verdict of a tail-called program (the NAT
//! request program) is traced by that program; a packet that does not
//! match, or any packet with the filter off, leaves none.

use hola_tests::{
    fixture::{pin_to_cpu0, require_root, run},
    packet::{L4, LB_MAC, Pkt, TCP_ACK, TCP_SYN},
};
use lb_common::{
    Reason,
    trace::{
        TRACE_AFTER, TRACE_BEFORE, TRACE_M_DPORT, TRACE_M_DST, TRACE_M_SRC, TRACE_NO_SLOT,
        TRACE_SNAP, TraceFilter, TraceRecord,
    },
};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn backend(addr: &str) -> BackendSpec {
    BackendSpec {
        addr: addr.parse().expect("backend"),
        weight: 1,
        server_id: 0,
        up: true,
        port: 0,
        nexthop: Some(Nexthop {
            dmac: [2, 0, 0, 0, 0xb, 1],
            smac: LB_MAC,
            ifindex: 0,
        }),
    }
}

/// A data plane with a dsr VIP 198.18.1.1:80 and a nat VIP 198.18.1.3:80,
/// two backends each.
fn dataplane() -> Dataplane {
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        ..Default::default()
    })
    .expect("loading the balancer");
    for (addr, mode, backends) in [
        ("198.18.1.1", Mode::Dsr, ["198.18.2.1", "198.18.2.2"]),
        ("198.18.1.3", Mode::Nat, ["198.18.4.1", "198.18.4.2"]),
    ] {
        let vip = VipAddr {
            addr: addr.parse().expect("vip"),
            port: 80,
            proto: Proto::Tcp,
        };
        dp.add_vip(VipSpec {
            vip,
            mode,
            src_hash: false,
            table_size: 251,
            quic: false,
        })
        .expect("add VIP");
        let bs: Vec<_> = backends.iter().map(|b| backend(b)).collect();
        dp.set_backends(&vip, &bs).expect("backends");
    }
    dp
}

/// A filter for packets from `src` to `dst`:80.
fn filter(src: [u8; 4], dst: [u8; 4]) -> TraceFilter {
    let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
    s[..4].copy_from_slice(&src);
    d[..4].copy_from_slice(&dst);
    TraceFilter {
        enabled: 1,
        generation: 7,
        expires_ns: u64::MAX,
        src: s,
        dst: d,
        dport: 80u16.to_be(),
        family: lb_common::FAMILY_V4,
        fields: TRACE_M_SRC | TRACE_M_DST | TRACE_M_DPORT,
        ..TraceFilter::default()
    }
}

fn captured(r: &TraceRecord) -> &[u8] {
    &r.data[..r.caplen as usize]
}

/// The backend id `dp` gave `addr`.
fn backend_id(dp: &Dataplane, vip: &str, addr: &str) -> u32 {
    let vip = VipAddr {
        addr: vip.parse().expect("vip"),
        port: 80,
        proto: Proto::Tcp,
    };
    let addr: std::net::IpAddr = addr.parse().expect("addr");
    dp.tables()
        .vip(&vip)
        .and_then(|v| v.backends.iter().find(|b| b.spec.addr == addr))
        .map(|b| b.id)
        .expect("backend id")
}

#[test]
fn a_matching_packet_leaves_its_before_and_after_records_and_others_none() {
    require_root();
    pin_to_cpu0();
    let mut dp = dataplane();
    let dsr_id = dp
        .tables()
        .vip(&VipAddr {
            addr: "198.18.1.1".parse().expect("vip"),
            port: 80,
            proto: Proto::Tcp,
        })
        .map(|v| v.id)
        .expect("vip id");

    // Filter off: nothing, whatever the packet.
    let syn = Pkt::new("198.18.0.1", "198.18.1.1", L4::tcp(40000, 80, TCP_SYN)).bytes();
    let (action, _) = run(dp.program_ref(), &syn).expect("run");
    assert_eq!(action, XDP_TX);
    assert!(dp.next_trace_records(16).is_empty());

    // On, for 198.18.0.1 → 198.18.1.1:80.
    dp.set_trace_filter(&filter([198, 18, 0, 1], [198, 18, 1, 1]))
        .expect("filter");
    let (action, out) = run(dp.program_ref(), &syn).expect("run");
    assert_eq!(action, XDP_TX);
    let r = dp.next_trace_records(16);
    assert_eq!(r.len(), 2, "before and after");
    let (before, after) = (&r[0], &r[1]);
    assert_eq!((before.kind, after.kind), (TRACE_BEFORE, TRACE_AFTER));
    assert_eq!((before.cpu, before.seq), (after.cpu, after.seq));
    assert_eq!(captured(before), &syn[..]);
    assert_eq!(before.len as usize, syn.len());
    assert_eq!(captured(after), &out[..syn.len()]);
    assert_eq!(
        (after.reason, after.action),
        (Reason::FwdSyn as u32, XDP_TX)
    );
    assert_eq!(after.vip_id, dsr_id);
    let chosen = dp
        .tables()
        .backend_by_id(after.backend_id)
        .map(|(_, a)| a.to_string())
        .expect("a backend of the VIP");
    assert!(chosen.starts_with("198.18.2."), "{chosen}");
    assert!(
        after.slot < 251,
        "a slot of the 251-slot table: {}",
        after.slot
    );

    // Another client, and a packet to no VIP from another: not traced.
    let other = Pkt::new("198.18.0.9", "198.18.1.1", L4::tcp(40000, 80, TCP_SYN)).bytes();
    run(dp.program_ref(), &other).expect("run");
    assert!(dp.next_trace_records(16).is_empty());

    // A packet the program passes is traced with its reason, unchanged.
    dp.set_trace_filter(&filter([198, 18, 0, 1], [198, 18, 9, 9]))
        .expect("filter");
    let not_vip = Pkt::new("198.18.0.1", "198.18.9.9", L4::tcp(40000, 80, TCP_ACK)).bytes();
    let (action, _) = run(dp.program_ref(), &not_vip).expect("run");
    assert_eq!(action, XDP_PASS);
    let r = dp.next_trace_records(16);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (
            r[1].reason,
            r[1].action,
            r[1].vip_id,
            r[1].backend_id,
            r[1].slot
        ),
        (Reason::PassNotVip as u32, XDP_PASS, 0, 0, TRACE_NO_SLOT)
    );
    assert_eq!(captured(&r[0]), captured(&r[1]));

    // nat: `hola_lb` tail-calls the NAT request program, which rewrites
    // the packet and traces the verdict.
    dp.set_trace_filter(&filter([198, 18, 0, 1], [198, 18, 1, 3]))
        .expect("filter");
    let nat = Pkt::new("198.18.0.1", "198.18.1.3", L4::tcp(40001, 80, TCP_ACK)).bytes();
    let (action, out) = run(dp.program_ref(), &nat).expect("run");
    assert_eq!(action, XDP_TX);
    let r = dp.next_trace_records(16);
    assert_eq!(r.len(), 2, "before and after, across the tail call");
    assert_eq!(captured(&r[0]), &nat[..]);
    assert_eq!(captured(&r[1]), &out[..nat.len()]);
    assert_ne!(captured(&r[0]), captured(&r[1]), "the NAT rewrite");
    assert_eq!(
        (r[1].reason, r[1].action),
        (Reason::FwdNewFlow as u32, XDP_TX)
    );
    let to = format!("{}.{}.{}.{}", out[30], out[31], out[32], out[33]);
    assert_eq!(r[1].backend_id, backend_id(&dp, "198.18.1.3", &to));

    // A long packet is cut at the snap length; its length is kept.
    let l4 = L4::Tcp {
        sport: 40001,
        dport: 80,
        flags: TCP_ACK,
        payload: vec![0x5a; 600],
    };
    let big = Pkt::new("198.18.0.1", "198.18.1.3", l4).bytes();
    run(dp.program_ref(), &big).expect("run");
    let r = dp.next_trace_records(16);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].len as usize, r[0].caplen as usize),
        (big.len(), TRACE_SNAP)
    );
    assert_eq!(captured(&r[0]), &big[..TRACE_SNAP]);

    // Expired: nothing.
    let mut expired = filter([198, 18, 0, 1], [198, 18, 1, 1]);
    expired.expires_ns = 1;
    dp.set_trace_filter(&expired).expect("filter");
    run(dp.program_ref(), &syn).expect("run");
    assert!(dp.next_trace_records(16).is_empty());
    assert_eq!(dp.trace_lost().expect("lost"), 0);
}
