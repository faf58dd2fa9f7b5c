//! A flood of spoofed SYNs against a running daemon in the lab: idle
//! keep-alive connections through a `dsr` VIP and a `nat` VIP, a flood of
//! SYNs from random sources several times the size of the flow table (made
//! small), then a backend's weight changed: every connection is still
//! answered by its own backend. A SYN records nothing (docs/maps.md, "New
//! flows"), so the flood cannot push the connections out of the flow table
//! or the NAT table, and the weight change, which moves the Maglev slots of
//! many of them, moves none. Then (dsr) a flood of spoofed ACKs of flows
//! nobody opened, far over the insert rate limit: `hola stats` and the log
//! say flood mode is on, and the connections still answer.

use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use hola_tests::{
    daemon::{Daemon, GLOBAL},
    fixture::{Rng, require_root},
    netns::{in_ns, ns_cmd, send_frames},
    packet::{L4, Pkt, TCP_ACK, TCP_SYN},
    topo::{CLIENT, DSR_VIP, Lab, Servers, backend, http_get},
};

/// Flow-table entries per CPU: the table the flood goes through.
const FLOWS_PER_CPU: u32 = 256;
/// NAT translations (the table of handshakes in progress gets a quarter,
/// at least 1,024).
const NAT_CAPACITY: u32 = 1024;
/// Spoofed SYNs: about ten times the flow table (on this 2-CPU machine)
/// and five times the NAT tables.
const FLOOD: usize = 5_000;
const CONNECTIONS: usize = 60;

/// New flows each CPU records per second: above the test's own
/// connections (60 opened at once), far below a flood.
const NEW_FLOW_RATE: u32 = 100;

/// `[global]` with the small tables and rate.
fn global() -> String {
    GLOBAL.replace(
        "flow_capacity_per_cpu = 65536",
        &format!(
            "flow_capacity_per_cpu = {FLOWS_PER_CPU}\nnat_capacity = {NAT_CAPACITY}\n\
             new_flow_rate = {NEW_FLOW_RATE}"
        ),
    )
}

/// `n` keep-alive connections from the client to `vip`:80, one GET each:
/// the streams and the backend each answered from.
fn open_long_lived(lab: &Lab, vip: &'static str, n: usize) -> Vec<(TcpStream, String)> {
    in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{vip}:80").parse().expect("vip");
        (0..n)
            .map(|i| {
                let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("keep-alive connection {i}: {e}"));
                c.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let name = http_get(&mut c)
                    .unwrap_or_else(|e| panic!("first request on connection {i}: {e}"));
                (c, name)
            })
            .collect()
    })
}

/// After the weight change (b1 from a third of the slots to about nine
/// tenths): new connections go mostly to b1, so the change did move the
/// slots of most connections that were on b2 and b3.
fn table_changed(lab: &Lab, vip: &'static str) {
    let on_b1 = in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{vip}:80").parse().expect("vip");
        (0..40)
            .filter(|i| {
                let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("new connection {i}: {e}"));
                c.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                http_get(&mut c).unwrap_or_else(|e| panic!("new connection {i}: {e}")) == "b1"
            })
            .count()
    });
    assert!(
        on_b1 >= 28,
        "b1 at weight 20 against 1 and 1 should take about nine in ten new connections, took {on_b1} of 40"
    );
}

/// `FLOOD` SYNs to `vip`:80 from random addresses of 198.18.64.0/18 and
/// random ports, sent from the client's namespace to the balancer's MAC.
fn syn_flood(lab: &Lab, vip: &str, seed: u64) {
    flood(lab, vip, seed, TCP_SYN);
}

/// `FLOOD` packets with TCP `flags` to `vip`:80, as [`syn_flood`].
fn flood(lab: &Lab, vip: &str, seed: u64, flags: u8) {
    let lb_mac = lab.t.mac("lb", "eth0");
    let cl_mac = lab.t.mac("cl", "eth0");
    let mut rng = Rng(seed);
    let frames: Vec<Vec<u8>> = (0..FLOOD)
        .map(|_| {
            let r = rng.next_u64();
            let src = format!("198.18.{}.{}", 64 + (r >> 8) % 64, r & 0xff);
            let sport = 1024 + ((r >> 16) % 60_000) as u16;
            let mut p = Pkt::new(&src, vip, L4::tcp(sport, 80, flags));
            p.dmac = lb_mac;
            p.smac = cl_mac;
            p.bytes()
        })
        .collect();
    send_frames(&lab.t.ns("cl"), "eth0", frames);
}

