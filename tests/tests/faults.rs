//! Fault injection in the lab, with the real daemon, real HTTP servers and
//! a request loop measuring what the data plane forwards throughout
//! (docs/reliability.md): a backend flapping every second for a minute
//! with the daemon killed and restarted in the middle of it, and the
//! control socket deleted under a running daemon.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::{Daemon, checked_dsr_config, now_ms},
    fixture::require_root,
    netns::spawn_in_ns,
    topo::{DSR_VIP, Lab, Servers, http_get},
};

const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 100;
const FALL: u64 = 2;
/// How long after its server stops a backend may still be sent new flows:
/// the documented detection bound (fall × interval + interval / 10 +
/// timeout) and 300 ms for the request loop's own connect and scheduling.
const DETECT_MS: u64 = FALL * INTERVAL_MS + INTERVAL_MS / 10 + TIMEOUT_MS + 300;
/// The longest a request of the loop takes (connect and read timeouts).
const IN_FLIGHT_MS: u64 = 1000;

fn config() -> String {
    checked_dsr_config(INTERVAL_MS, TIMEOUT_MS, FALL, 2, &[(1, false); 3])
}

/// One request on a new connection: the backend that answered, or why not.
fn one_request(vip: SocketAddr) -> Result<String, String> {
    TcpStream::connect_timeout(&vip, Duration::from_millis(500))
        .and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_millis(500)))?;
            http_get(&mut c)
        })
        .map(|s| s.trim().to_string())
        .map_err(|e| e.to_string())
}

/// When each request started (ms) and what answered it.
type Entries = Vec<(u64, Result<String, String>)>;
type Log = Arc<Mutex<Entries>>;

