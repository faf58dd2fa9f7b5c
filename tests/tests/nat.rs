//! NAT mode end to end: the balancer is the backends' gateway; requests are
//! rewritten to the backends and their replies back to the VIP, both in
//! XDP. Real HTTP over real TCP from the client namespace.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::{Daemon, GLOBAL},
    fixture::require_root,
    netns::{in_ns, ns_cmd},
    topo::{CLIENT, Lab, Servers, backend, http_get},
};

const NAT_VIP: &str = "198.18.1.3";
/// The balancer's address on the backends' subnet: their gateway.
const GATEWAY: &str = "198.18.2.1";

/// Backend `i` (1-based) on the backends' subnet.
fn nat_addr(i: usize) -> String {
    format!("198.18.2.{}", 10 + i)
}

/// Puts the lab's backends behind the balancer: each gets an address on
/// 198.18.2.0/24 and reaches the client only through the balancer.
fn behind_gateway(lab: &Lab) {
    lab.t.ip(
        "lb",
        &["addr", "add", &format!("{GATEWAY}/24"), "dev", "eth0"],
    );
    for i in 1..=lab.backends {
        let (b, _) = backend(i);
        lab.t.ip(
            &b,
            &["addr", "add", &format!("{}/24", nat_addr(i)), "dev", "eth0"],
        );
        lab.t.ip(
            &b,
            &["route", "add", &format!("{CLIENT}/32"), "via", GATEWAY],
        );
        // The veth would leave TCP checksums to an offload that no longer
        // applies once XDP has moved the frame on.
        ns_cmd(&lab.t.ns(&b), "ethtool", &["-K", "eth0", "tx", "off"]);
    }
}

fn config(backends: &[usize]) -> String {
    config_with(backends, "")
}

/// The NAT VIP's configuration with `extra` (tables of the VIP) appended
/// before its backends.
fn config_with(backends: &[usize], extra: &str) -> String {
    let mut c = format!(
        r#"{GLOBAL}nat_capacity = 65536

[[vip]]
address = "198.18.1.3"
port = 80
protocol = "tcp"
mode = "nat"
"#,
    );
    c += extra;
    for i in backends {
        c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", nat_addr(*i));
    }
    // A UDP service nobody listens on: the backend answers with ICMP port
    // unreachable, which must reach the client translated.
    c += "\n[[vip]]\naddress = \"198.18.1.3\"\nport = 5353\nprotocol = \"udp\"\nmode = \"nat\"\n";
    c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", nat_addr(1));
    c
}

/// `n` requests, each on a new connection: answers by backend name.
fn requests(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{NAT_VIP}:80").parse().expect("vip");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut m = BTreeMap::new();
        for _ in 0..n {
            assert!(Instant::now() < deadline, "request loop ran out of time");
            let r = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                http_get(&mut c)
            });
            *m.entry(r.unwrap_or_else(|e| format!("error: {e}")))
                .or_default() += 1;
        }
        m
    })
}

