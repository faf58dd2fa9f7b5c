//! Hard limits through the real program (BPF_PROG_TEST_RUN): a flow table
//! far smaller than the flows sent through it, a SYN flood from random
//! sources, and fullnat source ports running out. Each checks the verdict
//! of every packet, where it went, and the counters, exactly
//! (docs/reliability.md).

use std::{collections::BTreeMap, net::IpAddr};

use aya::programs::Xdp;
use hola_tests::{
    fixture::{Rng, diff, pin_to_cpu0, require_root, run, snapshot},
    packet::{L4, LB_MAC, Pkt, TCP_ACK, TCP_SYN},
};
use lb_common::Reason;
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec,
};

const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;
const BACKENDS: u8 = 10;

/// Backend `i`: address 198.18.4.(10+i), next-hop MAC 02:00:00:00:04:i.
fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x04, i]
}

fn backends(port: u16) -> Vec<BackendSpec> {
    (0..BACKENDS)
        .map(|i| BackendSpec {
            addr: IpAddr::from([198, 18, 4, 10 + i]),
            weight: 1,
            up: true,
            port,
            nexthop: Some(Nexthop {
                dmac: backend_mac(i),
                smac: LB_MAC,
                ifindex: 0,
            }),
            server_id: 0,
        })
        .collect()
}

/// The backend a forwarded dsr frame went to, from its destination MAC.
fn backend_of(frame: &[u8]) -> IpAddr {
    assert_eq!(frame[..5], backend_mac(0)[..5], "not a backend's MAC");
    IpAddr::from([198, 18, 4, 10 + frame[5]])
}

fn dsr_vip() -> VipAddr {
    VipAddr {
        addr: "198.18.1.1".parse().expect("literal"),
        port: 80,
        proto: Proto::Tcp,
    }
}

fn load(cfg: DataplaneConfig, vip: VipAddr, mode: Mode, bs: &[BackendSpec]) -> Dataplane {
    let mut dp = Dataplane::load(cfg).expect("loading the balancer");
    dp.add_vip(VipSpec {
        vip,
        mode,
        src_hash: false,
        table_size: 65_537,
        quic: false,
    })
    .expect("VIP");
    dp.set_backends(&vip, bs).expect("backends");
    dp
}

/// Flow `n` of a set: a distinct client address and port in 198.18.0.0/15.
fn client(n: u32) -> (String, u16) {
    let a = 0x2000 + n / 50_000; // 198.18.32.0 and up: never the VIP or a backend
    (
        format!("198.{}.{}.{}", 18 + (a >> 16), (a >> 8) & 0xff, a & 0xff),
        (10_000 + n % 50_000) as u16,
    )
}

fn reason_packets(d: &BTreeMap<String, u64>, r: Reason) -> u64 {
    d.get(&format!("reason.{}.packets", r.name()))
        .copied()
        .unwrap_or(0)
}

/// Sends `p` and returns the backend it was forwarded to; every packet here
/// must be forwarded.
fn forward(prog: &Xdp, p: &Pkt) -> IpAddr {
    let (action, out) = run(prog, &p.bytes()).expect("BPF_PROG_TEST_RUN");
    assert_eq!(action, XDP_TX, "{p:?} was not forwarded");
    backend_of(&out)
}

