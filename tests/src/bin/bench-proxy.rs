//! `cargo xtask bench proxy`: HTTP requests through the balancer over real
//! TCP, hola against nftables DNAT and HAProxy, in the same run.
//!
//! The lab topology (`hola_tests::topo::Lab`: client, balancer and two
//! backends on one bridge) with the lab's HTTP server (`hola-backend`,
//! release build) on each backend. `wrk` in the client's namespace loads
//! each contender with keep-alive connections and then with a new
//! connection per request (`Connection: close`); contenders alternate
//! within each round. CPU time per request is the whole host's (every
//! namespace shares the two CPUs), read from /proc/stat around each
//! measurement; what a contender costs beyond the direct path is the
//! difference to `direct`. Writes target/bench/proxy.json and prints a table
//! (docs/benchmarks.md).

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::xdp::XdpMode;
use hola_tests::{
    bench::{machine, median},
    netns::{in_ns, ns_cmd},
    topo::{CLIENT, DSR_VIP, Lab, backend},
};
use lb_userspace::dataplane::{
    BackendSpec, Dataplane, DataplaneConfig, Mode, Nexthop, Proto, VipAddr, VipSpec,
};
use serde_json::{Value, json};

/// The balancer's address on the backends' second subnet (NAT contenders).
const GATEWAY: &str = "198.18.2.1";
const NAT_VIP: &str = "198.18.1.3";
const DNAT_VIP: &str = "198.18.1.5";
const HAPROXY_VIP: &str = "198.18.1.6";
const BACKENDS: usize = 2;

struct Args {
    rounds: usize,
    seconds: u32,
    connections: u32,
    out: String,
    smoke: bool,
}

fn args() -> Args {
    let mut a = Args {
        rounds: 3,
        seconds: 5,
        connections: 32,
        out: "target/bench/proxy.json".into(),
        smoke: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--rounds" => a.rounds = v().parse().expect("--rounds N"),
            "--seconds" => a.seconds = v().parse().expect("--seconds S (whole seconds)"),
            "--connections" => a.connections = v().parse().expect("--connections N"),
            "--out" => a.out = v(),
            "--smoke" => {
                a.rounds = 1;
                a.seconds = 1;
                a.smoke = true;
            }
            other => panic!(
                "unknown argument {other}; use --rounds N --seconds S --connections N --out FILE or --smoke"
            ),
        }
    }
    a
}

/// Backend `i` (1-based) on the NAT subnet, behind the balancer.
fn nat_addr(i: usize) -> String {
    format!("198.18.2.{}", 10 + i)
}

/// A program this benchmark runs, found on PATH, or a clear failure.
fn require_program(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "bench-proxy needs `{name}` (Debian package {package}); \
                 `cargo xtask setup` installs it"
            )
        })
}

/// The lab's HTTP server, built in this binary's profile (release under
/// `cargo xtask bench`), beside this binary.
fn backend_bin() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-q", "-p", "lab-backend"]);
    if !cfg!(debug_assertions) {
        build.arg("--release");
    }
    let status = build
        .status()
        .expect("running cargo build for hola-backend");
    assert!(status.success(), "cargo build -p lab-backend failed");
    let exe = std::env::current_exe().expect("own path");
    let bin = exe.parent().expect("target dir").join("hola-backend");
    assert!(
        bin.exists(),
        "{} not found after building it",
        bin.display()
    );
    bin
}

/// A child process killed (by its PID) and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_in(ns: &str, prog: &Path, args: &[&str]) -> Proc {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {} in {ns}: {e}", prog.display()));
    Proc(child)
}

/// Waits until `addr` accepts a TCP connection from namespace `ns`.
fn wait_listening(ns: &str, addr: SocketAddr, what: &str) {
    let ok = in_ns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    assert!(
        ok,
        "{what} did not accept connections on {addr} within 10 s"
    );
}

/// What runs on the balancer for one contender; dropping it takes it away.
#[allow(dead_code)] // held, never read: dropping detaches or stops it
enum Contender {
    Direct,
    Hola(Box<Dataplane>),
    /// The nftables table `hbp` in the named namespace.
    Nft(String),
    Haproxy(Proc, PathBuf),
}

impl Drop for Contender {
    fn drop(&mut self) {
        if let Contender::Nft(ns) = self {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "delete", "table", "ip", "hbp"])
                .output();
        }
    }
}