/// Checks every connection after the flood and the weight change: the
/// daemon still holds its flow-table entry (`hola flow`), and it answers
/// another request from the backend it answered first.
fn every_connection_on_its_backend(d: &Daemon, vip: &str, conns: &mut [(TcpStream, String)]) {
    let mut broken = Vec::new();
    for (i, (c, name)) in conns.iter_mut().enumerate() {
        let port = c.local_addr().expect("local address").port();
        let why = d.ok(&["flow", &format!("{CLIENT}:{port}"), &format!("{vip}:80")]);
        let answer = http_get(c);
        if !why.contains("flow-table entry") || !matches!(&answer, Ok(n) if n == name) {
            broken.push(format!(
                "connection {i} (port {port}, on {name}): {why:?} {answer:?}"
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {} connections lost their backend:\n{}",
        broken.len(),
        conns.len(),
        broken.join("\n")
    );
}

/// The flood went through the program as SYNs, unrecorded.
fn flood_counted(d: &Daemon) {
    let s = d.stats();
    let syns = s.reasons.get("fwd_syn").map_or(0, |r| r.packets);
    assert!(
        syns >= FLOOD as u64,
        "{syns} SYNs forwarded; the flood alone sent {FLOOD}: {:?}",
        s.reasons
    );
    assert!(!s.flood.active, "SYNs are no inserts: no flood mode");
}

#[test]
fn dsr_connections_survive_a_syn_flood_and_a_weight_change() {
    require_root();
    let lab = Lab::new("hfd", 3);
    let _servers = Servers::start(&lab);
    let mut c = global();
    c += "\n[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n";
    for i in 1..=3 {
        c += &format!("\n[[vip.backend]]\naddress = \"198.18.0.{}\"\n", 10 + i);
    }
    let d = Daemon::start("flood-dsr", &lab.t.ns("lb"), &c);
    let mut conns = open_long_lived(&lab, DSR_VIP, CONNECTIONS);
    syn_flood(&lab, DSR_VIP, 0x1234_5678_9abc_def1);
    flood_counted(&d);
    // b1 from a third of the slots to nine tenths: most connections on b2
    // and b3 now hash to a slot of b1.
    d.ok(&[
        "backend",
        "set-weight",
        "198.18.1.1:80/tcp",
        "198.18.0.11",
        "20",
    ]);
    every_connection_on_its_backend(&d, DSR_VIP, &mut conns);
    table_changed(&lab, DSR_VIP);

    // Spoofed ACKs of flows nobody opened, far over the insert rate limit:
    // flood mode, said in `hola stats` (JSON and text) and in the log.
    flood(&lab, DSR_VIP, 0x0bad_5eed_0bad_5eed, TCP_ACK);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = d.stats();
        if s.flood.active || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        s.flood.active && s.flood.unrecorded_per_second > 0.0,
        "flood mode within 5 s of the ACK flood: {:?}, reasons {:?}",
        s.flood,
        s.reasons.get("fwd_flood")
    );
    assert_eq!(s.flood.new_flow_rate, NEW_FLOW_RATE);
    let text = d.ok(&["stats"]);
    assert!(
        text.contains("flood mode: ON"),
        "hola stats says so:\n{text}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !d.log().contains("flood mode: ON") {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon logs flood mode:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connections still answer from their backends (an entry the
    // flood's few recorded flows evicted is found again by the previous
    // table: the weight change was seconds ago).
    for (i, (c, name)) in conns.iter_mut().enumerate() {
        let answer = http_get(c);
        assert!(
            matches!(&answer, Ok(n) if n == name),
            "connection {i} on {name} after the ACK flood: {answer:?}"
        );
    }
}

const NAT_VIP: &str = "198.18.1.3";
/// The balancer's address on the backends' subnet: their gateway.
const GATEWAY: &str = "198.18.2.1";

/// Puts the lab's backends behind the balancer (as tests/tests/nat.rs):
/// each gets 198.18.2.(10 + i) and reaches the client only through it.
fn behind_gateway(lab: &Lab) {
    lab.t.ip(
        "lb",
        &["addr", "add", &format!("{GATEWAY}/24"), "dev", "eth0"],
    );
    for i in 1..=lab.backends {
        let (b, _) = backend(i);
        lab.t.ip(
            &b,
            &[
                "addr",
                "add",
                &format!("198.18.2.{}/24", 10 + i),
                "dev",
                "eth0",
            ],
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

#[test]
fn nat_connections_survive_a_syn_flood_and_a_weight_change() {
    require_root();
    let lab = Lab::new("hfn", 3);
    behind_gateway(&lab);
    let _servers = Servers::start(&lab);
    let mut c = global();
    c += &format!(
        "\n[[vip]]\naddress = \"{NAT_VIP}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"nat\"\n"
    );
    for i in 1..=3 {
        c += &format!("\n[[vip.backend]]\naddress = \"198.18.2.{}\"\n", 10 + i);
    }
    let d = Daemon::start("flood-nat", &lab.t.ns("lb"), &c);
    let mut conns = open_long_lived(&lab, NAT_VIP, CONNECTIONS);
    // A reply whose translation was evicted would leave untranslated and
    // the request below would fail: the check covers `NAT` too.
    syn_flood(&lab, NAT_VIP, 0x0fed_cba9_8765_4321);
    flood_counted(&d);
    d.ok(&[
        "backend",
        "set-weight",
        "198.18.1.3:80/tcp",
        "198.18.2.11",
        "20",
    ]);
    every_connection_on_its_backend(&d, NAT_VIP, &mut conns);
    table_changed(&lab, NAT_VIP);
}