#[test]
fn http_through_nat_reaches_backends_that_see_the_client() {
    require_root();
    let lab = Lab::new("hn1", 3);
    behind_gateway(&lab);
    let servers = Servers::start(&lab);
    let d = Daemon::start("hn1", &lab.t.ns("lb"), &config(&[1, 2]));

    let answers = requests(&lab, 300);
    println!("answers through nat: {answers:?}");
    assert_eq!(
        answers.keys().cloned().collect::<Vec<_>>(),
        ["b1", "b2"],
        "every request answered, by the two backends: {answers:?}"
    );
    assert_eq!(answers.values().sum::<usize>(), 300);
    let peers = servers.peers.lock().expect("lock").clone();
    let client: IpAddr = CLIENT.parse().expect("client");
    assert!(
        peers.iter().all(|(_, p)| *p == client),
        "backends see the client's own address: {peers:?}"
    );
    let local: Vec<IpAddr> = servers.counts().keys().map(|(_, a)| *a).collect();
    assert!(
        local.iter().all(|a| a.to_string().starts_with("198.18.2.")),
        "backends were reached at their own addresses, not the VIP: {local:?}"
    );

    // The backend's ICMP port unreachable comes back quoting the VIP, so
    // the client's socket sees the refusal (untranslated, it would not).
    let refused = in_ns(&lab.t.ns("cl"), || {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        u.connect(format!("{NAT_VIP}:5353")).expect("connect");
        u.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        u.send(b"anyone?").expect("send");
        let mut buf = [0u8; 64];
        u.recv(&mut buf).map(|_| ()).map_err(|e| e.kind())
    });
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "the client sees the port unreachable from the VIP"
    );
    assert_eq!(d.stats().reasons["fwd_nat_icmp"].packets, 1);

    // Long-lived connections keep their backend while one is added.
    let vip: SocketAddr = format!("{NAT_VIP}:80").parse().expect("vip");
    let conns: Vec<(TcpStream, String)> = in_ns(&lab.t.ns("cl"), move || {
        (0..20)
            .map(|_| {
                let mut c =
                    TcpStream::connect_timeout(&vip, Duration::from_secs(2)).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let name = http_get(&mut c).expect("first request");
                (c, name)
            })
            .collect()
    });
    d.ok(&["backend", "add", "198.18.1.3:80/tcp", &nat_addr(3)]);
    let mut moved = Vec::new();
    for (mut c, name) in conns {
        for _ in 0..3 {
            match http_get(&mut c) {
                Ok(n) if n == name => {}
                other => moved.push(format!("{name} -> {other:?}")),
            }
        }
    }
    assert!(
        moved.is_empty(),
        "long-lived connections kept their backend after an add: {moved:?}"
    );
    let after = requests(&lab, 300);
    println!("answers after adding b3: {after:?}");
    assert!(
        after.get("b3").copied().unwrap_or(0) > 0 && !after.keys().any(|k| k.starts_with("error")),
        "new connections reach the new backend, none fails: {after:?}"
    );

    // The NAT table's fill level shows in the stats after a sweep.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let deadline = Instant::now() + Duration::from_secs(15);
    let s = loop {
        let s = d.stats();
        if s.nat.swept_ms > since {
            break s;
        }
        assert!(Instant::now() < deadline, "no NAT sweep within 15 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("nat: {:?}", s.nat);
    assert_eq!(s.nat.capacity, 65536);
    // 620 TCP flows (closed ones linger 10 s) and the UDP one: all there.
    assert!(
        s.nat.entries >= 21 && s.nat.entries <= 621,
        "NAT entries: {:?}",
        s.nat
    );
    let replies = s.reasons["fwd_nat_reply"].packets;
    assert!(replies >= 620, "replies translated: {replies}");
    assert_eq!(s.reasons["drop_nat_expired"].packets, 0);
}

#[test]
fn passive_health_measures_handshakes_and_takes_out_a_refusing_backend() {
    require_root();
    let lab = Lab::new("hn2", 3);
    behind_gateway(&lab);
    let mut servers = Servers::start(&lab);
    let outlier = "\n[vip.outlier]\nfailures = 3\nwindow = \"10s\"\ncooldown = \"60s\"\n";
    let d = Daemon::start("hn2", &lab.t.ns("lb"), &config_with(&[1, 2, 3], outlier));

    // Handshake latency: hola's view against the client's connect() time.
    let mut connect_us: Vec<u64> = in_ns(&lab.t.ns("cl"), || {
        let vip: SocketAddr = format!("{NAT_VIP}:80").parse().expect("vip");
        (0..300)
            .map(|_| {
                let t = Instant::now();
                let mut c =
                    TcpStream::connect_timeout(&vip, Duration::from_secs(2)).expect("connect");
                let us = t.elapsed().as_micros() as u64;
                c.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                http_get(&mut c).expect("request");
                us
            })
            .collect()
    });
    connect_us.sort_unstable();
    let client_p50 = connect_us[connect_us.len() / 2].max(1);
    std::thread::sleep(Duration::from_millis(1200));
    let s = d.stats();
    for b in &s.vips[0].backends {
        let h = b.handshake.expect("a nat VIP reports handshakes");
        println!(
            "{}: {} SYN-ACKs, p50 {} µs, p99 {} µs (client connect p50 {client_p50} µs)",
            b.address, h.syn_acks, h.p50_us, h.p99_us
        );
        assert!(h.syn_acks > 0 && h.rsts == 0 && h.timeouts == 0, "{h:?}");
        let ratio = h.p50_us as f64 / client_p50 as f64;
        assert!(
            (0.1..=10.0).contains(&ratio),
            "handshake p50 {} µs is not of the order of the client's connect time {client_p50} µs",
            h.p50_us
        );
    }

    // b1's server stops: its port refuses (RST). After 3 refusals within
    // 10 s the outlier rule takes it out, and no request fails after.
    servers.stop_one(1);
    let vip: SocketAddr = format!("{NAT_VIP}:80").parse().expect("vip");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = 0;
    let out_at = loop {
        let r = in_ns(&lab.t.ns("cl"), move || {
            TcpStream::connect_timeout(&vip, Duration::from_secs(2)).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                http_get(&mut c)
            })
        });
        if r.is_err() {
            refused += 1;
        }
        let s = d.stats();
        let b1 = &s.vips[0].backends[0];
        if b1.health == "down" {
            break (b1.handshake.expect("handshake"), Instant::now());
        }
        assert!(Instant::now() < deadline, "b1 not taken out: {b1:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "b1 taken out after {refused} refused requests; its handshakes: {:?}",
        out_at.0
    );
    assert!(out_at.0.rsts >= 3, "{:?}", out_at.0);
    let after = requests(&lab, 200);
    println!("answers after: {after:?}");
    assert!(
        !after.contains_key("b1") && !after.keys().any(|k| k.starts_with("error")),
        "no request fails and none reaches b1 once it is out: {after:?}"
    );
    let events = d.ok(&["events"]);
    assert!(
        events.contains("198.18.2.11 outlier down"),
        "hola events lists it: {events}"
    );
}

