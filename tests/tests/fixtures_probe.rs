//! `hola_probe` through BPF_PROG_TEST_RUN: the tc program that carries a
//! health probe addressed to a VIP to its backend, provisioned through
//! `Dataplane` as the daemon provisions it. Each row states the input
//! frame, the socket mark, the exact verdict and the exact output bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use hola_tests::{
    fixture::{hex, require_root},
    packet::{L4, LB_MAC, Pkt, TCP_SYN, fold, sum16, with_macs},
};
use lb_common::{
    hash::flow_hash,
    probe::{PROBE_DSR, PROBE_TUNNEL, probe_mark},
};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// Where `PROBE_EGRESS` sends a probe whose backend has ifindex 0.
const EGRESS: u32 = 7;

fn bmac(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x0b, last]
}

/// A backend whose next hop is on the interface hola is attached to
/// (`ifindex` 0: the probe leaves by `PROBE_EGRESS`).
fn backend(addr: &str, ifindex: u32) -> BackendSpec {
    let addr: IpAddr = addr.parse().expect("backend address");
    let last = match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    BackendSpec {
        addr,
        weight: 1,
        server_id: 0,
        up: true,
        port: 0,
        nexthop: Some(Nexthop {
            dmac: bmac(last),
            smac: LB_MAC,
            ifindex,
        }),
    }
}

