//! BGP announcement through BIRD 2 (docs/cluster.md), with real daemons:
//! BIRD on the router (`merge paths`: ECMP) and on three hola nodes, each
//! node's BIRD configured from `hola bgp config`, BGP sessions with BFD
//! (100 ms x 3), replication on, and a loop of new connections running
//! beside long-lived ones. One lab serves every step, in order:
//!
//! 1. the router learns the VIP from a node only once that node's hola
//!    runs (its data plane attached, its checks answered), and has three
//!    next hops once all three run;
//! 2. every check of node 1 fails: node 1 withdraws, the router drops it
//!    within 1 s, no new connection fails;
//! 3. node 2 is drained: withdrawn; its long-lived connections keep their
//!    backends through the other nodes; new ones go elsewhere;
//! 4. node 3 is killed (hola, BIRD and its link at once): the router drops
//!    it within 1 s (BFD), long-lived connections continue, new
//!    connections fail for at most 1 s;
//! 5. node 3 comes back (a rebooted node: nothing of hola left in its
//!    kernel): its BGP session comes up first, and the VIP is announced
//!    only once hola's data plane and checks are up.
//!
//! The measured times are printed (docs/cluster.md quotes them).

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hola_tests::{
    bird::Bird,
    cluster::{ClusterLab, KEY, Mode, ROUTER_BACK, Routing, VIP, node},
    daemon::{Daemon, hola_bin},
    fixture::require_root,
    netns::{in_ns, spawn_in_ns},
    topo::{Servers, backend, http_get},
};
use netlab::{
    bird::{self as nb, ROUTER_AS, session},
    lab::{SWITCH, port},
};

const PREFIX: &str = "hbg";
const NODES: usize = 3;
/// How fast the router must drop a node that withdraws or dies.
const DROP_WITHIN: Duration = Duration::from_secs(1);

/// Node `i`'s configuration: the cluster lab's (replication on), an HTTP
/// check every 100 ms, and `[bgp]` towards the router.
fn node_config(lab: &ClusterLab, i: usize) -> String {
    let mut c = lab.config(i, 3, KEY, true);
    c += "\n[vip.health]\ntype = \"http\"\npath = \"/\"\ninterval = \"100ms\"\n\
          timeout = \"100ms\"\nfall = 3\nrise = 2\n";
    c += &format!(
        "\n[bgp]\nlocal_as = {}\nrouter_id = \"{}\"\nannounce_delay = \"1s\"\n\n[[bgp.peer]]\naddress = \"{ROUTER_BACK}\"\n\
         remote_as = {ROUTER_AS}\n",
        nb::NODE_AS,
        node(i).1
    );
    c
}

/// Node `i`'s bird.conf: the lab's base and what `hola bgp config` prints
/// for its configuration.
fn node_bird_config(config: &str, i: usize) -> String {
    let file = format!("/tmp/hola-test-{PREFIX}-bgp-n{i}.toml");
    std::fs::write(&file, config).expect("writing the node's configuration");
    let out = std::process::Command::new(hola_bin())
        .args(["bgp", "config", "--config", &file])
        .output()
        .expect("hola bgp config");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "hola bgp config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    nb::node_base(Path::new("@DIR@/bird.log")) + &String::from_utf8_lossy(&out.stdout)
}

/// The router's next hops for the VIP, sorted.
fn router_hops(lab: &ClusterLab) -> Vec<String> {
    nb::nexthops(&lab.t.ip("rt", &["route", "show", &format!("{VIP}/32")]))
}

fn hops(nodes: &[usize]) -> Vec<String> {
    let mut v: Vec<String> = nodes.iter().map(|i| node(*i).1).collect();
    v.sort();
    v
}

