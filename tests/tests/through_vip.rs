//! Health checks through the VIP (`[vip.health] through`, by default for
//! dsr and tunnel VIPs) in the lab: the real daemon, `hola_probe` on the
//! balancer's `lo`, HTTP servers on the backends. A dsr backend whose VIP
//! is taken off its loopback, and a tunnel backend whose `hola-decap` is
//! detached, still answer on their own address but lose every client
//! packet: each is marked down within `fall` × `interval` (plus a stated
//! margin, see `DETECT_MS`) with a reason that says why, and comes back when the fault is
//! undone.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::Ebpf;
use hola_tests::{
    daemon::{Daemon, GLOBAL, now_ms},
    fixture::require_root,
    netns::{Topology, must, spawn_in_ns},
    topo::{Servers, attach},
};
use lb_userspace::{programs, stats::BackendReport};
use netlab::lab::{
    BALANCER, DSR_VIP_V4, DSR_VIP_V6, Family, LabSpec, SWITCH, TUNNEL_VIP_V4, TUNNEL_VIP_V6,
    backend, backend_v6, port,
};

const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 100;
const FALL: u64 = 2;
const RISE: u64 = 2;
/// What the detection itself takes beyond `fall` × `interval`: the first
/// failing probe starts at most an interval after the fault (plus a tenth
/// of it, the scheduler's jitter), the fall-th starts `fall` - 1 intervals
/// later, and a probe that gets no answer fails at its timeout. So a
/// backend is down `fall` × `interval` + `timeout` + `interval` / 10 after
/// the fault at the latest (500 to 520 ms here); a back-up needs no
/// timeout (a passing probe answers at once).
const DETECT_MS: u64 = TIMEOUT_MS + INTERVAL_MS / 10;
/// On top of that: the `ip` command that makes the fault (timed from before
/// it starts; printed), the owner's write of the changed slots (one batch
/// per map: a few ms for the 65,537-slot tables here; it was about 190 ms
/// when each slot was its own system call) and a 2-core machine shared
/// with other work. Runs took 456 to 484 ms to mark down and 235 to 287 ms
/// to bring back.
const SLACK_MS: u64 = 150;

/// The lab with two backends, each with both VIPs on lo and its own
/// `hola-decap`, which the test can detach and attach again.
struct ThroughLab {
    t: Topology,
    decap: BTreeMap<usize, Ebpf>,
    _peer: Ebpf,
}

/// The addresses a run uses, IPv4 or IPv6.
#[derive(Clone, Copy)]
struct Fam {
    family: Family,
    dsr_vip: &'static str,
    tun_vip: &'static str,
}

const V4: Fam = Fam {
    family: Family::V4,
    dsr_vip: DSR_VIP_V4,
    tun_vip: TUNNEL_VIP_V4,
};
const V6: Fam = Fam {
    family: Family::V6,
    dsr_vip: DSR_VIP_V6,
    tun_vip: TUNNEL_VIP_V6,
};

impl Fam {
    /// Backend `i`'s address (1-based).
    fn backend(self, i: usize) -> String {
        match self.family {
            Family::V4 => backend(i).1,
            Family::V6 => backend_v6(i),
        }
    }

    /// The VIP as a host route on a backend's `lo`.
    fn host(self, vip: &str) -> String {
        match self.family {
            Family::V4 => format!("{vip}/32"),
            Family::V6 => format!("{vip}/128"),
        }
    }
}

/// `vip`:80 as hola writes it (`[2001:db8:1::1]:80` for IPv6).
fn at80(vip: &str) -> String {
    SocketAddr::new(vip.parse().expect("VIP address"), 80).to_string()
}

impl ThroughLab {
    fn new(prefix: &str, f: Fam) -> Self {
        let t: Topology = must(netlab::lab::build(&LabSpec {
            prefix,
            client: "cl",
            backends: 2,
            families: &[f.family],
            vips: &[f.dsr_vip, f.tun_vip],
        }))
        .into();
        let decap = (1..=2).map(|i| (i, Self::decap_on(&t, i))).collect();
        let peer: &'static str = port(BALANCER).leak();
        let _peer = attach(&t.ns(SWITCH), programs::BENCH, "bench_pass", peer);
        ThroughLab { t, decap, _peer }
    }

    fn decap_on(t: &Topology, i: usize) -> Ebpf {
        attach(&t.ns(&backend(i).0), programs::DECAP, "hola_decap", "eth0")
    }
}

/// Both lab VIPs, dsr and tunnel, each with both backends and an HTTP
/// check that does not say `through` (the default: through the VIP).
fn config(f: Fam) -> String {
    let mut c = GLOBAL.to_string();
    for (vip, mode) in [(f.dsr_vip, "dsr"), (f.tun_vip, "tunnel")] {
        c += &format!(
            "\n[[vip]]\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\n\
             [vip.health]\ntype = \"http\"\ninterval = \"{INTERVAL_MS}ms\"\n\
             timeout = \"{TIMEOUT_MS}ms\"\nfall = {FALL}\nrise = {RISE}\n"
        );
        for i in 1..=2 {
            c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", f.backend(i));
        }
    }
    c
}

