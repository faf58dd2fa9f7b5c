//! Packet fixtures for fragments (issue 16 item 3): the real programs, run
//! by the kernel through BPF_PROG_TEST_RUN, provisioned through
//! `Dataplane`. A datagram is built whole, cut into fragments here, and
//! each fragment's verdict, exact output bytes and counter changes are
//! checked: the first fragment is balanced as any packet, the later ones
//! follow it (dsr, tunnel, nat; IPv4 and IPv6), a later fragment that
//! comes first decides for its datagram, one that cannot be placed is
//! dropped and counted, an entry past its lifetime is not followed, and a
//! NAT backend's fragmented reply is translated back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hola_tests::{
    fixture::{
        self, backend_mac, diff, expected_deltas, hex, ip, pin_to_cpu0, require_root, run, snapshot,
    },
    netns::cmd,
    packet::{CLIENT_MAC, L4, LB_MAC, Pkt, fold, fragments, sum16, with_macs},
};
use lb_common::{FlowKey, Reason, frag::FRAG_LIFETIME_NS, hash::flow_hash};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Proto, VipAddr, VipSpec,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

fn backend(addr: &str, port: u16) -> BackendSpec {
    BackendSpec {
        port,
        ..fixture::backend(addr)
    }
}

fn udp_vip(addr: &str, port: u16) -> VipAddr {
    VipAddr {
        addr: ip(addr),
        port,
        proto: Proto::Udp,
    }
}

/// `frame` (Ethernet, untagged) as the balancer must send it in `tunnel`
/// mode to `to`: an outer IPv4 (RFC 2003) or IPv6 (RFC 2473) header from
/// the tunnel source chosen by `hash`.
fn tunnelled(frame: &[u8], to: IpAddr, hash: u32) -> Vec<u8> {
    let inner = &frame[14..];
    let mut f = Vec::new();
    f.extend_from_slice(&backend_mac(to));
    f.extend_from_slice(&LB_MAC);
    match to {
        IpAddr::V4(dst) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let src = Ipv4Addr::new(198, 18, 255, (hash & 0xff) as u8);
            let mut h = vec![0x45, inner[1]];
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
            let tos = (inner[0] << 4) | (inner[1] >> 4);
            let fl = hash & 0xf_ffff;
            f.extend_from_slice(&[
                0x60 | (tos >> 4),
                (tos << 4) | (fl >> 16) as u8,
                (fl >> 8) as u8,
                fl as u8,
            ]);
            f.extend_from_slice(&(inner.len() as u16).to_be_bytes());
            f.extend_from_slice(&[41, 64]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&dst.octets());
        }
    }
    f.extend_from_slice(inner);
    f
}

/// The hash a later fragment that came first is placed by: the
/// datagram's addresses, protocol and id in a flow key's place.
fn datagram_hash(p: &Pkt, id: u32) -> u32 {
    let mut k: FlowKey = p.flow_key();
    let b = if p.src.is_ipv4() {
        (id as u16)
            .to_be_bytes()
            .into_iter()
            .chain([0, 0])
            .collect::<Vec<_>>()
    } else {
        id.to_be_bytes().to_vec()
    };
    k.sport = u16::from_ne_bytes([b[0], b[1]]);
    k.dport = u16::from_ne_bytes([b[2], b[3]]);
    flow_hash(&k, false)
}

struct Row {
    name: String,
    input: Vec<u8>,
    action: u32,
    reason: Reason,
    vip: Option<VipAddr>,
    backend: Option<IpAddr>,
    output: Vec<u8>,
}

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

/// A forwarded row.
fn fwd(
    name: &str,
    input: Vec<u8>,
    output: Vec<u8>,
    reason: Reason,
    vip: VipAddr,
    to: IpAddr,
) -> Row {
    Row {
        name: name.into(),
        input,
        output,
        action: XDP_TX,
        reason,
        vip: Some(vip),
        backend: Some(to),
    }
}

/// The datagram `p` as it leaves toward a nat backend `to`:`port`.
fn nat_request(p: &Pkt, to: &str, port: u16) -> Pkt {
    let mut q = p.clone();
    q.dst = ip(to);
    q.dmac = backend_mac(ip(to));
    q.smac = LB_MAC;
    if let L4::Udp { sport, payload, .. } = &p.l4 {
        q.l4 = L4::udp(*sport, port, payload);
    }
    q
}

/// A backend's reply datagram as it arrives at the balancer (its gateway).
fn reply(from: &str, to: &str, l4: L4) -> Pkt {
    let mut r = Pkt::new(from, to, l4);
    r.dmac = LB_MAC;
    r.smac = backend_mac(ip(from));
    r
}

