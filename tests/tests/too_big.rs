//! Tunnel "too big" (issue 16 item 2) with real sockets: netlab's lab with
//! the balancer's backend side on an interface of its own (`eth1`, MTU
//! 1,400, on the same bridge), the tunnel VIP's backend reached through it
//! (XDP_REDIRECT). A client datagram of 1,500 bytes with DF is answered
//! with "fragmentation needed" (MTU 1,380: 1,400 minus the outer IPv4
//! header), which the client's kernel takes (its route cache); then a TCP
//! client whose path MTU is unknown sends a 20,000-byte request through the
//! tunnel VIP: its full-size segments are answered the same way, it lowers
//! its segments, and the request completes.
//!
//! ```text
//!   cl 198.18.0.1  ─┐
//!   lb 198.18.0.2  ─┤ br0 (ns sw)     lb eth1 (MTU 1400) ─┤ br0
//!   b1 198.18.0.11 ─┘   tunnel VIP 198.18.1.2 on b1's lo
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

use aya::programs::xdp::XdpMode;
use hola_tests::{
    fixture::require_root,
    netns::{in_ns, ns_cmd, spawn_in_ns},
    topo::{Lab, attach},
};
use lb_userspace::{
    dataplane::{BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec},
    programs,
};
use netlab::lab::{Family, LabSpec, SWITCH};

const VIP: &str = "198.18.1.2";
const CLIENT: &str = "198.18.0.1";
const REQUEST: usize = 20_000;

/// The path MTU the client's route cache holds toward the VIP, if any.
fn cached_mtu(ns: &str) -> Option<u32> {
    let out = ns_cmd(ns, "ip", &["route", "get", VIP]);
    let mut w = out.split_whitespace();
    w.by_ref().find(|x| *x == "mtu")?;
    w.next().and_then(|v| v.parse().ok())
}

fn reason(dp: &Dataplane, name: &str) -> u64 {
    let s = dp.stats().expect("stats");
    s.reasons
        .iter()
        .find(|(n, _)| n.to_string() == name)
        .map_or(0, |(_, r)| r.packets)
}

