//! Packet fixtures for a TCP SYN in dsr and tunnel mode (issue 15). A SYN
//! is recorded in no flow table. Outside a SYN flood it is looked up as any
//! packet is, so a SYN reusing the 5-tuple of a recorded flow goes where
//! the entry says (its ACK will). During a SYN flood (more than
//! `new_flow_rate` SYNs on the CPU this second) it is looked up in no flow
//! table (neither `FLOWS` nor `PEER_FLOWS`): the VIP's current Maglev table
//! decides. nat SYNs always look the flow table up: their translation is
//! found by its backend. The
//! real balancer run by the kernel through BPF_PROG_TEST_RUN, provisioned
//! through `Dataplane`; each row states the verdict, the output, the exact
//! counter changes and the flow tables' contents after it.

use std::{net::IpAddr, time::Duration};

use hola_tests::{
    fixture::{
        self, backend_mac, diff, expected_deltas, hex, pin_to_cpu0, require_root, run, snapshot,
    },
    packet::{L4, LB_MAC, Pkt, TCP_ACK, TCP_SYN, with_macs},
};
use lb_common::{FlowValue, Reason, hash::flow_hash};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Proto, VipAddr, VipSpec,
};

const XDP_TX: u32 = 3;
const CLIENT: &str = "198.18.0.9";
const CLIENT6: &str = "2001:db8::9";

fn backend(addr: &str, weight: u32) -> BackendSpec {
    BackendSpec {
        weight,
        ..fixture::backend(addr)
    }
}

fn tcp(src: &str, dst: &str, sport: u16, flags: u8) -> Pkt {
    Pkt::new(src, dst, L4::tcp(sport, 80, flags))
}

/// The output a row expects: exact bytes, or (tunnel, nat) the fields
/// that name the backend.
#[derive(Clone, Copy)]
enum Out {
    Dsr,
    Tunnel,
    Nat,
}

/// Runs `p` and checks: XDP_TX, the output for `to`, and exactly the
/// counter changes of one packet of `reason` to `to` of `vip`.
fn row(
    dp: &mut Dataplane,
    name: &str,
    p: &Pkt,
    reason: Reason,
    vip: VipAddr,
    to: IpAddr,
    out: Out,
) -> Vec<String> {
    let input = p.bytes();
    let before = snapshot(dp);
    let (action, got) = run(dp.program().expect("program"), &input).expect("BPF_PROG_TEST_RUN");
    let changed = diff(&before, &snapshot(dp));
    let mut errs = Vec::new();
    if action != XDP_TX {
        errs.push(format!("verdict {action}, expected XDP_TX"));
    }
    let ok = match out {
        Out::Dsr => got == with_macs(&input, backend_mac(to), LB_MAC),
        Out::Tunnel => {
            let IpAddr::V4(a) = to else {
                unreachable!("IPv4 tunnel rows only")
            };
            got.len() == input.len() + 20
                && got[..6] == backend_mac(to)
                && got[6..12] == LB_MAC
                && got[14 + 9] == 4
                && got[14 + 16..14 + 20] == a.octets()
                && got[34..] == p.l3()
        }
        Out::Nat => {
            let IpAddr::V4(a) = to else {
                unreachable!("IPv4 nat rows only")
            };
            got.len() == input.len() && got[..6] == backend_mac(to) && got[30..34] == a.octets()
        }
    };
    if !ok {
        errs.push(format!("output is not for {to}:\n{}", hex(&got)));
    }
    let want = expected_deltas(input.len(), reason, Some(vip), Some(to));
    if changed != want {
        errs.push(format!("counter changes {changed:?}\n expected {want:?}"));
    }
    errs.into_iter().map(|e| format!("{name}: {e}")).collect()
}

fn add(dp: &mut Dataplane, addr: &str, mode: Mode) -> VipAddr {
    let v = VipAddr {
        addr: addr.parse().expect("VIP address"),
        port: 80,
        proto: Proto::Tcp,
    };
    dp.add_vip(VipSpec {
        vip: v,
        mode,
        src_hash: false,
        table_size: 1021,
        quic: false,
    })
    .expect("add VIP");
    v
}