/// The flow table holds 2,048 flows (1,024 per CPU); 20,000 flows (their
/// first packet an ACK: a SYN is not recorded) go through it twice. The second time most have been evicted: each is a
/// flow-table miss again and Maglev, with the backend set unchanged, sends
/// it to the backend it had. Every packet's verdict is predicted from
/// whether its flow was in the table just before it was sent.
#[test]
fn full_flow_table_evicts_and_keeps_every_flow_on_its_backend() {
    require_root();
    pin_to_cpu0();
    let vip = dsr_vip();
    let dp = load(
        DataplaneConfig {
            flow_capacity_per_cpu: 1024,
            // Every flow recorded, however fast they come.
            new_flow_rate: 0,
            ..Default::default()
        },
        vip,
        Mode::Dsr,
        &backends(0),
    );
    let prog = dp.program_ref();
    const FLOWS: u32 = 20_000;
    let pkt = |n: u32, flags: u8| {
        let (src, sport) = client(n);
        Pkt::new(&src, "198.18.1.1", L4::tcp(sport, 80, flags))
    };

    let before = snapshot(&dp);
    let mut first = Vec::with_capacity(FLOWS as usize);
    for n in 0..FLOWS {
        let p = pkt(n, TCP_ACK);
        let b = forward(prog, &p);
        assert_eq!(
            Some(b),
            dp.maglev_backend(&vip, &p.flow_key()),
            "flow {n}: a new flow must go where the Maglev table says"
        );
        first.push(b);
    }
    let d = diff(&before, &snapshot(&dp));
    assert_eq!(reason_packets(&d, Reason::FwdNewFlow), u64::from(FLOWS));
    assert_eq!(d[&format!("vip.{vip}.new_flows")], u64::from(FLOWS));

    let resident = (0..FLOWS)
        .filter(|n| dp.flow_entry(&pkt(*n, TCP_ACK).flow_key()).is_some())
        .count();
    assert!(
        resident > 0 && resident <= 2048,
        "the flow table holds {resident} of {FLOWS} flows; it has room for 2,048"
    );

    let before = snapshot(&dp);
    let mut hits = 0u64;
    for n in 0..FLOWS {
        let p = pkt(n, TCP_ACK);
        if dp.flow_entry(&p.flow_key()).is_some() {
            hits += 1;
        }
        assert_eq!(
            forward(prog, &p),
            first[n as usize],
            "flow {n} changed backend after eviction with the backend set unchanged"
        );
    }
    let d = diff(&before, &snapshot(&dp));
    assert_eq!(reason_packets(&d, Reason::FwdEstablished), hits);
    assert_eq!(
        reason_packets(&d, Reason::FwdNewFlow),
        u64::from(FLOWS) - hits
    );
    assert!(
        hits < u64::from(FLOWS) / 2,
        "only {hits} of {FLOWS} flows should have survived in a 2,048-entry table"
    );
    let per_backend: u64 = (0..BACKENDS)
        .map(|i| d[&format!("backend.{vip}.198.18.4.{}.packets", 10 + i)])
        .sum();
    assert_eq!(
        per_backend,
        u64::from(FLOWS),
        "backend packet counters add up"
    );
}

/// A random source in 198.18.0.0/15 less the VIP's and backends' /24s
/// (198.18.32.0 up) and a random port.
fn random_client(rng: &mut Rng) -> (String, u16) {
    let r = rng.next_u64();
    let host = 0x2000 + (r as u32 & 0xffff) % (0x2_0000 - 0x2000);
    let src = format!(
        "198.{}.{}.{}",
        18 + (host >> 16),
        (host >> 8) & 0xff,
        host & 0xff
    );
    (src, 1024 + ((r >> 32) as u16 % 60_000))
}

/// 100 flows established (SYN, then the ACK that records them) in a flow
/// table of 16,384 entries in all.
fn established(dp: &Dataplane) -> Vec<(Pkt, IpAddr)> {
    let prog = dp.program_ref();
    (0..100)
        .map(|n| {
            let (src, sport) = client(n);
            let syn = Pkt::new(&src, "198.18.1.1", L4::tcp(sport, 80, TCP_SYN));
            let b = forward(prog, &syn);
            let ack = Pkt::new(&src, "198.18.1.1", L4::tcp(sport, 80, TCP_ACK));
            assert_eq!(forward(prog, &ack), b, "flow {n}: the ACK follows its SYN");
            assert!(
                dp.flow_entry(&ack.flow_key()).is_some(),
                "flow {n} recorded"
            );
            (ack, b)
        })
        .collect()
}

