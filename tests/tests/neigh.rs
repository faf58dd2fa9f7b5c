//! Next hops follow the kernel: the resolver, started in the balancer's
//! namespace, resolves a backend's MAC; when the backend's address moves
//! to another host, which announces it with a gratuitous ARP, the owner
//! gets the new MAC within a second, with a log line naming both MACs;
//! when nobody answers for the address any more, the owner is told it is
//! unresolved; and when a host answers again, resolved.
//!
//! ```text
//!   lb 198.18.0.2  ─┐
//!   a  198.18.0.11 ─┤ br0 (ns sw)      198.18.0.11 moves from a to b
//!   b              ─┘
//! ```
//!
//! And the same end to end: `hola run` in the lab, a dsr VIP in front of
//! 198.18.0.11, the address moving from b1 to b2 under it; the pinned
//! `BACKENDS` entry takes b2's MAC within a second and the client's
//! requests are answered by b2.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use hola_tests::{
    daemon::{Daemon, GLOBAL},
    fixture::require_root,
    netns::{Topology, in_ns, send_frame, spawn_in_ns},
    packet::{gratuitous_arp, mac_text},
    topo::{DSR_VIP, Lab, Servers, http_get},
};
use lb_common::{
    Backend, FAMILY_V4,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_NEXTHOP},
};
use lb_userspace::{
    dataplane::Nexthop,
    neigh::{self, NeighEvent, Resolver},
};
use tokio_util::sync::CancellationToken;

const LB: &str = "198.18.0.2";
const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

/// The log lines the resolver writes, kept for the test to read.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

/// The resolver running in namespace `ns` on a runtime of its own (its
/// thread entered the namespace, so its netlink sockets are there), its
/// events forwarded to a std channel as the owner thread would read them.
struct Running {
    resolver: Resolver,
    events: mpsc::Receiver<NeighEvent>,
    shutdown: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

fn start(ns: &str, ingress_ifindex: u32, log: Log) -> Running {
    let shutdown = CancellationToken::new();
    let (resolver_tx, resolver_rx) = mpsc::channel();
    let (events_tx, events) = mpsc::channel();
    let stop = shutdown.clone();
    let thread = spawn_in_ns(ns, move || {
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || log.clone())
            .finish();
        let _log = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let (resolver, task) = neigh::spawn(ingress_ifindex, tx, stop);
            resolver_tx.send(resolver).expect("send resolver");
            while let Some(ev) = rx.recv().await {
                if events_tx.send(ev).is_err() {
                    break;
                }
            }
            task.await.expect("resolver task");
        });
    });
    Running {
        resolver: resolver_rx.recv().expect("resolver started"),
        events,
        shutdown,
        thread,
    }
}

impl Running {
    /// The next event within `within`.
    fn next(&self, within: Duration, what: &str) -> NeighEvent {
        self.events
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("{what}: no event within {within:?} ({e})"))
    }

    fn stop(self) {
        self.shutdown.cancel();
        self.thread.join().expect("resolver thread");
    }
}

