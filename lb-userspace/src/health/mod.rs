//! Active health checks and load reports: a scheduler that runs one probe
//! loop per checked backend on tokio, with jitter and bounded concurrency,
//! and sends every result to the owner as a [`CheckEvent`]. The owner keeps
//! the state ([`state::Checks`]) and turns it into effective weights and
//! `DOWN` flags.
//!
//! - [`probe`]: one probe (TCP, HTTP, UDP, exec), typed outcomes;
//! - [`through`]: checks through the VIP (the marked socket, the probes'
//!   routing rule, the failure's reason);
//! - [`agent`]: the agent check and its reports;
//! - [`state`]: rise/fall, agent state, effective weights, slow start;
//! - [`outlier`]: the passive outlier rule;
//! - [`saved`]: all of that kept across restarts.

pub mod agent;
pub mod outlier;
pub mod probe;
pub mod saved;
pub mod state;
pub mod through;

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

pub use self::{
    agent::{AgentMode, AgentStatus, AgentTarget, Report},
    probe::{Probe, Target},
    state::{Checks, Health, Key, Machine, slow_start_weight},
};
use crate::{config::Config, model::VipAddr};

/// At most this many probes run at once, whatever the number of backends.
pub const MAX_CONCURRENT_PROBES: usize = 64;

/// A check's result, for the owner.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckEvent {
    Health {
        vip: VipAddr,
        backend: IpAddr,
        probe: Probe,
    },
    /// An answer (or none) from a backend's agent.
    Agent {
        vip: VipAddr,
        backend: IpAddr,
        probe: Probe,
        report: Option<Report>,
    },
}

/// The checks a configuration asks for: a health check and an agent check
/// for each backend that has one (its own or its VIP's).
pub fn jobs(config: &Config) -> Vec<Job> {
    let mut jobs = Vec::new();
    for v in &config.vips {
        for b in &v.backends {
            if let Some(check) = v.health_for(b) {
                jobs.push(Job::Health(Target {
                    vip: v.key(),
                    backend: b.address,
                    port: check.port.unwrap_or(v.port),
                    check: check.clone(),
                    via: None,
                }));
            }
            if let Some(agent) = v.agent_for(b) {
                jobs.push(Job::Agent(AgentTarget {
                    vip: v.key(),
                    backend: b.address,
                    agent: agent.clone(),
                }));
            }
        }
    }
    jobs
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

    /// Runs the check once; the result as an event for the owner.
    async fn run(&self) -> CheckEvent {
        match self {
            Job::Health(t) => CheckEvent::Health {
                vip: t.vip,
                backend: t.backend,
                probe: probe::probe(t).await,
            },
            Job::Agent(t) => {
                let (probe, report) = agent::ask(t).await;
                CheckEvent::Agent {
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
async fn run_job(job: Job, sem: Arc<Semaphore>, owner: mpsc::Sender<CheckEvent>) {
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
        if owner.send(result).await.is_err() {
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

/// Keeps one loop per job running as the job list changes, until
/// `shutdown` (or until the job list's sender is gone); then every loop is
/// stopped before it returns.
pub async fn supervise(
    mut jobs: watch::Receiver<Vec<Job>>,
    owner: mpsc::Sender<CheckEvent>,
    shutdown: CancellationToken,
) {
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
        let go_on = tokio::select! {
            r = jobs.changed() => r.is_ok(),
            () = shutdown.cancelled() => false,
        };
        if !go_on {
            for (_, (_, h)) in running.drain() {
                h.abort();
                let _ = h.await;
            }
            return;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{
        probe::tests::{check, local_target},
        *,
    };
    use crate::config::{CheckKind, HealthConfig};

    /// Feeds the job's results to `m` until it changes to `want`: the
    /// probes it took and the (virtual) time since `start`.
    async fn until(
        rx: &mut mpsc::Receiver<CheckEvent>,
        m: &mut Machine,
        want: bool,
        start: Instant,
    ) -> (Vec<Probe>, Duration) {
        let mut probes = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(CheckEvent::Health { probe, .. }) => {
                    probes.push(probe.clone());
                    if m.observe(probe.ok) == Some(want) {
                        return (probes, start.elapsed());
                    }
                }
                Ok(_) => panic!("only health results expected"),
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Err(mpsc::error::TryRecvError::Disconnected) => panic!("the probe loop ended"),
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
        let (tx, mut rx) = mpsc::channel(16);
        let sem = Arc::new(Semaphore::new(MAX_CONCURRENT_PROBES));
        let start = Instant::now();
        let job = tokio::spawn(run_job(Job::Health(t.clone()), sem.clone(), tx));
        let mut m = Machine::new(check.rise, check.fall);
        let (probes, took) = until(&mut rx, &mut m, false, start).await;
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
        let (tx, mut rx) = mpsc::channel(16);
        let start = Instant::now();
        let job = tokio::spawn(run_job(Job::Health(t), sem, tx));
        let (probes, took) = until(&mut rx, &mut m, true, start).await;
        assert_eq!(probes.len(), 2, "exactly rise probes: {probes:?}");
        assert!(
            probes.iter().all(|p| p.ok && p.detail == "connected"),
            "{probes:?}"
        );
        assert!(took <= Duration::from_millis(2100), "up after {took:?}");
        job.abort();
        drop((silent, open));
    }
}
