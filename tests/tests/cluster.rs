//! Balancer peers (docs/cluster.md), with real daemons in a lab of a
//! router spreading flows over balancer nodes by ECMP: long-lived TCP
//! connections survive a backend change followed by the death of the node
//! that carried them, in `dsr` and in `nat` mode; without replication they
//! break (so these tests can fail); a node that joins late gets a
//! snapshot; a node with the wrong key is ignored; nodes with the same
//! configuration have the same Maglev tables; `PEER_FLOWS` is sized from
//! `[cluster]` (one entry without it).

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use hola_tests::{
    cluster::{ClusterLab, KEY, Mode, VIP, node},
    daemon::Daemon,
    fixture::require_root,
    netns::in_ns,
    topo::{Servers, backend, http_get},
};
use lb_common::maps as names;
use lb_userspace::{cluster::ClusterReport, dataplane::possible_cpus};

fn cluster(d: &Daemon) -> ClusterReport {
    d.stats()
        .cluster
        .expect("a daemon with [cluster] reports it in stats")
}

/// Waits until `d` sends to and receives from exactly `peers`.
fn wait_peers(d: &Daemon, peers: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = cluster(d);
        let mut up: Vec<&str> = c
            .peers
            .iter()
            .filter(|p| (p.sending && p.receiving) || !c.replicate)
            .map(|p| p.node.as_str())
            .collect();
        up.sort_unstable();
        if up == peers {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not see exactly the peers {peers:?} within 15 s: {:#?}",
            c.node,
            c.peers
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `n` keep-alive connections from the client, each with a first request
/// answered: the connection and the backend that answered, or why not.
/// Opened in parallel (a connection that cannot complete its handshake
/// takes its whole timeout).
fn open(lab: &ClusterLab, n: usize) -> Vec<Result<(TcpStream, String), String>> {
    in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
        let threads: Vec<_> = (0..n)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                        .map_err(|e| format!("connect: {e}"))?;
                    c.set_read_timeout(Some(Duration::from_secs(2)))
                        .map_err(|e| e.to_string())?;
                    let who = http_get(&mut c).map_err(|e| format!("first request: {e}"))?;
                    Ok((c, who.trim().to_string()))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("connection thread"))
            .collect()
    })
}