/// Backend b1's server stops and starts every second for a minute while a
/// client opens a new connection every 10 ms and twelve keep-alive
/// connections send a request every 250 ms; half-way the daemon is killed
/// (SIGKILL) in b1's down phase and started again a second later. Checked:
/// - a new connection fails only while b1's server is stopped and not yet
///   known down (within the detection bound of a stop, or in flight when it
///   stopped), or while the daemon is away and for the bound after it is
///   back: never otherwise;
/// - b2 and b3 answer new connections in every second of the run, the
///   restart included;
/// - every keep-alive connection on b2 or b3 answers every request, from
///   the same backend, throughout;
/// - the restarted daemon takes over: b1 is up at the end and the events
///   list its changes.
#[test]
fn a_flapping_backend_and_a_daemon_restart_do_not_disturb_other_flows() {
    require_root();
    let lab = Lab::new("hfl", 3);
    let mut servers = Servers::start(&lab);
    let mut d = Daemon::start("hfl", &lab.t.ns("lb"), &config());
    let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
    let stop = Arc::new(AtomicBool::new(false));

    // New connections, one every 10 ms.
    let fresh: Log = Arc::default();
    let (l, st) = (fresh.clone(), stop.clone());
    let fresh_loop = spawn_in_ns(&lab.t.ns("cl"), move || {
        // Bounded: at most 10,000 requests (about 100 s at this pace).
        for _ in 0..10_000 {
            if st.load(Ordering::Relaxed) {
                break;
            }
            let t = now_ms();
            let r = one_request(vip);
            l.lock().expect("lock").push((t, r));
            std::thread::sleep(Duration::from_millis(10));
        }
    });

    // Twelve keep-alive connections, opened before the flap.
    let kept: Arc<Mutex<Vec<Entries>>> = Arc::default();
    let (k, st) = (kept.clone(), stop.clone());
    let kept_loop = spawn_in_ns(&lab.t.ns("cl"), move || {
        let mut conns: Vec<TcpStream> = (0..12)
            .map(|_| {
                let c = TcpStream::connect_timeout(&vip, Duration::from_secs(1)).expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(1)))
                    .expect("timeout");
                c
            })
            .collect();
        k.lock().expect("lock").resize(conns.len(), Vec::new());
        for _ in 0..1_000 {
            if st.load(Ordering::Relaxed) {
                break;
            }
            for (i, c) in conns.iter_mut().enumerate() {
                let t = now_ms();
                let r = http_get(c)
                    .map(|s| s.trim().to_string())
                    .map_err(|e| e.to_string());
                k.lock().expect("lock")[i].push((t, r));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    std::thread::sleep(Duration::from_secs(1));

    // The flap: 30 cycles of one second down, one second up. The daemon is
    // killed half a second into the 15th down phase and restarted a second
    // later.
    let began = now_ms();
    let mut stops = Vec::new();
    let mut restart = (0, 0);
    for cycle in 0..30 {
        stops.push(now_ms());
        servers.stop_one(1);
        if cycle == 15 {
            std::thread::sleep(Duration::from_millis(500));
            let killed = now_ms();
            d.kill(libc::SIGKILL);
            std::thread::sleep(Duration::from_secs(1));
            d.spawn();
            restart = (killed, now_ms());
            std::thread::sleep(Duration::from_millis(500));
        } else {
            std::thread::sleep(Duration::from_secs(1));
        }
        servers.start_one(1);
        std::thread::sleep(Duration::from_secs(1));
    }
    let ended = now_ms();
    stop.store(true, Ordering::Relaxed);
    fresh_loop.join().expect("request loop");
    kept_loop.join().expect("keep-alive loop");

    let fresh = fresh.lock().expect("lock");
    // A request started up to its own timeouts (connect and read, 1 s)
    // before a stop is in flight when the server goes: it may fail too.
    let allowed = |t: u64| {
        stops
            .iter()
            .any(|s| t + IN_FLIGHT_MS >= *s && t <= s + DETECT_MS)
            || (t >= restart.0 && t <= restart.1 + DETECT_MS)
    };
    let failed: Vec<_> = fresh.iter().filter(|(_, r)| r.is_err()).collect();
    let unexplained: Vec<_> = failed.iter().filter(|(t, _)| !allowed(*t)).collect();
    let mut answers: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, r) in fresh.iter() {
        *answers.entry(r.as_deref().unwrap_or("error")).or_default() += 1;
    }
    println!(
        "new connections: {} in {} s, {answers:?}; {} failed, all within {DETECT_MS} ms of a stop \
         of b1 or of the restart ({} ms away)",
        fresh.len(),
        (ended - began) / 1000,
        failed.len(),
        restart.1 - restart.0
    );
    assert!(
        unexplained.is_empty(),
        "{} new connections failed outside the windows where b1 was stopped and not yet \
         detected (stops at {stops:?}, restart {restart:?}); the first: {:?}",
        unexplained.len(),
        &unexplained[..unexplained.len().min(5)]
    );
    for sec in 0..(ended - began) / 1000 {
        let (from, to) = (began + sec * 1000, began + (sec + 1) * 1000);
        for b in ["b2", "b3"] {
            assert!(
                fresh
                    .iter()
                    .any(|(t, r)| *t >= from && *t < to && r.as_deref() == Ok(b)),
                "{b} answered no new connection in second {sec} of the flap \
                 (restart at {} ms)",
                restart.0 - began
            );
        }
    }

    let kept = kept.lock().expect("lock");
    let mut on_steady = 0;
    for (i, log) in kept.iter().enumerate() {
        let Some((_, Ok(first))) = log.first() else {
            panic!(
                "keep-alive connection {i} never answered: {:?}",
                log.first()
            );
        };
        if first == "b1" {
            continue; // moved when b1 is marked down (docs/health-checks.md)
        }
        on_steady += 1;
        for (t, r) in log {
            assert_eq!(
                r.as_ref(),
                Ok(first),
                "keep-alive connection {i} on {first} at {} ms into the flap",
                t.saturating_sub(began)
            );
        }
    }
    assert!(on_steady > 0, "no keep-alive connection landed on b2 or b3");
    println!(
        "keep-alive: {on_steady} of {} connections on b2/b3 answered every request ({} each)",
        kept.len(),
        kept[0].len()
    );

    // The restarted daemon took over: b1, whose server runs again, is up.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = d.stats();
        if s.vips[0].backends.iter().all(|b| b.health == "up") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the flap not every backend is up: {:?}",
            s.vips[0].backends
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = d.ok(&["events"]);
    assert!(
        events.contains("198.18.0.11 down") && events.contains("198.18.0.11 up"),
        "the restarted daemon's events list b1's changes: {events}"
    );
}

/// The control socket deleted under a running daemon:
/// requests through the VIP go on without a failure, the daemon binds the
/// socket again (mode 0600) within two seconds and says so in its log, and
/// the CLI reaches it again.
#[test]
fn a_deleted_control_socket_comes_back_and_forwarding_goes_on() {
    use std::os::unix::fs::PermissionsExt as _;
    require_root();
    let lab = Lab::new("hfs", 3);
    let _servers = Servers::start(&lab);
    let d = Daemon::start("hfs", &lab.t.ns("lb"), &config());
    let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
    let log: Log = Arc::default();
    let l = log.clone();
    let requests = spawn_in_ns(&lab.t.ns("cl"), move || {
        for _ in 0..400 {
            let t = now_ms();
            let r = one_request(vip);
            l.lock().expect("lock").push((t, r));
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(&d.socket).expect("deleting the control socket");
    let gone = Instant::now();
    let deadline = gone + Duration::from_secs(5);
    while !d.cli(&["stats", "--json"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "the CLI does not reach the daemon 5 s after its socket was deleted:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = gone.elapsed();
    println!("control socket back after {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "the socket came back after {took:?}"
    );
    let mode = std::fs::metadata(&d.socket)
        .expect("the socket exists again")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the re-created socket is root-only");
    assert!(
        d.log().contains("listening on it again"),
        "the daemon says what happened:\n{}",
        d.log()
    );
    d.ok(&["backend", "list", &format!("{DSR_VIP}:80")]);
    requests.join().expect("request loop");
    let log = log.lock().expect("lock");
    let failed: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while the socket was away: {:?}",
        failed.len(),
        log.len(),
        &failed[..failed.len().min(5)]
    );
}
