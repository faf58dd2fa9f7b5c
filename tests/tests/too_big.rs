//! Tunnel "too big" (issue 16 item 2) with real sockets: netlab's lab, and
//! a second link of MTU 1,400 from the balancer's eth1 to the tunnel VIP's
//! backend (its eth1, the same MTU, `hola-decap` on it). The balancer
//! redirects the backend's packets out of eth1 and reads the egress MTUs
//! from the kernel itself (`refresh_egress_mtus`). A client datagram of
//! 1,500 bytes with DF is answered with "fragmentation needed" (ICMP type
//! 3 code 4 from the VIP, MTU 1,380: 1,400 minus the outer IPv4 header, as
//! the client's socket reads it from its error queue), which the client's
//! kernel takes (its route cache); then a TCP client whose path MTU is unknown sends a
//! 20,000-byte request through the tunnel VIP: its full-size segments are
//! answered the same way, it lowers its segments, and the request
//! completes over the 1,400-byte link.
//!
//! ```text
//!   cl 198.18.0.1  ─┐
//!   lb 198.18.0.2  ─┤ br0 (ns sw)
//!   b1 198.18.0.11 ─┘   tunnel VIP 198.18.1.2 on b1's lo; b1 answers on eth0
//!   lb eth1 ── MTU 1400 ── b1 eth1: the balancer's egress for the tunnel
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
use netlab::lab::{Family, LabSpec};

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

/// The one ICMP error queued on `u` (IP_RECVERR): (errno, origin, type,
/// code, info — the MTU for "fragmentation needed" — and the sender).
fn icmp_error(u: &UdpSocket) -> (u32, u8, u8, u8, u32, std::net::Ipv4Addr) {
    let mut data = [0u8; 2048];
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive
    // the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg on our own socket into the buffers msg points to.
    let n = unsafe {
        libc::recvmsg(
            u.as_raw_fd(),
            &raw mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    assert!(
        n >= 0,
        "reading the client socket's error queue: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: msg was filled by the kernel; CMSG_* walk its control buffer.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        assert!(!c.is_null(), "no control message with the error");
        assert_eq!(
            ((*c).cmsg_level, (*c).cmsg_type),
            (libc::IPPROTO_IP, libc::IP_RECVERR),
            "the control message is the IP error"
        );
        let e: libc::sock_extended_err = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
        let from: libc::sockaddr_in = std::ptr::read_unaligned(
            libc::CMSG_DATA(c)
                .add(std::mem::size_of::<libc::sock_extended_err>())
                .cast(),
        );
        (
            e.ee_errno,
            e.ee_origin,
            e.ee_type,
            e.ee_code,
            e.ee_info,
            std::net::Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
        )
    }
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
    // The tunnel's egress: a link of its own whose two ends have an MTU of
    // 1,400 (a veth drops frames over its own MTU on the way in). A veth
    // takes redirected frames only while its peer has XDP: b1's eth1 has
    // `hola-decap`, which it needs anyway.
    t.link("lb", "eth1", "b1", "eth1");
    for h in ["lb", "b1"] {
        t.ip(h, &["link", "set", "eth1", "mtu", "1400"]);
    }
    let _decap = attach(&t.ns("b1"), programs::DECAP, "hola_decap", "eth1");
    let eth0 = t.ifindex("lb", "eth0");
    let eth1 = t.ifindex("lb", "eth1");
    let nexthop = Nexthop {
        dmac: t.mac("b1", "eth1"),
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
        // In the balancer's namespace: a backend's nexthop interface goes
        // into TX_PORTS, whose ifindexes the kernel resolves in the
        // namespace of the thread that writes them.
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
                quic: false,
            })
            .expect("add VIP");
            dp.set_backends(
                &v,
                &[BackendSpec {
                    addr: "198.18.0.11".parse().expect("address"),
                    weight: 1,
                    server_id: 0,
                    up: true,
                    port: 0,
                    nexthop: Some(nexthop),
                }],
            )
            .expect("set backends");
        }
        dp
    });
    // A datagram of 1,500 bytes with DF (IP_PMTUDISC_DO).
    let cl = t.ns("cl");
    assert_eq!(cached_mtu(&cl), None, "no path MTU known before");
    // The socket stays open until the answer is in: the kernel lowers the
    // path MTU only for an error that finds its socket.
    let socket = in_ns(&cl, || {
        let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
        // DF on every datagram, and ICMP errors queued on the socket.
        for (opt, v) in [
            (libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO),
            (libc::IP_RECVERR, 1),
        ] {
            // SAFETY: a setsockopt of an int on our own socket.
            let rc = unsafe {
                libc::setsockopt(
                    u.as_raw_fd(),
                    libc::IPPROTO_IP,
                    opt,
                    (&raw const v).cast(),
                    std::mem::size_of::<i32>() as u32,
                )
            };
            assert_eq!(
                rc,
                0,
                "setsockopt {opt}: {}",
                std::io::Error::last_os_error()
            );
        }
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
        "the client's route cache toward the VIP after the answer (balancer: {seen:?})",
    );
    assert_eq!(reason(&dp, "tx_too_big"), 1, "one answer sent");
    // The answer itself: ICMP type 3 code 4 (fragmentation needed) from the
    // VIP, next-hop MTU 1,380 (the egress's 1,400 minus the outer IPv4
    // header); the kernel reports it as EMSGSIZE.
    assert_eq!(
        icmp_error(&socket),
        (
            libc::EMSGSIZE as u32,
            libc::SO_EE_ORIGIN_ICMP,
            3,
            4,
            1380,
            VIP.parse().expect("vip"),
        ),
        "the client's socket got fragmentation needed from the VIP"
    );

    // TCP: a large request through the tunnel VIP, the path MTU unknown.
    ns_cmd(&cl, "ip", &["route", "flush", "cache"]);
    let server = spawn_in_ns(&t.ns("b1"), || {
        let l = TcpListener::bind("0.0.0.0:80").expect("bind tcp/80");
        l.set_nonblocking(true).expect("nonblocking");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut c = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(format!("no connection to the backend: {e}")),
            }
        };
        c.set_nonblocking(false).expect("blocking");
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = vec![0u8; REQUEST];
        c.read_exact(&mut got).expect("the whole request");
        c.write_all(format!("{}\n", got.len()).as_bytes())
            .expect("answer");
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let answer = in_ns(&cl, || {
        let vip: IpAddr = VIP.parse().expect("vip");
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_secs(3))
            .map_err(|e| format!("TCP connect to the tunnel VIP: {e}"))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        c.write_all(&[0x41; REQUEST]).expect("send the request");
        let mut a = String::new();
        c.read_to_string(&mut a).expect("the answer");
        Ok::<_, String>(a)
    });
    let served = server.join().expect("server");
    let diag = || {
        format!(
            "balancer: {:?}\nlb: {}\nb1: {}",
            dp.stats()
                .expect("stats")
                .reasons
                .iter()
                .filter(|(_, r)| r.packets > 0)
                .map(|(n, r)| (n.to_string(), r.packets))
                .collect::<Vec<_>>(),
            ns_cmd(&t.ns("lb"), "ip", &["-s", "link"]),
            ns_cmd(&t.ns("b1"), "ip", &["-s", "link", "show", "eth1"]),
        )
    };
    let answer = answer.unwrap_or_else(|e| panic!("{e}\n{}", diag()));
    served.unwrap_or_else(|e| panic!("{e}\n{}", diag()));
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
