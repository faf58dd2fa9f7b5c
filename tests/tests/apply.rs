//! `hola apply` and SIGHUP in the lab: long-lived keep-alive connections
//! from the client to dsr VIPs, a dry run that says which share of them a
//! file would move, the file applied, and each connection asked again:
//! the share that now fails or answers from another backend must be the
//! one the dry run printed, within one percentage point. A file with an
//! error changes nothing, by `hola apply` or by SIGHUP, and the error
//! names the file, the line and the fix.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::{Daemon, GLOBAL},
    fixture::require_root,
    netns::in_ns,
    topo::{DSR_VIP, Lab, Servers, TUN_VIP, http_get},
};

/// Connections held open per phase: one flow is a third of a percentage
/// point, so the one-point bound allows a mismatch of at most three flows.
const FLOWS: usize = 300;

/// One `[[vip]]` in dsr mode on `addr:port` with an HTTP health check,
/// backends 198.18.0.(10 + i) for each (i, weight).
fn vip(addr: &str, port: u16, backends: &[(usize, u32)]) -> String {
    let mut c = format!(
        "\n[[vip]]\naddress = \"{addr}\"\nport = {port}\nprotocol = \"tcp\"\nmode = \"dsr\"\n\n\
         [vip.health]\ntype = \"http\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nfall = 2\n\
         rise = 2\npath = \"/\"\n"
    );
    for (i, w) in backends {
        c += &format!(
            "\n[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = {w}\n",
            10 + i
        );
    }
    c
}

/// A whole configuration file for the daemon `d` (its own paths).
fn file_for(d: &Daemon, vips: &str) -> String {
    format!("{GLOBAL}{vips}")
        .replace("@DIR@", &d.dir.display().to_string())
        .replace("@BPFFS@", &d.bpffs.display().to_string())
}

/// `FLOWS` keep-alive connections from the client to `vip`, each having
/// answered one request: (connection, the backend that answered).
fn open(lab: &Lab, vip: SocketAddr) -> Vec<(TcpStream, String)> {
    in_ns(&lab.t.ns("cl"), move || {
        (0..FLOWS)
            .map(|i| {
                let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connection {i} to {vip}: {e}"));
                c.set_read_timeout(Some(Duration::from_secs(1)))
                    .expect("timeout");
                let who = http_get(&mut c).unwrap_or_else(|e| panic!("request {i}: {e}"));
                (c, who)
            })
            .collect()
    })
}

/// Asks every connection again: the percentage that moved (failed, or
/// answered by another backend than before), and the backends that lost
/// connections.
fn moved_share(conns: &mut [(TcpStream, String)]) -> (f64, Vec<String>) {
    let mut moved = 0;
    let mut lost: Vec<String> = Vec::new();
    for (c, before) in conns.iter_mut() {
        match http_get(c) {
            Ok(now) if now == *before => {}
            _ => {
                moved += 1;
                lost.push(before.clone());
            }
        }
    }
    lost.sort();
    lost.dedup();
    (moved as f64 * 100.0 / conns.len() as f64, lost)
}

/// The dry run's figures for `vip`: (printed flow share, flows counted).
fn predicted(report: &serde_json::Value, vip: &str) -> (f64, u64) {
    let m = report["moves"]
        .as_array()
        .expect("moves")
        .iter()
        .find(|m| m["vip"] == vip)
        .unwrap_or_else(|| panic!("no moves for {vip} in {report:#}"));
    let (flows, moved) = (
        m["flows"].as_u64().expect("flows"),
        m["flows_moved"].as_u64().expect("moved"),
    );
    (moved as f64 * 100.0 / flows as f64, flows)
}

fn dump(d: &Daemon) -> String {
    d.ok(&["config", "dump"])
}