/// After a flood: every established flow is still in the flow table; a
/// weight change that moves some of their Maglev slots moves none of them.
fn established_survive(dp: &mut Dataplane, flows: &[(Pkt, IpAddr)]) {
    let vip = dsr_vip();
    for (i, (p, _)) in flows.iter().enumerate() {
        assert!(
            dp.flow_entry(&p.flow_key()).is_some(),
            "established flow {i} was evicted by the flood"
        );
    }
    let mut bs = backends(0);
    bs[0].weight = 20;
    dp.set_backends(&vip, &bs).expect("weight change");
    let moved = flows
        .iter()
        .filter(|(p, b)| dp.maglev_backend(&vip, &p.flow_key()) != Some(*b))
        .count();
    assert!(
        moved > 0,
        "the weight change must move some established flows' slots for this test to mean anything"
    );
    let before = snapshot(dp);
    let prog = dp.program_ref();
    for (i, (p, b)) in flows.iter().enumerate() {
        assert_eq!(forward(prog, p), *b, "established flow {i} moved");
    }
    let d = diff(&before, &snapshot(dp));
    assert_eq!(
        reason_packets(&d, Reason::FwdEstablished),
        flows.len() as u64,
        "{moved} of them have a new Maglev slot, all hit the flow table: {d:?}"
    );
}

/// The flow table's size in all: 16,384 entries over the possible CPUs.
fn table_of_16384() -> u32 {
    16_384 / aya::util::nr_cpus().expect("possible CPUs") as u32
}

/// 300,000 SYNs from random sources and ports through a flow table of
/// 16,384 entries after 100 established flows: every SYN goes where the
/// Maglev table says and records nothing, so the 100 stay in the table,
/// and a weight change then moves none of them.
#[test]
fn syn_flood_records_nothing_and_established_flows_survive_a_change() {
    require_root();
    pin_to_cpu0();
    let vip = dsr_vip();
    let mut dp = load(
        DataplaneConfig {
            flow_capacity_per_cpu: table_of_16384(),
            ..Default::default()
        },
        vip,
        Mode::Dsr,
        &backends(0),
    );
    let flows = established(&dp);
    const FLOOD: u64 = 300_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let before = snapshot(&dp);
    let mut per_backend: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let mut hits = 0u64;
    let prog = dp.program_ref();
    for _ in 0..FLOOD {
        let (src, sport) = random_client(&mut rng);
        let p = Pkt::new(&src, "198.18.1.1", L4::tcp(sport, 80, TCP_SYN));
        let b = forward(prog, &p);
        match flows.iter().find(|(e, _)| e.flow_key() == p.flow_key()) {
            // A random 5-tuple equal to an established flow's: a hit.
            Some((_, eb)) => {
                assert_eq!(b, *eb);
                hits += 1;
            }
            None => assert_eq!(
                Some(b),
                dp.maglev_backend(&vip, &p.flow_key()),
                "flood SYN {p:?} went to the wrong backend"
            ),
        }
        *per_backend.entry(b).or_default() += 1;
    }
    let d = diff(&before, &snapshot(&dp));
    assert_eq!(reason_packets(&d, Reason::FwdSyn), FLOOD - hits, "{d:?}");
    assert_eq!(reason_packets(&d, Reason::FwdEstablished), hits);
    assert_eq!(
        d.get(&format!("vip.{vip}.new_flows")),
        None,
        "no flow recorded"
    );
    for (b, n) in &per_backend {
        assert_eq!(d[&format!("backend.{vip}.{b}.packets")], *n, "backend {b}");
    }
    assert_eq!(
        dp.flow_entries().expect("reading FLOWS").len(),
        flows.len(),
        "the flood left no entry in the flow table"
    );
    established_survive(&mut dp, &flows);
}

