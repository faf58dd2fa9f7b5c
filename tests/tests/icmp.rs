//! ICMP errors about `dsr` and `tunnel` flows reach the flow's backend
//! (issue 16 item 1), with real sockets: the balancer attached in driver
//! mode in netlab's lab, a client holding a TCP connection through the dsr
//! VIP and one through the tunnel VIP, and a router's "fragmentation
//! needed" (IPv4) / "packet too big" (IPv6) about each backend's reply
//! (VIP:80 → client), sent toward the VIP from the client's link. The
//! backend holding the connection must receive it (its kernel's ICMP
//! counter, and the lowered path MTU to the client in its route cache) and
//! the other backend must not.
//!
//! ```text
//!   cl 198.18.0.1  2001:db8::1  ─┐
//!   lb 198.18.0.2  2001:db8::2  ─┤ br0 (ns sw)
//!   b1 198.18.0.11 2001:db8::11 ─┤   VIPs on the backends' lo:
//!   b2 198.18.0.12 2001:db8::12 ─┘   dsr 198.18.1.1 / 2001:db8:1::1, tunnel .2 / ::2
//! ```

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::xdp::XdpMode;
use hola_tests::{
    fixture::require_root,
    netns::{in_ns, ns_cmd, send_frame, spawn_in_ns},
    packet::{L4, Pkt, TCP_ACK, fold, sum16},
    topo::Lab,
};
use lb_userspace::{
    dataplane::{BackendSpec, Dataplane, DataplaneConfig, Mode, Proto, VipAddr, VipSpec},
    neigh,
};
use netlab::lab::{Family, LabSpec};

struct Net {
    prefix: &'static str,
    family: Family,
    backends: [(&'static str, &'static str); 2],
    client: &'static str,
    dsr_vip: &'static str,
    tun_vip: &'static str,
    /// The router that sends the errors (an address on no host).
    router: &'static str,
    any: &'static str,
}

const V4: Net = Net {
    prefix: "hic4",
    family: Family::V4,
    backends: [("b1", "198.18.0.11"), ("b2", "198.18.0.12")],
    client: "198.18.0.1",
    dsr_vip: "198.18.1.1",
    tun_vip: "198.18.1.2",
    router: "198.18.0.254",
    any: "0.0.0.0",
};

const V6: Net = Net {
    prefix: "hic6",
    family: Family::V6,
    backends: [("b1", "2001:db8::11"), ("b2", "2001:db8::12")],
    client: "2001:db8::1",
    dsr_vip: "2001:db8:1::1",
    tun_vip: "2001:db8:1::2",
    router: "2001:db8::fe",
    any: "::",
};

#[test]
fn ipv4_fragmentation_needed_reaches_the_flows_backend() {
    run(&V4);
}

#[test]
fn ipv6_packet_too_big_reaches_the_flows_backend() {
    run(&V6);
}

/// The client's receive sequence (its peer's next sequence number, once
/// everything sent has been read), through TCP_REPAIR: a router's error
/// must quote a sequence number the backend has sent and not had
/// acknowledged, or its TCP ignores it as out of window.
fn rcv_nxt(c: &TcpStream) -> u32 {
    const TCP_REPAIR: i32 = 19;
    const TCP_REPAIR_QUEUE: i32 = 20;
    const TCP_QUEUE_SEQ: i32 = 21;
    const TCP_RECV_QUEUE: i32 = 1;
    // Off without a window probe.
    const TCP_REPAIR_OFF_NO_WP: i32 = -1;
    let fd = c.as_raw_fd();
    let set = |opt: i32, v: i32| {
        // SAFETY: a setsockopt of an int on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                opt,
                (&raw const v).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "setsockopt(IPPROTO_TCP, {opt}, {v}): {}",
            std::io::Error::last_os_error()
        );
    };
    set(TCP_REPAIR, 1);
    set(TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
    let mut seq: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as u32;
    // SAFETY: a getsockopt of an int into our own variable.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            TCP_QUEUE_SEQ,
            (&raw mut seq).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "getsockopt(TCP_QUEUE_SEQ): {}",
        std::io::Error::last_os_error()
    );
    set(TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    seq
}