/// Records 64 flows (their first ACK, a new flow each) from `src` to
/// `vip`, applies `after` (backends), and returns one flow the change moved
/// in Maglev's table while its recorded backend stayed: (its ACK, recorded
/// backend, the table's backend now).
fn moved_flow(
    dp: &mut Dataplane,
    vip: VipAddr,
    src: &str,
    from: u16,
    after: &[BackendSpec],
) -> (Pkt, IpAddr, IpAddr) {
    let dst = vip.addr.to_string();
    let acks: Vec<Pkt> = (from..from + 64)
        .map(|port| tcp(src, &dst, port, TCP_ACK))
        .collect();
    let mut was = Vec::new();
    for p in &acks {
        let (action, _) = run(dp.program().expect("program"), &p.bytes()).expect("test run");
        assert_eq!(action, XDP_TX, "a flow's first ACK is forwarded");
        was.push(dp.maglev_backend(&vip, &p.flow_key()).expect("a backend"));
    }
    dp.set_backends(&vip, after).expect("set backends");
    acks.into_iter()
        .zip(was)
        .find_map(|(p, x)| {
            let y = dp.maglev_backend(&vip, &p.flow_key()).expect("a backend");
            (y != x).then_some((p, x, y))
        })
        .expect("the change moves one of 64 flows")
}

fn syn_of(ack: &Pkt) -> Pkt {
    let mut s = ack.clone();
    s.l4 = match s.l4 {
        L4::Tcp { sport, dport, .. } => L4::tcp(sport, dport, TCP_SYN),
        other => other,
    };
    s
}

/// The insert rate limit, and the SYN rate over which SYNs skip the
/// lookups, per CPU and second.
const RATE: u32 = 100;

/// Starts a fresh rate window: the program's window is one second long and
/// starts anew at the first packet after it ended.
fn next_window() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// Puts this CPU in a SYN flood: a fresh window, then `RATE` + 1 SYNs of
/// other clients to the dsr VIP `v` (every later SYN this second skips the
/// lookups; the rows that follow take milliseconds).
fn syn_flood(dp: &mut Dataplane, v: VipAddr) {
    next_window();
    let dst = v.addr.to_string();
    for i in 0..=RATE as u16 {
        let p = tcp("198.18.0.77", &dst, 50000 + i, TCP_SYN);
        let (action, _) = run(dp.program().expect("program"), &p.bytes()).expect("test run");
        assert_eq!(action, XDP_TX, "a flood SYN is forwarded");
    }
}