#[test]
fn a_tunnel_vip_behind_a_smaller_mtu_answers_too_big() {
    require_root();
    let lab = Lab::build(&LabSpec {
        prefix: "htb4",
        client: "cl",
        backends: 1,
        families: &[Family::V4],
        vips: &[VIP],
    });
    let t = &lab.t;
    // The balancer's backend side: eth1, MTU 1,400, on the bridge; its
    // peer port runs an XDP program so that it takes redirected frames.
    t.link("lb", "eth1", SWITCH, "p-lb1");
    ns_cmd(
        &t.ns(SWITCH),
        "ip",
        &["link", "set", "p-lb1", "master", "br0"],
    );
    t.ip("lb", &["link", "set", "eth1", "mtu", "1400"]);
    ns_cmd(
        &t.ns(SWITCH),
        "ip",
        &["link", "set", "p-lb1", "mtu", "1400"],
    );
    let _pass = attach(&t.ns(SWITCH), programs::BENCH, "bench_pass", "p-lb1");
    let (eth0, eth1) = (t.ifindex("lb", "eth0"), t.ifindex("lb", "eth1"));
    let nexthop = Nexthop {
        dmac: t.mac("b1", "eth0"),
        smac: t.mac("lb", "eth1"),
        ifindex: eth1,
    };
    let mut dp = in_ns(&t.ns("lb"), move || {
        let mut dp = Dataplane::load(DataplaneConfig {
            flow_capacity_per_cpu: 4096,
            ..Default::default()
        })
        .expect("load balancer");
        dp.attach("eth0", XdpMode::Driver)
            .expect("attach balancer to eth0 in driver mode");
        dp.add_tx_port(eth0).expect("TX_PORTS");
        dp.add_tx_port(eth1).expect("TX_PORTS");
        let mtus = dp.refresh_egress_mtus().expect("EGRESS_MTU");
        assert_eq!(
            mtus,
            vec![(eth0, 1500), (eth1, 1400)],
            "the egress MTUs as the kernel has them"
        );
        dp
    });
    for (port, proto) in [(80, Proto::Tcp), (53, Proto::Udp)] {
        let v = VipAddr {
            addr: VIP.parse().expect("vip"),
            port,
            proto,
        };
        dp.add_vip(VipSpec {
            vip: v,
            mode: Mode::Tunnel,
            src_hash: false,
            table_size: 1021,
        })
        .expect("add VIP");
        dp.set_backends(
            &v,
            &[BackendSpec {
                addr: "198.18.0.11".parse().expect("address"),
                weight: 1,
                up: true,
                port: 0,
                nexthop: Some(nexthop),
            }],
        )
        .expect("set backends");
    }

    // A datagram of 1,500 bytes with DF (IP_PMTUDISC_DO).
    let cl = t.ns("cl");
    assert_eq!(cached_mtu(&cl), None, "no path MTU known before");
    // The socket stays open until the answer is in: the kernel lowers the
    // path MTU only for an error that finds its socket.
    let _socket = in_ns(&cl, || {
        let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let v = libc::IP_PMTUDISC_DO;
        // SAFETY: a setsockopt of an int on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                u.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&raw const v).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "IP_MTU_DISCOVER: {}",
            std::io::Error::last_os_error()
        );
        u.send_to(&[0x5a; 1472], (VIP, 53))
            .expect("send 1,500 bytes");
        u
    });
    let mut mtu = None;
    for _ in 0..100 {
        mtu = cached_mtu(&cl);
        if mtu.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen: Vec<(String, u64)> = dp
        .stats()
        .expect("stats")
        .reasons
        .iter()
        .filter(|(_, r)| r.packets > 0)
        .map(|(n, r)| (n.to_string(), r.packets))
        .collect();
    assert_eq!(
        mtu,
        Some(1380),
        "the client's route cache toward the VIP after the answer (balancer: {seen:?}; client: {})",
        ns_cmd(
            &cl,
            "nstat",
            &[
                "-az",
                "IcmpInDestUnreachs",
                "IcmpInErrors",
                "IcmpInCsumErrors"
            ]
        )
    );
    assert_eq!(reason(&dp, "tx_too_big"), 1, "one answer sent");

    // TCP: a large request through the tunnel VIP, the path MTU unknown.
    ns_cmd(&cl, "ip", &["route", "flush", "cache"]);
    let server = spawn_in_ns(&t.ns("b1"), || {
        let l = TcpListener::bind("0.0.0.0:80").expect("bind tcp/80");
        let (mut c, _) = l.accept().expect("accept");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = vec![0u8; REQUEST];
        c.read_exact(&mut got).expect("the whole request");
        c.write_all(format!("{}\n", got.len()).as_bytes())
            .expect("answer");
    });
    std::thread::sleep(Duration::from_millis(200));
    let answer = in_ns(&cl, || {
        let vip: IpAddr = VIP.parse().expect("vip");
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_secs(3))
            .expect("TCP connect to the tunnel VIP");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(&[0x41; REQUEST]).expect("send the request");
        let mut a = String::new();
        c.read_to_string(&mut a).expect("the answer");
        a
    });
    server.join().expect("server");
    assert_eq!(answer.trim(), REQUEST.to_string(), "the backend got it all");
    assert!(
        reason(&dp, "tx_too_big") >= 2,
        "the full-size segments were answered too"
    );
    assert_eq!(
        cached_mtu(&cl),
        Some(1380),
        "and the client lowered its path MTU"
    );
    println!("client {CLIENT}: request of {REQUEST} bytes completed");

    // MTU changes are followed (the daemon re-reads them every second).
    t.ip("lb", &["link", "set", "eth1", "mtu", "1450"]);
    let mtus = in_ns(&t.ns("lb"), move || {
        let m = dp.refresh_egress_mtus().expect("EGRESS_MTU");
        drop(dp);
        m
    });
    assert_eq!(mtus, vec![(eth0, 1500), (eth1, 1450)], "the new MTU");
}