/// One more request on each open connection: who answered, or the error.
fn ask(conns: &mut [(TcpStream, String)]) -> Vec<Result<String, String>> {
    conns
        .iter_mut()
        .map(|(c, _)| {
            http_get(c)
                .map(|s| s.trim().to_string())
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// Connections whose answer is an error or another backend than their first.
fn broken(conns: &[(TcpStream, String)], answers: &[Result<String, String>]) -> Vec<String> {
    conns
        .iter()
        .zip(answers)
        .enumerate()
        .filter(|(_, ((_, first), a))| a.as_deref() != Ok(first.as_str()))
        .map(|(i, ((c, first), a))| {
            format!(
                "connection {i} ({}) on {first}: {a:?}",
                c.local_addr()
                    .map_or_else(|e| e.to_string(), |a| a.to_string())
            )
        })
        .collect()
}

/// What `hola flow` says about 200 synthetic flows (ports no real
/// connection uses): the backend each goes to.
fn flows(d: &Daemon) -> Vec<String> {
    (0..200)
        .map(|i| {
            let src = format!("198.18.100.{}:{}", 50 + i % 100, 61_000 + i);
            d.ok(&["flow", &src, &format!("{VIP}:80")])
                .split(" goes to ")
                .nth(1)
                .and_then(|s| s.split(':').next())
                .unwrap_or("none")
                .to_string()
        })
        .collect()
}

fn new_flows(d: &Daemon) -> u64 {
    d.stats()
        .reasons
        .get("fwd_new_flow")
        .map_or(0, |r| r.packets)
}

fn peer_flows(d: &Daemon) -> u64 {
    d.stats()
        .reasons
        .get("fwd_peer_flow")
        .map_or(0, |r| r.packets)
}

/// Waits until what each node created has reached the other (its peer
/// received at least as many entries as it created flows).
fn wait_replicated(d1: &Daemon, d2: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (c1, c2) = (cluster(d1), cluster(d2));
        let got = |c: &ClusterReport, from: &str| {
            c.peers
                .iter()
                .find(|p| p.node == from)
                .map_or(0, |p| p.entries_received)
        };
        let (made1, made2) = (new_flows(d1), new_flows(d2));
        if got(&c2, "n1") >= made1 && got(&c1, "n2") >= made2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replication did not catch up within 10 s: n1 made {made1}, n2 got {}; n2 made \
             {made2}, n1 got {}",
            got(&c2, "n1"),
            got(&c1, "n2")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The scenario of (a) and (b): 100 connections through a 2-node cluster;
/// a backend added on both nodes; node 1 killed and its route withdrawn.
/// Returns the broken connections (at opening, after the add, after the
/// failover) and node 2's `fwd_peer_flow` count.
fn failover(prefix: &str, mode: Mode, replicate: bool) -> (Vec<String>, u64) {
    let lab = ClusterLab::new(prefix, 2, 4, mode);
    let _servers = Servers::start_on((1..=4).map(|i| lab.t.ns(&backend(i).0)).collect());
    let mut d1 = lab.start(prefix, 1, &lab.config(1, 3, KEY, replicate));
    let d2 = lab.start(prefix, 2, &lab.config(2, 3, KEY, replicate));
    wait_peers(&d1, &["n2"]);
    wait_peers(&d2, &["n1"]);

    // Identical configuration, identical tables.
    assert_eq!(flows(&d1), flows(&d2), "the nodes' Maglev tables differ");

    let opened = open(&lab, 100);
    let mut broken_all: Vec<String> = opened
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("connection {i}: {e}")))
        .collect();
    let mut conns: Vec<(TcpStream, String)> = opened.into_iter().filter_map(Result::ok).collect();
    let per_backend = conns.iter().fold(BTreeMap::new(), |mut m, (_, b)| {
        *m.entry(b.clone()).or_insert(0) += 1;
        m
    });
    let (n1, n2) = (new_flows(&d1), new_flows(&d2));
    println!(
        "{} connections open ({} failed), by backend {per_backend:?}; new flows on n1 {n1}, n2 {n2}",
        conns.len(),
        broken_all.len()
    );
    assert!(
        n1 > 0 && n2 > 0,
        "the router should spread the connections over both nodes (n1 {n1}, n2 {n2})"
    );
    if replicate {
        wait_replicated(&d1, &d2);
        for d in [&d1, &d2] {
            let c = cluster(d);
            assert_eq!(c.events_lost, 0, "{} lost new-entry events", c.node);
            assert!(
                c.peers.iter().all(|p| p.entries_dropped == 0),
                "{} dropped queued entries: {:#?}",
                c.node,
                c.peers
            );
        }
    }

    // A fourth backend on both nodes (in the same way on each): about a
    // quarter of the Maglev slots change owner.
    for d in [&d1, &d2] {
        d.ok(&["backend", "add", &format!("{VIP}:80"), &backend(4).1]);
    }
    assert_eq!(
        flows(&d1),
        flows(&d2),
        "the nodes' Maglev tables differ after the same change"
    );
    let after_add = ask(&mut conns);
    let b = broken(&conns, &after_add);
    assert!(
        b.is_empty(),
        "established connections must stay on their backend when one is added: {b:#?}"
    );

    // Node 1 dies; the router sends everything to node 2.
    lab.kill(1, &mut d1);
    lab.route_via(&[2]);
    lab.backends_via(&[2]);
    let after = ask(&mut conns);
    broken_all.extend(broken(&conns, &after));
    let moved = peer_flows(&d2);
    println!(
        "{} connections broken in all; node 2 took {moved} packets of flows learned from node 1",
        broken_all.len()
    );
    (broken_all, moved)
}

#[test]
fn dsr_connections_survive_a_backend_change_and_a_node_failure() {
    require_root();
    let (broken, moved) = failover("hca", Mode::Dsr, true);
    assert!(
        broken.is_empty(),
        "{} connections broke: {broken:#?}",
        broken.len()
    );
    assert!(
        moved > 0,
        "node 2 never used a flow learned from node 1: the failover did not test replication"
    );
}

#[test]
fn nat_connections_survive_with_replication_and_break_without() {
    require_root();
    let (broken, moved) = failover("hcb", Mode::Nat, true);
    assert!(
        broken.is_empty(),
        "with replication {} connections broke: {broken:#?}",
        broken.len()
    );
    assert!(moved > 0, "node 2 never used a flow learned from node 1");

    let (broken, _) = failover("hcc", Mode::Nat, false);
    assert!(
        !broken.is_empty(),
        "without replication every connection survived: the test cannot tell replication from \
         its absence"
    );
    println!(
        "without replication {} connections broke, e.g. {:?}",
        broken.len(),
        &broken[..broken.len().min(3)]
    );
}

/// Node 1 carries 40 connections alone; node 2 starts afterwards and gets
/// them in the snapshot node 1 sends it; after a backend change, node 1
/// dies and node 2 carries every connection on.
#[test]
fn a_node_that_joins_late_gets_a_snapshot() {
    require_root();
    let lab = ClusterLab::new("hcd", 2, 4, Mode::Dsr);
    let _servers = Servers::start_on((1..=4).map(|i| lab.t.ns(&backend(i).0)).collect());
    lab.route_via(&[1]);
    let mut d1 = lab.start("hcd", 1, &lab.config(1, 3, KEY, true));
    let mut conns: Vec<(TcpStream, String)> = open(&lab, 40)
        .into_iter()
        .map(|r| r.expect("a connection through node 1"))
        .collect();
    let made = new_flows(&d1);
    assert!(made >= 40, "node 1 made {made} flows for 40 connections");

    let d2 = lab.start("hcd", 2, &lab.config(2, 3, KEY, true));
    wait_peers(&d2, &["n1"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let snapshot = loop {
        let c = cluster(&d2);
        if let Some(n) = c
            .peers
            .iter()
            .find(|p| p.node == "n1")
            .and_then(|p| p.snapshot_received)
        {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 got no snapshot from node 1: {:#?}",
            c.peers
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        snapshot >= made,
        "the snapshot holds {snapshot} entries, node 1 made {made} flows"
    );
    let c1 = cluster(&d1);
    assert_eq!(
        c1.peers.iter().map(|p| p.snapshots_sent).sum::<u64>(),
        1,
        "node 1 sent one snapshot: {:#?}",
        c1.peers
    );

    for d in [&d1, &d2] {
        d.ok(&["backend", "add", &format!("{VIP}:80"), &backend(4).1]);
    }
    lab.kill(1, &mut d1);
    lab.route_via(&[2]);
    let answers = ask(&mut conns);
    let b = broken(&conns, &answers);
    assert!(b.is_empty(), "{} connections broke: {b:#?}", b.len());
    assert!(
        peer_flows(&d2) >= 40,
        "node 2 forwarded the moved connections from the snapshot's entries"
    );
}

/// Three nodes, the third with another key: the other two see only each
/// other, count and log its announcements as rejected, and it sees no one.
#[test]
fn a_node_with_the_wrong_key_is_ignored() {
    require_root();
    let lab = ClusterLab::new("hce", 3, 1, Mode::Dsr);
    let d1 = lab.start("hce", 1, &lab.config(1, 1, KEY, true));
    let d2 = lab.start("hce", 2, &lab.config(2, 1, KEY, true));
    let d3 = lab.start(
        "hce",
        3,
        &lab.config(3, 1, "another key, not the cluster's", true),
    );
    wait_peers(&d1, &["n2"]);
    wait_peers(&d2, &["n1"]);
    // Ten announcement intervals.
    std::thread::sleep(Duration::from_secs(2));
    for d in [&d1, &d2] {
        let c = cluster(d);
        let names: Vec<&str> = c.peers.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(
            names,
            [if c.node == "n1" { "n2" } else { "n1" }],
            "{:#?}",
            c.peers
        );
        assert!(
            c.announcements_rejected > 0,
            "{} counted no rejected announcement",
            c.node
        );
        assert!(
            d.log().contains("ignoring an announcement") && d.log().contains("authentication"),
            "{}'s log says why it ignores n3:\n{}",
            c.node,
            d.log()
        );
    }
    let c3 = cluster(&d3);
    assert!(c3.peers.is_empty(), "n3 must see no peer: {:#?}", c3.peers);
    assert!(c3.announcements_rejected > 0);
    let _ = node(3);
}

/// The capacity of the map `name` that `d` pinned.
fn pinned_max_entries(d: &Daemon, name: &str) -> u32 {
    let path = d.bpffs.join("maps").join(name);
    aya::maps::MapInfo::from_pin(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .max_entries()
}

fn pinned_id(d: &Daemon, name: &str) -> u32 {
    let path = d.bpffs.join("maps").join(name);
    aya::maps::MapInfo::from_pin(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .id()
}

/// `config` (one of [`ClusterLab::config`]) without its `[cluster]` table.
fn without_cluster(config: &str) -> String {
    let (head, rest) = config
        .split_once("[cluster]\n")
        .expect("the lab's configuration has a [cluster] table");
    let (_, tail) = rest
        .split_once("\n\n")
        .expect("a blank line ends the [cluster] table");
    format!("{head}{tail}")
}

/// `PEER_FLOWS` is preallocated (an LRU hash): a node with `[cluster]` has
/// as many entries as `FLOWS4` (the IPv4 flow table) by default or `peer_flow_capacity`, a node
/// without one a single entry. A data plane pinned with another size gets
/// a new `PEER_FLOWS` (peers send their flows again when they reconnect);
/// every other map is adopted.
#[test]
fn peer_flows_is_sized_from_the_cluster() {
    require_root();
    let lab = ClusterLab::new("hcf", 1, 1, Mode::Dsr);
    let ncpus = possible_cpus().expect("possible CPUs");
    let flows = 65_536 * ncpus;
    let config = lab.config(1, 1, KEY, true);

    let mut d = lab.start("hcf-default", 1, &config);
    assert_eq!(pinned_max_entries(&d, names::FLOWS4), flows);
    assert_eq!(pinned_max_entries(&d, names::PEER_FLOWS), flows);
    let o = d.down();
    assert!(o.status.success(), "hola down: {o:?}");

    let sized = config.replace("[cluster]\n", "[cluster]\npeer_flow_capacity = 5000\n");
    let mut d = lab.start("hcf-sized", 1, &sized);
    assert_eq!(pinned_max_entries(&d, names::FLOWS4), flows);
    assert_eq!(pinned_max_entries(&d, names::PEER_FLOWS), 5000);
    let o = d.down();
    assert!(o.status.success(), "hola down: {o:?}");

    let mut d = lab.start("hcf-alone", 1, &without_cluster(&config));
    assert_eq!(pinned_max_entries(&d, names::FLOWS4), flows);
    assert_eq!(pinned_max_entries(&d, names::PEER_FLOWS), 1);

    // The same pins under a configuration with [cluster]: PEER_FLOWS is
    // replaced by one of the configured size, every other map adopted.
    let flows_id = pinned_id(&d, names::FLOWS);
    d.kill(libc::SIGTERM);
    let text = config
        .replace("@DIR@", &d.dir.display().to_string())
        .replace("@BPFFS@", &d.bpffs.display().to_string());
    std::fs::write(&d.config, text).expect("writing the configuration");
    d.spawn();
    assert_eq!(pinned_max_entries(&d, names::PEER_FLOWS), flows);
    assert_eq!(
        pinned_id(&d, names::FLOWS),
        flows_id,
        "FLOWS is adopted, not made anew"
    );
    let said = d.log();
    assert!(
        said.contains("a new PEER_FLOWS of the configured size replaces the pinned one"),
        "{said}"
    );
    let o = d.down();
    assert!(o.status.success(), "hola down: {o:?}");
}