/// A row: its name, the input frame, the skb's mark, the verdict and the
/// output frame it must give.
type Row = (&'static str, Vec<u8>, u32, u32, Vec<u8>);

/// One run with the skb's mark set (`__sk_buff.mark`, at offset 8; the
/// fields before it must be zero): (verdict, output frame).
fn run(prog: &SchedClassifier, input: &[u8], mark: u32) -> (u32, Vec<u8>) {
    let mut ctx = [0u8; 12];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    let mut out = vec![0u8; input.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN of hola_probe");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// The frame `hola_lb` emits for `p` in tunnel mode toward `to`: the
/// backend's MACs, an outer IPv4 header (RFC 2003) from the default tunnel
/// prefix 198.18.255.0/24 with the flow hash's low byte.
fn tunnelled(p: &Pkt, to: Ipv4Addr, dmac: [u8; 6]) -> Vec<u8> {
    let hash = flow_hash(&p.flow_key(), false);
    let inner = p.l3();
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let src = Ipv4Addr::new(198, 18, 255, (hash & 0xff) as u8);
    let mut h = vec![0x45, p.tos];
    h.extend_from_slice(&((inner.len() + 20) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 64, 4, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&to.octets());
    let c = fold(sum16(&h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(&inner);
    f
}

/// The same for an IPv6 probe: an outer IPv6 header (RFC 2473) from the
/// default tunnel prefix 2001:db8:ffff::/112 with the flow hash's low 16
/// bits, the hash's low 20 bits as flow label.
fn tunnelled6(p: &Pkt, tclass: u8, to: Ipv6Addr, dmac: [u8; 6]) -> Vec<u8> {
    let hash = flow_hash(&p.flow_key(), false);
    let inner = with_tclass(&p.l3(), 0, tclass);
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&LB_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    let mut src = "2001:db8:ffff::"
        .parse::<Ipv6Addr>()
        .expect("literal")
        .octets();
    src[14..16].copy_from_slice(&((hash & 0xffff) as u16).to_be_bytes());
    let fl = hash & 0xf_ffff;
    f.extend_from_slice(&[
        0x60 | (tclass >> 4),
        (tclass << 4) | (fl >> 16) as u8,
        (fl >> 8) as u8,
        fl as u8,
    ]);
    f.extend_from_slice(&(inner.len() as u16).to_be_bytes());
    f.extend_from_slice(&[41, 64]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&to.octets());
    f.extend_from_slice(&inner);
    f
}

/// `frame` with the IPv6 header at `l3` given traffic class `tclass`
/// (`Pkt` writes 0; the TCP checksum does not cover it).
fn with_tclass(frame: &[u8], l3: usize, tclass: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[l3] = 0x60 | (tclass >> 4);
    f[l3 + 1] = (tclass << 4) | (f[l3 + 1] & 0x0f);
    f
}

#[test]
fn probes_leave_as_the_balancer_sends_a_clients_packet() {
    require_root();
    let mut dp = Dataplane::load(DataplaneConfig::default())
        .expect("loading the balancer (the verifier must accept it)");
    let dsr = VipAddr {
        addr: "198.18.1.1".parse().expect("literal"),
        port: 80,
        proto: Proto::Tcp,
    };
    let tun = VipAddr {
        addr: "198.18.1.2".parse().expect("literal"),
        ..dsr
    };
    for (vip, mode) in [(dsr, Mode::Dsr), (tun, Mode::Tunnel)] {
        dp.add_vip(VipSpec {
            vip,
            mode,
            src_hash: false,
            table_size: 1021,
            quic: false,
        })
        .expect("add VIP");
    }
    dp.set_backends(
        &dsr,
        &[backend("198.18.0.11", 0), backend("198.18.0.12", 0)],
    )
    .expect("dsr backends");
    dp.set_backends(&tun, &[backend("198.18.0.13", 0)])
        .expect("tunnel backends");
    let dsr6 = VipAddr {
        addr: "2001:db8:1::1".parse().expect("literal"),
        ..dsr
    };
    let tun6 = VipAddr {
        addr: "2001:db8:1::2".parse().expect("literal"),
        ..dsr
    };
    for (vip, mode, b) in [
        (dsr6, Mode::Dsr, "2001:db8::11"),
        (tun6, Mode::Tunnel, "2001:db8::13"),
    ] {
        dp.add_vip(VipSpec {
            vip,
            mode,
            src_hash: false,
            table_size: 1021,
            quic: false,
        })
        .expect("add IPv6 VIP");
        dp.set_backends(&vip, &[backend(b, 0)])
            .expect("IPv6 backends");
    }
    let id = |vip: &VipAddr, a: &str| {
        dp.backend_id(vip, a.parse().expect("literal"))
            .expect("a backend id")
    };
    let (b11, b12, b13) = (
        id(&dsr, "198.18.0.11"),
        id(&dsr, "198.18.0.12"),
        id(&tun, "198.18.0.13"),
    );
    let (b6_11, b6_13) = (id(&dsr6, "2001:db8::11"), id(&tun6, "2001:db8::13"));
    let prog = dp
        .load_probe(EGRESS)
        .expect("the verifier accepts hola_probe");

    // The balancer's probe of 198.18.1.1:80 from its own address, as the
    // kernel hands it to lo's egress (lo's MACs are zero).
    let syn = |dst: &str| {
        let src = if dst.contains(':') {
            "2001:db8::2"
        } else {
            "198.18.0.2"
        };
        let mut p = Pkt::new(src, dst, L4::tcp(40123, 80, TCP_SYN));
        p.dmac = [0; 6];
        p.smac = [0; 6];
        p
    };
    let probe_dsr = syn("198.18.1.1");
    let probe_tun = syn("198.18.1.2");
    // IPv6 probes reach the program on the balancer's interface, routed to
    // hola's link-local next hop (its MAC, 02:68:6f:6c:61:00; the
    // interface's own as source).
    let syn6 = |dst: &str| {
        let mut p = syn(dst);
        p.dmac = [0x02, 0x68, 0x6f, 0x6c, 0x61, 0x00];
        p.smac = LB_MAC;
        p
    };
    let probe_dsr6 = syn6("2001:db8:1::1");
    let probe_tun6 = syn6("2001:db8:1::2");
    let mark = |id: u32, way: u32| probe_mark(id, way).expect("an id that fits");
    let rows: Vec<Row> = vec![
        (
            "no mark: not a probe, untouched",
            probe_dsr.bytes(),
            0,
            TC_ACT_OK,
            probe_dsr.bytes(),
        ),
        (
            "another mark: untouched",
            probe_dsr.bytes(),
            0x0040_0000 | b11,
            TC_ACT_OK,
            probe_dsr.bytes(),
        ),
        (
            "dsr: the backend's MACs, the VIP still the destination",
            probe_dsr.bytes(),
            mark(b11, PROBE_DSR),
            TC_ACT_REDIRECT,
            with_macs(&probe_dsr.bytes(), bmac(11), LB_MAC),
        ),
        (
            "dsr, the VIP's other backend: its MACs",
            probe_dsr.bytes(),
            mark(b12, PROBE_DSR),
            TC_ACT_REDIRECT,
            with_macs(&probe_dsr.bytes(), bmac(12), LB_MAC),
        ),
        (
            "tunnel: IP-in-IP from the tunnel source to the backend",
            probe_tun.bytes(),
            mark(b13, PROBE_TUNNEL),
            TC_ACT_REDIRECT,
            tunnelled(&probe_tun, Ipv4Addr::new(198, 18, 0, 13), bmac(13)),
        ),
        (
            "IPv6 dsr: the backend's MACs, the VIP still the destination",
            probe_dsr6.bytes(),
            mark(b6_11, PROBE_DSR),
            TC_ACT_REDIRECT,
            with_macs(&probe_dsr6.bytes(), bmac(0x11), LB_MAC),
        ),
        (
            "IPv6 tunnel: IPv6-in-IPv6 from the tunnel source to the backend",
            with_tclass(&probe_tun6.bytes(), 14, 0x28),
            mark(b6_13, PROBE_TUNNEL),
            TC_ACT_REDIRECT,
            tunnelled6(
                &probe_tun6,
                0x28,
                "2001:db8::13".parse().expect("literal"),
                bmac(0x13),
            ),
        ),
        (
            "an IPv4 probe marked for an IPv6 backend: dropped",
            probe_dsr.bytes(),
            mark(b6_11, PROBE_DSR),
            TC_ACT_SHOT,
            probe_dsr.bytes(),
        ),
        (
            "an id no backend holds: dropped (the check then fails)",
            probe_dsr.bytes(),
            mark(999, PROBE_DSR),
            TC_ACT_SHOT,
            probe_dsr.bytes(),
        ),
    ];
    let mut failures = Vec::new();
    for (name, input, m, want_action, want) in &rows {
        let (action, out) = run(prog, input, *m);
        if action != *want_action || (action != TC_ACT_SHOT && out != *want) {
            failures.push(format!(
                "{name}: verdict {action} (want {want_action})\n  got  {}\n  want {}",
                hex(&out),
                hex(want)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