/// The running VIPs: (VIP, [(backend, weight)]).
fn vips(d: &Daemon) -> Vec<(String, Vec<(String, u32)>)> {
    let c = lb_userspace::config::parse(&dump(d), "dump").expect("the dump parses");
    let mut v: Vec<_> = c
        .vips
        .iter()
        .map(|v| {
            let b = v.backends.iter();
            (
                v.key().to_string(),
                b.map(|b| (b.address.to_string(), b.weight)).collect(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn apply_and_sighup_move_the_share_of_flows_the_dry_run_printed() {
    require_root();
    let t0 = Instant::now();
    let lab = Lab::new("ap1", 4);
    let _servers = Servers::start(&lab);
    let all4 = [(1, 1), (2, 1), (3, 1), (4, 1)];
    let mut d = Daemon::start(
        "ap1",
        &lab.t.ns("lb"),
        &format!("{GLOBAL}{}", vip(DSR_VIP, 80, &all4)),
    );

    // hola apply: adds VIP .2:80, removes b4 from .1:80, b1's weight 1 → 2.
    let mut conns = open(&lab, format!("{DSR_VIP}:80").parse().expect("vip"));
    let file_a = d.dir.join("a.toml");
    let a = file_for(
        &d,
        &(vip(DSR_VIP, 80, &[(1, 2), (2, 1), (3, 1)]) + &vip(TUN_VIP, 80, &all4)),
    );
    std::fs::write(&file_a, &a).expect("write a.toml");
    let before = dump(&d);
    let text = d.ok(&["apply", "--dry-run", &file_a.display().to_string()]);
    println!("{text}");
    for needle in [
        "would apply (nothing changed)",
        "+ VIP 198.18.1.2:80/tcp",
        "- backend 198.18.0.14",
        "~ backend 198.18.0.11: weight 1 → 2",
        "VIP 198.18.1.1:80/tcp: ",
    ] {
        assert!(
            text.contains(needle),
            "the dry run says {needle:?}:\n{text}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&d.ok(&[
        "apply",
        "--dry-run",
        "--json",
        &file_a.display().to_string(),
    ]))
    .expect("JSON");
    assert_eq!(dump(&d), before, "a dry run changes nothing");
    let (share, flows) = predicted(&json, "198.18.1.1:80/tcp");
    assert_eq!(flows, FLOWS as u64, "the flow table holds our connections");
    let out = d.ok(&["apply", &file_a.display().to_string()]);
    assert!(out.contains(": applied: "), "{out}");
    let (actual, lost) = moved_share(&mut conns);
    println!("hola apply: dry run {share:.2}% of flows, moved {actual:.2}%, lost by {lost:?}");
    assert!(
        (share - actual).abs() <= 1.0,
        "the dry run said {share:.2}%, {actual:.2}% moved"
    );
    assert_eq!(lost, ["b4"], "only the removed backend's connections move");
    drop(conns);
    let four = |w: u32| {
        (11..=14)
            .map(|i| (format!("198.18.0.{i}"), if i == 12 { w } else { 1 }))
            .collect::<Vec<_>>()
    };
    let one_two_three = |w1: u32, w2: u32| {
        vec![
            ("198.18.0.11".to_string(), w1),
            ("198.18.0.12".to_string(), w2),
            ("198.18.0.13".to_string(), 1),
        ]
    };
    assert_eq!(
        vips(&d),
        [
            ("198.18.1.1:80/tcp".to_string(), one_two_three(2, 1)),
            ("198.18.1.2:80/tcp".to_string(), four(1)),
        ]
    );

    // SIGHUP: on the VIP just added, b4 removed and b2's weight 1 → 3; a
    // VIP added on port 8080.
    let mut conns = open(&lab, format!("{TUN_VIP}:80").parse().expect("vip"));
    let b = file_for(
        &d,
        &(vip(DSR_VIP, 80, &[(1, 2), (2, 1), (3, 1)])
            + &vip(TUN_VIP, 80, &[(1, 1), (2, 3), (3, 1)])
            + &vip(DSR_VIP, 8080, &[(1, 1), (2, 1)])),
    );
    std::fs::write(&d.config, &b).expect("write the configuration");
    let config = d.config.display().to_string();
    let json: serde_json::Value =
        serde_json::from_str(&d.ok(&["config", "diff", "--json", &config])).expect("JSON");
    let (share, flows) = predicted(&json, "198.18.1.2:80/tcp");
    assert_eq!(flows, FLOWS as u64);
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while vips(&d).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP applied nothing:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (actual, lost) = moved_share(&mut conns);
    println!("SIGHUP: dry run {share:.2}% of flows, moved {actual:.2}%, lost by {lost:?}");
    assert!(
        (share - actual).abs() <= 1.0,
        "the dry run said {share:.2}%, {actual:.2}% moved"
    );
    assert_eq!(lost, ["b4"]);
    assert_eq!(
        vips(&d),
        [
            ("198.18.1.1:80/tcp".to_string(), one_two_three(2, 1)),
            (
                "198.18.1.1:8080/tcp".to_string(),
                one_two_three(1, 1)[..2].to_vec()
            ),
            ("198.18.1.2:80/tcp".to_string(), one_two_three(1, 3)),
        ]
    );
    let log = d.log();
    assert!(
        log.contains(&format!("SIGHUP: applying {config}"))
            && log.contains(&format!("{config}: applied: "))
            && log.contains("VIP 198.18.1.2:80/tcp: "),
        "the log has the summary:\n{log}"
    );
    drop(conns);

    // A file with an error: nothing changes, the error names file, line
    // and fix; by hola apply, then by SIGHUP.
    let before = dump(&d);
    let bad = d.dir.join("bad.toml");
    let text = b.replace("weight = 3", "weight = -3");
    let line = text
        .lines()
        .position(|l| l == "weight = -3")
        .expect("the line")
        + 1;
    std::fs::write(&bad, &text).expect("write bad.toml");
    let o = d.cli(&["apply", &bad.display().to_string()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a file with an error is refused");
    let want = format!("{}:{line}: ", bad.display());
    for needle in [
        want.as_str(),
        "weight = -3: must be 0..=10000",
        "nothing was changed",
    ] {
        assert!(err.contains(needle), "the error says {needle:?}: {err}");
    }
    std::fs::write(&d.config, &text).expect("write the configuration");
    d.signal(libc::SIGHUP);
    let want = format!("{config}:{line}: ");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !d.log().contains("not applied, nothing was changed") {
        assert!(Instant::now() < deadline, "no error logged:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        d.log().contains(&want),
        "the log names {want}:\n{}",
        d.log()
    );
    assert_eq!(dump(&d), before, "nothing changed");
    // `hola down --config` reads the file: the good one back.
    std::fs::write(&d.config, &b).expect("write the configuration");
    let _ = d.down();
    println!("took {:?}", t0.elapsed());
}

/// A SIGHUP sent while `hola run` still loads its data plane (before the
/// handler that applies the file exists) neither ends hola nor is lost:
/// the file is applied once the daemon serves.
#[test]
fn sighup_while_loading_is_applied_once_serving() {
    require_root();
    let lab = Lab::new("ap3", 2);
    let _servers = Servers::start(&lab);
    let mut d = Daemon::start(
        "ap3",
        &lab.t.ns("lb"),
        &format!("{GLOBAL}{}", vip(DSR_VIP, 80, &[(1, 1), (2, 1)])),
    );
    // Stopped, then started again on a file that changes a weight; the
    // signal comes as soon as the new process catches it.
    d.kill(libc::SIGTERM);
    let changed = file_for(&d, &vip(DSR_VIP, 80, &[(1, 3), (2, 1)]));
    std::fs::write(&d.config, &changed).expect("write the configuration");
    d.spawn_signalled(Some(libc::SIGHUP));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d
        .log()
        .contains("SIGHUP came while the data plane was loading")
    {
        assert!(
            Instant::now() < deadline,
            "the early SIGHUP was not noted:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let want = vec![(
        format!("{DSR_VIP}:80/tcp"),
        vec![
            ("198.18.0.11".to_string(), 3),
            ("198.18.0.12".to_string(), 1),
        ],
    )];
    let deadline = Instant::now() + Duration::from_secs(10);
    while vips(&d) != want {
        assert!(
            Instant::now() < deadline,
            "the file was not applied: {:?}\n{}",
            vips(&d),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = d.down();
}
