//! End-to-end health checking in the lab: real servers stopped and cut off,
//! the daemon noticing within its configured bounds, no request failing
//! once a backend is marked down, backups taking over and giving back.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::{Daemon, GLOBAL, checked_dsr_config, now_ms},
    fixture::require_root,
    netns::{in_ns, spawn_in_ns},
    topo::{AGENT_PORT, Agents, DSR_VIP, Lab, Servers, http_get},
};

const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 100;
const FALL: u64 = 2;
const RISE: u64 = 2;

fn config(backends: &[(u32, bool)]) -> String {
    checked_dsr_config(INTERVAL_MS, TIMEOUT_MS, FALL, RISE, backends)
}

/// One request on a new connection: the backend's name.
fn request(vip: SocketAddr) -> std::io::Result<String> {
    let mut c = TcpStream::connect_timeout(&vip, Duration::from_millis(500))?;
    c.set_read_timeout(Some(Duration::from_millis(500)))?;
    http_get(&mut c)
}

/// A request loop from the client: (start time in ms, answer) per request.
type Log = Arc<Mutex<Vec<(u64, Result<String, String>)>>>;

fn request_loop(lab: &Lab, n: usize, pace: Duration) -> (Log, std::thread::JoinHandle<()>) {
    let log: Log = Arc::default();
    let l = log.clone();
    let h = spawn_in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        for _ in 0..n {
            let t = now_ms();
            let r = request(vip).map_err(|e| e.to_string());
            l.lock().expect("lock").push((t, r));
            std::thread::sleep(pace);
        }
    });
    (log, h)
}

