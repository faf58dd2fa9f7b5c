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

/// The flow table holds 2,048 flows (1,024 per CPU); 20,000 flows go
/// through it twice. The second time most have been evicted: each is a
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
        let p = pkt(n, TCP_SYN);
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

/// 50,000 SYNs from random sources and ports in 198.18.0.0/15 after 100
/// established flows: every SYN takes the new-flow path to the backend the
/// Maglev table gives it, the counters show exactly that, and the
/// established flows (evicted by the flood or not) keep their backends.
#[test]
fn syn_flood_from_random_sources_keeps_the_new_flow_path_correct() {
    require_root();
    pin_to_cpu0();
    let vip = dsr_vip();
    let dp = load(
        DataplaneConfig {
            flow_capacity_per_cpu: 4096,
            ..Default::default()
        },
        vip,
        Mode::Dsr,
        &backends(0),
    );
    let prog = dp.program_ref();
    let established: Vec<(Pkt, IpAddr)> = (0..100)
        .map(|n| {
            let (src, sport) = client(n);
            let p = Pkt::new(&src, "198.18.1.1", L4::tcp(sport, 80, TCP_SYN));
            let b = forward(prog, &p);
            (p, b)
        })
        .collect();

    const FLOOD: u64 = 50_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let before = snapshot(&dp);
    let mut per_backend: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let mut predicted_new = 0u64;
    for _ in 0..FLOOD {
        let r = rng.next_u64();
        // 198.18.0.0/15 less the VIP's and backends' /24s: 198.18.32.0 up.
        let host = 0x2000 + (r as u32 & 0xffff) % (0x2_0000 - 0x2000);
        let src = format!(
            "198.{}.{}.{}",
            18 + (host >> 16),
            (host >> 8) & 0xff,
            host & 0xff
        );
        let sport = 1024 + ((r >> 32) as u16 % 60_000);
        let p = Pkt::new(&src, "198.18.1.1", L4::tcp(sport, 80, TCP_SYN));
        let fresh = dp.flow_entry(&p.flow_key()).is_none();
        let b = forward(prog, &p);
        assert_eq!(
            Some(b),
            dp.maglev_backend(&vip, &p.flow_key()),
            "flood SYN {p:?} went to the wrong backend"
        );
        // Random sources can repeat a 5-tuple: only a fresh one is new.
        predicted_new += u64::from(fresh);
        *per_backend.entry(b).or_default() += 1;
    }
    let d = diff(&before, &snapshot(&dp));
    let new = reason_packets(&d, Reason::FwdNewFlow);
    let est = reason_packets(&d, Reason::FwdEstablished);
    assert_eq!(new + est, FLOOD, "every flood SYN forwarded: {d:?}");
    assert_eq!(
        new, predicted_new,
        "new flows: the SYNs whose 5-tuple was not in the table"
    );
    assert!(
        est < 100,
        "{est} flood SYNs hit the flow table; random 5-tuples should almost never repeat"
    );
    assert_eq!(d[&format!("vip.{vip}.new_flows")], new);
    assert_eq!(d.get(&format!("vip.{vip}.no_backend")), None);
    for (b, n) in &per_backend {
        assert_eq!(d[&format!("backend.{vip}.{b}.packets")], *n, "backend {b}");
        // Ten equal backends: each within a fifth of its share.
        let share = FLOOD / u64::from(BACKENDS);
        assert!(
            n.abs_diff(share) < share / 5,
            "backend {b} got {n} of {FLOOD} flood SYNs (share {share})"
        );
    }
    for (p, b) in &established {
        let mut q = p.clone();
        q.l4 = match q.l4 {
            L4::Tcp { sport, dport, .. } => L4::tcp(sport, dport, TCP_ACK),
            other => other,
        };
        assert_eq!(
            forward(prog, &q),
            *b,
            "an established flow moved during the flood"
        );
    }
}

/// fullnat with 64 source ports on CPU 0 and one backend: 64 flows get 64
/// distinct ports;
/// further new flows are dropped and counted (`drop_nat_no_port`) while
/// the 64 are live, never given a port in use; the live flows keep
/// forwarding with their ports throughout.
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
    const MORE: u32 = 50;
    for n in u32::from(PER_CPU)..u32::from(PER_CPU) + MORE {
        let (action, _) = run(prog, &syn(n, TCP_SYN).bytes()).expect("test run");
        assert_eq!(
            action, XDP_DROP,
            "flow {n}: every port is live, it must be dropped"
        );
    }
    // The live flows still forward, each with its own port.
    for (port, n) in &ports {
        let (action, out) = run(prog, &syn(*n, TCP_ACK).bytes()).expect("test run");
        assert_eq!(action, XDP_TX);
        assert_eq!(snat(&out).1, *port, "flow {n} changed its source port");
    }
    let d = diff(&before, &snapshot(&dp));
    assert_eq!(reason_packets(&d, Reason::FwdNewFlow), u64::from(PER_CPU));
    assert_eq!(reason_packets(&d, Reason::DropNatNoPort), u64::from(MORE));
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