#[test]
fn a_moved_address_gets_the_new_mac_within_a_second() {
    require_root();
    let t = Topology::new("hng", &["sw", "lb", "a", "b"]);
    t.ip("sw", &["link", "add", "br0", "type", "bridge"]);
    t.ip("sw", &["link", "set", "br0", "up"]);
    // No IPv6 in the balancer's namespace: its address and route
    // notifications (duplicate address detection ends a second or two
    // after the link comes up) would make the resolver look at every
    // backend again, and hide whether a neighbour notification alone
    // carries the change.
    for key in ["all", "default"] {
        t.sysctl("lb", &format!("net.ipv6.conf.{key}.disable_ipv6=1"));
    }
    for h in ["lb", "a", "b"] {
        let port = format!("p-{h}");
        t.link(h, "eth0", "sw", &port);
        t.ip("sw", &["link", "set", &port, "master", "br0"]);
    }
    t.ip("lb", &["addr", "add", &format!("{LB}/24"), "dev", "eth0"]);
    t.ip(
        "a",
        &["addr", "add", &format!("{BACKEND}/24"), "dev", "eth0"],
    );
    let (lb_mac, mac_a, mac_b) = (t.mac("lb", "eth0"), t.mac("a", "eth0"), t.mac("b", "eth0"));
    let lb_ifindex = t.ifindex("lb", "eth0");

    // The blocking look-ups the daemon and the cluster use at start-up.
    let lb_ns = t.ns("lb");
    let (own_mac, own_ipv4) = in_ns(&lb_ns, || {
        (
            neigh::link_mac("eth0").expect("link_mac eth0"),
            neigh::link_ipv4("eth0").expect("link_ipv4 eth0"),
        )
    });
    assert_eq!(own_mac, lb_mac);
    assert_eq!(own_ipv4, Some(LB.parse().expect("address")));

    let log = Log::default();
    let r = start(&lb_ns, lb_ifindex, log.clone());
    let backend = IpAddr::V4(BACKEND);
    r.resolver.want(vec![backend]);
    // Nothing in the balancer's neighbour table yet: the resolver provokes
    // ARP itself.
    let ev = r.next(Duration::from_secs(3), "first resolution");
    let on_ingress = |dmac| Nexthop {
        dmac,
        smac: lb_mac,
        ifindex: 0,
    };
    assert_eq!(
        ev,
        NeighEvent::Resolved {
            backend,
            nexthop: on_ingress(mac_a)
        },
        "host a's MAC, sent back out of the ingress interface (ifindex 0)"
    );

    // The address moves to host b, which announces it.
    t.ip(
        "a",
        &["addr", "del", &format!("{BACKEND}/24"), "dev", "eth0"],
    );
    t.ip(
        "b",
        &["addr", "add", &format!("{BACKEND}/24"), "dev", "eth0"],
    );
    let sent = Instant::now();
    send_frame(&t.ns("b"), "eth0", gratuitous_arp(BACKEND, mac_b));
    let ev = r.next(
        Duration::from_secs(1).saturating_sub(sent.elapsed()),
        "after the gratuitous ARP",
    );
    let took = sent.elapsed();
    assert_eq!(
        ev,
        NeighEvent::Resolved {
            backend,
            nexthop: on_ingress(mac_b)
        },
        "host b's MAC"
    );
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    // The event is sent after its log line is written.
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("next hop MAC changed"))
        .unwrap_or_else(|| panic!("no log line of the change in:\n{text}"));
    for want in [BACKEND.to_string(), mac_text(mac_a), mac_text(mac_b)] {
        assert!(line.contains(&want), "{want} missing from: {line}");
    }

    // Nobody answers for the address any more: once the balancer's entry
    // goes (flushed here), the resolver provokes ARP in vain and tells the
    // owner, once.
    t.ip(
        "b",
        &["addr", "del", &format!("{BACKEND}/24"), "dev", "eth0"],
    );
    t.ip(
        "lb",
        &["neigh", "flush", "to", &BACKEND.to_string(), "dev", "eth0"],
    );
    let ev = r.next(Duration::from_secs(5), "after the address left");
    assert!(
        matches!(&ev, NeighEvent::Unresolved { backend: b, error } if *b == backend && error.contains("198.18.0.11")),
        "{ev:?}"
    );
    assert!(
        r.events.recv_timeout(Duration::from_secs(3)).is_err(),
        "an unresolved backend is told once"
    );

    // Host a takes the address back without announcing it: the resolver,
    // provoking ARP at each retry (the kernel's entry is FAILED by now and
    // would stay so), finds it again.
    t.ip(
        "a",
        &["addr", "add", &format!("{BACKEND}/24"), "dev", "eth0"],
    );
    let ev = r.next(Duration::from_secs(3), "after the address came back");
    assert_eq!(
        ev,
        NeighEvent::Resolved {
            backend,
            nexthop: on_ingress(mac_a)
        },
        "host a's MAC again"
    );
    r.stop();
}

/// The daemon's `BACKENDS` map, opened from its pin under `bpffs`.
fn pinned_backends(bpffs: &Path) -> Array<MapData, Backend> {
    let path = bpffs.join("maps").join(lb_common::maps::BACKENDS);
    let data = MapData::from_pin(&path)
        .unwrap_or_else(|e| panic!("opening the pinned map {}: {e}", path.display()));
    let map = Map::from_map_data(data).expect("a map type aya knows");
    Array::try_from(map).expect("BACKENDS is an array of Backend")
}

/// The live entry of IPv4 backend `addr` in `backends`, if there is one.
fn entry_of(backends: &Array<MapData, Backend>, addr: Ipv4Addr) -> Option<Backend> {
    backends
        .iter()
        .map(|e| e.expect("reading a BACKENDS entry"))
        .find(|b| {
            b.family == FAMILY_V4 && b.addr[..4] == addr.octets() && b.flags & BACKEND_F_ACTIVE != 0
        })
}

