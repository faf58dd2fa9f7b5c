//! `hola backend drain --wait` in the lab: a real keep-alive connection on
//! a dsr backend keeps it busy; the wait ends only once that connection
//! closes and the quiet period passes, and gives up with a message that
//! says so when the connection stays busy past `--timeout`.

use std::{
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hola_tests::{
    daemon::{Daemon, GLOBAL, hola_bin},
    fixture::require_root,
    netns::spawn_in_ns,
    topo::{DSR_VIP, Lab, Servers, http_get},
};

const VIP: &str = "198.18.1.1:80/tcp";
const B1: &str = "198.18.0.11";
/// `--quiet-for` of the tests.
const QUIET_FOR: Duration = Duration::from_secs(2);
/// How often the held connection sends a request: well within the quiet
/// period, so the backend never looks quiet while it is open.
const PACE: Duration = Duration::from_millis(400);

/// The lab's dsr VIP with backends b1 and b2, no health checks (a probe
/// does not go through the balancer, but none is needed here).
fn config() -> String {
    let mut c = format!(
        "{GLOBAL}\n[[vip]]\naddress = \"198.18.1.1\"\nport = 80\nprotocol = \"tcp\"\n\
         mode = \"dsr\"\n"
    );
    for i in 0..2 {
        c += &format!("\n[[vip.backend]]\naddress = \"198.18.0.{}\"\n", 11 + i);
    }
    c
}

/// A keep-alive connection from the client to the VIP that landed on b1,
/// sending a request every [`PACE`] until [`Busy::close`].
struct Busy {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Busy {
    fn on_b1(lab: &Lab) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = spawn_in_ns(&lab.t.ns("cl"), move || {
            let vip: SocketAddr = format!("{DSR_VIP}:80").parse().expect("vip");
            // Maglev spreads new connections over both backends: one of
            // the first 64 lands on b1 (the others are closed).
            let mut c = (0..64)
                .find_map(|_| {
                    let mut c = TcpStream::connect_timeout(&vip, Duration::from_secs(2)).ok()?;
                    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                    (http_get(&mut c).ok()? == "b1").then_some(c)
                })
                .expect("a connection on b1 within 64 tries");
            ready_tx.send(()).expect("ready");
            // Bounded: the tests close it long before.
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut requests = 0;
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                let name = http_get(&mut c).expect("a request on the held connection");
                assert_eq!(name, "b1", "the held connection stays on b1");
                requests += 1;
                std::thread::sleep(PACE);
            }
            requests
        });
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a connection on b1");
        Busy {
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the connection; returns how many requests it sent and a time
    /// just after its last packet left the client (the FIN; the client's
    /// last ACK follows the backend's FIN within a round trip).
    fn close(mut self) -> (u64, Instant) {
        self.stop.store(true, Ordering::Relaxed);
        let n = self
            .thread
            .take()
            .expect("open")
            .join()
            .expect("held connection thread");
        (n, Instant::now())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `hola backend drain VIP b1 --wait ARGS...`, started, not awaited.
fn drain_wait(d: &Daemon, args: &[&str]) -> Child {
    Command::new(hola_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["backend", "drain", VIP, B1, "--wait"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting hola backend drain --wait")
}

/// Waits for `c` to exit, at most `limit`; returns its output and when it
/// exited. Kills it (its own PID) if it is still running then.
fn exit_within(mut c: Child, limit: Duration) -> (Output, Instant) {
    let deadline = Instant::now() + limit;
    loop {
        if c.try_wait().expect("try_wait").is_some() {
            let at = Instant::now();
            return (c.wait_with_output().expect("output"), at);
        }
        if Instant::now() >= deadline {
            let _ = c.kill();
            let o = c.wait_with_output().expect("output");
            panic!(
                "drain --wait did not exit within {limit:?}:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn drain_wait_returns_once_the_last_connection_closed_and_the_quiet_period_passed() {
    require_root();
    let lab = Lab::new("hdw1", 2);
    let _servers = Servers::start(&lab);
    let d = Daemon::start("drainwait", &lab.t.ns("lb"), &config());
    let busy = Busy::on_b1(&lab);
    let mut c = drain_wait(&d, &["--quiet-for", "2s", "--timeout", "30s"]);
    // Longer than the quiet period and a progress line's interval: it must
    // still be waiting while the connection sends.
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        c.try_wait().expect("try_wait").is_none(),
        "drain --wait returned while the connection on b1 was still sending"
    );
    let (requests, closed_at) = busy.close();
    println!("{requests} requests on the held connection");
    assert!(
        requests >= 10,
        "the held connection kept sending: {requests}"
    );
    let (o, exited_at) = exit_within(c, Duration::from_secs(20));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    println!("{stdout}{stderr}");
    assert!(o.status.success(), "drain --wait failed: {stdout}{stderr}");
    let after = exited_at - closed_at;
    println!("returned {after:?} after the connection closed");
    // At least the quiet period after the last packet (less the few
    // milliseconds between the FIN and `closed_at`), and at most a reading
    // interval to see the last packet, another to see the quiet period
    // pass, and slack.
    assert!(
        after >= QUIET_FOR - Duration::from_millis(100),
        "returned {after:?} after the close, before the quiet period of {QUIET_FOR:?}"
    );
    assert!(
        after <= QUIET_FOR + Duration::from_secs(4),
        "returned {after:?} after the close, more than the quiet period + 4 s"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "backend 198.18.0.11 of 198.18.1.1:80/tcp: draining (no new flows)",
            "waiting until no packet reaches 198.18.0.11 of 198.18.1.1:80/tcp for 2s (at most 30s)",
        ]
    );
    // A progress line came while the connection sent, naming its packets.
    assert!(
        lines.iter().any(|l| l.starts_with("198.18.0.11: ")
            && l.contains(" in the last 5s; quiet for 0s of 2s")
            && !l.contains(": 0 packets")),
        "no progress line with packets: {stdout}"
    );
    let last = lines.last().expect("a last line");
    assert!(
        last.starts_with("backend 198.18.0.11 of 198.18.1.1:80/tcp is drained: no packet for 2s"),
        "{last}"
    );
    let s = d.stats();
    let b1 = s.vips[0]
        .backends
        .iter()
        .find(|b| b.address == B1)
        .expect("b1");
    assert_eq!(b1.state, "draining", "the backend stays drained");
}

#[test]
fn drain_wait_times_out_with_a_message_while_a_connection_stays_busy() {
    require_root();
    let lab = Lab::new("hdw2", 2);
    let _servers = Servers::start(&lab);
    let d = Daemon::start("draintimeout", &lab.t.ns("lb"), &config());
    let busy = Busy::on_b1(&lab);
    let started = Instant::now();
    let c = drain_wait(&d, &["--quiet-for", "2s", "--timeout", "4s"]);
    let (o, exited_at) = exit_within(c, Duration::from_secs(15));
    let took = exited_at - started;
    let (requests, _) = busy.close();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    println!("{stdout}{stderr}\n{requests} requests; exited after {took:?}");
    assert!(
        !o.status.success(),
        "drain --wait succeeded on a busy backend"
    );
    assert!(
        (Duration::from_secs(4)..Duration::from_secs(8)).contains(&took),
        "exited after {took:?}, not shortly after the 4 s timeout"
    );
    let msg = stderr.trim();
    assert!(
        msg.starts_with(
            "hola: backend 198.18.0.11 of 198.18.1.1:80/tcp is still busy after waiting "
        ),
        "{msg}"
    );
    for part in [
        "reached it while waiting, the last one ",
        "(it must see none for 2s). It stays drained (no new flows). To go on, wait longer \
         (a longer --timeout), or remove it to re-balance the flows it still has: \
         hola backend del 198.18.1.1:80/tcp 198.18.0.11",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg:?}");
    }
    assert!(
        !msg.contains("after waiting 4s: 0 packets"),
        "the message counts the packets it saw: {msg}"
    );
}