const CONTENDERS: [(&str, &str); 5] = [
    ("direct", "no balancer: wrk to one backend's address"),
    (
        "hola_dsr",
        "hola, dsr (XDP_TX to the backend, replies direct)",
    ),
    (
        "hola_nat",
        "hola, nat (both directions translated in XDP, the balancer is the backends' gateway)",
    ),
    (
        "nft_dnat",
        "nftables DNAT with conntrack (jhash over the backends), kernel forwarding",
    ),
    (
        "haproxy",
        "HAProxy mode tcp, roundrobin, one thread pinned to the last CPU",
    ),
];

/// Where the client sends requests for each contender.
fn target(name: &str) -> String {
    match name {
        "direct" => backend(1).1,
        "hola_dsr" => DSR_VIP.into(),
        "hola_nat" => NAT_VIP.into(),
        "nft_dnat" => DNAT_VIP.into(),
        "haproxy" => HAPROXY_VIP.into(),
        other => unreachable!("contender {other}"),
    }
}

struct Setup<'a> {
    lab: &'a Lab,
    haproxy: PathBuf,
    dir: PathBuf,
    ncpus: usize,
}

impl Setup<'_> {
    fn make(&self, name: &str) -> Contender {
        let t = &self.lab.t;
        let lb_ns = t.ns("lb");
        match name {
            "direct" => Contender::Direct,
            "hola_dsr" | "hola_nat" => {
                let lb_mac = t.mac("lb", "eth0");
                let (mode, vip, addrs) = if name == "hola_dsr" {
                    let a: Vec<String> = (1..=BACKENDS).map(|i| backend(i).1).collect();
                    (Mode::Dsr, DSR_VIP, a)
                } else {
                    (Mode::Nat, NAT_VIP, (1..=BACKENDS).map(nat_addr).collect())
                };
                let bs: Vec<BackendSpec> = addrs
                    .iter()
                    .enumerate()
                    .map(|(i, a)| BackendSpec {
                        addr: a.parse().expect("backend address"),
                        weight: 1,
                        up: true,
                        port: 0,
                        nexthop: Some(Nexthop {
                            dmac: t.mac(&backend(i + 1).0, "eth0"),
                            smac: lb_mac,
                            ifindex: 0,
                        }),
                        server_id: 0,
                    })
                    .collect();
                let vip = VipAddr {
                    addr: vip.parse().expect("vip"),
                    port: 80,
                    proto: Proto::Tcp,
                };
                in_ns(&lb_ns, move || {
                    let mut dp = Dataplane::load(DataplaneConfig {
                        flow_capacity_per_cpu: 65_536,
                        nat_capacity: 262_144,
                        ..Default::default()
                    })
                    .expect("loading the balancer");
                    dp.add_vip(VipSpec {
                        vip,
                        mode,
                        src_hash: false,
                        table_size: 65_537,
                        quic: false,
                    })
                    .expect("VIP");
                    dp.set_backends(&vip, &bs).expect("backends");
                    dp.attach("eth0", XdpMode::Driver).expect("attach hola");
                    Contender::Hola(Box::new(dp))
                })
            }
            "nft_dnat" => {
                let map: Vec<String> = (1..=BACKENDS)
                    .map(|i| format!("{} : {}", i - 1, nat_addr(i)))
                    .collect();
                let rules = format!(
                    "table ip hbp {{\n  chain pre {{\n    type nat hook prerouting priority dstnat;\n    \
                     ip daddr {DNAT_VIP} tcp dport 80 dnat to jhash ip saddr . tcp sport mod {BACKENDS} map {{ {} }}\n  \
                     }}\n}}\n",
                    map.join(", ")
                );
                let mut c = Command::new("ip")
                    .args(["netns", "exec", &lb_ns, "nft", "-f", "-"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("running nft");
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(rules.as_bytes())
                    .expect("writing the nft rules");
                let out = c.wait_with_output().expect("nft");
                assert!(
                    out.status.success(),
                    "nft -f: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Contender::Nft(lb_ns)
            }
            "haproxy" => {
                let servers: String = (1..=BACKENDS)
                    .map(|i| {
                        let (b, a) = backend(i);
                        format!("  server {b} {a}:80\n")
                    })
                    .collect();
                let cfg = format!(
                    "global\n  nbthread 1\n  maxconn 8000\n\n\
                     defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n\
                     frontend fe\n  bind {HAPROXY_VIP}:80\n  default_backend be\n\n\
                     backend be\n  balance roundrobin\n{servers}"
                );
                let path = self.dir.join("haproxy.cfg");
                std::fs::write(&path, cfg).expect("writing haproxy.cfg");
                let cpu = (self.ncpus - 1).to_string();
                let p = spawn_in(
                    &lb_ns,
                    Path::new("/usr/bin/taskset"),
                    &[
                        "-c",
                        &cpu,
                        &self.haproxy.display().to_string(),
                        "-db",
                        "-q",
                        "-f",
                        &path.display().to_string(),
                    ],
                );
                wait_listening(
                    &t.ns("cl"),
                    format!("{HAPROXY_VIP}:80").parse().expect("addr"),
                    "haproxy",
                );
                Contender::Haproxy(p, path)
            }
            other => unreachable!("contender {other}"),
        }
    }
}

/// Busy and softirq jiffies of the whole host, from /proc/stat.
fn host_cpu() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = s.lines().next().expect("cpu line");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().expect("jiffies"))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    (total - v[3] - v[4], v[6])
}

