//! Packet fixtures for ICMP errors about `dsr` and `tunnel` flows (issue
//! 16 item 1): an error addressed to a VIP, quoting a packet the VIP sent
//! (VIP:port → client), goes to the flow's backend as the flow's data
//! does. The real program, run by the kernel through BPF_PROG_TEST_RUN;
//! each row states the input, the verdict, the exact output bytes and the
//! exact counter changes (every other counter must stay still).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hola_tests::{
    fixture::{
        backend, backend_mac, diff, expected_deltas, hex, ip, pin_to_cpu0, require_root, run,
        snapshot,
    },
    packet::{L4, LB_MAC, Pkt, TCP_ACK, fold, sum16, with_macs},
};
use lb_common::{Reason, hash::flow_hash};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Proto, VipAddr, VipSpec,
};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn vip(addr: &str, port: u16) -> VipAddr {
    VipAddr {
        addr: addr.parse().expect("VIP address"),
        port,
        proto: Proto::Tcp,
    }
}

/// An ICMP error frame from `from` to `to` quoting `quoted` (an IP
/// packet): IPv4 type/code with the next-hop MTU in the low 16 bits of the
/// second word (RFC 1191), or ICMPv6 type/code with the MTU as its second
/// word (RFC 4443), checksums computed here.
fn icmp(from: &str, to: &str, kind: u8, code: u8, mtu: u16, quoted: &[u8]) -> Pkt {
    let (s, d) = (ip(from), ip(to));
    let mut m = vec![kind, code, 0, 0, 0, 0];
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(quoted);
    let c = match (s, d) {
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            fold(sum16(&a.octets()) + sum16(&b.octets()) + m.len() as u32 + 58 + sum16(&m))
        }
        _ => fold(sum16(&m)),
    };
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let proto = if s.is_ipv4() { 1 } else { 58 };
    let mut p = Pkt::new(from, to, L4::Raw { proto, bytes: m });
    // From the router's side: the frame comes in from the client's link.
    p.frag = 0;
    p
}

/// The frame `tunnel` mode emits for the IP packet `inner` (traffic class
/// `tos`) of the flow hashed to `hash`, built independently of the
/// program: RFC 2003 / RFC 2473 outer header, source from the default
/// tunnel prefixes (198.18.255.0/24, 2001:db8:ffff::/112) and the hash.
fn tunnelled(inner: &[u8], tos: u8, hash: u32, to: IpAddr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&backend_mac(to));
    f.extend_from_slice(&LB_MAC);
    match to {
        IpAddr::V4(dst) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let src = Ipv4Addr::new(198, 18, 255, (hash & 0xff) as u8);
            let mut h = vec![0x45, tos];
            h.extend_from_slice(&((inner.len() + 20) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0, 64, 4, 0, 0]);
            h.extend_from_slice(&src.octets());
            h.extend_from_slice(&dst.octets());
            let c = fold(sum16(&h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        IpAddr::V6(dst) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut src = "2001:db8:ffff::"
                .parse::<Ipv6Addr>()
                .expect("literal")
                .octets();
            src[14..16].copy_from_slice(&((hash & 0xffff) as u16).to_be_bytes());
            let fl = hash & 0xf_ffff;
            let mut h = vec![
                0x60 | (tos >> 4),
                (tos << 4) | (fl >> 16) as u8,
                (fl >> 8) as u8,
                fl as u8,
            ];
            h.extend_from_slice(&(inner.len() as u16).to_be_bytes());
            h.extend_from_slice(&[41, 64]);
            h.extend_from_slice(&src);
            h.extend_from_slice(&dst.octets());
            f.extend_from_slice(&h);
        }
    }
    f.extend_from_slice(inner);
    f
}

struct Row {
    name: String,
    input: Vec<u8>,
    action: u32,
    reason: Reason,
    /// The VIP and backend credited (data rows only: an ICMP error credits
    /// its reason alone).
    vip: Option<VipAddr>,
    backend: Option<IpAddr>,
    output: Vec<u8>,
}

impl Row {
    fn untouched(name: &str, input: Vec<u8>) -> Self {
        Row {
            name: name.into(),
            output: input.clone(),
            input,
            action: XDP_PASS,
            reason: Reason::PassNotVip,
            vip: None,
            backend: None,
        }
    }
}