/// Polls `backends` every 50 ms until the entry of `addr` has next-hop MAC
/// `mac`, which must be within `limit` from `since`; returns the entry and
/// the time from `since` to the end of the read that saw it (an upper
/// bound on when the change was made).
fn wait_dmac(
    backends: &Array<MapData, Backend>,
    addr: Ipv4Addr,
    mac: [u8; 6],
    since: Instant,
    limit: Duration,
) -> (Backend, Duration) {
    loop {
        let entry = entry_of(backends, addr);
        let took = since.elapsed();
        let seen = entry.filter(|b| b.flags & BACKEND_F_NEXTHOP != 0 && b.dmac == mac);
        assert!(
            took <= limit,
            "BACKENDS entry of {addr}: next hop {} not there within {limit:?} (read at {took:?}): {entry:?}",
            mac_text(mac)
        );
        if let Some(b) = seen {
            return (b, took);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` requests through the dsr VIP from the client, each on a new
/// connection: how many each backend answered (failures by their error).
fn answers(lab: &Lab, n: usize) -> BTreeMap<String, usize> {
    in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let mut by = BTreeMap::new();
        for _ in 0..n {
            let r = TcpStream::connect_timeout(&vip, Duration::from_secs(1)).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(1)))?;
                http_get(&mut c)
            });
            *by.entry(r.unwrap_or_else(|e| format!("error: {e}")))
                .or_default() += 1;
        }
        by
    })
}

/// Issue 14's neighbour-change test, end to end: the daemon subscribes to
/// neighbour changes, so when backend 198.18.0.11 moves from host b1 to
/// host b2 (another MAC), which announces it with a gratuitous ARP, the
/// backend's entry in the pinned `BACKENDS` map holds b2's MAC within one
/// second (the rest of the entry unchanged), requests through the VIP are
/// answered by b2, and the daemon's log has the resolver's "next hop MAC
/// changed" line naming the backend and both MACs.
#[test]
fn the_daemon_sends_a_moved_backend_to_its_new_mac_within_a_second() {
    require_root();
    // b1 and b2 both hold the VIP on lo and answer with their own name;
    // only b1 holds 198.18.0.11 at first.
    let lab = Lab::new("hnd", 2);
    // As in the test above: no IPv6 address or route notifications in the
    // balancer's namespace to make the resolver look at every backend
    // again, so only the neighbour notification can carry the change.
    for key in ["all", "default"] {
        lab.t
            .sysctl("lb", &format!("net.ipv6.conf.{key}.disable_ipv6=1"));
    }
    let _servers = Servers::start(&lab);
    let config = format!(
        r#"{GLOBAL}
[[vip]]
address = "{DSR_VIP}"
port = 80
protocol = "tcp"
mode = "dsr"

[[vip.backend]]
address = "{BACKEND}"
weight = 1
"#
    );
    let d = Daemon::start("neigh-move", &lab.t.ns("lb"), &config);
    let (mac_b1, mac_b2) = (lab.t.mac("b1", "eth0"), lab.t.mac("b2", "eth0"));
    let backends = pinned_backends(&d.bpffs);
    let (before, _) = wait_dmac(
        &backends,
        BACKEND,
        mac_b1,
        Instant::now(),
        Duration::from_secs(5),
    );
    assert_eq!(
        answers(&lab, 20),
        BTreeMap::from([("b1".to_string(), 20)]),
        "b1 holds {BACKEND}"
    );

    // The address moves to b2, which announces it.
    let cidr = format!("{BACKEND}/24");
    lab.t.ip("b1", &["addr", "del", &cidr, "dev", "eth0"]);
    lab.t.ip("b2", &["addr", "add", &cidr, "dev", "eth0"]);
    let sent = Instant::now();
    send_frame(&lab.t.ns("b2"), "eth0", gratuitous_arp(BACKEND, mac_b2));
    let (after, took) = wait_dmac(&backends, BACKEND, mac_b2, sent, Duration::from_secs(1));
    println!("BACKENDS held b2's MAC {took:?} after the gratuitous ARP (polled every 50 ms)");
    assert_eq!(
        after,
        Backend {
            dmac: mac_b2,
            ..before
        },
        "only the next hop's MAC changed"
    );
    assert_eq!(
        answers(&lab, 20),
        BTreeMap::from([("b2".to_string(), 20)]),
        "b2 holds {BACKEND} now"
    );

    // The owner writes the map after the resolver's event, which is sent
    // after its log line.
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("next hop MAC changed"))
        .unwrap_or_else(|| panic!("no log line of the change in:\n{log}"));
    for want in [BACKEND.to_string(), mac_text(mac_b1), mac_text(mac_b2)] {
        assert!(line.contains(&want), "{want} missing from: {line}");
    }
}
