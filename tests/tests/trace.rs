//! `hola trace` in the lab: the real daemon in the balancer's namespace,
//! HTTP servers on two dsr backends. One client address (198.18.0.1) makes
//! a loop of requests through the VIP while another (198.18.0.5) sends its
//! own; a trace filtered on the first prints one line per packet of its
//! connections (a SYN and a request per connection, each connection on one
//! backend), writes a pcap whose before/after pairs differ exactly in the
//! two MACs dsr rewrites, and holds nothing of the other client. Ctrl-C
//! and `--count` end a trace, and the filter is off afterwards (read from
//! the program's map).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::FromRawFd as _,
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use hola_tests::{
    daemon::{Daemon, GLOBAL, hola_bin},
    fixture::require_root,
    netns::{ns_cmd, spawn_in_ns},
    topo::{DSR_VIP, Lab, Servers, backend, http_get},
};
use lb_common::{maps as names, trace::TraceFilter};
use netlab::lab::BALANCER;
use pcap_file::{DataLink, pcap::PcapReader};

/// The first client (the lab's) and the second (an address added to the
/// client's interface).
const CLIENT_A: &str = "198.18.0.1";
const CLIENT_B: &str = "198.18.0.5";
/// Connections the first client makes, one request each.
const REQUESTS: usize = 5;
/// The request `http_get` sends.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";

fn config() -> String {
    let mut c = format!(
        "{GLOBAL}\n[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"dsr\"\n"
    );
    for i in 0..2 {
        c += &format!("\n[[vip.backend]]\naddress = \"198.18.0.{}\"\n", 11 + i);
    }
    c
}

/// `TRACE_FILTER` of the `hola_lb` attached to eth0 in namespace `ns`
/// (found through the interface's program, so no other daemon's map is
/// read).
fn trace_filter(ns: &str) -> TraceFilter {
    let link = ns_cmd(ns, "ip", &["-d", "link", "show", "dev", "eth0"]);
    let prog_id: u32 = link
        .split("prog/xdp id ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no XDP program on eth0 in {ns}:\n{link}"));
    let prog = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == prog_id)
        .unwrap_or_else(|| panic!("program {prog_id} is not loaded"));
    let map_ids = prog
        .map_ids()
        .expect("the program's map ids")
        .expect("the kernel reports map ids");
    for id in map_ids {
        let data = MapData::from_id(id).expect("map by id");
        let name = data.info().expect("map info");
        if name.name_as_str() == Some(names::TRACE_FILTER) {
            let a: Array<MapData, TraceFilter> =
                Array::try_from(Map::Array(data)).expect("TRACE_FILTER is an array");
            return a.get(&0, 0).expect("TRACE_FILTER[0]");
        }
    }
    panic!("program {prog_id} has no {} map", names::TRACE_FILTER);
}

