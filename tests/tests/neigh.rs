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

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use hola_tests::{
    fixture::require_root,
    netns::{Topology, in_ns, spawn_in_ns},
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

/// Sends a gratuitous ARP from `dev` in namespace `ns`: "`ip` is at `mac`",
/// as a host that takes over an address announces it.
fn gratuitous_arp(ns: &str, dev: &'static str, ip: Ipv4Addr, mac: [u8; 6]) {
    in_ns(ns, move || {
        const ETH_P_ARP: u16 = 0x0806;
        let mut frame = vec![0xff; 6]; // to everyone
        frame.extend(mac);
        frame.extend(ETH_P_ARP.to_be_bytes());
        // Ethernet, IPv4, 6-byte and 4-byte addresses, a request.
        frame.extend([0, 1, 8, 0, 6, 4, 0, 1]);
        frame.extend(mac);
        frame.extend(ip.octets());
        frame.extend([0; 6]);
        frame.extend(ip.octets());
        let name = std::ffi::CString::new(dev).expect("name");
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "{dev} in {}", std::io::Error::last_os_error());
        // SAFETY: plain socket creation; the fd is closed below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are
        // the ones a packet socket's sendto reads.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_ARP.to_be();
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].fill(0xff);
        // SAFETY: frame and to are valid for the lengths given; fd is ours.
        let sent = unsafe {
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            libc::close(fd);
            n
        };
        assert_eq!(
            sent,
            frame.len() as isize,
            "gratuitous ARP: {}",
            std::io::Error::last_os_error()
        );
    });
}

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
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
    gratuitous_arp(&t.ns("b"), "eth0", BACKEND, mac_b);
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