/// Runs one row and returns what did not match.
fn check(dp: &mut Dataplane, row: &Row) -> Option<String> {
    let before = snapshot(dp);
    let (action, out) = match run(dp.program().expect("program"), &row.input) {
        Ok(r) => r,
        Err(e) => return Some(format!("{}: BPF_PROG_TEST_RUN failed: {e}", row.name)),
    };
    let got = diff(&before, &snapshot(dp));
    let want = expected_deltas(row.input.len(), row.reason, row.vip, row.backend);
    let mut errs = Vec::new();
    if action != row.action {
        errs.push(format!("verdict {action}, expected {}", row.action));
    }
    if out != row.output {
        errs.push(format!(
            "output bytes differ\n got:\n{}\n want:\n{}",
            hex(&out),
            hex(&row.output)
        ));
    }
    if got != want {
        errs.push(format!("counter changes {got:?}\n expected {want:?}"));
    }
    (!errs.is_empty()).then(|| format!("{}: {}", row.name, errs.join("; ")))
}

/// One VIP of the table: its address, mode, the client talking to it, a
/// router between them, and the error kinds to quote its replies with.
struct Case {
    name: &'static str,
    vip: VipAddr,
    mode: Mode,
    client: &'static str,
    router: &'static str,
    /// "fragmentation needed" (IPv4 3/4) or "packet too big" (ICMPv6 2/0).
    too_big: (u8, u8),
    /// Another error of the family: time exceeded (IPv4 11/0) or
    /// destination unreachable (ICMPv6 1/4, port unreachable).
    other: (u8, u8),
}

