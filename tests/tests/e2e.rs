//! End-to-end tests of the `hola` daemon: the real binary in the balancer's
//! namespace, real HTTP servers on three backends, real TCP connections from
//! the client, the CLI as an operator uses it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::Daemon,
    fixture::require_root,
    netns::{in_ns, ns_cmd, spawn_in_ns},
    topo::{DSR_VIP, Lab, Servers, http_get},
};

const VIP: &str = "198.18.1.1:80/tcp";

fn config(weights: &[u32]) -> String {
    let mut c = String::from(
        r#"[global]
interfaces = ["eth0"]
control_socket = "@DIR@/hola.sock"
state_file = "@DIR@/state.toml"
bpffs_dir = "@BPFFS@"
metrics_address = "127.0.0.1:9464"
flow_capacity_per_cpu = 65536

[[vip]]
address = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "dsr"
"#,
    );
    for (i, w) in weights.iter().enumerate() {
        c += &format!(
            "\n[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = {w}\n",
            11 + i
        );
    }
    c
}

/// `n` new connections with one GET each from the client; the answers by
/// backend name, and how many failed.
fn requests(lab: &Lab, n: usize, pace: Duration) -> (BTreeMap<String, u64>, u64) {
    in_ns(&lab.t.ns("cl"), move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let mut by = BTreeMap::new();
        let mut failed = 0;
        for _ in 0..n {
            assert!(Instant::now() < deadline, "request loop ran out of time");
            let r = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                http_get(&mut c)
            });
            match r {
                Ok(name) => *by.entry(name).or_default() += 1,
                Err(_) => failed += 1,
            }
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
        }
        (by, failed)
    })
}

fn client_counter(lab: &Lab) {
    let ns = lab.t.ns("cl");
    for r in [
        "add table inet hola_test",
        "add chain inet hola_test out { type filter hook output priority 0 ; }",
        &format!("add rule inet hola_test out ip daddr {DSR_VIP} tcp dport 80 counter"),
    ] {
        ns_cmd(&ns, "nft", &[r]);
    }
}

fn client_packets(lab: &Lab) -> u64 {
    let out = ns_cmd(
        &lab.t.ns("cl"),
        "nft",
        &["list", "chain", "inet", "hola_test", "out"],
    );
    let l = out
        .lines()
        .find(|l| l.contains("counter packets"))
        .expect("counter rule");
    l.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("packet count")
}