/// Each family's rows: dsr, tunnel and nat datagrams in order, a later
/// fragment before its first, and a NAT reply.
fn family_rows(
    client: &str,
    dsr: (VipAddr, &str),
    tun: (VipAddr, &str),
    nat: (VipAddr, &str, u16),
    rows: &mut Vec<Row>,
) {
    let payload: Vec<u8> = (0..40u8).collect();
    let cut = [24];
    let fam = if dsr.0.addr.is_ipv4() { "IPv4" } else { "IPv6" };

    // dsr, in order: the first fragment is a new flow; the second follows.
    let p = Pkt::new(
        client,
        &dsr.0.addr.to_string(),
        L4::udp(40000, 53, &payload),
    )
    .frag(0);
    let f = fragments(&p, 0x1001, &cut);
    let to = ip(dsr.1);
    for (i, (fr, reason)) in f
        .iter()
        .zip([Reason::FwdNewFlow, Reason::FwdFragment])
        .enumerate()
    {
        rows.push(fwd(
            &format!("{fam} dsr fragment {i} of a datagram in order"),
            fr.clone(),
            with_macs(fr, backend_mac(to), LB_MAC),
            reason,
            dsr.0,
            to,
        ));
    }
    // dsr, first fragment last: the later one places the datagram by its
    // hash (one backend here), the first follows it (no new flow).
    let p2 = Pkt::new(
        client,
        &dsr.0.addr.to_string(),
        L4::udp(40001, 53, &payload),
    )
    .frag(0);
    let f = fragments(&p2, 0x1002, &cut);
    for (i, reason) in [(1, Reason::FwdFragmentEarly), (0, Reason::FwdFragment)] {
        rows.push(fwd(
            &format!("{fam} dsr fragment {i} of a datagram whose first comes last"),
            f[i].clone(),
            with_macs(&f[i], backend_mac(to), LB_MAC),
            reason,
            dsr.0,
            to,
        ));
    }

    // tunnel, in order, three fragments: each encapsulated with the flow's
    // hash; then one whose first comes last, with the datagram's hash.
    let p = Pkt::new(
        client,
        &tun.0.addr.to_string(),
        L4::udp(40000, 53, &payload),
    )
    .frag(0);
    let hash = flow_hash(&p.flow_key(), false);
    let f = fragments(&p, 0x1003, &[16, 32]);
    let to = ip(tun.1);
    for (i, fr) in f.iter().enumerate() {
        let reason = if i == 0 {
            Reason::FwdNewFlow
        } else {
            Reason::FwdFragment
        };
        rows.push(fwd(
            &format!("{fam} tunnel fragment {i} of a datagram in order"),
            fr.clone(),
            tunnelled(fr, to, hash),
            reason,
            tun.0,
            to,
        ));
    }
    let p2 = Pkt::new(
        client,
        &tun.0.addr.to_string(),
        L4::udp(40001, 53, &payload),
    )
    .frag(0);
    let dh = datagram_hash(&p2, 0x1004);
    let f = fragments(&p2, 0x1004, &cut);
    for (i, reason) in [(1, Reason::FwdFragmentEarly), (0, Reason::FwdFragment)] {
        rows.push(fwd(
            &format!("{fam} tunnel fragment {i} of a datagram whose first comes last"),
            f[i].clone(),
            tunnelled(&f[i], to, dh),
            reason,
            tun.0,
            to,
        ));
    }

    // nat: the request datagram's fragments leave as the translated
    // datagram's would (the first's UDP checksum updated for the whole
    // datagram, the later's only the IPv4 header checksum); the backend's
    // fragmented reply comes back from the VIP.
    let (nvip, nbe, nport) = nat;
    let p = Pkt::new(client, &nvip.addr.to_string(), L4::udp(40000, 53, &payload)).frag(0);
    let f = fragments(&p, 0x1005, &cut);
    let want = fragments(&nat_request(&p, nbe, nport), 0x1005, &cut);
    for (i, reason) in [(0, Reason::FwdNewFlow), (1, Reason::FwdFragment)] {
        rows.push(fwd(
            &format!("{fam} nat fragment {i} of a request in order"),
            f[i].clone(),
            want[i].clone(),
            reason,
            nvip,
            ip(nbe),
        ));
    }
    let answer: Vec<u8> = (100..148u8).collect();
    let r = reply(nbe, client, L4::udp(nport, 40000, &answer)).frag(0);
    let f = fragments(&r, 0x2005, &cut);
    let mut back = Pkt::new(&nvip.addr.to_string(), client, L4::udp(53, 40000, &answer)).frag(0);
    back.dmac = CLIENT_MAC;
    back.smac = LB_MAC;
    let want = fragments(&back, 0x2005, &cut);
    for (i, reason) in [(0, Reason::FwdNatReply), (1, Reason::FwdFragment)] {
        rows.push(Row {
            name: format!("{fam} nat reply fragment {i}, translated back"),
            input: f[i].clone(),
            output: want[i].clone(),
            action: XDP_TX,
            reason,
            vip: None,
            backend: None,
        });
    }
    // A later fragment of a reply hola has not seen the first of: passes
    // untouched (it may be the backend's own traffic through its gateway).
    let r = reply(nbe, client, L4::udp(nport, 40000, &answer)).frag(0);
    let f = fragments(&r, 0x2006, &cut);
    rows.push(Row {
        name: format!("{fam} nat reply later fragment with no first seen passes"),
        input: f[1].clone(),
        output: f[1].clone(),
        action: XDP_PASS,
        reason: Reason::PassNotVip,
        vip: None,
        backend: None,
    });
}