/// dsr (IPv4, IPv6) and tunnel: a SYN reusing a recorded flow's 5-tuple
/// after a change moved its slot goes to the recorded backend, and during
/// a SYN flood by the current table; either way the entry stays as it
/// was and the flow's ACK keeps the recorded backend.
#[test]
fn a_syn_is_looked_up_in_no_flow_table_during_a_syn_flood() {
    require_root();
    pin_to_cpu0();
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        // No grace period: the rows are about the flow table alone.
        table_grace: Duration::ZERO,
        new_flow_rate: RATE,
        peer_flows: 4096,
        ..Default::default()
    })
    .expect("loading the balancer (the verifier must accept it)");
    let dsr4 = add(&mut dp, "198.18.8.1", Mode::Dsr);
    let tun4 = add(&mut dp, "198.18.8.2", Mode::Tunnel);
    let dsr6 = add(&mut dp, "2001:db8:8::1", Mode::Dsr);
    let nat4 = add(&mut dp, "198.18.8.3", Mode::Nat);
    let three = |p: &str| [1, 2, 3].map(|i| backend(&format!("{p}{i}"), 1)).to_vec();
    let four = |p: &str| {
        let mut b = three(p);
        b.push(backend(&format!("{p}4"), 3));
        b
    };
    for (v, p) in [
        (dsr4, "198.18.9."),
        (tun4, "198.18.10."),
        (dsr6, "2001:db8:9::"),
        (nat4, "198.18.11."),
    ] {
        dp.set_backends(&v, &three(p)).expect("set backends");
    }
    let mut failures = Vec::new();

    for (v, src, p, out) in [
        (dsr4, CLIENT, "198.18.9.", Out::Dsr),
        (tun4, CLIENT, "198.18.10.", Out::Tunnel),
        (dsr6, CLIENT6, "2001:db8:9::", Out::Dsr),
    ] {
        let mode = match out {
            Out::Tunnel => "tunnel",
            _ if src == CLIENT6 => "dsr IPv6",
            _ => "dsr",
        };
        // (64 inserts: under the rate in a fresh window.)
        next_window();
        let (ack, x, y) = moved_flow(&mut dp, v, src, 40000, &four(p));
        let key = ack.flow_key();
        let entry = dp.flow_entry(&key);
        assert_eq!(
            entry,
            Some(FlowValue {
                backend_id: dp.backend_id(&v, x).expect("x is v's"),
                hash: flow_hash(&key, false),
            }),
            "{mode}: the flow is recorded with its first backend"
        );
        failures.extend(row(
            &mut dp,
            &format!("{mode}: the recorded flow keeps its backend after the change"),
            &ack,
            Reason::FwdEstablished,
            v,
            x,
            out,
        ));
        failures.extend(row(
            &mut dp,
            &format!("{mode}: a SYN reusing the recorded 5-tuple goes where the entry says"),
            &syn_of(&ack),
            Reason::FwdEstablished,
            v,
            x,
            out,
        ));
        syn_flood(&mut dp, dsr4);
        failures.extend(row(
            &mut dp,
            &format!(
                "{mode}: during a SYN flood, a SYN reusing it is looked up nowhere: the table's backend now"
            ),
            &syn_of(&ack),
            Reason::FwdSyn,
            v,
            y,
            out,
        ));
        assert_eq!(
            dp.flow_entry(&key),
            entry,
            "{mode}: the SYN leaves the flow's entry as it was"
        );
        failures.extend(row(
            &mut dp,
            &format!("{mode}: a non-SYN packet of the 5-tuple still finds the recorded entry"),
            &ack,
            Reason::FwdEstablished,
            v,
            x,
            out,
        ));
    }

    // A flow a cluster peer recorded (in PEER_FLOWS, to a backend other
    // than the table's): its SYN goes by the table and is recorded nowhere;
    // its ACK takes the peer's flow and records it here.
    dp.set_cluster(true).expect("CLUSTER_STATE");
    syn_flood(&mut dp, dsr4);
    let g = tcp(CLIENT, "198.18.8.1", 41000, TCP_ACK);
    let key = g.flow_key();
    let y = dp.maglev_backend(&dsr4, &key).expect("a backend");
    let z: IpAddr = ["198.18.9.1", "198.18.9.2"]
        .iter()
        .map(|a| a.parse().expect("literal"))
        .find(|a| *a != y)
        .expect("two candidates");
    let peer = FlowValue {
        backend_id: dp.backend_id(&dsr4, z).expect("z is dsr4's"),
        hash: flow_hash(&key, false),
    };
    dp.install_peer_flow(&key, peer).expect("PEER_FLOWS");
    failures.extend(row(
        &mut dp,
        "cluster, SYN flood: a SYN whose 5-tuple a peer recorded goes by the table",
        &syn_of(&g),
        Reason::FwdSyn,
        dsr4,
        y,
        Out::Dsr,
    ));
    assert_eq!(
        dp.flow_entry(&key),
        None,
        "cluster: the SYN is not recorded"
    );
    assert_eq!(
        dp.peer_flow(&key),
        Some(peer),
        "cluster: PEER_FLOWS as it was"
    );
    failures.extend(row(
        &mut dp,
        "cluster: its ACK takes the peer's flow",
        &g,
        Reason::FwdPeerFlow,
        dsr4,
        z,
        Out::Dsr,
    ));
    assert_eq!(dp.flow_entry(&key), Some(peer), "cluster: recorded here");
    dp.set_cluster(false).expect("CLUSTER_STATE");

    // nat: a SYN looks the flow table up even during a SYN flood (its
    // translation is found by the recorded backend): a SYN reusing a
    // recorded flow's 5-tuple goes to that backend, with the flow's
    // translation.
    next_window();
    let (ack, x, _) = moved_flow(&mut dp, nat4, CLIENT, 42000, &four("198.18.11."));
    syn_flood(&mut dp, dsr4);
    let entry = dp.flow_entry(&ack.flow_key());
    failures.extend(row(
        &mut dp,
        "nat: a SYN reusing a recorded 5-tuple goes to its recorded backend",
        &syn_of(&ack),
        Reason::FwdEstablished,
        nat4,
        x,
        Out::Nat,
    ));
    assert_eq!(
        dp.flow_entry(&ack.flow_key()),
        entry,
        "nat: entry unchanged"
    );

    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