/// wrk's summary, printed by the `done` hook of our script as one JSON line.
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "HOLA_WRK {\"requests\":%d,\"duration_us\":%d,\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50_us\":%d,\"p99_us\":%d}\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#;

struct Measured {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    softirq_us: f64,
    errors: u64,
}

fn wrk(s: &Setup, name: &str, close: bool, seconds: u32, connections: u32) -> Measured {
    let script = s.dir.join("report.lua");
    let url = format!("http://{}/", target(name));
    let dur = format!("{seconds}s");
    let conns = connections.to_string();
    let cl = s.lab.t.ns("cl");
    let script = script.display().to_string();
    let mut args = vec![
        "netns",
        "exec",
        &cl,
        "wrk",
        "-t1",
        "-c",
        &conns,
        "-d",
        &dur,
        "--timeout",
        "2s",
        "-s",
        &script,
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let tck = clk_tck();
    let (busy0, soft0) = host_cpu();
    let out = Command::new("ip")
        .args(&args)
        .output()
        .expect("running wrk");
    let (busy1, soft1) = host_cpu();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk {url} failed: {}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("HOLA_WRK "))
        .unwrap_or_else(|| panic!("wrk printed no summary line:\n{text}"));
    let v: Value = serde_json::from_str(line).expect("wrk summary JSON");
    let n = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {line}"));
    let requests = n("requests");
    assert!(
        requests > 0.0,
        "no request through {name} completed ({url}):\n{text}"
    );
    let errors = ["connect", "read", "write", "status", "timeout"]
        .iter()
        .map(|k| n(k) as u64)
        .sum();
    let per_req = |j: u64| j as f64 * 1e6 / tck / requests;
    Measured {
        rps: requests / (n("duration_us") / 1e6),
        p50_us: n("p50_us"),
        p99_us: n("p99_us"),
        cpu_us: per_req(busy1 - busy0),
        softirq_us: per_req(soft1 - soft0),
        errors,
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn main() {
    let a = args();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "bench-proxy makes namespaces and loads XDP programs: run it as root"
    );
    require_program("wrk", "wrk");
    let haproxy = require_program("haproxy", "haproxy");
    let server = backend_bin();
    let ncpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = PathBuf::from("/tmp/hola-bench-proxy");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work directory");
    std::fs::write(dir.join("report.lua"), WRK_SCRIPT).expect("wrk script");

    let lab = Lab::new("hbp", BACKENDS);
    let t = &lab.t;
    // The NAT contenders' side: the balancer is the gateway of a second
    // subnet, and what the backends send from it goes back through the
    // balancer (policy routing by source, so that dsr replies, sent from
    // the VIP, still go straight to the client).
    t.ip(
        "lb",
        &["addr", "add", &format!("{GATEWAY}/24"), "dev", "eth0"],
    );
    for vip in [DNAT_VIP, HAPROXY_VIP] {
        t.ip("lb", &["addr", "add", &format!("{vip}/32"), "dev", "lo"]);
    }
    for kv in [
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.eth0.send_redirects=0",
        "net.ipv4.conf.all.rp_filter=0",
    ] {
        t.sysctl("lb", kv);
    }
    let mut servers = Vec::new();
    for i in 1..=BACKENDS {
        let (b, _) = backend(i);
        t.ip(
            &b,
            &["addr", "add", &format!("{}/24", nat_addr(i)), "dev", "eth0"],
        );
        t.ip(
            &b,
            &["rule", "add", "from", "198.18.2.0/24", "table", "100"],
        );
        t.ip(
            &b,
            &[
                "route",
                "add",
                &format!("{CLIENT}/32"),
                "via",
                GATEWAY,
                "table",
                "100",
            ],
        );
        // XDP moves these frames on: no checksum offload to finish them.
        ns_cmd(&t.ns(&b), "ethtool", &["-K", "eth0", "tx", "off"]);
        servers.push(spawn_in(
            &t.ns(&b),
            &server,
            &["--name", &b, "--listen", "0.0.0.0:80"],
        ));
    }
    for i in 1..=BACKENDS {
        wait_listening(
            &t.ns("cl"),
            format!("{}:80", backend(i).1).parse().expect("addr"),
            "hola-backend",
        );
    }
    let s = Setup {
        lab: &lab,
        haproxy,
        dir: dir.clone(),
        ncpus,
    };

    type Key = (String, &'static str);
    let mut results: BTreeMap<Key, Vec<Measured>> = BTreeMap::new();
    let modes = [("keepalive", false), ("close", true)];
    for round in 0..a.rounds {
        for (name, _) in CONTENDERS {
            let c = s.make(name);
            if !a.smoke {
                // Warm up (neighbours, caches, the backends' thread pools).
                wrk(&s, name, true, 1, a.connections);
            }
            for (mode, close) in modes {
                let m = wrk(&s, name, close, a.seconds, a.connections);
                eprintln!(
                    "round {round} {name:<9} {mode:<9}: {:>8.0} req/s  p50 {:>6.0} us  p99 {:>6.0} us  \
                     host CPU {:>5.1} us/req (softirq {:>4.1})  errors {}",
                    m.rps, m.p50_us, m.p99_us, m.cpu_us, m.softirq_us, m.errors
                );
                results.entry((name.to_string(), mode)).or_default().push(m);
            }
            drop(c);
        }
    }

    let med = |name: &str, mode: &str, f: &dyn Fn(&Measured) -> f64| -> f64 {
        let mut v: Vec<f64> = results[&(name.to_string(), mode)].iter().map(f).collect();
        median(&mut v)
    };
    println!(
        "{:<10} {:<10} {:>10} {:>8} {:>8} {:>12} {:>12} {:>10} {:>7}",
        "contender",
        "mode",
        "req/s",
        "p50 us",
        "p99 us",
        "CPU us/req",
        "over direct",
        "/ haproxy",
        "errors"
    );
    let mut rows = Vec::new();
    for (name, what) in CONTENDERS {
        for (mode, _) in modes {
            let rps = med(name, mode, &|m| m.rps);
            let cpu = med(name, mode, &|m| m.cpu_us);
            let over = cpu - med("direct", mode, &|m| m.cpu_us);
            let vs_haproxy = rps / med("haproxy", mode, &|m| m.rps);
            let errors: u64 = results[&(name.to_string(), mode)]
                .iter()
                .map(|m| m.errors)
                .sum();
            let (p50, p99) = (
                med(name, mode, &|m| m.p50_us),
                med(name, mode, &|m| m.p99_us),
            );
            println!(
                "{name:<10} {mode:<10} {rps:>10.0} {p50:>8.0} {p99:>8.0} {cpu:>12.1} {over:>12.1} {vs_haproxy:>10.2} {errors:>7}"
            );
            let rounds: Vec<Value> = results[&(name.to_string(), mode)]
                .iter()
                .map(|m| {
                    json!({"rps": m.rps, "p50_us": m.p50_us, "p99_us": m.p99_us,
                           "host_cpu_us_per_request": m.cpu_us,
                           "softirq_us_per_request": m.softirq_us, "errors": m.errors})
                })
                .collect();
            rows.push(json!({
                "contender": name, "what": what, "mode": mode,
                "median_rps": rps, "median_p50_us": p50, "median_p99_us": p99,
                "median_host_cpu_us_per_request": cpu,
                "host_cpu_us_per_request_over_direct": over,
                "rps_ratio_to_haproxy": vs_haproxy,
                "errors": errors, "rounds": rounds,
            }));
        }
    }
    let mut doc = machine();
    doc.insert("rounds".into(), a.rounds.into());
    doc.insert("seconds_per_measurement".into(), a.seconds.into());
    doc.insert("connections".into(), a.connections.into());
    doc.insert("backends".into(), BACKENDS.into());
    doc.insert("results".into(), rows.into());
    if let Some(parent) = Path::new(&a.out).parent() {
        std::fs::create_dir_all(parent).expect("create output directory");
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&doc).expect("json")).expect("write JSON");
    println!("written to {}", a.out);
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
}