#[test]
fn icmp_errors_reach_the_flows_backend() {
    require_root();
    // SAFETY: unshare only affects the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    pin_to_cpu0();
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        ..Default::default()
    })
    .expect("loading the balancer (the verifier must accept it)");
    let cases = [
        Case {
            name: "dsr v4",
            vip: vip("198.18.1.1", 80),
            mode: Mode::Dsr,
            client: "198.18.0.1",
            router: "198.18.0.254",
            too_big: (3, 4),
            other: (11, 0),
        },
        Case {
            name: "tunnel v4",
            vip: vip("198.18.1.2", 80),
            mode: Mode::Tunnel,
            client: "198.18.0.1",
            router: "198.18.0.254",
            too_big: (3, 4),
            other: (3, 3),
        },
        Case {
            name: "dsr v6",
            vip: vip("2001:db8:1::1", 80),
            mode: Mode::Dsr,
            client: "2001:db8::1",
            router: "2001:db8::fe",
            too_big: (2, 0),
            other: (1, 4),
        },
        Case {
            name: "tunnel v6",
            vip: vip("2001:db8:1::2", 80),
            mode: Mode::Tunnel,
            client: "2001:db8::1",
            router: "2001:db8::fe",
            too_big: (2, 0),
            other: (3, 0),
        },
    ];
    let mut failures = Vec::new();
    for (n, c) in cases.iter().enumerate() {
        dp.add_vip(VipSpec {
            vip: c.vip,
            mode: c.mode,
            src_hash: false,
            table_size: 1021,
            quic: false,
        })
        .expect("add VIP");
        let v6 = c.vip.addr.is_ipv6();
        let bs: Vec<BackendSpec> = (1..=3)
            .map(|i| {
                backend(&if v6 {
                    format!("2001:db8:2:{n}::{i}")
                } else {
                    format!("198.18.2.{}", n * 10 + i)
                })
            })
            .collect();
        dp.set_backends(&c.vip, &bs).expect("set backends");
        for f in rows(&mut dp, c) {
            failures.push(f);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The rows of one case; returns the failures.
fn rows(dp: &mut Dataplane, c: &Case) -> Vec<String> {
    let va = c.vip.addr.to_string();
    let (vip_s, client) = (va.as_str(), c.client);
    let tunnel = c.mode == Mode::Tunnel;
    let mut out = Vec::new();
    let mut go = |dp: &mut Dataplane, r: Row| {
        if let Some(f) = check(dp, &r) {
            out.push(format!("{}: {f}", c.name));
        }
    };
    // The row an error sent to `to` for the flow `data` must make.
    let fwd = |name: &str, err: &Pkt, data: &Pkt, to: IpAddr, reason: Reason| {
        let input = err.bytes();
        let output = if tunnel {
            let hash = flow_hash(&data.flow_key(), false);
            tunnelled(&err.l3(), err.tos, hash, to)
        } else {
            with_macs(&input, backend_mac(to), LB_MAC)
        };
        Row {
            name: name.into(),
            input,
            output,
            action: XDP_TX,
            reason,
            vip: None,
            backend: None,
        }
    };
    let reply = |port: u16| Pkt::new(vip_s, client, L4::tcp(80, port, TCP_ACK)).l3();

    // A live flow: its first non-SYN packet records it.
    let data = Pkt::new(client, vip_s, L4::tcp(41001, 80, TCP_ACK));
    let b = dp
        .maglev_backend(&c.vip, &data.flow_key())
        .expect("backend");
    let data_out = if tunnel {
        tunnelled(&data.l3(), 0, flow_hash(&data.flow_key(), false), b)
    } else {
        with_macs(&data.bytes(), backend_mac(b), LB_MAC)
    };
    go(
        dp,
        Row {
            name: "the flow's first packet, recorded".into(),
            input: data.bytes(),
            output: data_out,
            action: XDP_TX,
            reason: Reason::FwdNewFlow,
            vip: Some(c.vip),
            backend: Some(b),
        },
    );
    let (t, code) = c.too_big;
    let err = icmp(c.router, vip_s, t, code, 1400, &reply(41001));
    go(
        dp,
        fwd(
            "too big about the flow's reply goes to its backend (flow table)",
            &err,
            &data,
            b,
            Reason::FwdIcmpFlow,
        ),
    );
    let (t2, code2) = c.other;
    let err = icmp(c.router, vip_s, t2, code2, 0, &reply(41001));
    go(
        dp,
        fwd(
            "another error about the flow goes to its backend too",
            &err,
            &data,
            b,
            Reason::FwdIcmpFlow,
        ),
    );

    // A flow hola has no entry of: the Maglev table's backend.
    let unseen = Pkt::new(client, vip_s, L4::tcp(41002, 80, TCP_ACK));
    let ub = dp
        .maglev_backend(&c.vip, &unseen.flow_key())
        .expect("backend");
    let err = icmp(c.router, vip_s, t, code, 1400, &reply(41002));
    go(
        dp,
        fwd(
            "too big about an unrecorded flow goes where Maglev sends it",
            &err,
            &unseen,
            ub,
            Reason::FwdIcmpMaglev,
        ),
    );
    // (And records nothing: the same error again is a miss again.)
    go(
        dp,
        fwd(
            "and records no flow",
            &err,
            &unseen,
            ub,
            Reason::FwdIcmpMaglev,
        ),
    );

    // Not a VIP's packet: a port no VIP has, another source address.
    let stray = Pkt::new(vip_s, client, L4::tcp(81, 41001, TCP_ACK)).l3();
    go(
        dp,
        Row::untouched(
            "an error quoting a port no VIP has passes",
            icmp(c.router, vip_s, t, code, 1400, &stray).bytes(),
        ),
    );
    let other_src = if c.vip.addr.is_ipv6() {
        "2001:db8:1::99"
    } else {
        "198.18.1.99"
    };
    let stray = Pkt::new(other_src, client, L4::tcp(80, 41001, TCP_ACK)).l3();
    go(
        dp,
        Row::untouched(
            "an error quoting another address passes",
            icmp(c.router, vip_s, t, code, 1400, &stray).bytes(),
        ),
    );
    // Truncated: the quoted header ends before the ports.
    let full = reply(41001);
    let hl = if c.vip.addr.is_ipv6() { 40 } else { 20 };
    go(
        dp,
        Row::untouched(
            "an error whose quoted packet stops before the ports passes",
            icmp(c.router, vip_s, t, code, 1400, &full[..hl + 2]).bytes(),
        ),
    );
    // Malformed: the quoted header's version is wrong.
    let mut bad = full.clone();
    bad[0] = if c.vip.addr.is_ipv6() { 0x40 } else { 0x60 };
    go(
        dp,
        Row::untouched(
            "an error quoting a packet of the wrong IP version passes",
            icmp(c.router, vip_s, t, code, 1400, &bad).bytes(),
        ),
    );
    // Not an error: an echo request to the VIP.
    go(
        dp,
        Row::untouched(
            "an echo request to the VIP passes",
            icmp(
                client,
                vip_s,
                if c.vip.addr.is_ipv6() { 128 } else { 8 },
                0,
                1,
                &[0u8; 8],
            )
            .bytes(),
        ),
    );
    out
}

/// During a grace period after a table change, an error about a TCP flow
/// hola holds no entry of goes where the flow's next packet would: the
/// previous table's backend for a slot the change moved.
#[test]
fn icmp_errors_follow_the_previous_table_during_a_grace_period() {
    require_root();
    pin_to_cpu0();
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        table_grace: std::time::Duration::from_secs(60),
        ..Default::default()
    })
    .expect("loading the balancer (the verifier must accept it)");
    let v = vip("198.18.6.1", 80);
    dp.add_vip(VipSpec {
        vip: v,
        mode: Mode::Dsr,
        src_hash: false,
        table_size: 1021,
        quic: false,
    })
    .expect("add VIP");
    let three: Vec<BackendSpec> = ["198.18.7.1", "198.18.7.2", "198.18.7.3"]
        .iter()
        .map(|a| backend(a))
        .collect();
    dp.set_backends(&v, &three).expect("set backends");
    let client = "198.18.0.2";
    let flow = |port: u16| Pkt::new(client, "198.18.6.1", L4::tcp(port, 80, TCP_ACK));
    let before: Vec<IpAddr> = (43000..43200)
        .map(|p| dp.maglev_backend(&v, &flow(p).flow_key()).expect("backend"))
        .collect();
    let mut four = three.clone();
    four.push(backend("198.18.7.4"));
    dp.set_backends(&v, &four).expect("set backends");
    let (port, old) = (43000..43200)
        .zip(before)
        .find(|(p, old)| dp.maglev_backend(&v, &flow(*p).flow_key()) != Some(*old))
        .expect("a quarter of the slots move to the new backend");
    let reply = Pkt::new("198.18.6.1", client, L4::tcp(80, port, TCP_ACK)).l3();
    let err = icmp("198.18.0.254", "198.18.6.1", 3, 4, 1400, &reply);
    let input = err.bytes();
    let row = Row {
        name: "grace: too big about a flow in a moved slot goes to the previous table's backend"
            .into(),
        output: with_macs(&input, backend_mac(old), LB_MAC),
        input,
        action: XDP_TX,
        reason: Reason::FwdIcmpMaglev,
        vip: None,
        backend: None,
    };
    if let Some(f) = check(&mut dp, &row) {
        panic!("{f}");
    }
}