#[test]
fn weights_1_1_2_spread_2000_connections_and_stats_are_exact() {
    require_root();
    let lab = Lab::new("he2w", 3);
    let servers = Servers::start(&lab);
    let d = Daemon::start("weights", &lab.t.ns("lb"), &config(&[1, 1, 2]));
    client_counter(&lab);
    let (by, failed) = requests(&lab, 2000, Duration::ZERO);
    assert_eq!(failed, 0, "failed requests");
    std::thread::sleep(Duration::from_millis(500));
    let total: u64 = by.values().sum();
    println!("answers by backend: {by:?}");
    for (name, share) in [("b1", 0.25), ("b2", 0.25), ("b3", 0.5)] {
        let got = by.get(name).copied().unwrap_or(0) as f64 / total as f64;
        assert!(
            (got - share).abs() <= 0.05,
            "{name}: {:.1}% of connections, expected {:.0}% ± 5 points",
            got * 100.0,
            share * 100.0
        );
    }

    let s = d.stats();
    let v = s.vips.iter().find(|v| v.vip == VIP).expect("VIP in stats");
    assert_eq!(v.new_flows, 2000, "new flows counted");
    assert_eq!(
        v.packets,
        client_packets(&lab),
        "packets counted vs packets the client sent"
    );
    let served = servers.counts();
    for b in &v.backends {
        let name = format!(
            "b{}",
            b.address
                .rsplit('.')
                .next()
                .and_then(|x| x.parse::<u32>().ok())
                .expect("address")
                - 10
        );
        let srv = served
            .get(&(name.clone(), DSR_VIP.parse::<IpAddr>().expect("vip")))
            .copied()
            .unwrap_or(0);
        assert_eq!(
            b.new_flows, srv,
            "{name}: new flows counted vs connections it accepted"
        );
        assert_eq!(b.state, "active");
    }

    // The JSON validates against the schema in docs/stats.md.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/stats.md"))
        .expect("docs/stats.md");
    let schema_text = doc
        .split("```json schema")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a ```json schema block in docs/stats.md");
    let schema: serde_json::Value = serde_json::from_str(schema_text).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let json: serde_json::Value = serde_json::from_str(&d.ok(&["stats", "--json"])).expect("JSON");
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "stats JSON does not match docs/stats.md: {errors:#?}"
    );

    // /metrics, scraped from the balancer's namespace and parsed.
    let metrics = in_ns(&lab.t.ns("lb"), || {
        use std::io::{Read as _, Write as _};
        let mut c = TcpStream::connect("127.0.0.1:9464").expect("metrics listener");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut out = String::new();
        c.read_to_string(&mut out).expect("read");
        out
    });
    let (head, body) = metrics.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(name.to_string(), value);
    }
    assert_eq!(
        samples.get(&format!("hola_vip_new_flows_total{{vip=\"{VIP}\"}}")),
        Some(&2000.0),
        "{body}"
    );
    assert_eq!(
        samples.get(&format!(
            "hola_backend_weight{{vip=\"{VIP}\",backend=\"198.18.0.13\"}}"
        )),
        Some(&2.0),
        "{body}"
    );
    drop(servers);
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    require_root();
    let lab = Lab::new("he2b", 3);
    let d = Daemon::start("badinput", &lab.t.ns("lb"), &config(&[1, 1, 2]));
    let before = d.ok(&["config", "dump"]);

    let bad_file = d.dir.join("bad.toml");
    std::fs::write(
        &bad_file,
        "[global]\ninterfaces = [\"eth0\"]\nbogus_key = 1\n",
    )
    .expect("write");
    let o = d.cli(&["check-config", bad_file.to_str().expect("utf-8")]);
    assert!(!o.status.success(), "check-config accepted a bad file");
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        msg.contains("bad.toml") && msg.contains("bogus_key"),
        "message names the file and the key: {msg}"
    );

    let cases: [(&[&str], &str); 6] = [
        (
            &["backend", "add", "198.18.9.9:80/tcp", "198.18.0.14"],
            "does not exist",
        ),
        (&["backend", "add", VIP, "198.18.0.300"], "invalid"),
        (
            &["backend", "set-weight", VIP, "198.18.0.11", "70000"],
            "weight",
        ),
        (&["backend", "add", VIP, "198.18.0.11"], "already"),
        (&["backend", "add", VIP, "2001:db8::11"], "must be ipv4"),
        (&["vip", "del", "198.18.1.1:81/tcp"], "does not exist"),
    ];
    for (args, needle) in cases {
        let o = d.cli(args);
        let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
        assert!(!o.status.success(), "hola {} succeeded", args.join(" "));
        assert!(
            err.contains(needle),
            "hola {}: message {err:?} should mention {needle:?}",
            args.join(" ")
        );
        assert_eq!(
            d.ok(&["config", "dump"]),
            before,
            "hola {} changed the configuration",
            args.join(" ")
        );
    }
    // The documented example is a configuration check-config accepts.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/hola.example.toml");
    let out = d.ok(&["check-config", example]);
    assert!(out.contains(": ok ("), "{out}");
    // `hola flow` says where a new flow would go, and why.
    let out = d.ok(&["flow", "198.18.0.1:40000", "198.18.1.1:80"]);
    assert!(
        out.contains("goes to 198.18.0.1") && out.contains("Maglev slot"),
        "{out}"
    );
    let o = d.cli(&["flow", "198.18.0.1:40000", "198.18.1.9:80"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no VIP"));
    // The dump is a configuration check-config accepts.
    let dump = d.dir.join("dump.toml");
    std::fs::write(&dump, &before).expect("write");
    d.ok(&["check-config", dump.to_str().expect("utf-8")]);
}

#[test]
fn sigkill_and_restart_under_load_loses_no_request_and_no_counter() {
    require_root();
    let lab = Lab::new("he2r", 3);
    let _servers = Servers::start(&lab);
    let mut d = Daemon::start("restart", &lab.t.ns("lb"), &config(&[1, 1, 2]));
    // Warm up, then keep a loop of 1,000 requests going while the daemon is
    // killed and started again.
    let (_, failed) = requests(&lab, 100, Duration::ZERO);
    assert_eq!(failed, 0);
    let before = d.stats();
    let cl = lab.t.ns("cl");
    let looping = spawn_in_ns(&cl, move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let mut failed = 0u64;
        for _ in 0..1000 {
            let r = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                http_get(&mut c)
            });
            if r.is_err() {
                failed += 1;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        failed
    });
    std::thread::sleep(Duration::from_millis(500));
    d.kill(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    d.spawn();
    let failed = looping.join().expect("request loop");
    println!("failed requests across the restart: {failed}");
    assert_eq!(
        failed, 0,
        "requests failed while the daemon was killed and restarted"
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = d.stats();
    let (b, a) = (&before.vips[0], &after.vips[0]);
    assert_eq!(
        a.new_flows,
        b.new_flows + 1000,
        "counters continue from where they were"
    );
    assert!(a.packets > b.packets);
    assert!(
        d.log().contains("existing link"),
        "the restarted daemon adopted the pinned link:\n{}",
        d.log()
    );

    // hola down leaves nothing behind.
    let o = d.down();
    assert!(
        o.status.success(),
        "hola down: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !d.bpffs.exists(),
        "{} still exists after hola down",
        d.bpffs.display()
    );
    let link = lab.t.ip("lb", &["-d", "link", "show", "eth0"]);
    assert!(
        !link.contains("xdp"),
        "an XDP program is still attached after hola down:\n{link}"
    );
}

/// `n` keep-alive connections from the client, one GET each: the streams
/// and the backend each answered from.
fn open_long_lived(lab: &Lab, n: usize) -> Vec<(TcpStream, String)> {
    in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        (0..n)
            .map(|i| {
                let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("long-lived connection {i}: {e}"));
                c.set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let name = http_get(&mut c)
                    .unwrap_or_else(|e| panic!("first request on connection {i}: {e}"));
                (c, name)
            })
            .collect()
    })
}

/// Another request on every connection: each must answer, from the same
/// backend as before. Returns how many broke.
fn still_working(conns: &mut [(TcpStream, String)]) -> usize {
    let mut broken = 0;
    for (c, name) in conns.iter_mut() {
        if !matches!(http_get(c), Ok(n) if n == *name) {
            broken += 1;
        }
    }
    broken
}

#[test]
fn backend_add_keeps_50_long_lived_connections_and_takes_new_ones() {
    require_root();
    let lab = Lab::new("he2a", 3);
    let _servers = Servers::start(&lab);
    let d = Daemon::start("add", &lab.t.ns("lb"), &config(&[1, 1]));
    let mut conns = open_long_lived(&lab, 50);
    d.ok(&["backend", "add", VIP, "198.18.0.13", "--weight", "1"]);
    assert_eq!(
        still_working(&mut conns),
        0,
        "long-lived connections broken by adding a backend"
    );
    let (by, failed) = requests(&lab, 300, Duration::ZERO);
    assert_eq!(failed, 0);
    println!("new connections after the add: {by:?}");
    let b3 = by.get("b3").copied().unwrap_or(0);
    assert!(
        (50..=150).contains(&b3),
        "the new backend should take about a third of 300 new connections, took {b3}"
    );
    assert_eq!(
        still_working(&mut conns),
        0,
        "long-lived connections after more traffic"
    );
    assert!(
        d.ok(&["config", "dump"]).contains("198.18.0.13"),
        "the change is persisted"
    );
}

#[test]
fn drain_keeps_established_connections_and_takes_no_new_ones() {
    require_root();
    let lab = Lab::new("he2d", 3);
    let _servers = Servers::start(&lab);
    let d = Daemon::start("drain", &lab.t.ns("lb"), &config(&[1, 1, 1]));
    let mut conns = open_long_lived(&lab, 30);
    let on_b1 = conns.iter().filter(|(_, n)| n == "b1").count();
    assert!(on_b1 > 0, "some long-lived connections on b1 to begin with");
    d.ok(&["backend", "drain", VIP, "198.18.0.11"]);
    let s = d.stats();
    let b1 = s.vips[0]
        .backends
        .iter()
        .find(|b| b.address == "198.18.0.11")
        .expect("b1");
    assert_eq!(
        (b1.state.as_str(), b1.effective_weight, b1.weight),
        ("draining", 0, 1)
    );
    let (by, failed) = requests(&lab, 300, Duration::ZERO);
    assert_eq!(failed, 0);
    assert_eq!(
        by.get("b1"),
        None,
        "no new connection reaches the drained backend: {by:?}"
    );
    assert_eq!(
        still_working(&mut conns),
        0,
        "established connections complete on the drained backend"
    );
    d.ok(&["backend", "undrain", VIP, "198.18.0.11"]);
    let (by, _) = requests(&lab, 300, Duration::ZERO);
    assert!(
        by.get("b1").copied().unwrap_or(0) > 50,
        "undrained backend takes new flows again: {by:?}"
    );
}
