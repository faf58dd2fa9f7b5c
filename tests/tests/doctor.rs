//! `hola doctor` and `hola top` against the lab: the real daemon in the
//! balancer's namespace, `hola-decap` on the backends, HTTP servers on
//! them. Doctor finds the lab all ok; each fault made in it (the VIP off a
//! backend's loopback, arp_ignore unset, decap detached, strict rp_filter
//! on the balancer, a backend's next hop unresolvable) is named with its
//! fix and a non-zero exit, and undone is ok again. Top's table, drawn to
//! ratatui's `TestBackend` from the daemon's stats, shows what
//! `hola stats --json` says.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::Ebpf;
use hola_tests::{
    daemon::{Daemon, GLOBAL, hola_bin},
    fixture::require_root,
    netns::{Topology, must, spawn_in_ns},
    topo::{DSR_VIP, Servers, attach, http_get},
};
use lb_userspace::{
    doctor::{Report, Status},
    programs,
    stats::{Event, StatsReport},
    top::{self, Keys, view},
};
use netlab::lab::{BALANCER, Family, LabSpec, SWITCH, backend, port};
use ratatui::{Terminal, backend::TestBackend};

const DSR: &str = "198.18.1.1:80/tcp";
const TUN: &str = "198.18.1.2:80/tcp";
/// The lab's links carry 20 bytes more than a client's 1500-byte packet:
/// the tunnel's outer header fits (doctor checks the balancer's side).
const MTU: &str = "1520";

/// The lab, built here rather than with `topo::Lab` so that each backend's
/// `hola-decap` can be detached and attached again.
struct DoctorLab {
    t: Topology,
    decap: BTreeMap<usize, Ebpf>,
    _peer: Ebpf,
}

impl DoctorLab {
    fn new(prefix: &str) -> Self {
        let t: Topology = must(netlab::lab::build(&LabSpec {
            prefix,
            client: "cl",
            backends: 2,
            families: &[Family::V4],
            vips: &[DSR_VIP, netlab::lab::TUNNEL_VIP_V4],
        }))
        .into();
        let mut hosts = vec![BALANCER.to_string()];
        hosts.extend((1..=2).map(|i| backend(i).0));
        for h in &hosts {
            t.ip(SWITCH, &["link", "set", "dev", &port(h), "mtu", MTU]);
            t.ip(h, &["link", "set", "dev", "eth0", "mtu", MTU]);
        }
        // Backends that hold a VIP on lo must not answer ARP for it.
        for i in 1..=2 {
            let b = backend(i).0;
            for kv in [
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
            ] {
                t.sysctl(&b, kv);
            }
        }
        let decap = (1..=2).map(|i| (i, Self::decap_on(&t, i))).collect();
        let peer: &'static str = port(BALANCER).leak();
        let _peer = attach(&t.ns(SWITCH), programs::BENCH, "bench_pass", peer);
        DoctorLab { t, decap, _peer }
    }

    fn decap_on(t: &Topology, i: usize) -> Ebpf {
        attach(&t.ns(&backend(i).0), programs::DECAP, "hola_decap", "eth0")
    }

    fn ns(&self, h: &str) -> String {
        self.t.ns(h)
    }
}

fn config() -> String {
    let mut c = GLOBAL.to_string();
    for (vip, mode) in [("198.18.1.1", "dsr"), ("198.18.1.2", "tunnel")] {
        c += &format!(
            "\n[[vip]]\naddress = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"{mode}\"\n"
        );
        for i in 1..=2 {
            c += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend(i).1);
        }
    }
    c
}

/// `hola doctor ARGS --json` in namespace `ns`: its exit code and report.
fn doctor(ns: &str, args: &[&str]) -> (i32, Report) {
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(hola_bin())
        .arg("doctor")
        .args(args)
        .arg("--json")
        .output()
        .expect("running hola doctor");
    let text = String::from_utf8_lossy(&o.stdout);
    let report: Report = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "hola doctor {args:?} printed no report ({e}): {text}{}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().expect("an exit code"), report)
}

/// Doctor finds nothing wrong: exit 0, every check ok.
fn all_ok(ns: &str, args: &[&str]) {
    let (code, r) = doctor(ns, args);
    let bad: Vec<_> = r.checks.iter().filter(|c| c.status != Status::Ok).collect();
    assert!(bad.is_empty(), "hola doctor {args:?} in {ns}: {bad:#?}");
    assert_eq!((code, r.status), (0, Status::Ok));
}

