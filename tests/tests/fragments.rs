//! Fragmented UDP datagrams through the real daemon (issue 16 item 3):
//! UDP echo servers on the backends, a client whose kernel fragments its
//! 3,000-byte datagrams for the path's 1,500-byte MTU, and datagrams whose
//! fragments are sent first-fragment-last from a packet socket. Each must
//! reach one backend whole and be answered whole (the answer, fragmented
//! by the backend's kernel, goes straight to the client in `dsr` and back
//! through hola's reply path in `nat`).

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::{Daemon, GLOBAL},
    fixture::require_root,
    netns::{in_ns, ns_cmd, send_frames, spawn_in_ns},
    packet::{L4, Pkt, fragments},
    topo::{CLIENT, Lab, backend},
};
use netlab::lab::{CLIENT_V6, DSR_VIP_V4, DSR_VIP_V6, Family, LabSpec, backend_v6};

const PORT: u16 = 5353;
/// Larger than the 1,500-byte MTU: sent in three fragments.
const SIZE: usize = 3000;
const DATAGRAMS: usize = 20;

/// Backends that echo every datagram back, prefixed with their name and
/// ':', and count what they got (whole: the kernel hands a socket only
/// reassembled datagrams); stopped on drop.
struct Echo {
    got: Arc<Mutex<BTreeMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Echo {
    /// One server per (namespace, name, bind address).
    fn start(on: Vec<(String, String, String)>) -> Self {
        let got: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (ns, name, addr) in on {
            let (g, st) = (got.clone(), stop.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(spawn_in_ns(&ns, move || {
                let u = UdpSocket::bind((addr.as_str(), PORT))
                    .unwrap_or_else(|e| panic!("{name}: bind {addr}:{PORT}: {e}"));
                u.set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                tx.send(()).expect("ready");
                let mut buf = vec![0u8; 65536];
                while !st.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = u.recv_from(&mut buf) {
                        let mut answer = format!("{name}:").into_bytes();
                        answer.extend_from_slice(&buf[..n]);
                        u.send_to(&answer, from).expect("echo");
                        *g.lock().expect("lock").entry(name.clone()).or_default() += 1;
                    }
                }
            }));
            rx.recv_timeout(Duration::from_secs(5))
                .expect("echo server listening");
        }
        Echo { got, stop, threads }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The payload of datagram `i`: bytes that say where they were.
fn payload(i: usize) -> Vec<u8> {
    (0..SIZE).map(|k| (k * 7 + i) as u8).collect()
}

/// Checks one answer: a backend's name, then the datagram whole.
fn answered_by(answer: &[u8], sent: &[u8]) -> Result<String, String> {
    let colon = answer
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| format!("an answer of {} bytes without a name", answer.len()))?;
    if &answer[colon + 1..] != sent {
        return Err(format!(
            "the echo of a {}-byte datagram came back with {} bytes, or changed",
            sent.len(),
            answer.len() - colon - 1
        ));
    }
    Ok(String::from_utf8_lossy(&answer[..colon]).into_owned())
}

/// `DATAGRAMS` datagrams of `SIZE` bytes from the client's own socket
/// (its kernel fragments them), each from a new port: the answers by
/// backend name.
fn through_the_kernel(lab: &Lab, vip: &'static str) -> BTreeMap<String, usize> {
    in_ns(&lab.t.ns("cl"), move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let any = if vip.contains(':') { "::" } else { "0.0.0.0" };
        let mut by = BTreeMap::new();
        for i in 0..DATAGRAMS {
            assert!(Instant::now() < deadline, "datagram loop ran out of time");
            let u = UdpSocket::bind((any, 0)).expect("bind");
            u.connect((vip, PORT)).expect("connect");
            u.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let sent = payload(i);
            u.send(&sent).expect("send");
            let mut buf = vec![0u8; 65536];
            let r = u
                .recv(&mut buf)
                .map_err(|e| format!("no answer to datagram {i} to {vip}: {e}"))
                .and_then(|n| answered_by(&buf[..n], &sent));
            *by.entry(r.unwrap_or_else(|e| format!("error: {e}")))
                .or_default() += 1;
        }
        by
    })
}

/// Datagrams whose fragments leave the client's packet socket in reverse
/// order (the first fragment last), each from a new port: the answers by
/// backend name.
fn first_fragment_last(
    lab: &Lab,
    client: &'static str,
    vip: &'static str,
) -> BTreeMap<String, usize> {
    let (lb_mac, cl_mac) = (lab.t.mac("lb", "eth0"), lab.t.mac("cl", "eth0"));
    let ns = lab.t.ns("cl");
    let mut by = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..DATAGRAMS {
        assert!(Instant::now() < deadline, "datagram loop ran out of time");
        let any = if vip.contains(':') { "::" } else { "0.0.0.0" };
        let u = in_ns(&ns, move || UdpSocket::bind((any, 0)).expect("bind"));
        u.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let sport = u.local_addr().expect("local").port();
        let sent = payload(i + 100);
        let mut p = Pkt::new(client, vip, L4::udp(sport, PORT, &sent)).frag(0);
        p.dmac = lb_mac;
        p.smac = cl_mac;
        // Cuts that keep every fragment within 1,500 bytes of IP.
        let cuts: &[usize] = if vip.contains(':') {
            &[1448, 2896]
        } else {
            &[1480, 2960]
        };
        let mut frames = fragments(&p, 0x7000 + i as u32, cuts);
        frames.reverse();
        send_frames(&ns, "eth0", frames);
        let mut buf = vec![0u8; 65536];
        let r = u
            .recv(&mut buf)
            .map_err(|e| format!("no answer to reordered datagram {i} to {vip}: {e}"))
            .and_then(|n| answered_by(&buf[..n], &sent));
        *by.entry(r.unwrap_or_else(|e| format!("error: {e}")))
            .or_default() += 1;
    }
    by
}

/// Every datagram answered whole, by a backend of `names`.
fn assert_all_answered(what: &str, by: &BTreeMap<String, usize>, names: &[&str]) {
    println!("{what}: {by:?}");
    assert_eq!(
        by.values().sum::<usize>(),
        DATAGRAMS,
        "{what}: {DATAGRAMS} datagrams"
    );
    assert!(
        by.keys().all(|k| names.contains(&k.as_str())),
        "{what}: every datagram answered whole by a backend: {by:?}"
    );
}

/// The daemon's count of `reason` (its `hola stats` JSON).
fn reason(d: &Daemon, name: &str) -> u64 {
    d.stats().reasons.get(name).map_or(0, |r| r.packets)
}

#[test]
fn fragmented_udp_through_dsr_reaches_one_backend_whole_ipv4_and_ipv6() {
    require_root();
    let lab = Lab::build(&LabSpec {
        prefix: "hfr",
        client: "cl",
        backends: 2,
        families: &[Family::V4, Family::V6],
        vips: &[DSR_VIP_V4, DSR_VIP_V6],
    });
    let mut on = Vec::new();
    for i in 1..=2 {
        let (b, _) = backend(i);
        for vip in [DSR_VIP_V4, DSR_VIP_V6] {
            on.push((lab.t.ns(&b), b.clone(), vip.to_string()));
        }
    }
    let echo = Echo::start(on);
    let mut c = String::from(GLOBAL);
    for (vip, b) in [
        (DSR_VIP_V4, [backend(1).1, backend(2).1]),
        (DSR_VIP_V6, [backend_v6(1), backend_v6(2)]),
    ] {
        c += &format!(
            "\n[[vip]]\naddress = \"{vip}\"\nport = {PORT}\nprotocol = \"udp\"\nmode = \"dsr\"\n"
        );
        for a in b {
            c += &format!("\n[[vip.backend]]\naddress = \"{a}\"\n");
        }
    }
    let d = Daemon::start("hfr", &lab.t.ns("lb"), &c);

    let names = ["b1", "b2"];
    let v4 = through_the_kernel(&lab, DSR_VIP_V4);
    assert_all_answered("IPv4, fragmented by the client's kernel", &v4, &names);
    let v6 = through_the_kernel(&lab, DSR_VIP_V6);
    assert_all_answered("IPv6, fragmented by the client's kernel", &v6, &names);
    let r4 = first_fragment_last(&lab, CLIENT, DSR_VIP_V4);
    assert_all_answered("IPv4, first fragment last", &r4, &names);
    let r6 = first_fragment_last(&lab, CLIENT_V6, DSR_VIP_V6);
    assert_all_answered("IPv6, first fragment last", &r6, &names);

    let got = echo.got.lock().expect("lock").clone();
    assert_eq!(
        got.values().sum::<usize>(),
        4 * DATAGRAMS,
        "the backends received every datagram once, whole: {got:?}"
    );
    // Three fragments a datagram: two later ones each, after their first
    // (in order) or before it (the first placed by the later one).
    let (fwd, early) = (reason(&d, "fwd_fragment"), reason(&d, "fwd_fragment_early"));
    println!("fwd_fragment {fwd}, fwd_fragment_early {early}");
    assert_eq!(
        early,
        2 * DATAGRAMS as u64,
        "one early placement per reordered datagram"
    );
    assert_eq!(
        fwd,
        (2 * 2 * DATAGRAMS + 2 * 2 * DATAGRAMS) as u64,
        "in order: two later fragments follow the first; reordered: one later and the first follow the early one"
    );
    assert_eq!(reason(&d, "drop_fragment"), 0);
}

#[test]
fn fragmented_udp_through_nat_is_answered_through_the_reply_path() {
    require_root();
    const NAT_VIP: &str = "198.18.1.3";
    const GATEWAY: &str = "198.18.2.1";
    let lab = Lab::new("hfn", 2);
    lab.t.ip(
        "lb",
        &["addr", "add", &format!("{GATEWAY}/24"), "dev", "eth0"],
    );
    let mut on = Vec::new();
    for i in 1..=2 {
        let (b, _) = backend(i);
        let addr = format!("198.18.2.{}", 10 + i);
        lab.t
            .ip(&b, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        lab.t.ip(
            &b,
            &["route", "add", &format!("{CLIENT}/32"), "via", GATEWAY],
        );
        ns_cmd(&lab.t.ns(&b), "ethtool", &["-K", "eth0", "tx", "off"]);
        on.push((lab.t.ns(&b), b.clone(), "0.0.0.0".to_string()));
    }
    let echo = Echo::start(on);
    let mut c = format!(
        "{GLOBAL}nat_capacity = 65536\n\n[[vip]]\naddress = \"{NAT_VIP}\"\nport = {PORT}\nprotocol = \"udp\"\nmode = \"nat\"\n"
    );
    for i in 1..=2 {
        c += &format!("\n[[vip.backend]]\naddress = \"198.18.2.{}\"\n", 10 + i);
    }
    let d = Daemon::start("hfn", &lab.t.ns("lb"), &c);

    let names = ["b1", "b2"];
    let by = through_the_kernel(&lab, NAT_VIP);
    assert_all_answered("nat, fragmented both ways", &by, &names);
    let r = first_fragment_last(&lab, CLIENT, NAT_VIP);
    assert_all_answered("nat, first fragment last", &r, &names);
    // Every answer is three fragments: the first translated as a reply,
    // the two later ones after it.
    assert_eq!(reason(&d, "fwd_nat_reply"), 2 * DATAGRAMS as u64);
    assert_eq!(reason(&d, "drop_fragment"), 0);
    let got = echo.got.lock().expect("lock").clone();
    assert_eq!(got.values().sum::<usize>(), 2 * DATAGRAMS, "{got:?}");
}