/// The answer `hola_too_big` must make to the frame `input` (untagged, its
/// IP packet from `client` to `vip`): MACs swapped, a new IP header from
/// the VIP to the client, ICMP "fragmentation needed" (3/4) or ICMPv6
/// "packet too big" (2/0) reporting `mtu`, and the first 512 bytes of the
/// packet, checksums computed here.
fn too_big_answer(input: &[u8], vip: IpAddr, client: IpAddr, mtu: u32) -> Vec<u8> {
    let quote = &input[14..14 + 512];
    let mut f = Vec::new();
    f.extend_from_slice(&input[6..12]);
    f.extend_from_slice(&input[0..6]);
    f.extend_from_slice(&input[12..14]);
    match (vip, client) {
        (IpAddr::V4(v), IpAddr::V4(c)) => {
            let mut h = vec![0x45, 0xc0];
            h.extend_from_slice(&540u16.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
            h.extend_from_slice(&v.octets());
            h.extend_from_slice(&c.octets());
            let ck = fold(sum16(&h));
            h[10..12].copy_from_slice(&ck.to_be_bytes());
            let mut m = vec![3, 4, 0, 0, 0, 0];
            m.extend_from_slice(&(mtu as u16).to_be_bytes());
            m.extend_from_slice(quote);
            let ck = fold(sum16(&m));
            m[2..4].copy_from_slice(&ck.to_be_bytes());
            f.extend_from_slice(&h);
            f.extend_from_slice(&m);
        }
        (IpAddr::V6(v), IpAddr::V6(c)) => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&520u16.to_be_bytes());
            h.extend_from_slice(&[58, 64]);
            h.extend_from_slice(&v.octets());
            h.extend_from_slice(&c.octets());
            let mut m = vec![2, 0, 0, 0];
            m.extend_from_slice(&mtu.to_be_bytes());
            m.extend_from_slice(quote);
            let ck = fold(sum16(&v.octets()) + sum16(&c.octets()) + 520 + 58 + sum16(&m));
            m[2..4].copy_from_slice(&ck.to_be_bytes());
            f.extend_from_slice(&h);
            f.extend_from_slice(&m);
        }
        _ => panic!("one family"),
    }
    f
}