/// 300,000 non-SYN packets of new flows from random sources, far above an
/// insert rate limit of 200 flows per second per CPU, through the same
/// table: each goes where the Maglev table says; at most 200 per second
/// are recorded, the rest counted as `fwd_flood`; the 100 established
/// flows stay, and a weight change then moves none of them.
#[test]
fn non_syn_flood_over_the_rate_limit_and_established_flows_survive_a_change() {
    require_root();
    pin_to_cpu0();
    let vip = dsr_vip();
    const RATE: u64 = 200;
    let mut dp = load(
        DataplaneConfig {
            flow_capacity_per_cpu: table_of_16384(),
            new_flow_rate: RATE as u32,
            ..Default::default()
        },
        vip,
        Mode::Dsr,
        &backends(0),
    );
    // A fresh one-second window for the 100.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let flows = established(&dp);
    const FLOOD: u64 = 300_000;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let before = snapshot(&dp);
    let start = std::time::Instant::now();
    let prog = dp.program_ref();
    for _ in 0..FLOOD {
        let (src, sport) = random_client(&mut rng);
        let p = Pkt::new(&src, "198.18.1.1", L4::tcp(sport, 80, TCP_ACK));
        let b = forward(prog, &p);
        if !flows.iter().any(|(e, _)| e.flow_key() == p.flow_key()) {
            assert_eq!(
                Some(b),
                dp.maglev_backend(&vip, &p.flow_key()),
                "flood packet {p:?} went to the wrong backend"
            );
        }
    }
    // The windows the flood can have touched (each starts at a recorded
    // or refused flow, so at most one per second begun, plus the 100's).
    let windows = start.elapsed().as_secs() + 2;
    let d = diff(&before, &snapshot(&dp));
    let new = reason_packets(&d, Reason::FwdNewFlow);
    let flood = reason_packets(&d, Reason::FwdFlood);
    let est = reason_packets(&d, Reason::FwdEstablished);
    assert_eq!(new + flood + est, FLOOD, "{d:?}");
    assert!(
        new <= RATE * windows,
        "{new} flows recorded in {windows} windows of {RATE}"
    );
    assert!(
        flood >= FLOOD - RATE * windows,
        "{flood} of {FLOOD} over the limit"
    );
    assert_eq!(d[&format!("vip.{vip}.new_flows")], new);
    assert_eq!(
        dp.flow_entries().expect("reading FLOWS").len() as u64,
        flows.len() as u64 + new,
        "the table holds the 100 and the flows recorded under the limit, nothing else"
    );
    established_survive(&mut dp, &flows);
}

