//! Active health checks: probes (TCP connect, HTTP GET, UDP exchange,
//! external command), the rise/fall state machine, and the scheduler that
//! runs one probe loop per backend on tokio with jitter and bounded
//! concurrency. State changes go to the data-plane owner as requests; the
//! owner turns them into effective weights and `DOWN` flags.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, mpsc},
    time::Duration,
};

use tokio::{
    net::{TcpStream, UdpSocket},
    sync::{Semaphore, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    agent::AgentTarget,
    config::{CheckKind, HealthConfig},
    dataplane::VipAddr,
    owner::Request,
};

/// At most this many probes run at once, whatever the number of backends.
pub const MAX_CONCURRENT_PROBES: usize = 64;

/// One backend to check.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub vip: VipAddr,
    pub backend: IpAddr,
    pub port: u16,
    pub check: HealthConfig,
}

/// The result of one probe.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    pub ok: bool,
    /// What was seen: "connected", "HTTP 200", "timeout after 500ms", ...
    pub detail: String,
    pub latency_ms: u64,
}

/// Rise/fall hysteresis: `fall` consecutive failures take a backend down,
/// `rise` consecutive successes bring it back. A backend starts up, so that
/// a restart of hola does not take healthy backends out of service.
#[derive(Clone, Debug)]
pub struct Machine {
    rise: u32,
    fall: u32,
    pub up: bool,
    ok_streak: u32,
    fail_streak: u32,
}