/// Waits (at most 10 s) until the filter's `enabled` is `on`.
fn wait_filter(ns: &str, on: bool) -> TraceFilter {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = trace_filter(ns);
        if (f.enabled != 0) == on {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "the trace filter did not become enabled={on} within 10 s: {f:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `hola trace ARGS...` started, not awaited.
fn trace(d: &Daemon, args: &[&str]) -> Child {
    Command::new(hola_bin())
        .arg("--socket")
        .arg(&d.socket)
        .arg("trace")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting hola trace")
}

/// Waits at most `limit` for `c` to exit; kills it (its own PID) if not.
fn exit_within(mut c: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while c.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = c.kill();
            let o = c.wait_with_output().expect("output");
            panic!(
                "hola trace did not exit within {limit:?}:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.wait_with_output().expect("output")
}

/// A TCP connection to `to` from `from` (any port).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor this function owns; the
    // sockaddr_in values live across the calls that read them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let sa = |a: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.octets()),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        let local = sa(from, 0);
        if libc::bind(fd, (&raw const local).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let SocketAddr::V4(to) = to else {
            unreachable!("an IPv4 VIP")
        };
        let remote = sa(*to.ip(), to.port());
        if libc::connect(fd, (&raw const remote).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// The second client's traffic, until stopped (at most 30 s): a new
/// connection and a request every 50 ms.
fn other_client(lab: &Lab, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    spawn_in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let from: Ipv4Addr = CLIENT_B.parse().expect("client b");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let mut c = connect_from(from, vip).expect("client b connects");
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            http_get(&mut c).expect("client b's request");
            n += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    })
}

/// The first client's requests: one connection each, closed after its
/// answer; returns each connection's source port and backend name.
fn requests(lab: &Lab) -> Vec<(u16, String)> {
    spawn_in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        (0..REQUESTS)
            .map(|_| {
                let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .expect("client a connects");
                c.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let port = c.local_addr().expect("local").port();
                let name = http_get(&mut c).expect("client a's request");
                // Closed by us first (FIN from the client), then a pause.
                drop(c);
                std::thread::sleep(Duration::from_millis(100));
                (port, name)
            })
            .collect()
    })
    .join()
    .expect("client a")
}

/// What one line of `hola trace` says: source port, TCP flags, payload
/// length, reason, action and backend.
#[derive(Debug)]
struct Line {
    sport: u16,
    flags: String,
    length: usize,
    reason: String,
    action: String,
    backend: String,
    text: String,
}

fn parse_line(l: &str) -> Line {
    try_parse_line(l).unwrap_or_else(|| panic!("not a trace line of client a's flow: {l}"))
}

fn try_parse_line(l: &str) -> Option<Line> {
    let (_, rest) = l.split_once(&format!(" IP {CLIENT_A}."))?;
    let (port, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix(&format!("> {DSR_VIP}.80: Flags ["))?;
    let (flags, rest) = rest.split_once(']')?;
    let (_, rest) = rest.split_once("length ")?;
    let (length, _) = rest.split_once(' ')?;
    let decision: Vec<&str> = l.split(" | ").nth(1)?.split(' ').collect();
    let at = decision.iter().position(|w| *w == "backend")?;
    Some(Line {
        sport: port.parse().ok()?,
        flags: flags.to_string(),
        length: length.parse().ok()?,
        reason: (*decision.first()?).to_string(),
        action: (*decision.get(1)?).to_string(),
        backend: (*decision.get(at + 1)?).to_string(),
        text: l.to_string(),
    })
}

/// The pcap's records: (captured bytes, length on the wire).
fn read_pcap(path: &Path) -> Vec<(Vec<u8>, u32)> {
    let f = std::fs::File::open(path).expect("the pcap file");
    let mut r = PcapReader::new(f).expect("a pcap header");
    assert_eq!(r.header().datalink, DataLink::ETHERNET);
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.expect("a pcap record");
        out.push((p.data.into_owned(), p.orig_len));
    }
    out
}

#[test]
fn trace_shows_one_clients_requests_and_writes_before_after_pcap() {
    require_root();
    let lab = Lab::new("tr", 2);
    let _servers = Servers::start(&lab);
    let lb_ns = lab.t.ns(BALANCER);
    let d = Daemon::start("trace", &lb_ns, &config());
    lab.t.ip(
        "cl",
        &["addr", "add", &format!("{CLIENT_B}/24"), "dev", "eth0"],
    );
    let lb_mac = lab.t.mac(BALANCER, "eth0");
    let client_mac = lab.t.mac("cl", "eth0");
    let backend_mac = |addr: &str| {
        let i = (1..=2)
            .find(|&i| backend(i).1 == addr)
            .unwrap_or_else(|| panic!("{addr} is not a backend"));
        lab.t.mac(&backend(i).0, "eth0")
    };
    assert_eq!(
        trace_filter(&lb_ns).enabled,
        0,
        "no trace before the test's"
    );

    let pcap = d.dir.join("trace.pcap");
    let pcap_arg = pcap.to_str().expect("path");
    let started = Instant::now();
    let child = trace(
        &d,
        &[
            CLIENT_A,
            "198.18.1.1:80",
            "--proto",
            "tcp",
            "--seconds",
            "60",
            "-w",
            pcap_arg,
        ],
    );
    let on = wait_filter(&lb_ns, true);
    assert_eq!(&on.src[..4], &[198, 18, 0, 1]);
    assert_eq!(&on.dst[..4], &[198, 18, 1, 1]);
    assert_eq!(on.dport, 80u16.to_be());

    let stop = Arc::new(AtomicBool::new(false));
    let other = other_client(&lab, stop.clone());
    let conns = requests(&lab);
    // The last connection's closing packets, then Ctrl-C.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let other_requests = other.join().expect("client b");
    assert!(other_requests > 0, "client b sent requests");
    // SAFETY: kill on the PID of the trace we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = exit_within(child, Duration::from_secs(10));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "hola trace: {stdout}{stderr}");
    assert_eq!(stderr.trim(), "trace stopped", "{stderr}");
    let off = wait_filter(&lb_ns, false);
    assert_eq!(off.generation, on.generation);
    eprintln!(
        "trace of {REQUESTS} requests (client b: {other_requests}) took {:?}",
        started.elapsed()
    );

    eprintln!("{stdout}");
    let lines: Vec<Line> = stdout.lines().map(parse_line).collect();
    assert!(
        !stdout.contains(CLIENT_B),
        "client b's packets are not traced:\n{stdout}"
    );
    let ports: Vec<u16> = conns.iter().map(|(p, _)| *p).collect();
    for l in &lines {
        assert!(ports.contains(&l.sport), "a port of client a's: {}", l.text);
        assert_eq!(l.action, "tx", "{}", l.text);
    }
    for (port, name) in &conns {
        let mine: Vec<&Line> = lines.iter().filter(|l| l.sport == *port).collect();
        let syns: Vec<&&Line> = mine.iter().filter(|l| l.flags == "S").collect();
        assert_eq!(syns.len(), 1, "one SYN on port {port}: {mine:#?}");
        assert_eq!(syns[0].reason, "fwd_syn");
        assert!(syns[0].text.contains(" maglev slot "), "{}", syns[0].text);
        let reqs: Vec<&&Line> = mine.iter().filter(|l| l.length > 0).collect();
        assert_eq!(reqs.len(), 1, "one request on port {port}: {mine:#?}");
        assert_eq!(
            (reqs[0].flags.as_str(), reqs[0].length),
            ("P.", REQUEST.len())
        );
        assert!(
            mine.iter().any(|l| l.flags.contains('F')),
            "the client's FIN on port {port}: {mine:#?}"
        );
        // Every packet of the connection went to the backend that answered.
        let addr = (1..=2)
            .map(backend)
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .expect("backend name");
        for l in &mine {
            assert_eq!(l.backend, addr, "{}", l.text);
            assert!(
                matches!(
                    l.reason.as_str(),
                    "fwd_syn" | "fwd_new_flow" | "fwd_established"
                ),
                "{}",
                l.text
            );
            assert!(l.text.contains(" vip 198.18.1.1:80/tcp "), "{}", l.text);
        }
        // After the flow is recorded (its first non-SYN), hits.
        assert!(
            mine.iter()
                .any(|l| l.reason == "fwd_established" && l.text.contains("flow-table hit")),
            "{mine:#?}"
        );
    }

    // The pcap: each packet twice, as it arrived and as hola sent it.
    let records = read_pcap(&pcap);
    assert_eq!(records.len(), 2 * lines.len(), "two records per line");
    for (pair, l) in records.chunks(2).zip(&lines) {
        let ((before, blen), (after, alen)) = (&pair[0], &pair[1]);
        assert_eq!(
            (blen, alen),
            (&(before.len() as u32), &(after.len() as u32))
        );
        assert_eq!(
            &before[0..6],
            &lb_mac,
            "arrived for the balancer: {}",
            l.text
        );
        assert_eq!(&before[6..12], &client_mac, "from the client: {}", l.text);
        assert_eq!(&after[0..6], &backend_mac(&l.backend), "{}", l.text);
        assert_eq!(&after[6..12], &lb_mac, "{}", l.text);
        assert_eq!(
            &after[12..],
            &before[12..],
            "dsr changes only the MACs: {}",
            l.text
        );
        assert_eq!(&before[26..30], &[198, 18, 0, 1], "client a's: {}", l.text);
        assert_eq!(u16::from_be_bytes([before[34], before[35]]), l.sport);
    }

    // A trace that ends at its count, with its end said as JSON.
    let child = trace(&d, &["--vip", "198.18.1.1:80", "--count", "3", "--json"]);
    wait_filter(&lb_ns, true);
    let again = requests(&lab);
    assert_eq!(again.len(), REQUESTS);
    let out = exit_within(child, Duration::from_secs(10));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let end: serde_json::Value = serde_json::from_str(stderr.trim()).expect("the end as JSON");
    assert_eq!(end["why"], "count", "{stderr}");
    assert_eq!(end["packets"], 3, "{stderr}");
    for l in stdout.lines() {
        let p: serde_json::Value = serde_json::from_str(l).expect("a packet as JSON");
        assert_eq!(p["vip"], "198.18.1.1:80/tcp", "{l}");
        assert_eq!(p["action"], "tx", "{l}");
    }
    wait_filter(&lb_ns, false);

    // --vip names a VIP; one that is not is refused, and no filter is set.
    let o = d.cli(&["trace", "--vip", "198.18.1.9:80", "--count", "1"]);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "hola: no VIP at 198.18.1.9:80; `hola vip list` shows the VIPs"
    );
    assert_eq!(trace_filter(&lb_ns).enabled, 0);
}
