//! Attach test: the balancer attached in driver mode to a veth in a
//! throwaway topology, real TCP connections and UDP exchanges from a client
//! namespace to a `dsr` VIP and a `tunnel` VIP, backends answering with their
//! own names (tunnel backends run `hola-decap`), and the balancer's counters
//! compared with what the client's kernel sent (an nftables counter).
//!
//! ```text
//!   cl 198.18.0.1  2001:db8::1  ─┐
//!   lb 198.18.0.2  2001:db8::2  ─┤ br0 (ns sw)
//!   b1 198.18.0.11 2001:db8::11 ─┤   VIPs on the backends' lo:
//!   b2 198.18.0.12 2001:db8::12 ─┘   dsr 198.18.1.1 / 2001:db8:1::1, tunnel .2 / ::2
//! ```
//!
//! One test per address family, each with its own topology.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::xdp::XdpMode;
use hola_tests::{
    fixture::require_root,
    netns::{Topology, in_ns, spawn_in_ns},
    topo::Lab,
};
use lb_userspace::{
    dataplane::{BackendSpec, Dataplane, DataplaneConfig, Mode, Proto, VipAddr, VipSpec},
    neigh,
};
use netlab::lab::{Family, LabSpec};

/// The addresses of one address family's topology.
struct Net {
    prefix: &'static str,
    family: Family,
    /// Backends b1 and b2 and their addresses (netlab's lab gives them).
    backends: [(&'static str, &'static str); 2],
    dsr_vip: &'static str,
    tun_vip: &'static str,
    /// The wildcard address to bind to.
    any: &'static str,
    /// nftables' name of the family ("ip" or "ip6").
    nft: &'static str,
}

const V4: Net = Net {
    prefix: "hat4",
    family: Family::V4,
    backends: [("b1", "198.18.0.11"), ("b2", "198.18.0.12")],
    dsr_vip: "198.18.1.1",
    tun_vip: "198.18.1.2",
    any: "0.0.0.0",
    nft: "ip",
};

const V6: Net = Net {
    prefix: "hat6",
    family: Family::V6,
    backends: [("b1", "2001:db8::11"), ("b2", "2001:db8::12")],
    dsr_vip: "2001:db8:1::1",
    tun_vip: "2001:db8:1::2",
    any: "::",
    nft: "ip6",
};
const TCP_CONNS: usize = 40;
const UDP_FLOWS: usize = 40;

/// What each backend served, per (VIP, protocol).
type Served = Arc<Mutex<BTreeMap<(String, IpAddr, &'static str), u64>>>;

/// TCP and UDP servers on a backend that answer with the backend's name,
/// until `stop` is set.
fn serve(
    net: &'static Net,
    ns: &str,
    name: &'static str,
    served: Served,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut handles = Vec::new();
    let (s, st) = (served.clone(), stop.clone());
    handles.push(spawn_in_ns(ns, move || {
        let l = TcpListener::bind((net.any, 80)).expect("bind tcp/80");
        l.set_nonblocking(true).expect("nonblocking");
        while !st.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).expect("blocking");
                    c.set_read_timeout(Some(Duration::from_secs(2)))
                        .expect("timeout");
                    let mut buf = [0u8; 64];
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(name.as_bytes());
                    let local = c.local_addr().expect("local").ip();
                    *s.lock()
                        .expect("lock")
                        .entry((name.into(), local, "tcp"))
                        .or_default() += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    }));
    for vip in [net.dsr_vip, net.tun_vip] {
        let (s, st) = (served.clone(), stop.clone());
        handles.push(spawn_in_ns(ns, move || {
            // Bound to the VIP so that replies leave from it.
            let u = UdpSocket::bind((vip, 53)).expect("bind udp/53");
            u.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let mut buf = [0u8; 64];
            while !st.load(Ordering::Relaxed) {
                if let Ok((_, from)) = u.recv_from(&mut buf) {
                    u.send_to(name.as_bytes(), from).expect("udp reply");
                    let ip: IpAddr = vip.parse().expect("vip");
                    *s.lock()
                        .expect("lock")
                        .entry((name.into(), ip, "udp"))
                        .or_default() += 1;
                }
            }
        }));
    }
    handles
}

/// nftables counters of what the client sends to each VIP and protocol.
fn client_counters(net: &Net, t: &Topology) {
    let ns = t.ns("cl");
    let nft = |args: &str| hola_tests::netns::ns_cmd(&ns, "nft", &[args]);
    nft("add table inet hola_test");
    nft("add chain inet hola_test out { type filter hook output priority 0 ; }");
    let fam = net.nft;
    for vip in [net.dsr_vip, net.tun_vip] {
        nft(&format!(
            "add rule inet hola_test out {fam} daddr {vip} tcp dport 80 counter"
        ));
        nft(&format!(
            "add rule inet hola_test out {fam} daddr {vip} udp dport 53 counter"
        ));
    }
}