/// Doctor names exactly the check `name` as `status`, with a fix that says
/// `fix`, and exits with that status's code.
fn names_fault(ns: &str, args: &[&str], name: &str, status: Status, fix: &str) {
    let (code, r) = doctor(ns, args);
    let bad: Vec<_> = r.checks.iter().filter(|c| c.status != Status::Ok).collect();
    assert_eq!(
        bad.len(),
        1,
        "hola doctor {args:?}: expected only {name}: {bad:#?}"
    );
    assert_eq!((bad[0].name.as_str(), bad[0].status), (name, status));
    let f = bad[0].fix.as_deref().unwrap_or("");
    assert!(
        f.contains(fix),
        "the fix for {name} is {f:?}, without {fix:?}"
    );
    assert_eq!(code, i32::from(status.exit_code()));
    assert_ne!(code, 0);
}

/// Waits until the daemon has resolved every backend's next hop.
fn resolved(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = d.stats();
        if s.vips
            .iter()
            .flat_map(|v| &v.backends)
            .all(|b| b.nexthop_resolved)
        {
            return;
        }
        assert!(Instant::now() < deadline, "next hops unresolved: {s:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn doctor_finds_each_fault_of_the_lab_and_its_fix() {
    require_root();
    let mut lab = DoctorLab::new("hdoc");
    let _servers = Servers::start_on((1..=2).map(|i| lab.ns(&backend(i).0)).collect());
    let d = Daemon::start("doctor", &lab.ns(BALANCER), &config());
    resolved(&d);
    let cfg = d.config.display().to_string();
    let lb = lab.ns(BALANCER);
    let (b1, b2) = (lab.ns("b1"), lab.ns("b2"));
    let balancer: &[&str] = &["--config", &cfg];
    let dsr_b1: &[&str] = &["--backend", DSR, "--mode", "dsr"];
    let tun_b2: &[&str] = &["--backend", TUN, "--mode", "tunnel"];

    all_ok(&lb, balancer);
    all_ok(&b1, dsr_b1);
    all_ok(&b2, tun_b2);

    // No configuration to go by: the host is still checked (in a network
    // namespace without a program to go by, the JIT is unknown: a warning),
    // the file named, exit 2.
    let missing = d.dir.join("missing.toml").display().to_string();
    let (code, r) = doctor(&lb, &["--config", &missing]);
    let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["kernel", "bpf jit", "btf", "bpffs", "configuration"]
    );
    let c = &r.checks[4];
    assert_eq!(c.status, Status::Fail);
    assert!(c.saw.starts_with(&missing), "{c:?}");
    assert_eq!((code, r.status), (2, Status::Fail));

    // The VIP removed from a backend's loopback.
    lab.t
        .ip("b1", &["addr", "del", "198.18.1.1/32", "dev", "lo"]);
    names_fault(
        &b1,
        dsr_b1,
        "vip 198.18.1.1",
        Status::Fail,
        "ip addr add 198.18.1.1/32 dev lo",
    );
    lab.t
        .ip("b1", &["addr", "add", "198.18.1.1/32", "dev", "lo"]);
    all_ok(&b1, dsr_b1);

    // arp_ignore unset: the backend answers ARP for its VIP.
    lab.t.sysctl("b1", "net.ipv4.conf.all.arp_ignore=0");
    names_fault(&b1, dsr_b1, "arp_ignore eth0", Status::Fail, "arp_ignore=1");
    lab.t.sysctl("b1", "net.ipv4.conf.all.arp_ignore=1");
    all_ok(&b1, dsr_b1);

    // hola-decap detached from a tunnel backend.
    drop(lab.decap.remove(&2));
    names_fault(
        &b2,
        tun_b2,
        "decap",
        Status::Fail,
        "hola decap attach --iface eth0",
    );
    lab.decap.insert(2, DoctorLab::decap_on(&lab.t, 2));
    all_ok(&b2, tun_b2);

    // rp_filter strict on the balancer.
    lab.t.sysctl(BALANCER, "net.ipv4.conf.eth0.rp_filter=1");
    names_fault(
        &lb,
        balancer,
        "rp_filter eth0",
        Status::Warn,
        "net.ipv4.conf.eth0.rp_filter=2",
    );
    lab.t.sysctl(BALANCER, "net.ipv4.conf.eth0.rp_filter=0");
    all_ok(&lb, balancer);

    // A backend whose next hop cannot be resolved: nothing answers for it.
    d.ok(&["backend", "add", DSR, "198.18.0.99"]);
    names_fault(
        &lb,
        balancer,
        "next hop 198.18.0.99 (198.18.1.1:80/tcp)",
        Status::Fail,
        "ip neigh show 198.18.0.99",
    );
    d.ok(&["backend", "del", DSR, "198.18.0.99"]);
    all_ok(&lb, balancer);
}