/// Waits until `backend` has the health `want` in the stats; returns when.
fn wait_health(d: &Daemon, backend: &str, want: &str, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let s = d.stats();
        let b = s.vips[0]
            .backends
            .iter()
            .find(|b| b.address == backend)
            .expect("backend");
        if b.health == want {
            return b.last_change_ms.expect("a change time");
        }
        assert!(
            Instant::now() < deadline,
            "{backend} not {want} within {limit:?}: {b:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A failure makes a backend unreachable; the daemon must mark it down
/// within interval × fall + timeout (+ one interval of slack), and no
/// request started after that may fail.
fn failure_is_detected(name: &str, break_it: impl FnOnce(&Lab, &mut Servers)) {
    require_root();
    let lab = Lab::new(name, 3);
    let mut servers = Servers::start(&lab);
    let d = Daemon::start(
        name,
        &lab.t.ns("lb"),
        &config(&[(1, false), (1, false), (1, false)]),
    );
    let (log, h) = request_loop(&lab, 500, Duration::from_millis(5));
    std::thread::sleep(Duration::from_millis(600));
    let broken_at = now_ms();
    break_it(&lab, &mut servers);
    let bound = INTERVAL_MS * FALL + TIMEOUT_MS + INTERVAL_MS;
    let down_at = wait_health(&d, "198.18.0.11", "down", Duration::from_secs(10));
    h.join().expect("request loop");
    let took = down_at.saturating_sub(broken_at);
    println!("marked down {took} ms after the failure (bound {bound} ms)");
    assert!(
        took <= bound,
        "marked down after {took} ms, more than {bound} ms"
    );
    let log = log.lock().expect("lock");
    let failed_before: usize = log
        .iter()
        .filter(|(t, r)| *t < down_at && r.is_err())
        .count();
    let failed_after: Vec<_> = log
        .iter()
        .filter(|(t, r)| *t >= down_at && r.is_err())
        .collect();
    let served_after: BTreeMap<&str, usize> = log
        .iter()
        .filter(|(t, _)| *t >= down_at)
        .filter_map(|(_, r)| r.as_deref().ok())
        .fold(BTreeMap::new(), |mut m, n| {
            *m.entry(n).or_default() += 1;
            m
        });
    println!(
        "requests: {} in all, {failed_before} failed before the backend was marked down, {} after; answers after: {served_after:?}",
        log.len(),
        failed_after.len()
    );
    assert!(
        failed_after.is_empty(),
        "{} requests failed after the backend was marked down; the first: {:?}",
        failed_after.len(),
        &failed_after[..failed_after.len().min(5)]
    );
    assert!(
        !served_after.contains_key("b1"),
        "b1 answered after it was marked down"
    );
    let events = d.ok(&["events"]);
    assert!(
        events.contains("198.18.0.11 down"),
        "hola events lists the change: {events}"
    );
}

#[test]
fn a_stopped_server_is_marked_down_in_time_and_nothing_fails_after() {
    failure_is_detected("hh1", |_, servers| servers.stop_one(1));
}

#[test]
fn a_backend_cut_off_is_marked_down_by_timeouts() {
    failure_is_detected("hh2", |lab, _| {
        // The backend's link goes down: probes get no answer at all and end
        // at their timeout.
        lab.t.ip("sw", &["link", "set", "p-b1", "down"]);
    });
}

#[test]
fn backup_answers_while_every_primary_is_down_and_primaries_take_back() {
    require_root();
    let lab = Lab::new("hh3", 3);
    let mut servers = Servers::start(&lab);
    let d = Daemon::start(
        "hh3",
        &lab.t.ns("lb"),
        &config(&[(1, false), (1, false), (1, true)]),
    );
    let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
    let answers = |n: usize| -> BTreeMap<String, usize> {
        in_ns(&lab.t.ns("cl"), move || {
            let mut m = BTreeMap::new();
            for _ in 0..n {
                *m.entry(request(vip).unwrap_or_else(|e| format!("error: {e}")))
                    .or_default() += 1;
            }
            m
        })
    };
    let before = answers(100);
    assert_eq!(
        before.get("b3"),
        None,
        "the backup gets nothing while primaries are up: {before:?}"
    );
    servers.stop_one(1);
    servers.stop_one(2);
    wait_health(&d, "198.18.0.11", "down", Duration::from_secs(10));
    wait_health(&d, "198.18.0.12", "down", Duration::from_secs(10));
    let during = answers(100);
    assert_eq!(
        during.get("b3"),
        Some(&100),
        "the backup answers every request: {during:?}"
    );
    let s = d.stats();
    let b3 = &s.vips[0].backends[2];
    assert_eq!((b3.state.as_str(), b3.effective_weight), ("backup", 1));

    let restarted = now_ms();
    servers.start_one(1);
    let up_at = wait_health(&d, "198.18.0.11", "up", Duration::from_secs(10));
    let took = up_at.saturating_sub(restarted);
    println!("b1 back up {took} ms after its server restarted (rise {RISE} × {INTERVAL_MS} ms)");
    assert!(
        took <= INTERVAL_MS * (RISE + 1) + TIMEOUT_MS,
        "b1 came back after {took} ms"
    );
    let after = answers(100);
    assert_eq!(
        after.get("b1"),
        Some(&100),
        "new connections return to the primary: {after:?}"
    );
}

const AGENT_INTERVAL_MS: u64 = 500;

/// Four equal backends whose agents report their load.
fn agent_config() -> String {
    let mut c = format!(
        r#"{GLOBAL}
[[vip]]
address = "198.18.1.1"
port = 80
protocol = "tcp"
mode = "dsr"

[vip.agent]
port = {AGENT_PORT}
interval = "{AGENT_INTERVAL_MS}ms"
timeout = "200ms"
"#
    );
    for i in 0..4 {
        c += &format!(
            "\n[[vip.backend]]\naddress = \"198.18.0.{}\"\nweight = 100\n",
            11 + i
        );
    }
    c
}

/// Waits until backend 198.18.0.11 has `effective` as its effective weight;
/// returns how long that took.
fn wait_effective(d: &Daemon, effective: u32, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let s = d.stats();
        let b = &s.vips[0].backends[0];
        if b.effective_weight == effective {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "effective weight not {effective} within {limit:?}: {b:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Shares (in percent) of `n` new connections by backend name.
fn shares(lab: &Lab, n: usize) -> BTreeMap<String, f64> {
    let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
    let counts = in_ns(&lab.t.ns("cl"), move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..n {
            assert!(Instant::now() < deadline, "request loop ran out of time");
            let name = request(vip).unwrap_or_else(|e| format!("error: {e}"));
            *m.entry(name).or_default() += 1;
        }
        m
    });
    counts
        .into_iter()
        .map(|(k, v)| (k, 100.0 * v as f64 / n as f64))
        .collect()
}

#[test]
fn an_agent_reporting_half_load_halves_its_share_of_new_connections() {
    require_root();
    let lab = Lab::new("hh4", 4);
    let _servers = Servers::start(&lab);
    let agents = Agents::start(&lab, "100%");
    let d = Daemon::start("hh4", &lab.t.ns("lb"), &agent_config());
    // Wait for the first answers so that every agent is known to be up.
    wait_effective(&d, 100, Duration::from_secs(5));
    const N: usize = 2000;
    let before = shares(&lab, N);
    println!("shares before, in percent: {before:?}");
    assert!(before.keys().all(|k| !k.starts_with("error")), "{before:?}");
    let b1_before = before.get("b1").copied().unwrap_or(0.0);
    assert!(
        (b1_before - 25.0).abs() <= 5.0,
        "b1 has {b1_before:.1}% with four equal backends"
    );

    agents.set(1, "50%");
    let took = wait_effective(&d, 50, Duration::from_secs(5));
    let bound = Duration::from_millis(AGENT_INTERVAL_MS * 11 / 10 + 200);
    println!("effective weight 50 {took:?} after the agent said 50% (bound {bound:?})");
    assert!(
        took <= bound,
        "the weight followed the agent after {took:?}, more than one interval"
    );
    let s = d.stats();
    let a = s.vips[0].backends[0].agent.as_ref().expect("agent status");
    assert_eq!((a.percent, a.mode.to_string().as_str()), (50, "up"));
    let after = shares(&lab, N);
    println!("shares after b1's agent said 50%, in percent: {after:?}");
    let b1_after = after.get("b1").copied().unwrap_or(0.0);
    // Weights 50:100:100:100: b1 should get 50/350 of new connections,
    // about half of what it had.
    let expected = 100.0 * 50.0 / 350.0;
    println!(
        "b1: {b1_before:.1}% -> {b1_after:.1}% (half of before: {:.1}%, from the weights: {expected:.1}%)",
        b1_before / 2.0
    );
    assert!(
        (b1_after - b1_before / 2.0).abs() <= 5.0,
        "b1's share went from {b1_before:.1}% to {b1_after:.1}%, not half within ±5 points"
    );
    assert!(
        (b1_after - expected).abs() <= 5.0,
        "b1 has {b1_after:.1}%, expected {expected:.1}% ±5 points"
    );

    // Reports outside the bounds are clamped; drain takes b1 out of new
    // flows; up brings it back.
    agents.set(1, "0%");
    wait_effective(&d, 10, Duration::from_secs(5));
    agents.set(1, "drain");
    wait_effective(&d, 0, Duration::from_secs(5));
    let drained = shares(&lab, 100);
    assert_eq!(
        drained.get("b1"),
        None,
        "a drained backend gets no new connection: {drained:?}"
    );
    agents.set(1, "100% up");
    wait_effective(&d, 100, Duration::from_secs(5));
    let events = d.ok(&["events"]);
    assert!(
        events.contains("198.18.0.11 agent drain") && events.contains("198.18.0.11 agent up"),
        "hola events lists the agent's changes: {events}"
    );
    let list = d.ok(&["backend", "list"]);
    assert!(
        list.contains("agent=100% agent_mode=up agent_check=\"agent: 100% up\""),
        "{list}"
    );
}