/// fullnat with 64 source ports on CPU 0 and one backend: 64 SYNs get 64
/// distinct ports; further new flows are dropped and counted
/// (`drop_nat_no_port`) while the 64 are live, as handshakes in progress
/// and once established, never given a port in use; each flow's ACK keeps
/// its SYN's port, and the flows keep forwarding with it.
#[test]
fn fullnat_port_exhaustion_is_counted_and_no_live_port_is_reused() {
    require_root();
    pin_to_cpu0();
    let ncpus = aya::util::nr_cpus().expect("possible CPUs") as u16;
    const PER_CPU: u16 = 64;
    let vip = VipAddr {
        addr: "198.18.1.20".parse().expect("literal"),
        port: 80,
        proto: Proto::Tcp,
    };
    let dp = load(
        DataplaneConfig {
            flow_capacity_per_cpu: 4096,
            nat_capacity: 4096,
            fullnat_src_v4: Some("198.18.5.1".parse().expect("literal")),
            fullnat_ports: (40000, 40000 + PER_CPU * ncpus - 1),
            ..Default::default()
        },
        vip,
        Mode::FullNat,
        // One backend: a translation is unique per (backend, source port),
        // so with one backend the 64 ports are the whole space.
        &backends(8080)[..1],
    );
    let prog = dp.program_ref();
    let syn = |n: u32, flags: u8| {
        let (src, sport) = client(n);
        Pkt::new(&src, "198.18.1.20", L4::tcp(sport, 80, flags))
    };
    // (source address, source port) of a forwarded fullnat frame.
    let snat = |out: &[u8]| -> (IpAddr, u16) {
        let ihl = usize::from(out[14] & 0x0f) * 4;
        (
            IpAddr::from([out[26], out[27], out[28], out[29]]),
            u16::from_be_bytes([out[14 + ihl], out[15 + ihl]]),
        )
    };

    let before = snapshot(&dp);
    let mut ports = BTreeMap::new();
    for n in 0..u32::from(PER_CPU) {
        let (action, out) = run(prog, &syn(n, TCP_SYN).bytes()).expect("test run");
        assert_eq!(action, XDP_TX, "flow {n} of {PER_CPU} must get a port");
        let (src, port) = snat(&out);
        assert_eq!(src, IpAddr::from([198, 18, 5, 1]));
        assert!(
            (40000..40000 + PER_CPU).contains(&port),
            "flow {n} got port {port}, outside CPU 0's range"
        );
        if let Some(other) = ports.insert(port, n) {
            panic!("port {port} given to flow {n} while flow {other} holds it");
        }
    }
    // Every port is held: by a handshake in progress (its SYN's
    // translation in NAT_SYN), then by an established flow; either way a
    // new flow is dropped, never given a port in use.
    const MORE: u32 = 25;
    let mut next = u32::from(PER_CPU);
    let mut more = |prog: &Xdp| {
        for n in next..next + MORE {
            let (action, _) = run(prog, &syn(n, TCP_SYN).bytes()).expect("test run");
            assert_eq!(
                action, XDP_DROP,
                "flow {n}: every port is live, it must be dropped"
            );
        }
        next += MORE;
    };
    more(prog);
    // The flows' ACKs complete their handshakes with their SYN's port, then
    // keep forwarding with it.
    for round in 0..2 {
        if round == 1 {
            more(prog);
        }
        for (port, n) in &ports {
            let (action, out) = run(prog, &syn(*n, TCP_ACK).bytes()).expect("test run");
            assert_eq!(action, XDP_TX);
            assert_eq!(snat(&out).1, *port, "flow {n} changed its source port");
        }
    }
    let d = diff(&before, &snapshot(&dp));
    assert_eq!(reason_packets(&d, Reason::FwdSyn), u64::from(PER_CPU));
    assert_eq!(reason_packets(&d, Reason::FwdNewFlow), u64::from(PER_CPU));
    assert_eq!(
        reason_packets(&d, Reason::DropNatNoPort),
        u64::from(2 * MORE)
    );
    assert_eq!(
        reason_packets(&d, Reason::FwdEstablished),
        u64::from(PER_CPU)
    );
}

/// A peer's removal of a NAT translation (its copy expired) ends the
/// translation here only if it has expired here too: a live entry stays.
#[test]
fn a_peers_nat_removal_spares_a_live_translation() {
    require_root();
    let dp_cfg = DataplaneConfig {
        flow_capacity_per_cpu: 1024,
        nat_capacity: 1024,
        nat_tcp_idle: std::time::Duration::from_secs(60),
        ..Default::default()
    };
    let mut dp = Dataplane::load(dp_cfg).expect("loading the balancer");
    let key =
        |port: u16| Pkt::new("198.18.4.10", "198.18.32.1", L4::tcp(80, port, TCP_ACK)).flow_key();
    let now = lb_userspace::dataplane::monotonic_ns();
    let entry = |last_ns: u64| lb_common::NatValue {
        last_ns,
        ..Default::default()
    };
    dp.install_nat(&key(1000), &entry(now)).expect("install");
    dp.install_nat(&key(1001), &entry(now.saturating_sub(120_000_000_000)))
        .expect("install");
    assert!(!dp.remove_nat_if_expired(&key(1000)).expect("remove"));
    assert!(
        dp.nat_entry(&key(1000)).is_some(),
        "a live translation was removed"
    );
    assert!(dp.remove_nat_if_expired(&key(1001)).expect("remove"));
    assert!(
        dp.nat_entry(&key(1001)).is_none(),
        "an expired translation stayed"
    );
    assert!(!dp.remove_nat_if_expired(&key(1002)).expect("absent"));
}