/// Every row of a drawn table, as its words.
fn drawn(stats: &StatsReport, events: &[Event]) -> Vec<Vec<String>> {
    let mut t = Terminal::new(TestBackend::new(160, 20)).expect("test terminal");
    let s = top::term::screen(stats, events, &Keys::default());
    t.draw(|f| view::draw(f, &s)).expect("draw");
    let buf = t.backend().buffer().clone();
    (0..buf.area.height)
        .map(|y| {
            let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect();
            line.split_whitespace().map(str::to_owned).collect()
        })
        .collect()
}

/// What the table must show for `s`, computed from `hola stats --json`.
fn expected_rows(s: &StatsReport) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut vips: Vec<_> = s.vips.iter().collect();
    vips.sort_by(|a, b| a.vip.cmp(&b.vip));
    for v in vips {
        let up = v.backends.iter().filter(|b| b.health != "down").count();
        rows.push(vec![
            v.vip.clone(),
            v.mode.clone(),
            top::rate(v.rates.packets_per_second),
            top::rate(v.rates.bytes_per_second),
            top::rate(v.rates.new_flows_per_second),
            "-".into(),
            "-".into(),
            format!("{up}/{}", v.backends.len()),
            "up".into(),
        ]);
        let flows: f64 = v
            .backends
            .iter()
            .map(|b| b.rates.new_flows_per_second)
            .sum();
        let weights: u32 = v.backends.iter().map(|b| b.effective_weight).sum();
        let mut backends: Vec<_> = v.backends.iter().collect();
        backends.sort_by(|a, b| a.address.cmp(&b.address));
        for b in backends {
            rows.push(vec![
                b.address.clone(),
                b.state.clone(),
                top::rate(b.rates.packets_per_second),
                top::rate(b.rates.bytes_per_second),
                top::rate(b.rates.new_flows_per_second),
                top::percent((flows > 0.0).then(|| b.rates.new_flows_per_second / flows)),
                top::percent(Some(f64::from(b.effective_weight) / f64::from(weights))),
                b.health.clone(),
                "-".into(),
            ]);
        }
    }
    rows
}

#[test]
fn top_shows_what_stats_says() {
    require_root();
    let lab = DoctorLab::new("htop");
    let _servers = Servers::start_on((1..=2).map(|i| lab.ns(&backend(i).0)).collect());
    let d = Daemon::start("top", &lab.ns(BALANCER), &config());
    resolved(&d);
    // New connections to the dsr VIP, paced, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let load = spawn_in_ns(&lab.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ok = 0u64;
        while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
            let r = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                http_get(&mut c)
            });
            ok += u64::from(r.is_ok());
            std::thread::sleep(Duration::from_millis(20));
        }
        ok
    });
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Rates are over the daemon's last two samples: top's reading and the
    // CLI's agree when both fall between the same two samples, which the
    // interval shows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (seen, events, cli) = loop {
        assert!(
            Instant::now() < deadline,
            "no two readings with the same rates"
        );
        std::thread::sleep(Duration::from_millis(300));
        let (s, ev) = tokio
            .block_on(top::term::fetch(&d.socket))
            .expect("top's reading");
        let cli = d.stats();
        let busy = s.vips.iter().any(|v| v.rates.new_flows_per_second > 0.0);
        if busy && s.interval_seconds == cli.interval_seconds {
            break (s, ev, cli);
        }
    };
    stop.store(true, Ordering::Relaxed);
    assert!(
        load.join().expect("load thread") > 0,
        "no request was answered"
    );
    // No health check in this lab: no event, every last event is "-".
    assert_eq!(events, vec![]);
    let rows = drawn(&seen, &events);
    assert_eq!(
        rows[2],
        view::HEADER
            .iter()
            .flat_map(|h| h.split_whitespace())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    );
    let want = expected_rows(&cli);
    assert_eq!(want.len(), 6, "two VIPs of two backends each");
    assert_eq!(rows[3..3 + want.len()].to_vec(), want);
    // The dsr VIP's backends took new flows: their shares are figures.
    assert!(
        want[1][5].ends_with('%') && want[2][5].ends_with('%'),
        "{want:?}"
    );
}