#[test]
fn fragment_fixtures() {
    require_root();
    // SAFETY: unshare only affects the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    cmd("ip", &["link", "set", "lo", "up"]);
    pin_to_cpu0();
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        ..Default::default()
    })
    .expect("loading the balancer (the verifier must accept it)");

    let d4 = udp_vip("198.18.1.1", 53);
    let t4 = udp_vip("198.18.1.2", 53);
    let n4 = udp_vip("198.18.1.8", 53);
    let a4 = udp_vip("198.18.1.9", 53);
    let a4b = udp_vip("198.18.1.9", 54);
    let d6 = udp_vip("2001:db8:1::1", 53);
    let t6 = udp_vip("2001:db8:1::2", 53);
    let n6 = udp_vip("2001:db8:1::8", 53);
    for (v, mode, be) in [
        (d4, Mode::Dsr, backend("198.18.2.1", 0)),
        (t4, Mode::Tunnel, backend("198.18.3.1", 0)),
        (n4, Mode::Nat, backend("198.18.4.1", 5353)),
        (a4, Mode::Dsr, backend("198.18.2.9", 0)),
        (a4b, Mode::Dsr, backend("198.18.2.10", 0)),
        (d6, Mode::Dsr, backend("2001:db8:2::1", 0)),
        (t6, Mode::Tunnel, backend("2001:db8:3::1", 0)),
        (n6, Mode::Nat, backend("2001:db8:4::1", 5353)),
    ] {
        dp.add_vip(VipSpec {
            vip: v,
            mode,
            src_hash: false,
            table_size: 1021,
            quic: false,
        })
        .expect("add VIP");
        dp.set_backends(&v, &[be]).expect("set backends");
    }

    let mut rows = Vec::new();
    family_rows(
        "198.18.0.1",
        (d4, "198.18.2.1"),
        (t4, "198.18.3.1"),
        (n4, "198.18.4.1", 5353),
        &mut rows,
    );
    family_rows(
        "2001:db8::1",
        (d6, "2001:db8:2::1"),
        (t6, "2001:db8:3::1"),
        (n6, "2001:db8:4::1", 5353),
        &mut rows,
    );

    // An address with two UDP VIPs: a later fragment that comes first has
    // no port to tell them apart, and is dropped and counted.
    let payload: Vec<u8> = (0..40u8).collect();
    let p = Pkt::new("198.18.0.1", "198.18.1.9", L4::udp(40000, 53, &payload)).frag(0);
    let amb = fragments(&p, 0x3001, &[24]);
    rows.push(Row {
        name: "IPv4 later fragment first, address with two UDP VIPs: dropped".into(),
        input: amb[1].clone(),
        output: amb[1].clone(),
        action: XDP_DROP,
        reason: Reason::DropFragment,
        vip: None,
        backend: None,
    });
    // The same datagram's first fragment, then the later one: it follows.
    let to = ip("198.18.2.9");
    rows.push(fwd(
        "IPv4 first fragment to one of two UDP VIPs of an address",
        amb[0].clone(),
        with_macs(&amb[0], backend_mac(to), LB_MAC),
        Reason::FwdNewFlow,
        a4,
        to,
    ));
    rows.push(fwd(
        "IPv4 later fragment after its first, address with two UDP VIPs",
        amb[1].clone(),
        with_macs(&amb[1], backend_mac(to), LB_MAC),
        Reason::FwdFragment,
        a4,
        to,
    ));
    // A TCP datagram's later fragment to an address with no TCP VIP.
    let t = Pkt::new("198.18.0.1", "198.18.1.1", L4::tcp(40000, 80, 0x10)).frag(0);
    let tf = fragments(&t, 0x3002, &[8]);
    rows.push(Row {
        name: "IPv4 later TCP fragment first, no TCP VIP at the address: dropped".into(),
        input: tf[1].clone(),
        output: tf[1].clone(),
        action: XDP_DROP,
        reason: Reason::DropFragment,
        vip: None,
        backend: None,
    });

    let mut failures: Vec<String> = rows.iter().filter_map(|r| check(&mut dp, r)).collect();

    // After the lifetime the entry is not followed: the same later
    // fragment is dropped again.
    std::thread::sleep(std::time::Duration::from_nanos(
        FRAG_LIFETIME_NS + 200_000_000,
    ));
    let late = Row {
        name: "IPv4 later fragment after the entry's lifetime: dropped".into(),
        input: amb[1].clone(),
        output: amb[1].clone(),
        action: XDP_DROP,
        reason: Reason::DropFragment,
        vip: None,
        backend: None,
    };
    failures.extend(check(&mut dp, &late));
    assert!(
        failures.is_empty(),
        "{} of {} fragment rows failed:\n{}",
        failures.len(),
        rows.len() + 1,
        failures.join("\n\n")
    );
}