/// Tunnel "too big" (issue 16 item 2): the egress (here the test run's
/// ingress, lo, ifindex 1: the backends are reached by XDP_TX) has an MTU
/// of 1,400; a tunnel VIP's packet that would exceed it once encapsulated
/// is answered, one that fits (or IPv4 without DF) is encapsulated.
#[test]
fn tunnel_too_big_is_answered() {
    require_root();
    // SAFETY: unshare only affects the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    pin_to_cpu0();
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        ..Default::default()
    })
    .expect("loading the balancer (the verifier must accept it)");
    let (t4, t6) = (vip("198.18.1.2", 80), vip("2001:db8:1::2", 80));
    let (b4, b6) = ("198.18.3.1", "2001:db8:3::1");
    for (v, b) in [(t4, b4), (t6, b6)] {
        dp.add_vip(VipSpec {
            vip: v,
            mode: Mode::Tunnel,
            src_hash: false,
            table_size: 1021,
            quic: false,
        })
        .expect("add VIP");
        dp.set_backends(&v, &[backend(b)]).expect("set backends");
    }
    dp.set_egress_mtus(&[(1, 1400)]).expect("EGRESS_MTU");
    let (c4, c6) = ("198.18.0.1", "2001:db8::1");
    let syn = |src: &str, dst: &str, payload: usize| {
        Pkt::new(
            src,
            dst,
            L4::Tcp {
                sport: 41000,
                dport: 80,
                flags: hola_tests::packet::TCP_SYN,
                payload: vec![0x5a; payload],
            },
        )
    };
    let answer = |name: &str, p: &Pkt, v: VipAddr, mtu: u32| {
        let input = p.bytes();
        Row {
            name: name.into(),
            output: too_big_answer(&input, p.dst, p.src, mtu),
            input,
            action: XDP_TX,
            reason: Reason::TxTooBig,
            vip: Some(v),
            backend: None,
        }
    };
    let encap = |name: &str, p: &Pkt, v: VipAddr, b: &str| Row {
        name: name.into(),
        input: p.bytes(),
        output: tunnelled(&p.l3(), p.tos, flow_hash(&p.flow_key(), false), ip(b)),
        action: XDP_TX,
        reason: Reason::FwdSyn,
        vip: Some(v),
        backend: Some(ip(b)),
    };
    // IPv4: 1,381 + 20 > 1,400; 1,380 + 20 fits.
    let big4 = syn(c4, "198.18.1.2", 1341);
    let rows = [
        answer(
            "IPv4 with DF, 1,401 bytes once encapsulated: fragmentation needed, MTU 1,380",
            &big4,
            t4,
            1380,
        ),
        encap(
            "IPv4, 1,400 bytes once encapsulated: encapsulated",
            &syn(c4, "198.18.1.2", 1340),
            t4,
            b4,
        ),
        encap(
            "IPv4 without DF, too big: encapsulated all the same",
            &big4.clone().frag(0),
            t4,
            b4,
        ),
        answer(
            "IPv6, 1,401 bytes once encapsulated: packet too big, MTU 1,360",
            &syn(c6, "2001:db8:1::2", 1301),
            t6,
            1360,
        ),
        encap(
            "IPv6, 1,400 bytes once encapsulated: encapsulated",
            &syn(c6, "2001:db8:1::2", 1300),
            t6,
            b6,
        ),
    ];
    let mut failures: Vec<String> = rows.iter().filter_map(|r| check(&mut dp, r)).collect();
    // No MTU known: nothing is checked.
    dp.set_egress_mtus(&[]).expect("EGRESS_MTU");
    if let Some(f) = check(
        &mut dp,
        &encap("no egress MTU known: encapsulated", &big4, t4, b4),
    ) {
        failures.push(f);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // The rate limit: at most ANSWERS_PER_SEC (100) answers per CPU and
    // second; the rest are dropped, counted.
    dp.set_egress_mtus(&[(1, 1400)]).expect("EGRESS_MTU");
    let input = big4.bytes();
    let start = std::time::Instant::now();
    let before = snapshot(&dp);
    for _ in 0..300 {
        run(dp.program().expect("program"), &input).expect("test run");
    }
    let secs = start.elapsed().as_secs() + 1;
    let d = diff(&before, &snapshot(&dp));
    let sent = d.get("reason.tx_too_big.packets").copied().unwrap_or(0);
    let dropped = d.get("reason.drop_too_big.packets").copied().unwrap_or(0);
    assert_eq!(
        sent + dropped,
        300,
        "every packet answered or dropped: {d:?}"
    );
    assert!(
        sent <= 100 * (secs + 1) && dropped > 0,
        "{sent} answers and {dropped} drops in {secs} s: at most 100 answers a second"
    );
}
