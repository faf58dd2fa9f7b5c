//! Health that survives restarts, in the lab: a backend whose server is
//! stopped is marked down; `hola run` is restarted (SIGTERM, then SIGKILL)
//! while a request loop runs, and no connection reaches the stopped
//! backend (its port is closed: one that did would fail) before, during
//! or after either restart. Once its server is back, it comes up after
//! `rise` checks and takes connections again. A backend added while hola
//! runs with `initial = "down"` takes no connection until its checks pass.

use std::{
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

const B1: &str = "198.18.0.11";

fn health(d: &Daemon, backend: &str) -> String {
    let s = d.stats();
    let b = s.vips[0].backends.iter().find(|b| b.address == backend);
    b.expect("backend").health.clone()
}

fn wait_health(d: &Daemon, backend: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(d, backend) != want {
        assert!(
            Instant::now() < deadline,
            "{backend} not {want} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Requests on new connections until `stop`: (start time in ms, answer).
type Log = Arc<Mutex<Vec<(u64, Result<String, String>)>>>;

fn request_loop(lab: &Lab, stop: Arc<AtomicBool>) -> (Log, std::thread::JoinHandle<()>) {
    let log: Log = Arc::default();
    let l = log.clone();
    let h = spawn_in_ns(&lab.t.ns("cl"), move || {
        let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
        // Bounded: at most a minute, whatever happens to the test.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let t = now_ms();
            let r = TcpStream::connect_timeout(&vip, Duration::from_millis(500))
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_millis(500)))?;
                    http_get(&mut c)
                })
                .map_err(|e| e.to_string());
            l.lock().expect("lock").push((t, r));
            std::thread::sleep(Duration::from_millis(3));
        }
    });
    (log, h)
}

#[test]
fn a_backend_down_before_a_restart_gets_no_connection_after_it() {
    require_root();
    let t0 = Instant::now();
    let lab = Lab::new("rs1", 4);
    let mut servers = Servers::start(&lab);
    let mut d = Daemon::start(
        "rs1",
        &lab.t.ns("lb"),
        &checked_dsr_config(200, 100, 2, 2, &[(1, false), (1, false), (1, false)]),
    );
    servers.stop_one(1);
    wait_health(&d, B1, "down");
    let saved = d.dir.join("state.toml.health");
    let text = std::fs::read_to_string(&saved).expect("the health file");
    assert!(text.contains("\"up\": false"), "{text}");

    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGKILL, "SIGKILL")] {
        let stop = Arc::new(AtomicBool::new(false));
        let (log, h) = request_loop(&lab, stop.clone());
        std::thread::sleep(Duration::from_millis(300));
        d.kill(signal);
        d.spawn();
        let up_at = now_ms();
        assert_eq!(health(&d, B1), "down", "after {name}, before any check");
        // Well past `fall` × interval: a backend started up would have
        // taken connections in this time.
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        h.join().expect("request loop");
        let log = log.lock().expect("lock");
        let after: Vec<_> = log.iter().filter(|(t, _)| *t >= up_at).collect();
        let failed: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
        let to_b1 = log.iter().filter(|(_, r)| r.as_deref() == Ok("b1")).count();
        println!(
            "{name}: {} requests, {} after the restart; {} failed, {to_b1} answered by b1",
            log.len(),
            after.len(),
            failed.len()
        );
        assert!(after.len() >= 100, "the loop ran on after the restart");
        assert!(
            failed.is_empty(),
            "after {name}: {} requests failed (reached the stopped backend?), the first: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
        assert_eq!(to_b1, 0);
        assert!(
            d.log().contains("backend health from"),
            "the restart read the health file:\n{}",
            d.log()
        );
    }

    // Its server back: up after `rise` checks, and it takes connections.
    servers.start_one(1);
    wait_health(&d, B1, "up");
    let stop = Arc::new(AtomicBool::new(false));
    let (log, h) = request_loop(&lab, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    h.join().expect("request loop");
    {
        let log = log.lock().expect("lock");
        assert!(log.iter().all(|(_, r)| r.is_ok()));
        assert!(
            log.iter().any(|(_, r)| r.as_deref() == Ok("b1")),
            "b1 takes connections once up"
        );
    }

    // b4 added by `hola apply` with `initial = "down"`, its server not
    // yet running: down from the start, no connection reaches it; up once
    // its server answers `rise` checks.
    servers.stop_one(4);
    let file = d.dir.join("add.toml");
    let text = std::fs::read_to_string(&d.config)
        .expect("configuration")
        .replace("path = \"/\"\n", "path = \"/\"\ninitial = \"down\"\n")
        + "\n[[vip.backend]]\naddress = \"198.18.0.14\"\nweight = 1\n";
    std::fs::write(&file, text).expect("write add.toml");
    d.ok(&["apply", &file.display().to_string()]);
    assert_eq!(health(&d, "198.18.0.14"), "down", "initial = \"down\"");
    let stop = Arc::new(AtomicBool::new(false));
    let (log, h) = request_loop(&lab, stop.clone());
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    h.join().expect("request loop");
    let failed = log
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, r)| r.is_err())
        .count();
    assert_eq!(
        failed, 0,
        "no connection reached b4 before its checks passed"
    );
    servers.start_one(4);
    wait_health(&d, "198.18.0.14", "up");
    println!("took {:?}", t0.elapsed());
}
