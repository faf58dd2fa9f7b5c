//! Packet fixtures: the real balancer and decapsulator programs, run by the
//! kernel through BPF_PROG_TEST_RUN, provisioned through `Dataplane` exactly
//! as the daemon provisions them. Each row states the input bytes, the
//! verdict, the exact output bytes and (through what it says happened) the
//! exact counter changes; every other counter must stay still.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{Ebpf, maps::PerCpuArray, programs::Xdp};
use hola_tests::{
    fixture::{
        self, backend_mac, diff, expected_deltas, hex, pin_to_cpu0, require_root, run, snapshot,
    },
    netns::cmd,
    packet::{
        CLIENT_MAC, L4, LB_MAC, Pkt, TCP_ACK, TCP_SYN, fold, ipv4_header_ok, sum16, with_macs,
    },
};
use lb_common::{Reason, ReasonStats, hash::flow_hash};
use lb_userspace::{
    dataplane::{BackendSpec, Dataplane, DataplaneConfig, Mode, Proto, VipAddr, VipSpec},
    programs,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

fn backend(addr: &str, weight: u32) -> BackendSpec {
    BackendSpec {
        weight,
        ..fixture::backend(addr)
    }
}

fn vip(addr: &str, port: u16, proto: Proto) -> VipAddr {
    VipAddr {
        addr: addr.parse().expect("VIP address"),
        port,
        proto,
    }
}

/// The frame the balancer must emit in `tunnel` mode, built independently of
/// the program: outer header per RFC 2003 / RFC 2473, source from the
/// configured tunnel prefix and the flow hash.
fn tunnelled(p: &Pkt, to: IpAddr) -> Vec<u8> {
    let hash = flow_hash(&p.flow_key(), false);
    let inner = p.l3();
    let mut f = Vec::new();
    f.extend_from_slice(&backend_mac(to));
    f.extend_from_slice(&LB_MAC);
    for v in &p.vlans {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    match to {
        IpAddr::V4(dst) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let src = Ipv4Addr::new(198, 18, 255, (hash & 0xff) as u8);
            let mut h = vec![0x45, p.tos];
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
                0x60 | (p.tos >> 4),
                (p.tos << 4) | (fl >> 16) as u8,
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
    f.extend_from_slice(&inner);
    f
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

impl Row {
    /// Passed (or dropped) untouched, counted under `reason` only.
    fn untouched(name: &str, input: Vec<u8>, action: u32, reason: Reason) -> Self {
        Row {
            name: name.into(),
            output: input.clone(),
            input,
            action,
            reason,
            vip: None,
            backend: None,
        }
    }

    /// Dropped after the VIP matched (no backend, no next hop).
    fn vip_drop(
        name: &str,
        input: Vec<u8>,
        reason: Reason,
        vip: VipAddr,
        backend: Option<IpAddr>,
    ) -> Self {
        Row {
            name: name.into(),
            output: input.clone(),
            input,
            action: XDP_DROP,
            reason,
            vip: Some(vip),
            backend,
        }
    }

    fn dsr(name: &str, p: &Pkt, reason: Reason, vip: VipAddr, to: IpAddr) -> Self {
        let input = p.bytes();
        Row {
            name: name.into(),
            output: with_macs(&input, backend_mac(to), LB_MAC),
            input,
            action: XDP_TX,
            reason,
            vip: Some(vip),
            backend: Some(to),
        }
    }

    fn tunnel(name: &str, p: &Pkt, reason: Reason, vip: VipAddr, to: IpAddr) -> Self {
        Row {
            name: name.into(),
            input: p.bytes(),
            output: tunnelled(p, to),
            action: XDP_TX,
            reason,
            vip: Some(vip),
            backend: Some(to),
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

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Rewrites an IPv4 frame's total length and header checksum (for
/// consistent truncations).
fn fix_ipv4(frame: &mut [u8], l3: usize) {
    let total = frame.len() - l3;
    set_u16(frame, l3 + 2, total as u16);
    set_u16(frame, l3 + 10, 0);
    let hl = usize::from(frame[l3] & 0x0f) * 4;
    let c = fold(sum16(&frame[l3..l3 + hl]));
    set_u16(frame, l3 + 10, c);
}

#[test]
fn packet_fixtures() {
    require_root();
    // A namespace of this test's own: BPF_PROG_TEST_RUN runs the program as
    // if the packet came in on this namespace's lo, and the redirect row
    // needs a second interface that nothing else uses.
    // SAFETY: unshare only affects the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET)");
    cmd(
        "ip",
        &[
            "link", "add", "hfx0", "type", "veth", "peer", "name", "hfx1",
        ],
    );
    cmd("ip", &["link", "set", "hfx0", "up"]);
    let redirect_ifindex: u32 = cmd("ip", &["-o", "link", "show", "hfx0"])
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .expect("ifindex of hfx0");
    // Every call runs on CPU 0, so that fullnat's source ports (each CPU
    // has its own range) are known: two per CPU, 40000 and 40001 on CPU 0.
    pin_to_cpu0();
    let ncpus = aya::util::nr_cpus().expect("possible CPUs") as u16;
    let cfg = DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        // A NAT flow that saw FIN or RST expires at once (tested below).
        nat_closed_linger: std::time::Duration::ZERO,
        fullnat_src_v4: Some("198.18.5.1".parse().expect("literal")),
        fullnat_src_v6: Some("2001:db8:5::1".parse().expect("literal")),
        fullnat_ports: (40000, 40000 + 2 * ncpus - 1),
        ..Default::default()
    };
    let mut dp = Dataplane::load(cfg).expect("loading the balancer (the verifier must accept it)");

    let dsr4 = vip("198.18.1.1", 80, Proto::Tcp);
    let dsr4u = vip("198.18.1.1", 53, Proto::Udp);
    let tun4 = vip("198.18.1.2", 0, Proto::Tcp);
    let dsr6 = vip("2001:db8:1::1", 80, Proto::Tcp);
    let tun6 = vip("2001:db8:1::2", 443, Proto::Tcp);
    let nobe = vip("198.18.1.3", 80, Proto::Tcp);
    let nonh = vip("198.18.1.4", 80, Proto::Tcp);
    let redir = vip("198.18.1.5", 80, Proto::Tcp);
    let drain = vip("198.18.1.6", 80, Proto::Tcp);
    let change = vip("198.18.1.7", 80, Proto::Tcp);
    let small = 1021;
    for (v, mode, size) in [
        (dsr4, Mode::Dsr, 65537),
        (dsr4u, Mode::Dsr, small),
        (tun4, Mode::Tunnel, small),
        (dsr6, Mode::Dsr, small),
        (tun6, Mode::Tunnel, small),
        (nobe, Mode::Dsr, small),
        (nonh, Mode::Dsr, small),
        (redir, Mode::Dsr, small),
        (drain, Mode::Dsr, small),
        (change, Mode::Dsr, small),
    ] {
        dp.add_vip(VipSpec {
            vip: v,
            mode,
            src_hash: false,
            table_size: size,
            quic: false,
        })
        .expect("add VIP");
    }
    let set = |dp: &mut Dataplane, v: &VipAddr, b: &[BackendSpec]| {
        dp.set_backends(v, b).expect("set backends")
    };
    set(
        &mut dp,
        &dsr4,
        &[
            backend("198.18.2.1", 1),
            backend("198.18.2.2", 1),
            backend("198.18.2.3", 1),
        ],
    );
    set(&mut dp, &dsr4u, &[backend("198.18.2.4", 1)]);
    set(&mut dp, &tun4, &[backend("198.18.3.1", 1)]);
    set(&mut dp, &dsr6, &[backend("2001:db8:2::1", 1)]);
    set(&mut dp, &tun6, &[backend("2001:db8:3::1", 1)]);
    let mut no_nexthop = backend("198.18.2.9", 1);
    no_nexthop.nexthop = None;
    set(&mut dp, &nonh, &[no_nexthop]);
    let mut via_dummy = backend("198.18.2.10", 1);
    via_dummy.nexthop.as_mut().expect("set above").ifindex = redirect_ifindex;
    set(&mut dp, &redir, &[via_dummy]);
    set(
        &mut dp,
        &drain,
        &[backend("198.18.2.11", 1), backend("198.18.2.12", 1)],
    );
    set(
        &mut dp,
        &change,
        &[
            backend("198.18.2.21", 1),
            backend("198.18.2.22", 1),
            backend("198.18.2.23", 1),
        ],
    );

    let ip = |s: &str| -> IpAddr { s.parse().expect("address") };
    let maglev = |dp: &Dataplane, v: &VipAddr, p: &Pkt| -> IpAddr {
        dp.maglev_backend(v, &p.flow_key())
            .expect("the VIP's table has a backend for every slot")
    };
    let client = "198.18.0.1";
    let client6 = "2001:db8::1";
    let syn4 = Pkt::new(client, "198.18.1.1", L4::tcp(40000, 80, TCP_SYN));
    let ack4 = Pkt::new(client, "198.18.1.1", L4::tcp(40000, 80, TCP_ACK));
    let to_syn4 = maglev(&dp, &dsr4, &syn4);

    let mut rows: Vec<Row> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut run_rows = |dp: &mut Dataplane, rows: &mut Vec<Row>, new: Vec<Row>| {
        for r in new {
            if let Some(f) = check(dp, &r) {
                failures.push(f);
            }
            rows.push(r);
        }
    };

    // Not for us.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0u8; 20]);
    let mut qinq = Pkt::new(client, "198.18.1.1", L4::tcp(40000, 80, TCP_SYN))
        .vlan(10)
        .vlan(20)
        .bytes();
    // Outer tag as 802.1ad, as QinQ is on the wire.
    set_u16(&mut qinq, 12, 0x88a8);
    let batch = vec![
        Row::untouched("ARP passes", arp, XDP_PASS, Reason::PassNotIp),
        Row::untouched(
            "IPv4 TCP to a non-VIP address passes unchanged",
            Pkt::new(client, "198.18.9.9", L4::tcp(40000, 80, TCP_SYN)).bytes(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Row::untouched(
            "IPv6 UDP to a non-VIP address passes unchanged",
            Pkt::new(client6, "2001:db8:9::9", L4::udp(5000, 53, b"query")).bytes(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Row::untouched(
            "TCP to a VIP address on a port with no VIP passes",
            Pkt::new(client, "198.18.1.1", L4::tcp(40000, 81, TCP_SYN)).bytes(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Row::untouched(
            "ICMP echo to a VIP address passes",
            Pkt::new(
                client,
                "198.18.1.1",
                L4::Raw {
                    proto: 1,
                    bytes: vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0],
                },
            )
            .bytes(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
        Row::untouched("two VLAN tags pass", qinq, XDP_PASS, Reason::PassVlanStack),
        Row::untouched(
            "IPv4 fragment to a non-VIP address passes",
            Pkt::new(client, "198.18.9.9", L4::udp(5000, 53, b"x"))
                .frag(0x2000)
                .bytes(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
        // Balanced.
        Row::dsr(
            "dsr: IPv4 TCP SYN goes where the table says, MACs rewritten, XDP_TX, not recorded",
            &syn4,
            Reason::FwdSyn,
            dsr4,
            to_syn4,
        ),
        Row::dsr(
            "dsr: the same flow's ACK records the SYN's backend",
            &ack4,
            Reason::FwdNewFlow,
            dsr4,
            to_syn4,
        ),
        Row::dsr(
            "dsr: IPv4 UDP, new flow",
            &Pkt::new(client, "198.18.1.1", L4::udp(5353, 53, b"query")),
            Reason::FwdNewFlow,
            dsr4u,
            ip("198.18.2.4"),
        ),
        Row::dsr(
            "dsr: IPv6 TCP SYN",
            &Pkt::new(client6, "2001:db8:1::1", L4::tcp(40000, 80, TCP_SYN)),
            Reason::FwdSyn,
            dsr6,
            ip("2001:db8:2::1"),
        ),
        Row::dsr(
            "dsr: 802.1Q-tagged TCP keeps its tag",
            &Pkt::new(client, "198.18.1.1", L4::tcp(40001, 80, TCP_SYN)).vlan(100),
            Reason::FwdSyn,
            dsr4,
            maglev(
                &dp,
                &dsr4,
                &Pkt::new(client, "198.18.1.1", L4::tcp(40001, 80, TCP_SYN)),
            ),
        ),
        Row::dsr(
            "dsr: IPv4 with 8 bytes of options",
            &Pkt::new(client, "198.18.1.1", L4::tcp(40002, 80, TCP_SYN))
                .options(&[1, 1, 1, 1, 0x44, 4, 5, 0]),
            Reason::FwdSyn,
            dsr4,
            maglev(
                &dp,
                &dsr4,
                &Pkt::new(client, "198.18.1.1", L4::tcp(40002, 80, TCP_SYN)),
            ),
        ),
        Row::tunnel(
            "tunnel: IPv4-in-IPv4 to an all-ports VIP, exact outer header",
            &Pkt::new(client, "198.18.1.2", L4::tcp(40000, 8080, TCP_SYN)),
            Reason::FwdSyn,
            tun4,
            ip("198.18.3.1"),
        ),
        Row::tunnel(
            "tunnel: the SYN's ACK is recorded",
            &Pkt::new(client, "198.18.1.2", L4::tcp(40000, 8080, TCP_ACK)),
            Reason::FwdNewFlow,
            tun4,
            ip("198.18.3.1"),
        ),
        Row::tunnel(
            "tunnel: IPv4 established flow",
            &Pkt::new(client, "198.18.1.2", L4::tcp(40000, 8080, TCP_ACK)),
            Reason::FwdEstablished,
            tun4,
            ip("198.18.3.1"),
        ),
        Row::tunnel(
            "tunnel: IPv4 with options and a VLAN tag",
            &Pkt::new(client, "198.18.1.2", L4::tcp(40003, 7777, TCP_SYN))
                .vlan(7)
                .options(&[1, 1, 1, 0]),
            Reason::FwdSyn,
            tun4,
            ip("198.18.3.1"),
        ),
        Row::tunnel(
            "tunnel: IPv6-in-IPv6, exact outer header",
            &Pkt::new(client6, "2001:db8:1::2", L4::tcp(40000, 443, TCP_SYN)),
            Reason::FwdSyn,
            tun6,
            ip("2001:db8:3::1"),
        ),
        // Fragments: tests/tests/fixtures_frag.rs.
        Row::vip_drop(
            "VIP with no backend drops and counts",
            Pkt::new(client, "198.18.1.3", L4::tcp(40000, 80, TCP_SYN)).bytes(),
            Reason::DropNoBackend,
            nobe,
            None,
        ),
        Row::vip_drop(
            "backend whose next hop is unresolved drops and counts",
            Pkt::new(client, "198.18.1.4", L4::tcp(40000, 80, TCP_SYN)).bytes(),
            Reason::DropNoNexthop,
            nonh,
            None,
        ),
        Row::untouched(
            "IPv6 with a hop-by-hop header to a VIP passes",
            // Hop-by-hop options (next header TCP, a PadN option), then nothing.
            Pkt::new(
                client6,
                "2001:db8:1::1",
                L4::Raw {
                    proto: 0,
                    bytes: vec![6, 0, 1, 4, 0, 0, 0, 0],
                },
            )
            .bytes(),
            XDP_PASS,
            Reason::PassIpv6ExtHdr,
        ),
    ];
    let mut batch = batch;
    // An address with more VIPs than its map entry holds inline.
    let crowded: Vec<VipAddr> = (1..=10)
        .map(|port| vip("198.18.1.8", port, Proto::Tcp))
        .collect();
    for v in &crowded {
        dp.add_vip(VipSpec {
            vip: *v,
            mode: Mode::Dsr,
            src_hash: false,
            table_size: 13,
            quic: false,
        })
        .expect("add VIP");
    }
    for port in [1u16, 10] {
        batch.push(Row::vip_drop(
            &format!("crowded address (10 VIPs, 8 inline): port {port} is found"),
            Pkt::new(client, "198.18.1.8", L4::tcp(40000, port, TCP_SYN)).bytes(),
            Reason::DropNoBackend,
            crowded[usize::from(port) - 1],
            None,
        ));
    }
    // The redirect row: the backend is reached through another interface.
    let to_dummy = Pkt::new(client, "198.18.1.5", L4::tcp(40000, 80, TCP_SYN));
    let mut r = Row::dsr(
        "dsr: backend behind another interface, XDP_REDIRECT",
        &to_dummy,
        Reason::FwdSyn,
        redir,
        ip("198.18.2.10"),
    );
    r.action = XDP_REDIRECT;
    batch.push(r);
    run_rows(&mut dp, &mut rows, batch);

    // Client affinity: a VIP that hashes on the source address only sends
    // every connection of a client to the same backend.
    let sticky = vip("198.18.1.9", 80, Proto::Tcp);
    dp.add_vip(VipSpec {
        vip: sticky,
        mode: Mode::Dsr,
        src_hash: true,
        table_size: small,
        quic: false,
    })
    .expect("add VIP");
    set(
        &mut dp,
        &sticky,
        &[
            backend("198.18.2.31", 1),
            backend("198.18.2.32", 1),
            backend("198.18.2.33", 1),
        ],
    );
    let conns: Vec<Pkt> = (0..8)
        .map(|i| {
            Pkt::new(
                "198.18.0.77",
                "198.18.1.9",
                L4::tcp(50000 + i * 7, 80, TCP_SYN),
            )
        })
        .collect();
    let home = maglev(&dp, &sticky, &conns[0]);
    let mut sticky_rows = Vec::new();
    for (i, c) in conns.iter().enumerate() {
        let name = format!("client affinity: connection {i} of one client goes to its backend");
        sticky_rows.push(Row::dsr(&name, c, Reason::FwdSyn, sticky, home));
    }
    // The full 5-tuple hashes of these connections all differ: the rows above
    // pass because the VIP ignores the ports, not by chance.
    let full: std::collections::BTreeSet<u32> = conns
        .iter()
        .map(|c| flow_hash(&c.flow_key(), false))
        .collect();
    assert_eq!(full.len(), conns.len(), "distinct 5-tuple hashes");
    run_rows(&mut dp, &mut rows, sticky_rows);

    // Truncated at every header boundary (and inside each header).
    let base = syn4.bytes();
    let tagged = Pkt::new(client, "198.18.1.1", L4::tcp(40000, 80, TCP_SYN))
        .vlan(5)
        .bytes();
    let udp = Pkt::new(client, "198.18.1.1", L4::udp(5353, 53, b"")).bytes();
    let v6 = Pkt::new(client6, "2001:db8:1::1", L4::tcp(40000, 80, TCP_SYN)).bytes();
    let mut tcp_cut = base[..14 + 20 + 10].to_vec();
    fix_ipv4(&mut tcp_cut, 14);
    let mut udp_cut = udp[..14 + 20 + 4].to_vec();
    fix_ipv4(&mut udp_cut, 14);
    let mut v6_cut = v6[..14 + 40 + 12].to_vec();
    set_u16(&mut v6_cut, 14 + 4, 12);
    let mut ihl4 = base.clone();
    ihl4[14] = 0x44;
    let mut ihl15 = base.clone();
    ihl15[14] = 0x4f; // 60-byte header in a 40-byte datagram
    let mut doff4 = base.clone();
    doff4[14 + 20 + 12] = 0x40;
    let mut long_tot = base.clone();
    set_u16(&mut long_tot, 16, 200);
    let cut = |name: &str, b: Vec<u8>| Row::untouched(name, b, XDP_DROP, Reason::DropMalformed);
    run_rows(
        &mut dp,
        &mut rows,
        vec![
            cut("truncated: Ethernet header only", base[..14].to_vec()),
            cut("truncated: inside the VLAN tag", tagged[..16].to_vec()),
            cut(
                "truncated: inside the IPv4 header",
                base[..14 + 19].to_vec(),
            ),
            cut(
                "truncated: IPv4 header only, total length says more",
                base[..14 + 20].to_vec(),
            ),
            cut(
                "truncated: inside the TCP header (consistent IPv4 length)",
                tcp_cut,
            ),
            cut(
                "truncated: inside the UDP header (consistent IPv4 length)",
                udp_cut,
            ),
            cut("truncated: inside the IPv6 header", v6[..14 + 39].to_vec()),
            cut(
                "truncated: inside the TCP header after IPv6 (consistent payload length)",
                v6_cut,
            ),
            cut("malformed: IPv4 IHL below 5", ihl4),
            cut("malformed: IPv4 IHL beyond the datagram", ihl15),
            cut("malformed: TCP data offset below 5", doff4),
            cut("malformed: IPv4 total length beyond the frame", long_tot),
        ],
    );

    // The UDP length field: below the 8-byte header, or past the IP
    // payload, the datagram is malformed and dropped (as a bad TCP data
    // offset is); shorter than the payload, the rest is padding and the
    // datagram is forwarded as it came.
    let udp4 = Pkt::new(client, "198.18.1.1", L4::udp(5399, 53, b"abcd"));
    let udp6 = Pkt::new(client6, "2001:db8:1::1", L4::udp(5353, 53, b"abcd"));
    let with_ulen = |p: &Pkt, l4: usize, len: u16| {
        let mut b = p.bytes();
        assert_eq!(
            u16::from_be_bytes([b[l4 + 4], b[l4 + 5]]),
            12,
            "the UDP length field is where this test writes it"
        );
        set_u16(&mut b, l4 + 4, len);
        b
    };
    let padded = with_ulen(&udp4, 14 + 20, 10);
    run_rows(
        &mut dp,
        &mut rows,
        vec![
            cut(
                "malformed: IPv4 UDP length 7, below its header",
                with_ulen(&udp4, 14 + 20, 7),
            ),
            cut("malformed: IPv4 UDP length 0", with_ulen(&udp4, 14 + 20, 0)),
            cut(
                "malformed: IPv4 UDP length one past the IP payload",
                with_ulen(&udp4, 14 + 20, 13),
            ),
            cut(
                "malformed: IPv6 UDP length 7, below its header",
                with_ulen(&udp6, 14 + 40, 7),
            ),
            cut(
                "malformed: IPv6 UDP length one past the IP payload",
                with_ulen(&udp6, 14 + 40, 13),
            ),
            Row {
                name: "dsr: IPv4 UDP length shorter than the IP payload (padding) is forwarded"
                    .into(),
                output: with_macs(&padded, backend_mac(ip("198.18.2.4")), LB_MAC),
                input: padded,
                action: XDP_TX,
                reason: Reason::FwdNewFlow,
                vip: Some(dsr4u),
                backend: Some(ip("198.18.2.4")),
            },
        ],
    );

    // A flow keeps its backend after the table changes.
    let f_syn = Pkt::new(client, "198.18.1.7", L4::tcp(41000, 80, TCP_SYN));
    let f_ack = Pkt::new(client, "198.18.1.7", L4::tcp(41000, 80, TCP_ACK));
    let x = maglev(&dp, &change, &f_syn);
    run_rows(
        &mut dp,
        &mut rows,
        vec![Row::dsr(
            "change: F's SYN goes where the table says, not recorded",
            &f_syn,
            Reason::FwdSyn,
            change,
            x,
        )],
    );
    assert_eq!(
        dp.flow_entry(&f_syn.flow_key()),
        None,
        "a SYN leaves no flow entry"
    );
    let y = ip("198.18.2.29");
    set(
        &mut dp,
        &change,
        &[backend(&x.to_string(), 1), backend("198.18.2.29", 1000)],
    );
    assert_eq!(
        maglev(&dp, &change, &f_syn),
        y,
        "after the change Maglev must send F elsewhere for this row to mean anything"
    );
    run_rows(
        &mut dp,
        &mut rows,
        vec![
            Row::dsr(
                "change: SYN, table change, ACK: the ACK records the SYN's backend (previous table)",
                &f_ack,
                Reason::FwdNewFlow,
                change,
                x,
            ),
            Row::dsr(
                "change: F keeps its backend although Maglev now says otherwise",
                &f_ack,
                Reason::FwdEstablished,
                change,
                x,
            ),
        ],
    );
    set(&mut dp, &change, &[backend("198.18.2.29", 1000)]);
    run_rows(
        &mut dp,
        &mut rows,
        vec![Row::dsr(
            "change: F's backend removed, F is re-balanced as a new flow",
            &f_ack,
            Reason::FwdNewFlow,
            change,
            y,
        )],
    );

    // Draining: established flows stay, new ones go elsewhere.
    let g = Pkt::new(client, "198.18.1.6", L4::tcp(42000, 80, TCP_SYN));
    let p_backend = maglev(&dp, &drain, &g);
    let h = (42001..43000)
        .map(|port| Pkt::new(client, "198.18.1.6", L4::tcp(port, 80, TCP_SYN)))
        .find(|h| maglev(&dp, &drain, h) == p_backend)
        .expect("some port maps to the backend about to drain");
    let mut g_ack = g.clone();
    g_ack.l4 = L4::tcp(42000, 80, TCP_ACK);
    run_rows(
        &mut dp,
        &mut rows,
        vec![Row::dsr(
            "drain: flow G before draining",
            &g_ack,
            Reason::FwdNewFlow,
            drain,
            p_backend,
        )],
    );
    let q_backend = if p_backend == ip("198.18.2.11") {
        "198.18.2.12"
    } else {
        "198.18.2.11"
    };
    set(
        &mut dp,
        &drain,
        &[backend(&p_backend.to_string(), 0), backend(q_backend, 1)],
    );
    run_rows(
        &mut dp,
        &mut rows,
        vec![
            Row::dsr(
                "drain: G stays on the draining backend",
                &g_ack,
                Reason::FwdEstablished,
                drain,
                p_backend,
            ),
            Row::dsr(
                "drain: a new flow that Maglev gave the drained backend goes elsewhere",
                &h,
                Reason::FwdSyn,
                drain,
                ip(q_backend),
            ),
        ],
    );

    // Marked down by its health check: G's flow-table entry is treated as a
    // miss at once, G is re-balanced, and stays on its new backend after.
    set(
        &mut dp,
        &drain,
        &[
            BackendSpec {
                up: false,
                ..backend(&p_backend.to_string(), 1)
            },
            backend(q_backend, 1),
        ],
    );
    run_rows(
        &mut dp,
        &mut rows,
        vec![
            Row::dsr(
                "health: G's backend is down, G is re-balanced as a new flow",
                &g_ack,
                Reason::FwdNewFlow,
                drain,
                ip(q_backend),
            ),
            Row::dsr(
                "health: G stays on its new backend",
                &g_ack,
                Reason::FwdEstablished,
                drain,
                ip(q_backend),
            ),
        ],
    );

    // NAT mode: the request's destination becomes the backend's address
    // and port; the backend's reply (sent to us, its gateway) gets the VIP
    // back as its source and returns to the MAC the request came from.
    // Expected frames are built from scratch, checksums included.
    let nat4 = vip("198.18.1.8", 80, Proto::Tcp);
    let nat4u = vip("198.18.1.8", 53, Proto::Udp);
    let nat6 = vip("2001:db8:1::8", 80, Proto::Tcp);
    for v in [nat4, nat4u, nat6] {
        dp.add_vip(VipSpec {
            vip: v,
            mode: Mode::Nat,
            src_hash: false,
            table_size: small,
            quic: false,
        })
        .expect("add NAT VIP");
    }
    let with_port = |addr: &str, port: u16| BackendSpec {
        port,
        ..backend(addr, 1)
    };
    set(&mut dp, &nat4, &[with_port("198.18.4.1", 8080)]);
    set(&mut dp, &nat4u, &[backend("198.18.4.2", 1)]);
    set(&mut dp, &nat6, &[with_port("2001:db8:4::1", 8080)]);
    // A request as it must leave: to the backend, from us.
    let to_backend = |p: &Pkt, to: &str, port: u16| -> Vec<u8> {
        let mut q = p.clone();
        q.dst = ip(to);
        q.dmac = backend_mac(ip(to));
        q.smac = LB_MAC;
        q.l4 = match &q.l4 {
            L4::Tcp {
                sport,
                flags,
                payload,
                ..
            } => L4::Tcp {
                sport: *sport,
                dport: port,
                flags: *flags,
                payload: payload.clone(),
            },
            L4::Udp { sport, payload, .. } => L4::Udp {
                sport: *sport,
                dport: port,
                payload: payload.clone(),
            },
            other => other.clone(),
        };
        q.bytes()
    };
    // A backend's reply as it arrives (to us, its gateway) and as it must
    // leave (from the VIP, to the client's MAC).
    let reply = |from: &str, to: &str, l4: L4, vlan: Option<u16>| -> Pkt {
        let mut r = Pkt::new(from, to, l4);
        r.dmac = LB_MAC;
        r.smac = backend_mac(ip(from));
        if let Some(t) = vlan {
            r = r.vlan(t);
        }
        r
    };
    let translated = |r: &Pkt, vip_addr: &str, vip_port: u16| -> Vec<u8> {
        let mut q = r.clone();
        q.src = ip(vip_addr);
        q.dmac = CLIENT_MAC;
        q.smac = LB_MAC;
        q.l4 = match &q.l4 {
            L4::Tcp {
                dport,
                flags,
                payload,
                ..
            } => L4::Tcp {
                sport: vip_port,
                dport: *dport,
                flags: *flags,
                payload: payload.clone(),
            },
            L4::Udp { dport, payload, .. } => L4::Udp {
                sport: vip_port,
                dport: *dport,
                payload: payload.clone(),
            },
            other => other.clone(),
        };
        q.bytes()
    };
    let nat_row = |name: &str, p: &Pkt, reason: Reason, v: VipAddr, to: &str, port: u16| Row {
        name: name.into(),
        input: p.bytes(),
        output: to_backend(p, to, port),
        action: XDP_TX,
        reason,
        vip: Some(v),
        backend: Some(ip(to)),
    };
    let reply_row = |name: &str, r: &Pkt, vip_addr: &str, vip_port: u16| Row {
        name: name.into(),
        input: r.bytes(),
        output: translated(r, vip_addr, vip_port),
        action: XDP_TX,
        reason: Reason::FwdNatReply,
        vip: None,
        backend: None,
    };
    const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
    const FIN_ACK: u8 = 0x01 | TCP_ACK;
    let data = |sport: u16, dport: u16, flags: u8, payload: &[u8]| L4::Tcp {
        sport,
        dport,
        flags,
        payload: payload.to_vec(),
    };
    let n4 = "198.18.1.8";
    let n6 = "2001:db8:1::8";
    let mut nat_rows = vec![
        nat_row(
            "nat: IPv4 TCP SYN to the backend's address and port (its translation in NAT_SYN)",
            &Pkt::new(client, n4, L4::tcp(41000, 80, TCP_SYN)),
            Reason::FwdSyn,
            nat4,
            "198.18.4.1",
            8080,
        ),
        reply_row(
            "nat: IPv4 TCP SYN-ACK back from the VIP",
            &reply("198.18.4.1", client, L4::tcp(8080, 41000, SYN_ACK), None),
            n4,
            80,
        ),
        nat_row(
            "nat: IPv4 TCP data, the client's first ACK: the handshake's translation moves to NAT",
            &Pkt::new(
                client,
                n4,
                data(41000, 80, TCP_ACK, b"GET / HTTP/1.1\r\n\r\n"),
            ),
            Reason::FwdNewFlow,
            nat4,
            "198.18.4.1",
            8080,
        ),
        reply_row(
            "nat: IPv4 TCP data back",
            &reply(
                "198.18.4.1",
                client,
                data(8080, 41000, TCP_ACK, b"HTTP/1.1 200 OK\r\n\r\nhola"),
                None,
            ),
            n4,
            80,
        ),
        nat_row(
            "nat: IPv4 with options and a VLAN tag",
            &Pkt::new(client, n4, L4::tcp(41001, 80, TCP_SYN))
                .options(&[1, 1, 1, 0])
                .vlan(7),
            Reason::FwdSyn,
            nat4,
            "198.18.4.1",
            8080,
        ),
        reply_row(
            "nat: its reply, tagged",
            &reply("198.18.4.1", client, L4::tcp(8080, 41001, SYN_ACK), Some(7)),
            n4,
            80,
        ),
        nat_row(
            "nat: IPv4 UDP, the VIP's port kept",
            &Pkt::new(client, n4, L4::udp(41002, 53, b"query")),
            Reason::FwdNewFlow,
            nat4u,
            "198.18.4.2",
            53,
        ),
        reply_row(
            "nat: IPv4 UDP reply",
            &reply("198.18.4.2", client, L4::udp(53, 41002, b"answer"), None),
            n4,
            53,
        ),
        nat_row(
            "nat: IPv6 TCP SYN",
            &Pkt::new(client6, n6, L4::tcp(41003, 80, TCP_SYN)),
            Reason::FwdSyn,
            nat6,
            "2001:db8:4::1",
            8080,
        ),
        reply_row(
            "nat: IPv6 TCP SYN-ACK back",
            &reply(
                "2001:db8:4::1",
                client6,
                L4::tcp(8080, 41003, SYN_ACK),
                None,
            ),
            n6,
            80,
        ),
        nat_row(
            "nat: IPv6 the client's ACK completes the handshake",
            &Pkt::new(client6, n6, L4::tcp(41003, 80, TCP_ACK)),
            Reason::FwdNewFlow,
            nat6,
            "2001:db8:4::1",
            8080,
        ),
        Row::untouched(
            "nat: a backend's packet of no NAT flow passes",
            reply("198.18.4.1", client, L4::tcp(8080, 49999, SYN_ACK), None).bytes(),
            XDP_PASS,
            Reason::PassNotVip,
        ),
    ];
    // IPv4 UDP without a checksum (0) keeps none, both ways.
    let zero_udp = |mut f: Vec<u8>| {
        let at = f.len() - 5 - 8 + 6; // 5-byte payloads below
        f[at..at + 2].copy_from_slice(&[0, 0]);
        f
    };
    let q = Pkt::new(client, n4, L4::udp(41004, 53, b"nocsm"));
    nat_rows.push(Row {
        name: "nat: IPv4 UDP with no checksum keeps none".into(),
        input: zero_udp(q.bytes()),
        output: zero_udp(to_backend(&q, "198.18.4.2", 53)),
        action: XDP_TX,
        reason: Reason::FwdNewFlow,
        vip: Some(nat4u),
        backend: Some(ip("198.18.4.2")),
    });
    let r = reply("198.18.4.2", client, L4::udp(53, 41004, b"nocsm"), None);
    nat_rows.push(Row {
        name: "nat: its reply with no checksum keeps none".into(),
        input: zero_udp(r.bytes()),
        output: zero_udp(translated(&r, n4, 53)),
        action: XDP_TX,
        reason: Reason::FwdNatReply,
        vip: None,
        backend: None,
    });
    // FIN closes the entry after the linger (0 in this data plane): the
    // next reply is dropped rather than let out untranslated.
    nat_rows.push(nat_row(
        "nat: FIN from the client",
        &Pkt::new(client, n4, L4::tcp(41000, 80, FIN_ACK)),
        Reason::FwdEstablished,
        nat4,
        "198.18.4.1",
        8080,
    ));
    nat_rows.push(Row::untouched(
        "nat: a reply after the closed flow's linger is dropped",
        reply("198.18.4.1", client, L4::tcp(8080, 41000, TCP_ACK), None).bytes(),
        XDP_DROP,
        Reason::DropNatExpired,
    ));
    // ICMP errors about NAT flows, translated with the packet they quote.
    // A fresh TCP flow (41005) and the IPv6 one (41003) are live.
    nat_rows.push(nat_row(
        "nat: IPv4 TCP SYN of a flow ICMP errors will quote",
        &Pkt::new(client, n4, L4::tcp(41005, 80, TCP_SYN)),
        Reason::FwdSyn,
        nat4,
        "198.18.4.1",
        8080,
    ));
    nat_rows.push(nat_row(
        "nat: and its ACK, recorded",
        &Pkt::new(client, n4, L4::tcp(41005, 80, TCP_ACK)),
        Reason::FwdNewFlow,
        nat4,
        "198.18.4.1",
        8080,
    ));
    // The quoted packet keeps its TCP/UDP checksum: hola leaves it.
    let with_l4_csum_of = |mut l3: Vec<u8>, from: &[u8]| {
        let hl = if l3[0] >> 4 == 4 {
            usize::from(l3[0] & 0x0f) * 4
        } else {
            40
        };
        let at = hl
            + if l3[if hl == 40 { 6 } else { 9 }] == 17 {
                6
            } else {
                16
            };
        l3[at..at + 2].copy_from_slice(&from[at..at + 2]);
        l3
    };
    let icmp =
        |from: &str, to: &str, kind: u8, code: u8, quoted: &[u8], macs: ([u8; 6], [u8; 6])| {
            let (s6, d6) = (ip(from), ip(to));
            let mut m = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc]; // MTU 1500 where it applies
            m.extend_from_slice(quoted);
            let c = match (s6, d6) {
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    fold(sum16(&a.octets()) + sum16(&b.octets()) + m.len() as u32 + 58 + sum16(&m))
                }
                _ => fold(sum16(&m)),
            };
            m[2..4].copy_from_slice(&c.to_be_bytes());
            let proto = if s6.is_ipv4() { 1 } else { 58 };
            let mut p = Pkt::new(from, to, L4::Raw { proto, bytes: m });
            p.dmac = macs.0;
            p.smac = macs.1;
            p.bytes()
        };
    let to_lb = |from: &str| (LB_MAC, backend_mac(ip(from)));
    let icmp_row = |name: &str, input: Vec<u8>, output: Vec<u8>| Row {
        name: name.into(),
        input,
        output,
        action: XDP_TX,
        reason: Reason::FwdNatIcmp,
        vip: None,
        backend: None,
    };
    // To the client: errors quoting a request on its way to the backend.
    let req4 = Pkt::new(client, "198.18.4.1", L4::tcp(41005, 8080, TCP_SYN)).l3();
    let req4_vip = with_l4_csum_of(
        Pkt::new(client, n4, L4::tcp(41005, 80, TCP_SYN)).l3(),
        &req4,
    );
    let req6 = Pkt::new(client6, "2001:db8:4::1", L4::tcp(41003, 8080, TCP_SYN)).l3();
    let req6_vip = with_l4_csum_of(
        Pkt::new(client6, n6, L4::tcp(41003, 80, TCP_SYN)).l3(),
        &req6,
    );
    let udp_req = Pkt::new(client, "198.18.4.2", L4::udp(41002, 53, b"query")).l3();
    let udp_req_vip = with_l4_csum_of(
        Pkt::new(client, n4, L4::udp(41002, 53, b"query")).l3(),
        &udp_req,
    );
    nat_rows.push(icmp_row(
        "nat icmp: the backend's port unreachable reaches the client from the VIP",
        icmp("198.18.4.2", client, 3, 3, &udp_req, to_lb("198.18.4.2")),
        icmp(n4, client, 3, 3, &udp_req_vip, (CLIENT_MAC, LB_MAC)),
    ));
    nat_rows.push(icmp_row(
        "nat icmp: a router's fragmentation needed reaches the client, quoting the VIP",
        icmp("198.18.4.254", client, 3, 4, &req4, to_lb("198.18.4.254")),
        icmp(
            "198.18.4.254",
            client,
            3,
            4,
            &req4_vip,
            (CLIENT_MAC, LB_MAC),
        ),
    ));
    nat_rows.push(icmp_row(
        "nat icmp: IPv6 packet too big from the backend reaches the client",
        icmp(
            "2001:db8:4::1",
            client6,
            2,
            0,
            &req6,
            to_lb("2001:db8:4::1"),
        ),
        icmp(n6, client6, 2, 0, &req6_vip, (CLIENT_MAC, LB_MAC)),
    ));
    // To the backend: errors addressed to the VIP, quoting a reply.
    let rep4_vip = Pkt::new(n4, client, L4::tcp(80, 41005, SYN_ACK)).l3();
    let rep4 = with_l4_csum_of(
        Pkt::new("198.18.4.1", client, L4::tcp(8080, 41005, SYN_ACK)).l3(),
        &rep4_vip,
    );
    let rep6_vip = Pkt::new(n6, client6, L4::tcp(80, 41003, SYN_ACK)).l3();
    let rep6 = with_l4_csum_of(
        Pkt::new("2001:db8:4::1", client6, L4::tcp(8080, 41003, SYN_ACK)).l3(),
        &rep6_vip,
    );
    nat_rows.push(icmp_row(
        "nat icmp: fragmentation needed for a reply goes to its backend",
        icmp("198.18.0.254", n4, 3, 4, &rep4_vip, (LB_MAC, CLIENT_MAC)),
        icmp(
            "198.18.0.254",
            "198.18.4.1",
            3,
            4,
            &rep4,
            (backend_mac(ip("198.18.4.1")), LB_MAC),
        ),
    ));
    nat_rows.push(icmp_row(
        "nat icmp: IPv6 packet too big for a reply goes to its backend",
        icmp("2001:db8::fe", n6, 2, 0, &rep6_vip, (LB_MAC, CLIENT_MAC)),
        icmp(
            "2001:db8::fe",
            "2001:db8:4::1",
            2,
            0,
            &rep6,
            (backend_mac(ip("2001:db8:4::1")), LB_MAC),
        ),
    ));
    // Not ours: an echo request, and an error about no NAT flow.
    nat_rows.push(Row::untouched(
        "nat icmp: an echo request to a client passes",
        icmp("198.18.4.1", client, 8, 0, &[0u8; 8], to_lb("198.18.4.1")),
        XDP_PASS,
        Reason::PassNotVip,
    ));
    let stranger = Pkt::new(client, "198.18.4.1", L4::tcp(49998, 8080, TCP_SYN)).l3();
    nat_rows.push(Row::untouched(
        "nat icmp: an error quoting no NAT flow passes",
        icmp("198.18.4.1", client, 3, 3, &stranger, to_lb("198.18.4.1")),
        XDP_PASS,
        Reason::PassNotVip,
    ));
    run_rows(&mut dp, &mut rows, nat_rows);

    // A flood of SYNs from random sources, five times the size of NAT_SYN
    // (1,024 entries here) and more than NAT's (4,096 over all CPUs):
    // each goes to the backend, no translation of it reaches NAT, and the
    // established flow 41005 is translated both ways as before.
    let established = dp.nat_entries().expect("reading NAT");
    let before = snapshot(&dp);
    let mut rng = hola_tests::fixture::Rng(0x5151_7a7a_0101_2323);
    const SYN_FLOOD: u64 = 5_120;
    for _ in 0..SYN_FLOOD {
        let r = rng.next_u64();
        let src = format!("198.19.{}.{}", (r >> 8) & 0xff, r & 0xff);
        let p = Pkt::new(
            &src,
            n4,
            L4::tcp(1024 + (r >> 16) as u16 % 60_000, 80, TCP_SYN),
        );
        let (action, _) = run(dp.program().expect("program"), &p.bytes()).expect("test run");
        assert_eq!(action, XDP_TX, "flood SYN {p:?}");
    }
    let d = diff(&before, &snapshot(&dp));
    assert_eq!(d["reason.fwd_syn.packets"], SYN_FLOOD, "{d:?}");
    assert_eq!(
        dp.nat_entries().expect("reading NAT"),
        established,
        "a SYN flood leaves NAT exactly as it was"
    );
    run_rows(
        &mut dp,
        &mut rows,
        vec![
            nat_row(
                "nat: after a SYN flood the established flow's request is translated as before",
                &Pkt::new(client, n4, L4::tcp(41005, 80, TCP_ACK)),
                Reason::FwdEstablished,
                nat4,
                "198.18.4.1",
                8080,
            ),
            reply_row(
                "nat: and its reply",
                &reply("198.18.4.1", client, L4::tcp(8080, 41005, TCP_ACK), None),
                n4,
                80,
            ),
        ],
    );

    // A handshake the client refuses (its RST answers the SYN-ACK, as the
    // real owner of a spoofed source does): translated to the backend, and
    // the handshake's translation is dropped, not moved to NAT.
    let rst_rev = Pkt::new("198.18.4.1", client, L4::tcp(8080, 41007, 0)).flow_key();
    run_rows(
        &mut dp,
        &mut rows,
        vec![nat_row(
            "nat: a SYN whose client will refuse the handshake",
            &Pkt::new(client, n4, L4::tcp(41007, 80, TCP_SYN)),
            Reason::FwdSyn,
            nat4,
            "198.18.4.1",
            8080,
        )],
    );
    assert!(
        dp.nat_syn_entry(&rst_rev).is_some(),
        "the SYN's translation waits in NAT_SYN"
    );
    run_rows(
        &mut dp,
        &mut rows,
        vec![nat_row(
            "nat: the client's RST goes to the backend, its handshake is not promoted",
            &Pkt::new(client, n4, L4::tcp(41007, 80, 0x04)),
            Reason::FwdNewFlow,
            nat4,
            "198.18.4.1",
            8080,
        )],
    );
    assert_eq!(
        dp.nat_syn_entry(&rst_rev),
        None,
        "the refused handshake is gone"
    );
    assert_eq!(dp.nat_entry(&rst_rev), None, "and never reached NAT");

    // fullnat: the source becomes the balancer's fullnat address and a port
    // of this CPU's range; the reply goes back to the client's own address
    // and port. Two ports on CPU 0: a third flow finds none and is dropped.
    let fn4 = vip("198.18.1.20", 80, Proto::Tcp);
    let fn6 = vip("2001:db8:1::9", 80, Proto::Tcp);
    for v in [fn4, fn6] {
        dp.add_vip(VipSpec {
            vip: v,
            mode: Mode::FullNat,
            src_hash: false,
            table_size: small,
            quic: false,
        })
        .expect("add fullnat VIP");
    }
    set(&mut dp, &fn4, &[with_port("198.18.4.3", 8080)]);
    set(&mut dp, &fn6, &[with_port("2001:db8:4::3", 8080)]);
    let full = |p: &Pkt, snat: &str, port: u16, to: &str| -> Vec<u8> {
        let mut q = p.clone();
        q.src = ip(snat);
        q.dst = ip(to);
        q.dmac = backend_mac(ip(to));
        q.smac = LB_MAC;
        if let L4::Tcp { sport, dport, .. } = &mut q.l4 {
            *sport = port;
            *dport = 8080;
        }
        q.bytes()
    };
    let full_row =
        |name: &str, p: &Pkt, reason: Reason, v: VipAddr, snat: &str, port: u16, to: &str| Row {
            name: name.into(),
            input: p.bytes(),
            output: full(p, snat, port, to),
            action: XDP_TX,
            reason,
            vip: Some(v),
            backend: Some(ip(to)),
        };
    let back = |from: &str, snat: &str, port: u16, l4: L4| -> Pkt {
        let mut r = Pkt::new(from, snat, l4);
        r.dmac = LB_MAC;
        r.smac = backend_mac(ip(from));
        let _ = port;
        r
    };
    let un_full = |r: &Pkt, vip_addr: &str, client_addr: &str, client_port: u16| -> Vec<u8> {
        let mut q = r.clone();
        q.src = ip(vip_addr);
        q.dst = ip(client_addr);
        q.dmac = CLIENT_MAC;
        q.smac = LB_MAC;
        if let L4::Tcp { sport, dport, .. } = &mut q.l4 {
            *sport = 80;
            *dport = client_port;
        }
        q.bytes()
    };
    let f4 = "198.18.1.20";
    let f6 = "2001:db8:1::9";
    let syn_a = Pkt::new(client, f4, L4::tcp(42000, 80, TCP_SYN));
    let reply_a = back(
        "198.18.4.3",
        "198.18.5.1",
        40000,
        L4::tcp(8080, 40000, SYN_ACK),
    );
    let syn6 = Pkt::new(client6, f6, L4::tcp(42003, 80, TCP_SYN));
    let reply6 = back(
        "2001:db8:4::3",
        "2001:db8:5::1",
        40001,
        L4::tcp(8080, 40001, SYN_ACK),
    );
    let full_rows = vec![
        full_row(
            "fullnat: IPv4 SYN from the balancer's address and port 40000",
            &syn_a,
            Reason::FwdSyn,
            fn4,
            "198.18.5.1",
            40000,
            "198.18.4.3",
        ),
        Row {
            name: "fullnat: its SYN-ACK back to the client's address and port".into(),
            input: reply_a.bytes(),
            output: un_full(&reply_a, f4, client, 42000),
            action: XDP_TX,
            reason: Reason::FwdNatReply,
            vip: None,
            backend: None,
        },
        full_row(
            "fullnat: its ACK keeps the SYN's port and completes the handshake",
            &Pkt::new(client, f4, L4::tcp(42000, 80, TCP_ACK)),
            Reason::FwdNewFlow,
            fn4,
            "198.18.5.1",
            40000,
            "198.18.4.3",
        ),
        full_row(
            "fullnat: the flow keeps its port",
            &Pkt::new(client, f4, L4::tcp(42000, 80, TCP_ACK)),
            Reason::FwdEstablished,
            fn4,
            "198.18.5.1",
            40000,
            "198.18.4.3",
        ),
        full_row(
            "fullnat: IPv6 SYN, the next port of the range",
            &syn6,
            Reason::FwdSyn,
            fn6,
            "2001:db8:5::1",
            40001,
            "2001:db8:4::3",
        ),
        Row {
            name: "fullnat: IPv6 SYN-ACK back".into(),
            input: reply6.bytes(),
            output: un_full(&reply6, f6, client6, 42003),
            action: XDP_TX,
            reason: Reason::FwdNatReply,
            vip: None,
            backend: None,
        },
        full_row(
            "fullnat: IPv6 its ACK keeps the SYN's port",
            &Pkt::new(client6, f6, L4::tcp(42003, 80, TCP_ACK)),
            Reason::FwdNewFlow,
            fn6,
            "2001:db8:5::1",
            40001,
            "2001:db8:4::3",
        ),
        full_row(
            "fullnat: a second IPv4 flow skips the live port 40000",
            &Pkt::new(client, f4, L4::tcp(42001, 80, TCP_SYN)),
            Reason::FwdSyn,
            fn4,
            "198.18.5.1",
            40001,
            "198.18.4.3",
        ),
        Row::vip_drop(
            "fullnat: a third flow finds no free port (one established, one in a handshake): dropped",
            Pkt::new(client, f4, L4::tcp(42002, 80, TCP_SYN)).bytes(),
            Reason::DropNatNoPort,
            fn4,
            Some(ip("198.18.4.3")),
        ),
    ];
    run_rows(&mut dp, &mut rows, full_rows);

    // ICMP errors about fullnat flows: the quoted packet and the error's
    // addresses become what the client (or the backend) sent and expects.
    let sent_a = Pkt::new("198.18.5.1", "198.18.4.3", L4::tcp(40000, 8080, TCP_SYN)).l3();
    let as_client_a = with_l4_csum_of(
        Pkt::new(client, f4, L4::tcp(42000, 80, TCP_SYN)).l3(),
        &sent_a,
    );
    let sent6 = Pkt::new(
        "2001:db8:5::1",
        "2001:db8:4::3",
        L4::tcp(40001, 8080, TCP_SYN),
    )
    .l3();
    let as_client6 = with_l4_csum_of(
        Pkt::new(client6, f6, L4::tcp(42003, 80, TCP_SYN)).l3(),
        &sent6,
    );
    let reply_to_client = Pkt::new(f4, client, L4::tcp(80, 42000, SYN_ACK)).l3();
    let as_backend_sent = with_l4_csum_of(
        Pkt::new("198.18.4.3", "198.18.5.1", L4::tcp(8080, 40000, SYN_ACK)).l3(),
        &reply_to_client,
    );
    let fullnat_icmp = vec![
        icmp_row(
            "fullnat icmp: a router's fragmentation needed reaches the client, quoting its request",
            icmp(
                "198.18.4.254",
                "198.18.5.1",
                3,
                4,
                &sent_a,
                to_lb("198.18.4.254"),
            ),
            icmp(
                "198.18.4.254",
                client,
                3,
                4,
                &as_client_a,
                (CLIENT_MAC, LB_MAC),
            ),
        ),
        icmp_row(
            "fullnat icmp: the backend's IPv6 packet too big reaches the client from the VIP",
            icmp(
                "2001:db8:4::3",
                "2001:db8:5::1",
                2,
                0,
                &sent6,
                to_lb("2001:db8:4::3"),
            ),
            icmp(f6, client6, 2, 0, &as_client6, (CLIENT_MAC, LB_MAC)),
        ),
        icmp_row(
            "fullnat icmp: fragmentation needed for a reply goes to the backend, quoting what it sent",
            icmp(
                "198.18.0.254",
                f4,
                3,
                4,
                &reply_to_client,
                (LB_MAC, CLIENT_MAC),
            ),
            icmp(
                "198.18.0.254",
                "198.18.4.3",
                3,
                4,
                &as_backend_sent,
                (backend_mac(ip("198.18.4.3")), LB_MAC),
            ),
        ),
    ];
    run_rows(&mut dp, &mut rows, fullnat_icmp);
    for r in rows
        .iter()
        .filter(|r| r.name.starts_with("fullnat:") && r.action == XDP_TX)
    {
        assert!(
            hola_tests::packet::l4_checksums_ok(&r.output),
            "{}: checksums of the output",
            r.name
        );
    }
    // Every NAT output's checksums verify when recomputed from scratch.
    for r in rows
        .iter()
        .filter(|r| r.name.starts_with("nat:") && r.action == XDP_TX)
    {
        assert!(
            hola_tests::packet::l4_checksums_ok(&r.output),
            "{}: checksums of the output",
            r.name
        );
    }

    // Every forwarded IPv4 tunnel output carries a valid outer checksum.
    for r in rows.iter().filter(|r| r.name.starts_with("tunnel: IPv4")) {
        let l3 = if r.output[12..14] == [0x81, 0x00] {
            18
        } else {
            14
        };
        assert!(
            ipv4_header_ok(&r.output[l3..]),
            "{}: outer IPv4 checksum",
            r.name
        );
    }

    // lb-decap restores the inner packet byte for byte.
    let mut decap = Ebpf::load(programs::DECAP).expect("loading hola-decap");
    let prog: &mut Xdp = decap
        .program_mut("hola_decap")
        .expect("hola_decap")
        .try_into()
        .expect("XDP");
    prog.load().expect("the verifier must accept hola-decap");
    let mut decap_rows = 0u64;
    let mut decap_failures = Vec::new();
    for r in rows.iter().filter(|r| r.name.starts_with("tunnel:")) {
        let (action, out) = run(prog, &r.output).expect("test run");
        let want = with_macs(&r.input, r.output[..6].try_into().expect("6"), LB_MAC);
        if action != XDP_PASS || out != want {
            decap_failures.push(format!(
                "decap of {}: verdict {action}\n got:\n{}\n want:\n{}",
                r.name,
                hex(&out),
                hex(&want)
            ));
        }
        decap_rows += 1;
    }
    let plain = syn4.bytes();
    let (action, out) = run(prog, &plain).expect("test run");
    if action != XDP_PASS || out != plain {
        decap_failures.push("decap: a packet that is not tunnelled must pass unchanged".into());
    }
    let stats: PerCpuArray<_, ReasonStats> =
        PerCpuArray::try_from(decap.map("DECAP_STATS").expect("DECAP_STATS"))
            .expect("per-CPU array");
    let sum = |i: u32| {
        stats
            .get(&i, 0)
            .expect("read")
            .iter()
            .map(|s| s.packets)
            .sum::<u64>()
    };
    assert_eq!(
        (sum(0), sum(1)),
        (decap_rows, 1),
        "decap counters: decapsulated, passed"
    );
    assert!(decap_rows >= 4, "every tunnel row was decapsulated");

    failures.extend(decap_failures);
    println!(
        "{} balancer rows and {} decap rows run",
        rows.len(),
        decap_rows + 1
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
    assert!(
        rows.len() >= 25,
        "the fixture table must have at least 25 rows"
    );
}

/// `v`'s Maglev table as the kernel holds it now (a VIP of 1021 slots
/// hashing the 5-tuple), as a function of the flow.
fn table_now(dp: &Dataplane, v: &VipAddr) -> impl Fn(&lb_common::FlowKey) -> IpAddr + use<> {
    let t = dp.kernel_table(v).expect("reading RINGS");
    move |k| t[(flow_hash(k, false) % 1021) as usize].expect("every slot has a backend")
}

/// The first port from `from` whose ACK from `client` to `to`:80 the
/// predicate accepts.
fn port_where(from: u16, client: &str, to: &str, mut ok: impl FnMut(&Pkt) -> bool) -> Pkt {
    (from..from + 5000)
        .map(|port| Pkt::new(client, to, L4::tcp(port, 80, TCP_ACK)))
        .find(|p| ok(p))
        .expect("some port among 5000 fits")
}

/// New flows after a table change (the previous table during the grace
/// period, the current one when its backend is gone or the period is
/// over), and the insert rate limit: each on a data plane of its own, with
/// a short grace period and a small rate.
#[test]
fn grace_period_and_rate_limit_fixtures() {
    require_root();
    pin_to_cpu0();
    let grace = std::time::Duration::from_millis(400);
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        table_grace: grace,
        new_flow_rate: 0,
        ..Default::default()
    })
    .expect("loading the balancer (the verifier must accept it)");
    let v = vip("198.18.6.1", 80, Proto::Tcp);
    dp.add_vip(VipSpec {
        vip: v,
        mode: Mode::Dsr,
        src_hash: false,
        table_size: 1021,
        quic: false,
    })
    .expect("add VIP");
    let (a, b, c, d, e) = (
        "198.18.7.1",
        "198.18.7.2",
        "198.18.7.3",
        "198.18.7.4",
        "198.18.7.5",
    );
    let set = |dp: &mut Dataplane, bs: &[(&str, u32)]| {
        let specs: Vec<BackendSpec> = bs.iter().map(|&(a, w)| backend(a, w)).collect();
        dp.set_backends(&v, &specs).expect("set backends");
    };
    let to = |dp: &Dataplane, p: &Pkt| -> IpAddr {
        dp.maglev_backend(&v, &p.flow_key()).expect("a backend")
    };
    let client = "198.18.0.2";
    let mut failures = Vec::new();
    let mut run_rows = |dp: &mut Dataplane, rows: Vec<Row>| {
        for r in rows {
            if let Some(f) = check(dp, &r) {
                failures.push(f);
            }
        }
    };

    set(&mut dp, &[(a, 1), (b, 1), (c, 1)]);
    let t0 = table_now(&dp, &v);
    set(&mut dp, &[(a, 1), (b, 1), (c, 1), (d, 3)]);
    // P: never seen, its slot moved in the change.
    let p = port_where(43000, client, "198.18.6.1", |p| {
        t0(&p.flow_key()) != to(&dp, p)
    });
    let p_old = t0(&p.flow_key());
    run_rows(
        &mut dp,
        vec![
            Row::dsr(
                "grace: a non-SYN miss after a change goes to the previous table's backend",
                &p,
                Reason::FwdNewFlow,
                v,
                p_old,
            ),
            Row::dsr(
                "grace: and is recorded there",
                &p,
                Reason::FwdEstablished,
                v,
                p_old,
            ),
        ],
    );
    // Q: a new connection after the change, in a moved slot: its SYN goes
    // by the current table and is remembered apart (GRACE_SYNS, not the
    // flow table), so that its ACK, a non-SYN miss, follows it rather than
    // the previous table.
    let q_ack = port_where(43500, client, "198.18.6.1", |p| {
        t0(&p.flow_key()) != to(&dp, p)
    });
    let mut q_syn = q_ack.clone();
    q_syn.l4 = match q_syn.l4 {
        L4::Tcp { sport, dport, .. } => L4::tcp(sport, dport, TCP_SYN),
        other => other,
    };
    let q_to = to(&dp, &q_syn);
    run_rows(
        &mut dp,
        vec![
            Row::dsr(
                "grace: a SYN in a slot the change moved goes by the current table",
                &q_syn,
                Reason::FwdSyn,
                v,
                q_to,
            ),
            Row::dsr(
                "grace: its ACK follows it (not the previous table) and is recorded",
                &q_ack,
                Reason::FwdNewFlow,
                v,
                q_to,
            ),
        ],
    );
    // R: a slot of `a` now, which the next change (removing `a`) moves.
    let t1 = table_now(&dp, &v);
    let r = port_where(44000, client, "198.18.6.1", |p| {
        to(&dp, p) == a.parse::<IpAddr>().expect("literal")
    });
    set(&mut dp, &[(b, 1), (c, 1), (d, 3)]);
    assert_eq!(t1(&r.flow_key()).to_string(), a);
    let r_to = to(&dp, &r);
    run_rows(
        &mut dp,
        vec![Row::dsr(
            "grace: a non-SYN miss whose previous backend is gone goes by the current table",
            &r,
            Reason::FwdNewFlow,
            v,
            r_to,
        )],
    );
    // S: its slot moves in the next change; its first packet comes after
    // the grace period.
    let t2 = table_now(&dp, &v);
    set(&mut dp, &[(b, 1), (c, 1), (d, 3), (e, 5)]);
    let s = port_where(45000, client, "198.18.6.1", |p| {
        t2(&p.flow_key()) != to(&dp, p)
    });
    let s_to = to(&dp, &s);
    assert_eq!(
        dp.end_grace_periods().expect("PREV_UNTIL"),
        0,
        "not over yet"
    );
    std::thread::sleep(grace + std::time::Duration::from_millis(100));
    run_rows(
        &mut dp,
        vec![Row::dsr(
            "grace: after the period a non-SYN miss goes by the current table",
            &s,
            Reason::FwdNewFlow,
            v,
            s_to,
        )],
    );
    // The owner ends the period once a second (no clock read for a SYN
    // after it); the program had stopped using the previous table already.
    assert_eq!(
        dp.end_grace_periods().expect("PREV_UNTIL"),
        1,
        "one VIP's period"
    );
    assert_eq!(dp.end_grace_periods().expect("PREV_UNTIL"), 0, "ended once");

    // The insert rate limit: 3 new flows per second on this CPU.
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 4096,
        nat_capacity: 4096,
        table_grace: std::time::Duration::ZERO,
        new_flow_rate: 3,
        ..Default::default()
    })
    .expect("loading the balancer");
    let u = vip("198.18.6.2", 53, Proto::Udp);
    for (w, proto) in [(v, Proto::Tcp), (u, Proto::Udp)] {
        dp.add_vip(VipSpec {
            vip: VipAddr { proto, ..w },
            mode: Mode::Dsr,
            src_hash: false,
            table_size: 1021,
            quic: false,
        })
        .expect("add VIP");
    }
    let v = VipAddr {
        addr: "198.18.6.1".parse().expect("literal"),
        ..v
    };
    dp.set_backends(&v, &[backend(a, 1), backend(b, 1)])
        .expect("set backends");
    dp.set_backends(&u, &[backend(c, 1)]).expect("set backends");
    let udp = |port: u16| Pkt::new(client, "198.18.6.2", L4::udp(port, 53, b"q"));
    let ack = |port: u16| Pkt::new(client, "198.18.6.1", L4::tcp(port, 80, TCP_ACK));
    let syn = Pkt::new(client, "198.18.6.1", L4::tcp(46100, 80, TCP_SYN));
    let ip = |s: &str| -> IpAddr { s.parse().expect("literal") };
    let over = ack(46004);
    let over_to = to(&dp, &over);
    let third_to = to(&dp, &ack(46003));
    let syn_to = to(&dp, &syn);
    run_rows(
        &mut dp,
        vec![
            Row::dsr(
                "rate: new flow 1 of 3",
                &udp(46001),
                Reason::FwdNewFlow,
                u,
                ip(c),
            ),
            Row::dsr(
                "rate: new flow 2 of 3",
                &udp(46002),
                Reason::FwdNewFlow,
                u,
                ip(c),
            ),
            Row::dsr(
                "rate: new flow 3 of 3",
                &ack(46003),
                Reason::FwdNewFlow,
                v,
                third_to,
            ),
            Row::dsr(
                "rate: a 4th non-SYN miss goes by the table, unrecorded",
                &over,
                Reason::FwdFlood,
                v,
                over_to,
            ),
            Row::dsr(
                "rate: a 5th, UDP, too",
                &udp(46005),
                Reason::FwdFlood,
                u,
                ip(c),
            ),
            Row::dsr(
                "rate: a SYN is not an insert: forwarded as ever",
                &syn,
                Reason::FwdSyn,
                v,
                syn_to,
            ),
            Row::dsr(
                "rate: a recorded flow is untouched by the limit",
                &udp(46001),
                Reason::FwdEstablished,
                u,
                ip(c),
            ),
        ],
    );
    assert_eq!(
        dp.flow_entry(&over.flow_key()),
        None,
        "a flow over the rate limit is not recorded"
    );
    assert_eq!(dp.flow_entry(&udp(46005).flow_key()), None);
    assert_eq!(
        dp.flow_entry(&syn.flow_key()),
        None,
        "a SYN is not recorded"
    );
    assert!(dp.flow_entry(&ack(46003).flow_key()).is_some());
    // The next second: recorded again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run_rows(
        &mut dp,
        vec![Row::dsr(
            "rate: in the next second new flows are recorded again",
            &over,
            Reason::FwdNewFlow,
            v,
            over_to,
        )],
    );
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// `VIP_FILTER` (docs/maps.md): removing a VIP address recomputes its
/// filter word from the addresses left, so another VIP whose bit is in the
/// same word is still balanced, and the removed one now passes as not a
/// VIP. Two addresses of one word are found with the program's own bit
/// function.
#[test]
fn removing_a_vip_keeps_its_filter_neighbours() {
    require_root();
    let bit = |a: Ipv4Addr| lb_common::vip::vip_filter_bit(u32::from_ne_bytes(a.octets()));
    let first = Ipv4Addr::new(198, 18, 7, 1);
    let word = bit(first) >> 6;
    let second = (2..=255u8)
        .map(|i| Ipv4Addr::new(198, 18, 7, i))
        .find(|a| bit(*a) >> 6 == word && bit(*a) != bit(first))
        .or_else(|| {
            (0..=255u8)
                .flat_map(|h| (1..=254u8).map(move |l| Ipv4Addr::new(198, 19, h, l)))
                .find(|a| bit(*a) >> 6 == word && bit(*a) != bit(first))
        })
        .expect("an address of 198.18.0.0/15 in the same filter word");
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 1024,
        ..Default::default()
    })
    .expect("loading the balancer");
    let vips = [first, second].map(|a| vip(&a.to_string(), 80, Proto::Tcp));
    for v in vips {
        dp.add_vip(VipSpec {
            vip: v,
            mode: Mode::Dsr,
            src_hash: false,
            table_size: 251,
            quic: false,
        })
        .expect("add VIP");
        dp.set_backends(&v, &[backend("198.18.2.1", 1)])
            .expect("backends");
    }
    let to =
        |a: Ipv4Addr| Pkt::new("198.18.0.1", &a.to_string(), L4::tcp(40000, 80, TCP_SYN)).bytes();
    let verdict = |dp: &Dataplane, a: Ipv4Addr| run(dp.program_ref(), &to(a)).expect("test run").0;
    assert_eq!(verdict(&dp, first), XDP_TX, "{first} is a VIP");
    assert_eq!(verdict(&dp, second), XDP_TX, "{second} is a VIP");
    dp.remove_vip(&vips[0]).expect("remove VIP");
    assert_eq!(verdict(&dp, first), XDP_PASS, "{first} is no VIP any more");
    assert_eq!(
        verdict(&dp, second),
        XDP_TX,
        "{second} shares {first}'s filter word and is still a VIP"
    );
}

/// A change that moves tens of thousands of slots (one backend of three
/// going down in a 65,537-slot table, behind a VIP whose table sits first
/// in `RINGS`) reaches the kernel whole: the batched slot writes put every
/// slot where an independent Maglev build says, at the VIP's own offset.
#[test]
fn a_change_of_many_slots_reaches_the_kernel_whole() {
    require_root();
    let mut dp = Dataplane::load(DataplaneConfig {
        flow_capacity_per_cpu: 1024,
        nat_capacity: 1024,
        ..Default::default()
    })
    .expect("loading the balancer");
    let (first, big) = (
        vip("198.18.8.1", 80, Proto::Tcp),
        vip("198.18.8.2", 80, Proto::Tcp),
    );
    for (v, size) in [(first, 251), (big, 65_537)] {
        dp.add_vip(VipSpec {
            vip: v,
            mode: Mode::Dsr,
            src_hash: false,
            table_size: size,
            quic: false,
        })
        .expect("add VIP");
    }
    dp.set_backends(&first, &[backend("198.18.9.1", 1)])
        .expect("backends of the first VIP");
    let addrs = ["198.18.9.11", "198.18.9.12", "198.18.9.13"];
    let mut specs: Vec<BackendSpec> = addrs.iter().map(|a| backend(a, 1)).collect();
    // What the kernel must hold: Maglev over the backends' ids, a down one
    // taking no slot, each id read as its address.
    let expected = |dp: &Dataplane, specs: &[BackendSpec]| -> Vec<Option<IpAddr>> {
        let input: Vec<lb_userspace::maglev::MaglevBackend> = specs
            .iter()
            .map(|b| lb_userspace::maglev::MaglevBackend {
                id: dp.backend_id(&big, b.addr).expect("an id"),
                key: lb_userspace::maglev::backend_key(b.addr, 80),
                weight: if b.up { b.weight } else { 0 },
            })
            .collect();
        lb_userspace::maglev::build(&input, 65_537)
            .expect("Maglev build")
            .into_iter()
            .map(|id| {
                specs
                    .iter()
                    .find(|b| dp.backend_id(&big, b.addr) == Some(id))
                    .map(|b| b.addr)
            })
            .collect()
    };
    dp.set_backends(&big, &specs).expect("three backends");
    let before = dp.kernel_table(&big).expect("reading RINGS");
    assert!(
        before == expected(&dp, &specs),
        "RINGS holds the three-backend table"
    );
    specs[1].up = false;
    dp.set_backends(&big, &specs).expect("one backend down");
    let after = dp.kernel_table(&big).expect("reading RINGS");
    assert!(
        after == expected(&dp, &specs),
        "RINGS holds the table without the down backend"
    );
    let down: IpAddr = addrs[1].parse().expect("literal");
    // (Maglev may move a few other slots too: 9 here.)
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let owned = before.iter().filter(|b| **b == Some(down)).count();
    assert!(
        !after.contains(&Some(down)) && moved >= owned && owned > 20_000,
        "the down backend's {owned} slots (about a third) all moved: {moved} moved"
    );
    assert_eq!(
        dp.kernel_table(&first).expect("reading RINGS"),
        vec![Some("198.18.9.1".parse().expect("literal")); 251],
        "the first VIP's table is untouched"
    );
}