impl Machine {
    pub fn new(rise: u32, fall: u32) -> Self {
        Machine {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    /// Feeds one probe result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if !self.up && self.ok_streak >= self.rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if self.up && self.fail_streak >= self.fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

/// The effective weight of a backend `since` after it came up, with slow
/// start over `ramp`: from a tenth of `weight` (at least 1) to `weight`.
pub fn slow_start_weight(weight: u32, since: Duration, ramp: Option<Duration>) -> u32 {
    let Some(ramp) = ramp.filter(|r| !r.is_zero()) else {
        return weight;
    };
    if weight == 0 || since >= ramp {
        return weight;
    }
    let start = (weight / 10).max(1);
    let frac = since.as_secs_f64() / ramp.as_secs_f64();
    let w = f64::from(start) + f64::from(weight - start) * frac;
    (w as u32).clamp(start, weight)
}

/// Runs one probe, bounded by the check's timeout.
pub async fn probe(t: &Target) -> Probe {
    let start = Instant::now();
    let timeout = t.check.timeout;
    let result = tokio::time::timeout(timeout, run_probe(t)).await;
    let latency_ms = start.elapsed().as_millis() as u64;
    match result {
        Ok(Ok(detail)) => Probe {
            ok: true,
            detail,
            latency_ms,
        },
        Ok(Err(detail)) => Probe {
            ok: false,
            detail,
            latency_ms,
        },
        Err(_) => Probe {
            ok: false,
            detail: format!("timeout after {}ms", timeout.as_millis()),
            latency_ms,
        },
    }
}

async fn run_probe(t: &Target) -> Result<String, String> {
    let addr = SocketAddr::new(t.backend, t.port);
    match t.check.kind {
        CheckKind::Tcp => {
            TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            Ok("connected".into())
        }
        CheckKind::Http => http_probe(t, addr).await,
        CheckKind::Udp => {
            let bind: SocketAddr = if t.backend.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .expect("literal");
            let s = UdpSocket::bind(bind)
                .await
                .map_err(|e| format!("bind: {e}"))?;
            s.connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            s.send(t.check.send.as_bytes())
                .await
                .map_err(|e| format!("send: {e}"))?;
            let mut buf = [0u8; 2048];
            let n = s
                .recv(&mut buf)
                .await
                .map_err(|e| format!("no reply: {e}"))?;
            let reply = String::from_utf8_lossy(&buf[..n]);
            if let Some(want) = &t.check.expect
                && !reply.contains(want.as_str())
            {
                return Err(format!("reply lacks {want:?}"));
            }
            Ok("reply received".into())
        }
        CheckKind::Exec => {
            let (prog, args) = t
                .check
                .command
                .split_first()
                .ok_or("no command configured")?;
            let status = tokio::process::Command::new(prog)
                .args(args)
                .env("HOLA_BACKEND_ADDRESS", t.backend.to_string())
                .env("HOLA_BACKEND_PORT", t.port.to_string())
                .env("HOLA_VIP", t.vip.to_string())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| format!("running {prog}: {e}"))?;
            if status.success() {
                Ok("exit 0".into())
            } else {
                Err(format!("{prog}: {status}"))
            }
        }
    }
}

/// Largest response body an HTTP check reads (to find `expect_body`).
const HTTP_BODY_LIMIT: usize = 64 * 1024;

/// HTTP/1.1 GET of the check's path with its Host header; the status must
/// be the expected one, and the body (when asked) contain a substring.
async fn http_probe(t: &Target, addr: SocketAddr) -> Result<String, String> {
    let want = t.check.expect_body.as_deref();
    let (status, body) = http_get(&t.check, addr, want.is_some()).await?;
    if status != t.check.expect_status {
        return Err(format!("HTTP {status}, expected {}", t.check.expect_status));
    }
    if let Some(want) = want
        && !body.contains(want)
    {
        return Err(format!("HTTP {status} but the body lacks {want:?}"));
    }
    Ok(format!("HTTP {status}"))
}

/// GET `check.path` from `addr` with the check's Host header (default: the
/// address): the status, and the body (at most 64 KiB) when `read_body`.
/// Any framing the server uses (length, chunked, close) is understood.
pub async fn http_get(
    check: &HealthConfig,
    addr: SocketAddr,
    read_body: bool,
) -> Result<(u16, String), String> {
    use http_body_util::{BodyExt as _, Empty, Limited};
    use hyper::body::Bytes;

    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let host = check.host.clone().unwrap_or_else(|| addr.to_string());
    let req = hyper::Request::get(check.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "hola-health")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("building the request: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP request: {e}"))?;
        let status = resp.status().as_u16();
        if !read_body {
            return Ok((status, String::new()));
        }
        let body = Limited::new(resp.into_body(), HTTP_BODY_LIMIT)
            .collect()
            .await
            .map_err(|e| format!("HTTP {status}, reading the body: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    conn.abort();
    result
}

/// A small deterministic generator for jitter (no need for a crate).
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One periodic check the supervisor keeps running.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    Health(Target),
    Agent(AgentTarget),
}

impl Job {
    fn key(&self) -> (VipAddr, IpAddr, bool) {
        match self {
            Job::Health(t) => (t.vip, t.backend, false),
            Job::Agent(t) => (t.vip, t.backend, true),
        }
    }

    fn interval(&self) -> Duration {
        match self {
            Job::Health(t) => t.check.interval,
            Job::Agent(t) => t.agent.interval,
        }
    }

    /// Runs the check once; the result as a request for the owner.
    async fn run(&self) -> Request {
        match self {
            Job::Health(t) => Request::Health {
                vip: t.vip,
                backend: t.backend,
                probe: probe(t).await,
            },
            Job::Agent(t) => {
                let (probe, report) = crate::agent::ask(t).await;
                Request::Agent {
                    vip: t.vip,
                    backend: t.backend,
                    probe,
                    report,
                }
            }
        }
    }
}

/// The loop of one job: a random phase within the first interval (so a
/// thousand backends do not fire on the same tick), then one probe per
/// interval, start to start, each tick up to a tenth of the interval late
/// at random. Ticks do not drift with probe duration, so a failure is seen
/// by `fall` probes within `fall × interval + interval / 10` plus the last
/// probe's timeout. Every result goes to the owner, which keeps the state
/// (so state survives a reconfiguration of the loop).
async fn run_job(job: Job, sem: Arc<Semaphore>, owner: mpsc::Sender<Request>) {
    let (vip, backend, agent) = job.key();
    let seed = crate::maglev::backend_key(backend, vip.port) ^ u64::from(agent);
    let mut jitter = Jitter::new(seed);
    let interval = job.interval();
    // Tick k is at `base + k × interval`, probed up to interval/10 later.
    let mut base = Instant::now() + interval.mul_f64(jitter.next());
    tokio::time::sleep_until(base).await;
    loop {
        let result = {
            let _permit = sem.acquire().await.expect("semaphore is never closed");
            job.run().await
        };
        if owner.send(result).is_err() {
            return;
        }
        base += interval;
        // Behind (a long wait for a permit): skip the ticks already past.
        let now = Instant::now();
        while base < now {
            base += interval;
        }
        tokio::time::sleep_until(base + interval.mul_f64(0.1 * jitter.next())).await;
    }
}

/// Keeps one loop per job running as the job list changes.
pub async fn supervise(mut jobs: watch::Receiver<Vec<Job>>, owner: mpsc::Sender<Request>) {
    let sem = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
    let mut running: HashMap<(VipAddr, IpAddr, bool), (Job, JoinHandle<()>)> = HashMap::new();
    loop {
        let want: Vec<Job> = jobs.borrow_and_update().clone();
        running.retain(|k, (j, h)| {
            let keep = want.iter().any(|w| w.key() == *k && w == j);
            if !keep {
                h.abort();
            }
            keep
        });
        for j in want {
            if let std::collections::hash_map::Entry::Vacant(e) = running.entry(j.key()) {
                let h = tokio::spawn(run_job(j.clone(), sem.clone(), owner.clone()));
                e.insert((j, h));
            }
        }
        if jobs.changed().await.is_err() {
            for (_, (_, h)) in running.drain() {
                h.abort();
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A target on 127.0.0.1:`port` for VIP 198.18.1.1:80/tcp.
    fn local_target(port: u16, check: HealthConfig) -> Target {
        Target {
            vip: VipAddr {
                addr: "198.18.1.1".parse().expect("ip"),
                port: 80,
                proto: crate::dataplane::Proto::Tcp,
            },
            backend: "127.0.0.1".parse().expect("ip"),
            port,
            check,
        }
    }

    fn check(kind: CheckKind, interval_ms: u64, timeout_ms: u64) -> HealthConfig {
        HealthConfig {
            kind,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            rise: 2,
            fall: 3,
            port: None,
            path: "/".into(),
            host: None,
            expect_status: 200,
            expect_body: None,
            send: "hola-health".into(),
            expect: None,
            command: Vec::new(),
            slow_start: None,
        }
    }

    #[test]
    fn exactly_fall_failures_take_down_and_rise_successes_bring_back() {
        let mut m = Machine::new(2, 3);
        assert!(m.up);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(true), None, "a success resets the failure streak");
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(
            m.observe(false),
            Some(false),
            "the third consecutive failure"
        );
        assert_eq!(m.observe(false), None, "already down");
        assert_eq!(m.observe(true), None);
        assert_eq!(
            m.observe(false),
            None,
            "a failure resets the success streak"
        );
        assert_eq!(m.observe(true), None);
        assert_eq!(
            m.observe(true),
            Some(true),
            "the second consecutive success"
        );
    }

    #[test]
    fn slow_start_ramps_to_full_weight_at_the_configured_time() {
        let ramp = Some(Duration::from_secs(30));
        assert_eq!(slow_start_weight(100, Duration::ZERO, ramp), 10);
        assert_eq!(slow_start_weight(100, Duration::from_secs(15), ramp), 55);
        assert_eq!(slow_start_weight(100, Duration::from_secs(30), ramp), 100);
        assert_eq!(slow_start_weight(100, Duration::from_secs(31), ramp), 100);
        assert_eq!(slow_start_weight(3, Duration::ZERO, ramp), 1, "at least 1");
        assert_eq!(slow_start_weight(100, Duration::ZERO, None), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_fails_at_its_timeout() {
        // A listener that accepts nothing back: TCP connect succeeds (the
        // kernel completes the handshake), so use HTTP, which waits for an
        // answer that never comes.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let t = local_target(port, check(CheckKind::Http, 1000, 500));
        let p = probe(&t).await;
        assert!(!p.ok);
        assert_eq!(p.detail, "timeout after 500ms");
        drop(l);
    }

    /// Feeds the job's results to `m` until it changes to `want`: the
    /// probes it took and the (virtual) time since `start`.
    async fn until(
        rx: &mpsc::Receiver<Request>,
        m: &mut Machine,
        want: bool,
        start: Instant,
    ) -> (Vec<Probe>, Duration) {
        let mut probes = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(Request::Health { probe, .. }) => {
                    probes.push(probe.clone());
                    if m.observe(probe.ok) == Some(want) {
                        return (probes, start.elapsed());
                    }
                }
                Ok(_) => panic!("only health results expected"),
                Err(mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Err(mpsc::TryRecvError::Disconnected) => panic!("the probe loop ended"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn in_virtual_time_fall_timeouts_take_down_and_rise_successes_bring_back() {
        // A listener that never answers: every HTTP probe times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut check = check(CheckKind::Http, 1000, 500);
        check.fall = 3;
        check.rise = 2;
        let t = local_target(silent.local_addr().expect("addr").port(), check.clone());
        let (tx, rx) = mpsc::channel();
        let sem = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let start = Instant::now();
        let job = tokio::spawn(run_job(Job::Health(t.clone()), sem.clone(), tx));
        let mut m = Machine::new(check.rise, check.fall);
        let (probes, took) = until(&rx, &mut m, false, start).await;
        assert_eq!(probes.len(), 3, "exactly fall probes: {probes:?}");
        for p in &probes {
            assert_eq!(
                (p.ok, p.detail.as_str(), p.latency_ms),
                (false, "timeout after 500ms", 500)
            );
        }
        // Phase < 1 s, then one tick per second (≤ 100 ms late), plus the
        // last probe's timeout: within fall × interval + interval/10 + timeout.
        assert!(
            took >= Duration::from_millis(2500) && took <= Duration::from_millis(3600),
            "down after {took:?}"
        );
        job.abort();

        // Now a port that accepts: TCP probes succeed; up after exactly rise.
        let open = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let t = Target {
            port: open.local_addr().expect("addr").port(),
            check: HealthConfig {
                kind: CheckKind::Tcp,
                ..check
            },
            ..t
        };
        let (tx, rx) = mpsc::channel();
        let start = Instant::now();
        let job = tokio::spawn(run_job(Job::Health(t), sem, tx));
        let (probes, took) = until(&rx, &mut m, true, start).await;
        assert_eq!(probes.len(), 2, "exactly rise probes: {probes:?}");
        assert!(
            probes.iter().all(|p| p.ok && p.detail == "connected"),
            "{probes:?}"
        );
        assert!(took <= Duration::from_millis(2100), "up after {took:?}");
        job.abort();
        drop((silent, open));
    }

    #[tokio::test]
    async fn http_probe_checks_status_and_body() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            // Keep-alive server: answers and keeps every connection open,
            // so the probe must stop at Content-Length, not at EOF.
            let mut held = Vec::new();
            for status in ["200 OK", "200 OK", "503 Unavailable"] {
                let (mut c, _) = l.accept().await.expect("accept");
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf).await;
                let body = "all good";
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                c.write_all(resp.as_bytes()).await.expect("write");
                held.push(c);
            }
            std::future::pending::<()>().await;
        });
        let mut t = local_target(port, check(CheckKind::Http, 1000, 1000));
        assert_eq!(probe(&t).await.detail, "HTTP 200");
        t.check.expect_body = Some("missing".into());
        let p = probe(&t).await;
        assert!(!p.ok && p.detail.contains("lacks"), "{p:?}");
        t.check.expect_body = None;
        let p = probe(&t).await;
        assert!(!p.ok && p.detail == "HTTP 503, expected 200", "{p:?}");
    }

    #[tokio::test]
    async fn tcp_and_exec_probes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let mut t = local_target(port, check(CheckKind::Tcp, 1000, 1000));
        assert!(probe(&t).await.ok);
        drop(l);
        assert!(!probe(&t).await.ok, "nothing listens any more");
        t.check.kind = CheckKind::Exec;
        t.check.command = vec![
            "sh".into(),
            "-c".into(),
            "test \"$HOLA_BACKEND_ADDRESS\" = 127.0.0.1".into(),
        ];
        assert!(
            probe(&t).await.ok,
            "exit 0 with the backend in the environment"
        );
        t.check.command = vec!["false".into()];
        assert!(!probe(&t).await.ok);
    }
}