#[test]
fn two_interfaces_clients_on_one_backends_on_the_other() {
    require_root();
    let lab = Lab::new("hn3", 2);
    // The backends move to a bridge of their own, reached by the balancer's
    // eth1: requests are redirected eth0 → eth1, replies eth1 → eth0.
    lab.t.ip("sw", &["link", "add", "br1", "type", "bridge"]);
    lab.t.ip("sw", &["link", "set", "br1", "up"]);
    lab.t.link("lb", "eth1", "sw", "p-lb1");
    lab.t.ip("sw", &["link", "set", "p-lb1", "master", "br1"]);
    lab.t.ip(
        "lb",
        &["addr", "add", &format!("{GATEWAY}/24"), "dev", "eth1"],
    );
    // A veth takes redirected frames only while its peer has XDP.
    let _peer = hola_tests::topo::attach(
        &lab.t.ns("sw"),
        lb_userspace::programs::BENCH,
        "bench_pass",
        "p-lb1",
    );
    for i in 1..=lab.backends {
        let (b, _) = backend(i);
        lab.t
            .ip("sw", &["link", "set", &format!("p-{b}"), "master", "br1"]);
        lab.t.ip(&b, &["addr", "flush", "dev", "eth0"]);
        lab.t.ip(
            &b,
            &["addr", "add", &format!("{}/24", nat_addr(i)), "dev", "eth0"],
        );
        lab.t.ip(&b, &["route", "add", "default", "via", GATEWAY]);
        ns_cmd(&lab.t.ns(&b), "ethtool", &["-K", "eth0", "tx", "off"]);
    }
    let servers = Servers::start(&lab);
    let cfg = config(&[1, 2]).replace(
        "interfaces = [\"eth0\"]",
        "interfaces = [\"eth0\", \"eth1\"]",
    );
    let d = Daemon::start("hn3", &lab.t.ns("lb"), &cfg);
    let answers = requests(&lab, 200);
    println!("answers over two interfaces: {answers:?}");
    assert_eq!(
        answers.keys().cloned().collect::<Vec<_>>(),
        ["b1", "b2"],
        "every request answered by the backends behind eth1: {answers:?}"
    );
    let peers = servers.peers.lock().expect("lock").clone();
    let client: IpAddr = CLIENT.parse().expect("client");
    assert!(peers.iter().all(|(_, p)| *p == client), "{peers:?}");
    let s = d.stats();
    assert!(
        s.reasons["fwd_nat_reply"].packets >= 600,
        "replies translated and redirected: {:?}",
        s.reasons["fwd_nat_reply"]
    );
    assert_eq!(s.reasons["aborted"].packets, 0, "no failed redirect");
}

#[test]
fn fullnat_backends_see_the_balancer_and_need_no_route_through_it() {
    require_root();
    let lab = Lab::new("hn4", 2);
    // The backends get an address beside the balancer's and nothing else:
    // no route through it.
    lab.t.ip(
        "lb",
        &["addr", "add", &format!("{GATEWAY}/24"), "dev", "eth0"],
    );
    for i in 1..=lab.backends {
        let (b, _) = backend(i);
        lab.t.ip(
            &b,
            &["addr", "add", &format!("{}/24", nat_addr(i)), "dev", "eth0"],
        );
        ns_cmd(&lab.t.ns(&b), "ethtool", &["-K", "eth0", "tx", "off"]);
    }
    let servers = Servers::start(&lab);
    let cfg = config(&[1, 2])
        .replace("mode = \"nat\"", "mode = \"fullnat\"")
        .replace(
            "nat_capacity = 65536\n",
            "nat_capacity = 65536\nfullnat_source_v4 = \"198.18.2.1\"\n",
        );
    let d = Daemon::start("hn4", &lab.t.ns("lb"), &cfg);
    let answers = requests(&lab, 200);
    println!("answers through fullnat: {answers:?}");
    assert_eq!(
        answers.keys().cloned().collect::<Vec<_>>(),
        ["b1", "b2"],
        "every request answered: {answers:?}"
    );
    let peers = servers.peers.lock().expect("lock").clone();
    let balancer: IpAddr = GATEWAY.parse().expect("gateway");
    assert!(
        peers.iter().all(|(_, p)| *p == balancer),
        "backends see the balancer's fullnat address: {peers:?}"
    );
    let s = d.stats();
    assert_eq!(s.vips[0].mode, "fullnat");
    assert!(s.reasons["fwd_nat_reply"].packets >= 600);
    assert_eq!(s.reasons["drop_nat_no_port"].packets, 0);
}