/// The router's error about the reply `vip`:80 → `client`:`cport` with
/// sequence `seq`: IPv4 "fragmentation needed" (3/4) or ICMPv6 "packet
/// too big" (2/0) reporting `mtu`, addressed to the VIP, as a frame from
/// the client's link to the balancer.
fn too_big(
    net: &Net,
    vip: &str,
    cport: u16,
    seq: u32,
    mtu: u16,
    macs: ([u8; 6], [u8; 6]),
) -> Vec<u8> {
    let mut quoted = Pkt::new(vip, net.client, L4::tcp(80, cport, TCP_ACK)).l3();
    let hl = if net.family == Family::V4 { 20 } else { 40 };
    quoted[hl + 4..hl + 8].copy_from_slice(&seq.to_be_bytes());
    let v6 = net.family == Family::V6;
    let mut m = if v6 {
        vec![2, 0, 0, 0, 0, 0]
    } else {
        vec![3, 4, 0, 0, 0, 0]
    };
    m.extend_from_slice(&mtu.to_be_bytes());
    m.extend_from_slice(&quoted);
    let c = match (net.router.parse::<IpAddr>(), vip.parse::<IpAddr>()) {
        (Ok(IpAddr::V6(a)), Ok(IpAddr::V6(b))) => {
            fold(sum16(&a.octets()) + sum16(&b.octets()) + m.len() as u32 + 58 + sum16(&m))
        }
        _ => fold(sum16(&m)),
    };
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut p = Pkt::new(
        net.router,
        vip,
        L4::Raw {
            proto: if v6 { 58 } else { 1 },
            bytes: m,
        },
    );
    p.frag = 0;
    (p.dmac, p.smac) = macs;
    p.bytes()
}

