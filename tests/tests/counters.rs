//! Counters derived from the backends' (issue 15: one counter write per
//! forwarded packet), in the lab: real connections through the dsr VIP,
//! then a backend removed, the daemon killed (SIGKILL) and restarted, the
//! removed backend's id handed to a new backend (its counters folded into
//! `RETIRED`), more connections, a restart by SIGTERM, another removal and
//! another SIGKILL. The VIP's packets and bytes and the forwarding reasons
//! never change but by the traffic sent, and the VIP's packets are always
//! what its backends forwarded.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData};
use hola_tests::{
    daemon::{Daemon, GLOBAL},
    fixture::require_root,
    netns::spawn_in_ns,
    topo::{DSR_VIP, Lab, Servers, http_get},
};
use lb_common::RetiredStats;
use serde_json::Value;

const VIP: &str = "198.18.1.1:80/tcp";

/// Three backends, and room for only three: a backend added after a
/// removal takes the removed one's id.
fn config() -> String {
    let mut c = format!(
        "{GLOBAL}max_backends = 3\n\n[[vip]]\naddress = \"{DSR_VIP}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\n"
    );
    for i in 1..=3 {
        c += &format!(
            "\n[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = 1\n",
            10 + i
        );
    }
    c
}

/// `n` requests, each on a new connection; all must be answered.
fn requests(lab: &Lab, n: usize) {
    let h = spawn_in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut failed = Vec::new();
        for _ in 0..n {
            assert!(Instant::now() < deadline, "{n} requests within 30 s");
            let r =
                TcpStream::connect_timeout(&vip, Duration::from_millis(1000)).and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_millis(1000)))?;
                    http_get(&mut c)
                });
            if let Err(e) = r {
                failed.push(e.to_string());
            }
        }
        assert!(failed.is_empty(), "requests failed: {failed:?}");
    });
    h.join().expect("requests");
    // The clients' last ACKs and FINs of the closed connections.
    std::thread::sleep(Duration::from_millis(500));
}

/// The counters that only traffic to the VIP moves: the VIP's packets
/// and bytes, and the forwarding reasons' packets and bytes.
fn counters(d: &Daemon) -> Vec<(String, u64)> {
    let s: Value = serde_json::from_str(&d.ok(&["stats", "--json"])).expect("stats JSON");
    let mut out = Vec::new();
    for (name, r) in s["reasons"].as_object().expect("reasons") {
        if name.starts_with("fwd_") {
            for f in ["packets", "bytes"] {
                out.push((format!("{name}.{f}"), r[f].as_u64().expect("number")));
            }
        }
    }
    let vip = &s["vips"][0];
    for f in ["packets", "bytes", "new_flows", "no_backend"] {
        out.push((format!("vip.{f}"), vip[f].as_u64().expect("number")));
    }
    out
}

fn get(c: &[(String, u64)], name: &str) -> u64 {
    c.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
}

/// The VIP's packets equal its backends' while none was removed.
fn backends_sum(d: &Daemon) -> (u64, u64) {
    let s: Value = serde_json::from_str(&d.ok(&["stats", "--json"])).expect("stats JSON");
    let vip = &s["vips"][0];
    let sum = vip["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["packets"].as_u64().expect("number"))
        .sum();
    (vip["packets"].as_u64().expect("number"), sum)
}

#[test]
fn vip_and_reason_totals_survive_removal_restart_and_id_reuse() {
    require_root();
    let t0 = Instant::now();
    let lab = Lab::new("cnt", 3);
    let _servers = Servers::start(&lab);
    let mut d = Daemon::start("cnt", &lab.t.ns("lb"), &config());

    requests(&lab, 40);
    let (vip, sum) = backends_sum(&d);
    assert!(vip >= 40 * 3, "40 connections counted: {vip} packets");
    assert_eq!(vip, sum, "the VIP's packets are its backends'");
    let first = counters(&d);
    assert!(get(&first, "fwd_established.packets") > 0);

    // A backend removed: nothing derived changes.
    d.ok(&["backend", "del", VIP, "198.18.0.11"]);
    assert_eq!(counters(&d), first, "after removing a backend");

    // Killed and started again: the next daemon adopts the marker.
    d.kill(libc::SIGKILL);
    d.spawn();
    assert_eq!(counters(&d), first, "after SIGKILL and a restart");

    // A backend added takes the removed one's id (three ids): its
    // counters are folded into RETIRED first.
    d.ok(&["backend", "add", VIP, "198.18.0.11"]);
    assert_eq!(counters(&d), first, "after the id was handed out again");
    let retired = retired(&d);
    assert!(
        retired.iter().any(|r| r.vip_packets > 0 && r.folding == 0),
        "the removed backend's counters are in RETIRED: {retired:?}"
    );

    // More traffic counts on from there.
    requests(&lab, 20);
    let second = counters(&d);
    for (name, was) in &first {
        assert!(get(&second, name) >= *was, "{name} went back");
    }
    assert!(get(&second, "vip.packets") >= get(&first, "vip.packets") + 20 * 3);
    assert_eq!(
        get(&second, "vip.packets") - get(&first, "vip.packets"),
        get(&second, "fwd_established.packets")
            + get(&second, "fwd_new_flow.packets")
            + get(&second, "fwd_syn.packets")
            - get(&first, "fwd_established.packets")
            - get(&first, "fwd_new_flow.packets")
            - get(&first, "fwd_syn.packets"),
        "every packet since was forwarded, under one of these reasons"
    );

    d.kill(libc::SIGTERM);
    d.spawn();
    assert_eq!(counters(&d), second, "after SIGTERM and a restart");
    d.ok(&["backend", "del", VIP, "198.18.0.12"]);
    d.kill(libc::SIGKILL);
    d.spawn();
    assert_eq!(
        counters(&d),
        second,
        "after another removal, SIGKILL and a restart"
    );
    println!("took {:?}", t0.elapsed());
}

/// Every entry of the daemon's pinned `RETIRED`.
fn retired(d: &Daemon) -> Vec<RetiredStats> {
    let path = d.bpffs.join("maps").join("RETIRED");
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m: Array<_, RetiredStats> = Array::try_from(Map::Array(data)).expect("an array");
    (0..m.len())
        .map(|i| m.get(&i, 0).expect("RETIRED entry"))
        .collect()
}