/// Waits until the router's next hops are those of `nodes`; returns when.
fn wait_hops(lab: &ClusterLab, nodes: &[usize], timeout: Duration, what: &str) -> Instant {
    let deadline = Instant::now() + timeout;
    let want = hops(nodes);
    loop {
        let now = router_hops(lab);
        if now == want {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the router's next hops for {VIP} are {now:?}, not {want:?}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The VIP's announcement state on `d` ("announced", "withdrawn", ...).
fn announce_state(d: &Daemon) -> String {
    let s = d.stats();
    let a = s.vips[0]
        .announce
        .clone()
        .expect("a daemon with [bgp] reports announcements");
    format!("{} ({})", a.state, a.reason)
}

/// Waits until `d` says its VIP is `state`; returns when.
fn wait_state(d: &Daemon, state: &str, timeout: Duration) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let s = announce_state(d);
        if s.starts_with(state) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "the VIP is {s}, not {state}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One attempt of the request loop: when it started (since the loop's
/// start), whether a new connection answered within a second, and how
/// long it took.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    at: Duration,
    ok: bool,
    took: Duration,
}

/// An attempt slower than this lost a packet on the way (the lab answers
/// in about a millisecond; TCP resends a lost SYN after a second).
const LOST: Duration = Duration::from_millis(300);

impl Attempt {
    fn lost(&self) -> bool {
        !self.ok || self.took > LOST
    }
}

/// Threads of the request loop.
const WORKERS: usize = 4;

/// New connections from the client until stopped, [`WORKERS`] at a time.
struct Loop {
    start: Instant,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    fn start(lab: &ClusterLab) -> Self {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (st, at) = (stop.clone(), attempts.clone());
        // Four workers, so that an attempt waiting for a lost SYN does
        // not stop the others from sampling.
        let thread = spawn_in_ns(&lab.t.ns("cl"), move || {
            let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
            let workers: Vec<_> = (0..WORKERS)
                .map(|_| {
                    let (st, at) = (st.clone(), at.clone());
                    std::thread::spawn(move || {
                        // Bounded: at most 10 minutes of attempts.
                        while !st.load(Ordering::Relaxed)
                            && start.elapsed() < Duration::from_secs(600)
                        {
                            let t = start.elapsed();
                            let ok = (|| {
                                let mut c =
                                    TcpStream::connect_timeout(&vip, Duration::from_secs(1))
                                        .ok()?;
                                c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                                http_get(&mut c).ok()
                            })()
                            .is_some();
                            let took = start.elapsed() - t;
                            at.lock().expect("lock").push(Attempt { at: t, ok, took });
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    })
                })
                .collect();
            for w in workers {
                let _ = w.join();
            }
        });
        Loop {
            start,
            stop,
            attempts,
            thread: Some(thread),
        }
    }

    /// The attempts that started at or after `since`.
    fn since(&self, since: Instant) -> Vec<Attempt> {
        let from = since - self.start;
        let mut v: Vec<Attempt> = (self.attempts.lock().expect("lock").iter())
            .filter(|a| a.at >= from)
            .copied()
            .collect();
        v.sort_by_key(|a| a.at);
        v
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `n` keep-alive connections, each with its first answer (the backend).
fn open(lab: &ClusterLab, n: usize) -> Vec<(TcpStream, String)> {
    in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
        (0..n)
            .map(|i| {
                let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("long-lived connection {i}: {e}"));
                c.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let who = http_get(&mut c)
                    .unwrap_or_else(|e| panic!("long-lived connection {i}: first request: {e}"));
                (c, who)
            })
            .collect()
    })
}

/// One more request on each: the connections that failed or changed
/// backend.
fn broken(conns: &mut [(TcpStream, String)]) -> Vec<String> {
    conns
        .iter_mut()
        .enumerate()
        .filter_map(|(i, (c, first))| match http_get(c) {
            Ok(who) if who == *first => None,
            r => Some(format!("connection {i} (first on {first}): {r:?}")),
        })
        .collect()
}

/// `hola stats --json` matches the schema in docs/stats.md (with `bgp`
/// and each VIP's `announce`).
fn check_schema(d: &Daemon) {
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
    assert!(
        json["bgp"].is_object() && json["vips"][0]["announce"].is_object(),
        "{json}"
    );
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "stats JSON does not match docs/stats.md: {errors:#?}"
    );
}

fn new_flows(d: &Daemon) -> u64 {
    d.stats()
        .reasons
        .get("fwd_new_flow")
        .map_or(0, |r| r.packets)
}

/// The line numbers of the first lines of `log` holding each of `needles`.
fn first_line(log: &str, needle: &str) -> usize {
    log.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in hola's log:\n{log}"))
}

#[test]
#[allow(clippy::too_many_lines)]
fn bgp_announces_by_health_drains_and_bfd_drops_dead_nodes() {
    require_root();
    let t0 = Instant::now();
    let lab = ClusterLab::with_routing(PREFIX, NODES, 3, Mode::Dsr, Routing::Bgp);
    let _servers = Servers::start_on((1..=3).map(|i| lab.t.ns(&backend(i).0)).collect());
    let nodes: Vec<(String, String)> = (1..=NODES).map(node).collect();
    let sessions: Vec<String> = nodes.iter().map(|(n, _)| session(n)).collect();
    let rt = Bird::start(
        &format!("{PREFIX}-rt"),
        &lab.t.ns("rt"),
        &nb::router_config(ROUTER_BACK, &nodes, Path::new("@DIR@/bird.log")),
    );
    let configs: Vec<String> = (1..=NODES).map(|i| node_config(&lab, i)).collect();
    let mut birds: Vec<Bird> = (1..=NODES)
        .map(|i| {
            Bird::start(
                &format!("{PREFIX}-n{i}"),
                &lab.t.ns(&node(i).0),
                &node_bird_config(&configs[i - 1], i),
            )
        })
        .collect();

    // 1. Sessions up, nothing announced until hola runs; then one next hop
    // per node whose hola runs.
    rt.wait_established(&sessions, Duration::from_secs(30));
    let established = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        router_hops(&lab),
        Vec::<String>::new(),
        "announced before any hola runs"
    );
    let mut daemons = Vec::new();
    for i in 1..=NODES {
        let started = Instant::now();
        let d = lab.start(PREFIX, i, &configs[i - 1]);
        let seen = wait_hops(
            &lab,
            &(1..=i).collect::<Vec<_>>(),
            Duration::from_secs(10),
            "start",
        );
        println!(
            "n{i}: the router had its next hop {:?} after hola run started",
            seen - started
        );
        let log = d.log();
        assert!(
            first_line(&log, "attached") < first_line(&log, "bgp: announced (route added)"),
            "n{i} announced before its data plane was attached:\n{log}"
        );
        // Announced because a backend passed its check (the others may
        // not have been probed yet).
        let s = d.stats();
        check_schema(&d);
        assert!(
            s.vips[0]
                .backends
                .iter()
                .any(|b| b.last_check.as_ref().is_some_and(|p| p.ok)),
            "n{i} announced before a check passed: {:#?}",
            s.vips[0].backends
        );
        daemons.push(d);
    }
    println!("sessions established {established:?} after the start; three next hops");

    // Replication: every node hears the other two before flows start.
    std::thread::sleep(Duration::from_secs(2));
    let mut long = open(&lab, 30);
    let requests = Loop::start(&lab);
    std::thread::sleep(Duration::from_secs(1));

    // 2. Every check of node 1 fails (its probes are dropped: those
    // through the VIP, the default for dsr, and those to the backends' own
    // addresses; its data plane still forwards): node 1 withdraws, the
    // router drops it.
    let nft = |script: &str| netlab::netns::exec(&lab.t.ns("n1"), "nft", &[script]);
    let fail = Instant::now();
    nft(
        "add table inet hbg_checks; add chain inet hbg_checks out { type filter hook output \
         priority 0; }; add rule inet hbg_checks out ip daddr { 198.18.0.0/24, 198.18.1.1 } \
         tcp dport 80 drop",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let withdrawn = wait_state(&daemons[0], "withdrawn", Duration::from_secs(5));
    let dropped = wait_hops(
        &lab,
        &[2, 3],
        Duration::from_secs(5),
        "node 1's checks fail",
    );
    println!(
        "checks fail on n1: withdrawn {:?} after, the router dropped it {:?} after the withdrawal",
        withdrawn - fail,
        dropped - withdrawn
    );
    assert!(
        dropped - withdrawn < DROP_WITHIN,
        "the router took {:?}",
        dropped - withdrawn
    );
    std::thread::sleep(Duration::from_secs(1));
    let failed: Vec<Attempt> = requests.since(fail).into_iter().filter(|a| !a.ok).collect();
    assert!(
        failed.is_empty(),
        "new connections failed while n1 withdrew: {failed:?}"
    );
    let slow = requests.since(fail).iter().filter(|a| a.lost()).count();
    println!("checks fail on n1: no new connection failed, {slow} took over {LOST:?}");
    nft("delete table inet hbg_checks").unwrap_or_else(|e| panic!("{e}"));
    wait_hops(
        &lab,
        &[1, 2, 3],
        Duration::from_secs(5),
        "n1's checks pass again",
    );
    let b = broken(&mut long);
    if !b.is_empty() {
        for d in &daemons {
            println!("{}: {:?}\n{}", d.ns, d.stats().reasons, d.ok(&["events"]));
        }
    }
    assert!(
        b.is_empty(),
        "long-lived connections broke in step 2: {b:#?}"
    );

    // 3. Node 2 drained: withdrawn, its long-lived connections continue
    // through the others, new connections go elsewhere.
    let drain = Instant::now();
    daemons[1].ok(&["node", "drain"]);
    let dropped = wait_hops(&lab, &[1, 3], Duration::from_secs(5), "n2 drained");
    println!(
        "n2 drained: the router dropped it {:?} after hola node drain",
        dropped - drain
    );
    assert!(dropped - drain < DROP_WITHIN);
    assert_eq!(announce_state(&daemons[1]), "withdrawn (drained)");
    std::thread::sleep(Duration::from_millis(200));
    let before = new_flows(&daemons[1]);
    let b = broken(&mut long);
    assert!(
        b.is_empty(),
        "long-lived connections broke after n2 was drained: {b:#?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        new_flows(&daemons[1]),
        before,
        "a drained node still gets new flows"
    );
    let failed: Vec<Attempt> = requests
        .since(drain)
        .into_iter()
        .filter(|a| !a.ok)
        .collect();
    assert!(
        failed.is_empty(),
        "new connections failed while n2 was drained: {failed:?}"
    );
    let slow = requests.since(drain).iter().filter(|a| a.lost()).count();
    println!("n2 drained: no new connection failed, {slow} took over {LOST:?}");
    daemons[1].ok(&["node", "undrain"]);
    wait_hops(&lab, &[1, 2, 3], Duration::from_secs(5), "n2 undrained");

    // 4. Node 3 killed: hola, BIRD and its link at once.
    // Frames for n3 must go nowhere once its link is down. The bridge
    // would flush n3's MAC and flood them to every port, where the other
    // nodes' XDP programs take them (a veth hands XDP every frame; a real
    // NIC drops frames for another MAC): pin n3's MAC to its port.
    let mac = lab.t.mac("n3", "eth0");
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let sw_port = port(&node(3).0);
    netlab::netns::exec(
        &lab.t.ns(SWITCH),
        "bridge",
        &["fdb", "replace", &mac, "dev", &sw_port, "master", "static"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // The link first: a killed process's sockets are closed by the
    // kernel, and a FIN reaching the router would end the session at once
    // (a node that loses power sends nothing).
    let kill = Instant::now();
    lab.t.ip("n3", &["link", "set", "eth0", "down"]);
    daemons[2].kill(libc::SIGKILL);
    birds[2].kill();
    let dropped = wait_hops(&lab, &[1, 2], Duration::from_secs(5), "n3 killed");
    println!(
        "n3 killed: the router dropped it {:?} after (BFD)",
        dropped - kill
    );
    assert!(
        dropped - kill < DROP_WITHIN,
        "the router took {:?}",
        dropped - kill
    );
    std::thread::sleep(Duration::from_millis(1500));
    let b = broken(&mut long);
    assert!(
        b.is_empty(),
        "long-lived connections broke when n3 died: {b:#?}"
    );
    // New connections sent to n3 before the router dropped it lose their
    // SYN (and succeed a second later, or time out): the last of them
    // started when n3's next hop went.
    let attempts = requests.since(kill);
    let lost: Vec<&Attempt> = attempts.iter().filter(|a| a.lost()).collect();
    let outage = lost
        .last()
        .map_or(Duration::ZERO, |l| l.at - (kill - requests.start));
    println!(
        "n3 killed: {} of {} new connections lost their first SYN ({} not answered within 1 s); \
         the last of them started {outage:?} after the kill",
        lost.len(),
        attempts.len(),
        lost.iter().filter(|a| !a.ok).count()
    );
    assert!(
        outage <= DROP_WITHIN,
        "new connections failed for {outage:?}: {lost:?}"
    );

    // 5. Node 3 comes back as after a reboot: nothing of hola in its
    // kernel. Its session comes up and nothing is announced until hola
    // runs; then the VIP is, once the data plane and checks are up.
    // `hola down` in the node's namespace: it withdraws there (deletes
    // hola's routes from the node's table) and unpins the data plane.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.t.ns("n3")))
        .arg(hola_bin())
        .args(["down", "--config"])
        .arg(&daemons[2].config)
        .output()
        .expect("hola down");
    assert!(
        out.status.success(),
        "hola down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("withdrew {VIP} (route in table 201 deleted)")),
        "hola down did not withdraw the VIP: {said}"
    );
    lab.t.ip("n3", &["link", "set", "eth0", "up"]);
    birds[2].spawn();
    rt.wait_established(&sessions[2..], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        router_hops(&lab),
        hops(&[1, 2]),
        "n3 announced before hola ran"
    );
    let back = Instant::now();
    daemons[2].spawn();
    let seen = wait_hops(&lab, &[1, 2, 3], Duration::from_secs(10), "n3 back");
    println!(
        "n3 back: announced {:?} after hola run started",
        seen - back
    );
    let log = daemons[2].log();
    let restart = log.rfind("attached").expect("attached after the restart");
    assert!(
        log[restart..].contains("bgp: announced (route added)"),
        "n3 announced before its data plane was attached again:\n{log}"
    );
    drop(requests);
    drop(birds);
    println!("the whole test took {:?}", t0.elapsed());
}