/// (packets, bytes) counted by the client's rules, in rule order.
fn read_client_counters(t: &Topology) -> Vec<(u64, u64)> {
    let out = hola_tests::netns::ns_cmd(
        &t.ns("cl"),
        "nft",
        &["list", "chain", "inet", "hola_test", "out"],
    );
    out.lines()
        .filter_map(|l| {
            let i = l.find("counter packets ")?;
            let mut w = l[i..].split_whitespace();
            let p = w.nth(2)?.parse().ok()?;
            let b = w.nth(1)?.parse().ok()?;
            Some((p, b))
        })
        .collect()
}

#[test]
fn ipv4_dsr_and_tunnel_with_real_tcp_and_udp() {
    run(&V4);
}

#[test]
fn ipv6_dsr_and_tunnel_with_real_tcp_and_udp() {
    run(&V6);
}

fn run(net: &'static Net) {
    require_root();
    // netlab's lab: the bridge, the addresses, the client's route to the
    // VIPs through the balancer, the VIPs on the backends' lo; hola-decap
    // on the backends, and an XDP program on the balancer's bridge port
    // (frames the balancer sends with XDP_TX arrive there through the
    // peer's NAPI, which a veth only runs while it has an XDP program).
    let lab = Lab::build(&LabSpec {
        prefix: net.prefix,
        client: "cl",
        backends: net.backends.len(),
        families: &[net.family],
        vips: &[net.dsr_vip, net.tun_vip],
    });
    let t = &lab.t;

    // The balancer, provisioned as the daemon does, next hops from the
    // lb namespace's neighbour table.
    let lb_ns = t.ns("lb");
    let mut dp = in_ns(&lb_ns, || {
        let mut dp = Dataplane::load(DataplaneConfig {
            flow_capacity_per_cpu: 65536,
            ..Default::default()
        })
        .expect("load balancer");
        dp.attach("eth0", XdpMode::Driver)
            .expect("attach balancer to eth0 in driver mode");
        dp
    });
    let lb_ifindex: u32 = t
        .ip("lb", &["-o", "link", "show", "eth0"])
        .split(':')
        .next()
        .expect("ifindex")
        .trim()
        .parse()
        .expect("ifindex");
    let backends: Vec<BackendSpec> = net
        .backends
        .iter()
        .map(|(_, a)| {
            let addr: IpAddr = a.parse().expect("address");
            let nexthop = in_ns(&lb_ns, move || {
                neigh::resolve(addr, lb_ifindex, Duration::from_secs(5))
                    .expect("resolve backend MAC")
            });
            assert_eq!(
                nexthop.ifindex, 0,
                "backends are on the balancer's own link: XDP_TX"
            );
            BackendSpec {
                addr,
                weight: 1,
                nexthop: Some(nexthop),
                up: true,
                port: 0,
                server_id: 0,
            }
        })
        .collect();
    let vips: Vec<(VipAddr, Mode)> = [(net.dsr_vip, Mode::Dsr), (net.tun_vip, Mode::Tunnel)]
        .iter()
        .flat_map(|(a, m)| {
            [Proto::Tcp, Proto::Udp].map(|proto| {
                let port = if proto == Proto::Tcp { 80 } else { 53 };
                (
                    VipAddr {
                        addr: a.parse().expect("vip"),
                        port,
                        proto,
                    },
                    *m,
                )
            })
        })
        .collect();
    for (v, mode) in &vips {
        dp.add_vip(VipSpec {
            vip: *v,
            mode: *mode,
            src_hash: false,
            table_size: 65537,
            quic: false,
        })
        .expect("add VIP");
        dp.set_backends(v, &backends).expect("set backends");
    }

    let served: Served = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (b, _) in net.backends {
        servers.extend(serve(net, &t.ns(b), b, served.clone(), stop.clone()));
    }
    client_counters(net, t);
    std::thread::sleep(Duration::from_millis(200));

    // The client: real connections and exchanges, bounded in count and time.
    let answers = in_ns(&t.ns("cl"), || -> Result<_, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut answers: BTreeMap<(IpAddr, &'static str, String), u64> = BTreeMap::new();
        for vip in [net.dsr_vip, net.tun_vip] {
            let ip: IpAddr = vip.parse().expect("vip");
            for _ in 0..TCP_CONNS {
                if Instant::now() > deadline {
                    return Err("client loop ran out of time".to_string());
                }
                let mut c =
                    TcpStream::connect_timeout(&SocketAddr::new(ip, 80), Duration::from_secs(3))
                        .map_err(|e| {
                            format!("TCP connect to {vip}:80 through the balancer: {e}")
                        })?;
                c.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                c.write_all(b"hello\n").expect("send");
                let mut name = String::new();
                c.read_to_string(&mut name)
                    .map_err(|e| format!("reading reply from {vip}:80: {e}"))?;
                *answers.entry((ip, "tcp", name)).or_default() += 1;
            }
            // Every socket is kept open until the loop ends, so that each
            // flow has its own source port (a closed socket's ephemeral port
            // may be handed out again, which would make two flows one).
            let mut sockets = Vec::with_capacity(UDP_FLOWS);
            for _ in 0..UDP_FLOWS {
                let u = UdpSocket::bind((net.any, 0)).expect("bind");
                u.connect((vip, 53)).expect("connect");
                u.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                u.send(b"query").expect("send");
                let mut buf = [0u8; 64];
                let n = u
                    .recv(&mut buf)
                    .map_err(|e| format!("UDP reply from {vip}:53: {e}"))?;
                *answers
                    .entry((ip, "udp", String::from_utf8_lossy(&buf[..n]).into_owned()))
                    .or_default() += 1;
                sockets.push(u);
            }
        }
        Ok(answers)
    });
    let answers = answers.unwrap_or_else(|e| {
        stop.store(true, Ordering::Relaxed);
        let mut diag = format!("{e}\nbalancer counters: {:#?}", dp.stats());
        for h in ["cl", "lb", "b1", "b2"] {
            diag += &format!("\n{h}: {}", t.ip(h, &["-s", "link", "show", "eth0"]));
        }
        diag += &format!("\nlb neighbours: {}", t.ip("lb", &["neigh"]));
        diag += &format!("\nswitch ports: {}", t.ip("sw", &["-s", "link"]));
        for b in ["b1", "b2"] {
            diag += &format!(
                "\n{b} snmp: {}",
                hola_tests::netns::ns_cmd(&t.ns(b), "cat", &["/proc/net/snmp"])
            );
        }
        panic!("{diag}");
    });
    // Let the last FIN/ACK exchanges finish before reading counters.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().expect("server thread");
    }

    println!("client answers: {answers:?}");
    let served = served.lock().expect("lock").clone();
    println!("served: {served:?}");
    // Every exchange answered, by a backend that really served it.
    for vip in [net.dsr_vip, net.tun_vip] {
        let ip: IpAddr = vip.parse().expect("vip");
        for (proto, n) in [("tcp", TCP_CONNS), ("udp", UDP_FLOWS)] {
            let total: u64 = answers
                .iter()
                .filter(|((a, p, _), _)| *a == ip && *p == proto)
                .map(|(_, c)| c)
                .sum();
            assert_eq!(total, n as u64, "{vip} {proto}: answers");
            for (b, _) in net.backends {
                let got = answers
                    .get(&(ip, proto, b.to_string()))
                    .copied()
                    .unwrap_or(0);
                let srv = served
                    .get(&(b.to_string(), ip, proto))
                    .copied()
                    .unwrap_or(0);
                assert_eq!(
                    got, srv,
                    "{vip} {proto}: client saw {got} answers from {b}, {b} served {srv}"
                );
                assert!(got > 0, "{vip} {proto}: backend {b} got no flow out of {n}");
            }
        }
    }

    // The balancer's counters equal what the client sent and the backends saw.
    let client = read_client_counters(t);
    assert_eq!(client.len(), 4, "four nftables counters");
    let stats = dp.stats().expect("stats");
    for (i, (v, _)) in vips.iter().enumerate() {
        let c = &stats.vips[v];
        let (pkts, l3_bytes) = client[i];
        assert_eq!(c.stats.packets, pkts, "{v}: packets forwarded vs sent");
        assert_eq!(
            c.stats.bytes,
            l3_bytes + 14 * pkts,
            "{v}: bytes (Ethernet header included)"
        );
        let flows = if v.proto == Proto::Tcp {
            TCP_CONNS
        } else {
            UDP_FLOWS
        } as u64;
        assert_eq!(c.stats.new_flows, flows, "{v}: new flows");
        assert_eq!(c.stats.no_backend, 0, "{v}: no-backend drops");
        for (b, a) in net.backends {
            let addr: IpAddr = a.parse().expect("address");
            let proto = if v.proto == Proto::Tcp { "tcp" } else { "udp" };
            let srv = served
                .get(&(b.to_string(), v.addr, proto))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                c.backends[&addr].new_flows, srv,
                "{v}: new flows to {b} vs connections it served"
            );
        }
        let sum: u64 = c.backends.values().map(|b| b.packets).sum();
        assert_eq!(
            sum, c.stats.packets,
            "{v}: backend packets add up to the VIP's"
        );
    }
    let r = &stats.reasons;
    // A TCP SYN is forwarded unrecorded (`fwd_syn`); the flow is recorded
    // at its ACK (`fwd_new_flow`).
    let fwd = r["fwd_new_flow"].packets + r["fwd_established"].packets + r["fwd_syn"].packets;
    assert_eq!(
        r["fwd_syn"].packets,
        TCP_CONNS as u64 * 2,
        "one SYN per TCP connection, to the dsr VIP and the tunnel VIP"
    );
    let sent: u64 = client.iter().map(|(p, _)| p).sum();
    assert_eq!(
        fwd, sent,
        "forwarded packets vs packets the client sent to VIPs"
    );
    for k in [
        "drop_malformed",
        "drop_fragment",
        "drop_no_backend",
        "drop_no_nexthop",
        "aborted",
    ] {
        assert_eq!(r[k].packets, 0, "{k}");
    }
}