/// Backend `addr` of VIP `vip` as `hola stats --json` reports it.
fn report(d: &Daemon, vip: &str, addr: &str) -> BackendReport {
    let s = d.stats();
    let v = s
        .vips
        .iter()
        .find(|v| v.vip == format!("{}/tcp", at80(vip)))
        .unwrap_or_else(|| panic!("VIP {vip} in the stats"));
    v.backends
        .iter()
        .find(|b| b.address == addr)
        .unwrap_or_else(|| panic!("{addr} in {vip}'s backends"))
        .clone()
}

/// Waits until backend `addr` of `vip` has the health `want`: its report
/// then, and the change's time (ms since the epoch), as the daemon recorded
/// it: polling every 100 ms (each poll is a `hola` process and a stats
/// report from the owner) does not change the time measured.
fn wait_health(
    d: &Daemon,
    vip: &str,
    addr: &str,
    want: &str,
    limit: Duration,
) -> (BackendReport, u64) {
    let deadline = Instant::now() + limit;
    loop {
        let b = report(d, vip, addr);
        if b.health == want {
            let at = b.last_change_ms.expect("a change time");
            return (b, at);
        }
        assert!(
            Instant::now() < deadline,
            "{addr} of {vip} not {want} within {limit:?}: {b:?}\nhola's log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Breaks backend 1 of `vip` with `fault`, checks it is marked down in
/// time with `reason` in its last check, `hola backend list` and `hola
/// events`, that the other backend and the other VIP stay up, then undoes
/// the fault with `repair` and checks it comes back.
#[allow(clippy::too_many_arguments)]
fn fault_is_seen(
    lab: &mut ThroughLab,
    d: &Daemon,
    f: Fam,
    vip: &str,
    other_vip: &str,
    fault: impl FnOnce(&mut ThroughLab),
    reason: &str,
    repair: impl FnOnce(&mut ThroughLab),
) {
    let b1 = f.backend(1);
    let b2 = f.backend(2);
    for v in [vip, other_vip] {
        for b in [&b1, &b2] {
            let r = report(d, v, b);
            assert_eq!(r.health, "up", "{b} of {v} before the fault: {r:?}");
            let last = r.last_check.expect("a check has run");
            assert!(last.ok, "{b} of {v} passes through the VIP: {last:?}");
        }
    }
    let broken_at = now_ms();
    fault(lab);
    println!("{vip}: the fault took {} ms to make", now_ms() - broken_at);
    let (r, down_at) = wait_health(d, vip, &b1, "down", Duration::from_secs(10));
    let took = down_at.saturating_sub(broken_at);
    let bound = FALL * INTERVAL_MS + DETECT_MS + SLACK_MS;
    println!("{vip}: {b1} marked down {took} ms after the fault (bound {bound} ms)");
    assert!(
        took <= bound,
        "marked down after {took} ms, more than {bound} ms"
    );
    let last = r.last_check.expect("the failed check");
    assert!(!last.ok);
    let want = format!(
        "no answer through the VIP {} (timeout after {TIMEOUT_MS}ms; {reason}); \
         the check to {} itself passes (HTTP 200)",
        at80(vip),
        at80(&b1)
    );
    assert_eq!(last.detail, want, "the reason in the stats");
    let list = d.ok(&["backend", "list", &format!("{}/tcp", at80(vip))]);
    assert!(
        list.contains(&want),
        "hola backend list shows the reason: {list}"
    );
    let events = d.ok(&["events"]);
    assert!(
        events.contains(&format!("{b1} down")) && events.contains(reason),
        "hola events has the change and its reason: {events}"
    );
    for (v, b) in [(vip, &b2), (other_vip, &b1), (other_vip, &b2)] {
        assert_eq!(report(d, v, b).health, "up", "{b} of {v} stays up");
    }

    // Timed from when the repair is done: re-attaching decap loads the
    // program first, and the backend is whole only once it is attached.
    repair(lab);
    let repaired_at = now_ms();
    let (r, up_at) = wait_health(d, vip, &b1, "up", Duration::from_secs(10));
    let took = up_at.saturating_sub(repaired_at);
    let bound = RISE * INTERVAL_MS + INTERVAL_MS / 10 + SLACK_MS;
    println!("{vip}: {b1} up again {took} ms after the repair (bound {bound} ms)");
    assert!(took <= bound, "up after {took} ms, more than {bound} ms");
    assert_eq!(
        r.last_check.map(|p| (p.ok, p.detail)),
        Some((true, "HTTP 200".to_string()))
    );
}

#[test]
fn a_dsr_backend_without_the_vip_and_a_tunnel_backend_without_decap_are_marked_down() {
    require_root();
    faults_are_seen("thv", V4);
}

/// The same through IPv6 VIPs: their probes leave by the balancer's
/// interface toward hola's link-local next hop, where `hola_probe` takes
/// them (`health::through`).
#[test]
fn the_same_through_ipv6_vips() {
    require_root();
    faults_are_seen("thv6", V6);
}

/// HTTP servers answering 200 on `[::]:80` in each backend's namespace
/// (the lab's `Servers` listen on IPv4 only); they stop when dropped.
struct Http6 {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Http6 {
    fn start(lab: &ThroughLab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (1..=2)
            .map(|i| {
                let st = stop.clone();
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                let h = spawn_in_ns(&lab.t.ns(&backend(i).0), move || {
                    let l = TcpListener::bind("[::]:80").expect("bind [::]:80");
                    l.set_nonblocking(true).expect("nonblocking");
                    let _ = ready_tx.send(());
                    while !st.load(Ordering::Relaxed) {
                        match l.accept() {
                            Ok((mut c, _)) => {
                                c.set_nonblocking(false).expect("blocking");
                                c.set_read_timeout(Some(Duration::from_secs(2)))
                                    .expect("timeout");
                                let mut buf = [0u8; 1024];
                                if matches!(c.read(&mut buf), Ok(n) if n > 0) {
                                    let _ = c.write_all(
                                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
                                    );
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(1))
                            }
                            Err(e) => panic!("accept: {e}"),
                        }
                    }
                });
                ready_rx
                    .recv_timeout(Duration::from_secs(5))
                    .expect("server listening");
                h
            })
            .collect();
        Http6 { stop, threads }
    }
}

impl Drop for Http6 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// The dsr fault (VIP off b1's loopback) and the tunnel fault (b1's decap
/// detached), each seen and undone; then `hola down` removes the probes'
/// routing.
fn faults_are_seen(name: &str, f: Fam) {
    let mut lab = ThroughLab::new(name, f);
    let (_servers, _http6) = match f.family {
        Family::V4 => (
            Some(Servers::start_on(
                (1..=2).map(|i| lab.t.ns(&backend(i).0)).collect(),
            )),
            None,
        ),
        Family::V6 => (None, Some(Http6::start(&lab))),
    };
    let mut d = Daemon::start(name, &lab.t.ns(BALANCER), &config(f));
    // Every check has passed at least once.
    std::thread::sleep(Duration::from_millis(3 * INTERVAL_MS));
    let b1 = f.backend(1);
    let (dsr, tun) = (f.dsr_vip, f.tun_vip);

    let vip_on_lo = f.host(dsr);
    fault_is_seen(
        &mut lab,
        &d,
        f,
        dsr,
        tun,
        |lab| drop(lab.t.ip("b1", &["addr", "del", &vip_on_lo, "dev", "lo"])),
        &format!("dsr: is {dsr} on {b1}'s loopback?"),
        |lab| drop(lab.t.ip("b1", &["addr", "add", &vip_on_lo, "dev", "lo"])),
    );

    fault_is_seen(
        &mut lab,
        &d,
        f,
        tun,
        dsr,
        |lab| drop(lab.decap.remove(&1)),
        &format!("tunnel: is hola-decap attached on {b1}?"),
        |lab| {
            let e = ThroughLab::decap_on(&lab.t, 1);
            lab.decap.insert(1, e);
        },
    );

    // `hola down` removes the probes' routing rule and table with the pins.
    let table = lb_userspace::health::through::PROBE_TABLE.to_string();
    let v6 = if f.family == Family::V6 { "-6" } else { "-4" };
    let rules = |lab: &ThroughLab| lab.t.ip(BALANCER, &[v6, "rule", "show"]);
    let routes = |lab: &ThroughLab| lab.t.ip(BALANCER, &[v6, "route", "show", "table", &table]);
    let gateway = lb_userspace::health::through::PROBE_GATEWAY_V6.to_string();
    let neighbour = |lab: &ThroughLab| lab.t.ip(BALANCER, &["-6", "neigh", "show", &gateway]);
    let (route_there, route_gone) = match f.family {
        Family::V4 => (
            "default dev lo".to_string(),
            format!("removed the route `default dev lo table {table}`"),
        ),
        Family::V6 => (
            format!("default via {gateway} dev eth0"),
            format!("removed the route `default via {gateway} table {table}`"),
        ),
    };
    if f.family == Family::V6 {
        assert!(
            neighbour(&lab).contains("PERMANENT"),
            "the next hop's neighbour while hola runs: {}",
            neighbour(&lab)
        );
    }
    assert!(
        rules(&lab).contains(&format!("lookup {table}")),
        "the rule while hola runs: {}",
        rules(&lab)
    );
    assert!(
        routes(&lab).contains(&route_there),
        "the route while hola runs: {}",
        routes(&lab)
    );
    let down = d.down();
    let said = String::from_utf8_lossy(&down.stdout);
    assert!(
        down.status.success(),
        "hola down: {said}{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(
        said.contains("removed the probe rule") && said.contains(&route_gone),
        "hola down says what it removed: {said}"
    );
    assert!(
        !rules(&lab).contains(&format!("lookup {table}")),
        "no rule after hola down: {}",
        rules(&lab)
    );
    assert_eq!(
        routes(&lab).trim(),
        "",
        "no route in table {table} after hola down"
    );
    assert_eq!(
        neighbour(&lab).trim(),
        "",
        "no neighbour {gateway} after hola down"
    );
}