/// The backend's count of received "fragmentation needed" (IPv4: all
/// destination unreachables) or "packet too big" errors, from its
/// namespace's /proc/net/snmp or snmp6.
fn too_big_count(ns: &str, family: Family) -> u64 {
    if family == Family::V4 {
        let text = ns_cmd(ns, "cat", &["/proc/net/snmp"]);
        let mut icmp = text.lines().filter(|l| l.starts_with("Icmp: "));
        let (names, values) = (
            icmp.next().expect("Icmp header"),
            icmp.next().expect("Icmp values"),
        );
        let i = names
            .split_whitespace()
            .position(|n| n == "InDestUnreachs")
            .expect("InDestUnreachs");
        values
            .split_whitespace()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .expect("a count")
    } else {
        let text = ns_cmd(ns, "cat", &["/proc/net/snmp6"]);
        text.lines()
            .find_map(|l| l.strip_prefix("Icmp6InPktTooBigs"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Icmp6InPktTooBigs")
    }
}

/// The path MTU the backend's route cache holds toward `client`, if any
/// (`ip route get` prints `mtu N` for a cached exception).
fn cached_mtu(ns: &str, client: &str) -> Option<u32> {
    let out = ns_cmd(ns, "ip", &["route", "get", client]);
    let mut w = out.split_whitespace();
    w.by_ref().find(|x| *x == "mtu")?;
    w.next().and_then(|v| v.parse().ok())
}

fn run(net: &'static Net) {
    require_root();
    let lab = Lab::build(&LabSpec {
        prefix: net.prefix,
        client: "cl",
        backends: 2,
        families: &[net.family],
        vips: &[net.dsr_vip, net.tun_vip],
    });
    let t = &lab.t;
    let lb_ns = t.ns("lb");
    let mut dp = in_ns(&lb_ns, || {
        let mut dp = Dataplane::load(DataplaneConfig {
            flow_capacity_per_cpu: 4096,
            ..Default::default()
        })
        .expect("load balancer");
        dp.attach("eth0", XdpMode::Driver)
            .expect("attach balancer to eth0 in driver mode");
        dp
    });
    let lb_ifindex = t.ifindex("lb", "eth0");
    let backends: Vec<BackendSpec> = net
        .backends
        .iter()
        .map(|(_, a)| {
            let addr: IpAddr = a.parse().expect("address");
            let nexthop = in_ns(&lb_ns, move || {
                neigh::resolve(addr, lb_ifindex, Duration::from_secs(5))
                    .expect("resolve backend MAC")
            });
            BackendSpec {
                addr,
                weight: 1,
                server_id: 0,
                nexthop: Some(nexthop),
                up: true,
                port: 0,
            }
        })
        .collect();
    for (a, mode) in [(net.dsr_vip, Mode::Dsr), (net.tun_vip, Mode::Tunnel)] {
        let v = VipAddr {
            addr: a.parse().expect("vip"),
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
        dp.set_backends(&v, &backends).expect("set backends");
    }

    // Servers that answer a line with their name and hold the connection.
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (name, _) in net.backends {
        let st = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        servers.push(spawn_in_ns(&t.ns(name), move || {
            let l = TcpListener::bind((net.any, 80)).expect("bind tcp/80");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            let mut held = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).expect("blocking");
                        c.set_read_timeout(Some(Duration::from_secs(5)))
                            .expect("timeout");
                        let mut line = String::new();
                        let mut r = BufReader::new(c.try_clone().expect("clone"));
                        if r.read_line(&mut line).is_ok() {
                            let mut w = &c;
                            let _ = w.write_all(format!("{name}\n").as_bytes());
                        }
                        held.push(c);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        }));
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server listening");
    }

    // The client's connections: (VIP, stream, backend name, local port,
    // the backend's next sequence number).
    let conns = in_ns(&t.ns("cl"), move || {
        [net.dsr_vip, net.tun_vip].map(|vip| {
            let ip: IpAddr = vip.parse().expect("vip");
            let mut c =
                TcpStream::connect_timeout(&SocketAddr::new(ip, 80), Duration::from_secs(3))
                    .unwrap_or_else(|e| {
                        panic!("TCP connect to {vip}:80 through the balancer: {e}")
                    });
            c.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            c.write_all(b"hello\n").expect("send");
            let mut name = String::new();
            BufReader::new(c.try_clone().expect("clone"))
                .read_line(&mut name)
                .unwrap_or_else(|e| panic!("reading the answer from {vip}:80: {e}"));
            let port = c.local_addr().expect("local").port();
            // Let the client's ACK reach the backend before its state is read.
            std::thread::sleep(Duration::from_millis(100));
            let seq = rcv_nxt(&c);
            (vip, c, name.trim().to_string(), port, seq)
        })
    });

    let macs = (t.mac("lb", "eth0"), t.mac("cl", "eth0"));
    let mut failures = Vec::new();
    // A lower MTU for each error, so that the second is seen in a route
    // cache the first already lowered (both may be on one backend).
    for ((vip, _, holder, port, seq), mtu) in conns.iter().zip([1400u16, 1300]) {
        let before: Vec<u64> = net
            .backends
            .iter()
            .map(|(b, _)| too_big_count(&t.ns(b), net.family))
            .collect();
        send_frame(
            &t.ns("cl"),
            "eth0",
            too_big(net, vip, *port, *seq, mtu, macs),
        );
        let deadline = Instant::now() + Duration::from_secs(3);
        let holder_ns = t.ns(holder);
        loop {
            let got = cached_mtu(&holder_ns, net.client);
            if got == Some(u32::from(mtu)) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for ((b, _), was) in net.backends.iter().zip(&before) {
            let now = too_big_count(&t.ns(b), net.family);
            let want = if b == holder { was + 1 } else { *was };
            if now != want {
                failures.push(format!(
                    "{vip}: backend {b} counted {} errors (holder {holder}), expected {}",
                    now - was,
                    want - was
                ));
            }
        }
        let got = cached_mtu(&holder_ns, net.client);
        if got != Some(u32::from(mtu)) {
            failures.push(format!(
                "{vip}: {holder}'s route cache toward {} shows mtu {got:?}, expected {mtu}",
                net.client
            ));
        }
    }
    let stats = dp.stats().expect("stats");
    let reasons: Vec<_> = stats
        .reasons
        .iter()
        .filter(|(n, r)| n.starts_with("fwd_icmp") && r.packets > 0)
        .map(|(n, r)| (*n, r.packets))
        .collect();
    println!(
        "balancer: {reasons:?}; connections: {:?}",
        conns.iter().map(|c| (c.0, &c.2)).collect::<Vec<_>>()
    );
    stop.store(true, Ordering::Relaxed);
    drop(conns);
    for s in servers {
        let _ = s.join();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        reasons,
        vec![("fwd_icmp_flow", 2)],
        "both errors went by the flow table"
    );
}
