//! The owner of the data plane: one thread holds the `Dataplane` (every map
//! handle) and the desired configuration; the API and everything else send
//! it requests. A change is validated completely, applied to the kernel,
//! persisted atomically and only then acknowledged.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP};
use tokio::sync::oneshot;

use crate::{
    agent::{AgentMode, AgentStatus, AgentTarget, Report, scaled_weight},
    config::{Config, HashKind, Protocol, VipConfig, VipMode},
    dataplane::{
        BackendSpec, Dataplane, Mode, Nexthop, Proto, Stats, VipAddr, VipSpec, addr_bytes,
    },
    health::{Job, Machine, Probe, Target, slow_start_weight},
    neigh,
    stats::{BackendReport, PacketsBytes, Rates, STATS_VERSION, StatsReport, VipReport},
};

/// An error for the API caller: the HTTP status and the message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(m: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: m.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        ApiError {
            status: 404,
            message: m.into(),
        }
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        ApiError {
            status: 409,
            message: m.into(),
        }
    }
    pub fn internal(m: impl Into<String>) -> Self {
        ApiError {
            status: 500,
            message: m.into(),
        }
    }
}

/// A change to the desired configuration, run by the owner on its copy.
pub type Change = Box<dyn FnOnce(&mut Config) -> Result<(), ApiError> + Send>;

/// Which backend a flow goes to, and why.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FlowAnswer {
    pub vip: String,
    pub backend: Option<String>,
    /// "flow-table entry" or "Maglev slot N".
    pub reason: String,
}

pub enum Request {
    Change(Change, oneshot::Sender<Result<(), ApiError>>),
    /// A probe result from the health checker.
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
    Events(oneshot::Sender<Vec<Event>>),
    Config(oneshot::Sender<Config>),
    Stats(oneshot::Sender<Result<StatsReport, ApiError>>),
    Flow {
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        proto: Protocol,
        reply: oneshot::Sender<Result<FlowAnswer, ApiError>>,
    },
    /// Cluster: every entry this node holds, for a peer that connected.
    ClusterSnapshot(oneshot::Sender<Vec<crate::cluster::wire::Entry>>),
    /// The daemon is stopping: serve no more (the cluster's tasks hold
    /// senders too, so the channel alone would never close).
    Shutdown,
    /// Cluster: entries a peer sent, to install.
    PeerEntries {
        node: String,
        entries: Vec<crate::cluster::wire::Entry>,
    },
}

pub fn proto_of(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

pub fn vip_addr(v: &VipConfig) -> VipAddr {
    VipAddr {
        addr: v.address,
        port: v.port,
        proto: proto_of(v.protocol),
    }
}

/// How many state changes `hola events` keeps (the oldest go first).
pub const MAX_EVENTS: usize = 1000;

/// One health state change, as `hola events` lists it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Event {
    pub timestamp_ms: u64,
    pub vip: String,
    pub backend: String,
    /// "up" or "down" (health check), "agent up", "agent drain" or "agent down".
    pub state: String,
    /// The probe result that made the change.
    pub detail: String,
}

/// The health of one checked backend of one VIP.
struct Health {
    machine: Machine,
    last: Option<Probe>,
    changed_ms: Option<u64>,
    /// When it last came up (for slow start); `None` when it has been up
    /// since hola started, so a restart does not ramp healthy backends.
    up_since: Option<tokio::time::Instant>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Key = (VipAddr, IpAddr);

/// What the checks say about every backend: health and agent state.
#[derive(Default)]
struct Checks {
    health: HashMap<Key, Health>,
    agents: HashMap<Key, AgentStatus>,
    /// Taken out by the outlier rule (passive health), until the cool-down.
    ejected: std::collections::HashSet<Key>,
}

/// Passive health of one backend of a NAT VIP: its handshake failures.
#[derive(Default)]
struct Passive {
    /// SYNs left unanswered (from the NAT sweeps), since hola started.
    timeouts: u64,
    /// Failures (RSTs + timeouts) seen at the last sample.
    last_total: u64,
    /// Failures within the outlier window: (when, how many).
    recent: std::collections::VecDeque<(Instant, u64)>,
    /// Taken out until then.
    ejected_until: Option<Instant>,
}

impl Checks {
    /// Whether backend `i` of `vip` is up: not failed by its health check,
    /// not declared down by its agent.
    fn is_up(&self, vip: &VipConfig, i: usize) -> bool {
        let key = (vip_addr(vip), vip.backends[i].address);
        !self.ejected.contains(&key)
            && self.health.get(&key).is_none_or(|h| h.machine.up)
            && self
                .agents
                .get(&key)
                .is_none_or(|a| a.mode != AgentMode::Down)
    }

    /// Whether backend `i` of `vip` can take new flows at all.
    fn takes_new_flows(&self, vip: &VipConfig, i: usize) -> bool {
        let b = &vip.backends[i];
        let key = (vip_addr(vip), b.address);
        !b.drain
            && b.weight > 0
            && self.is_up(vip, i)
            && self
                .agents
                .get(&key)
                .is_none_or(|a| a.mode != AgentMode::Drain)
    }

    /// The weight every backend of `vip` gets in its Maglev table, and
    /// whether it is up (a down backend's flow-table entries are treated
    /// as misses). Draining (by config or agent) or down: 0. A backup: 0
    /// while a primary takes new flows. Otherwise the configured weight,
    /// scaled by the agent's percentage, ramping after coming up when
    /// slow start is configured.
    fn effective(&self, vip: &VipConfig) -> Vec<(u32, bool)> {
        let primary_takes = (0..vip.backends.len())
            .any(|j| !vip.backends[j].backup && self.takes_new_flows(vip, j));
        (0..vip.backends.len())
            .map(|i| self.effective_one(vip, i, primary_takes))
            .collect()
    }

    /// `effective` for backend `i`, knowing whether a primary takes flows.
    fn effective_one(&self, vip: &VipConfig, i: usize, primary_takes: bool) -> (u32, bool) {
        let b = &vip.backends[i];
        let up = self.is_up(vip, i);
        if !self.takes_new_flows(vip, i) || (b.backup && primary_takes) {
            return (0, up);
        }
        let key = (vip_addr(vip), b.address);
        let weight = match self.agents.get(&key) {
            Some(a) => scaled_weight(b.weight, a.percent),
            None => b.weight,
        };
        let ramp = vip.health_for(b).and_then(|h| h.slow_start);
        let weight = match self.health.get(&key).and_then(|h| h.up_since) {
            Some(t) => slow_start_weight(weight, t.elapsed(), ramp),
            None => weight,
        };
        (weight, up)
    }
}

pub struct Owner {
    pub dp: Dataplane,
    pub config: Config,
    pub state_file: PathBuf,
    pub ingress_ifindex: u32,
    nexthops: HashMap<IpAddr, Nexthop>,
    checks: Checks,
    events: std::collections::VecDeque<Event>,
    targets: Option<tokio::sync::watch::Sender<Vec<Job>>>,
    prev: Option<(Instant, Stats)>,
    last: Option<(Instant, Stats)>,
    nat: crate::stats::NatReport,
    nat_swept: Option<Instant>,
    passive: HashMap<Key, Passive>,
    /// Cluster replication, and this node's MAC on the main interface
    /// (the source of NAT replies it sends for peers' flows).
    cluster: Option<(std::sync::Arc<crate::cluster::Shared>, [u8; 6])>,
}

impl Owner {
    pub fn new(dp: Dataplane, config: Config, state_file: PathBuf, ingress_ifindex: u32) -> Self {
        Owner {
            dp,
            config,
            state_file,
            ingress_ifindex,
            nexthops: HashMap::new(),
            checks: Checks::default(),
            events: std::collections::VecDeque::new(),
            targets: None,
            prev: None,
            last: None,
            nat: crate::stats::NatReport::default(),
            nat_swept: None,
            passive: HashMap::new(),
            cluster: None,
        }
    }

    /// Replicates to and from the cluster's peers from now on: the program
    /// writes its new entries to the ring buffer, which `serve` drains.
    pub fn with_cluster(
        &mut self,
        shared: std::sync::Arc<crate::cluster::Shared>,
        mac: [u8; 6],
    ) -> Result<(), crate::dataplane::DataplaneError> {
        self.dp.set_cluster(shared.settings.replicate)?;
        self.cluster = Some((shared, mac));
        Ok(())
    }

    /// Sends the program's new entries to the peers.
    fn replicate(&mut self) {
        let Some((shared, _)) = &self.cluster else {
            return;
        };
        let shared = shared.clone();
        loop {
            let events = self.dp.next_events(4096);
            if events.is_empty() {
                return;
            }
            let now = crate::dataplane::monotonic_ns();
            let entries: Vec<_> = events
                .iter()
                .filter_map(|e| crate::cluster::local::event_entry(&self.dp, e, now))
                .collect();
            shared.publish(&entries);
        }
    }

    /// Serves requests until every sender is gone. Samples the counters once
    /// a second (for rates) and retries unresolved next hops.
    pub fn serve(mut self, rx: mpsc::Receiver<Request>) {
        // With peers, new entries leave within this.
        let wait = if self.cluster.is_some() {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(1)
        };
        loop {
            match rx.recv_timeout(wait) {
                Ok(Request::Shutdown) => return,
                Ok(req) => self.handle(req),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            self.replicate();
            let due = self
                .last
                .as_ref()
                .is_none_or(|(t, _)| t.elapsed() >= Duration::from_secs(1));
            if due {
                self.sample();
                self.sweep_nat();
                self.outliers();
                if self.ramping() {
                    let config = self.config.clone();
                    if let Err(e) = self.reconcile(&config, Duration::ZERO) {
                        tracing::warn!(error = %e.message, "slow start");
                    }
                }
                if self
                    .config
                    .vips
                    .iter()
                    .flat_map(|v| &v.backends)
                    .any(|b| !self.nexthops.contains_key(&b.address))
                {
                    let config = self.config.clone();
                    if let Err(e) = self.reconcile(&config, Duration::ZERO) {
                        tracing::warn!(error = %e.message, "re-applying the configuration for unresolved next hops");
                    }
                }
            }
        }
    }

    /// Every few seconds while a NAT VIP exists: deletes expired NAT
    /// entries and counts the live ones.
    fn sweep_nat(&mut self) {
        const EVERY: Duration = Duration::from_secs(5);
        if !self.config.vips.iter().any(|v| v.mode.is_nat())
            || self.nat_swept.is_some_and(|t| t.elapsed() < EVERY)
        {
            return;
        }
        self.nat_swept = Some(Instant::now());
        let syn_timeout = self
            .config
            .vips
            .iter()
            .filter_map(|v| v.outlier.as_ref().map(|o| o.syn_timeout))
            .min()
            .unwrap_or(crate::config::OutlierConfig::default().syn_timeout);
        match self.dp.sweep_nat(syn_timeout) {
            Ok(s) => {
                self.nat.entries = s.live;
                self.nat.expired_removed += s.removed;
                self.nat.swept_ms = now_ms();
                for (key, n) in s.unanswered {
                    self.passive.entry(key).or_default().timeouts += n;
                }
                if let Some((shared, _)) = &self.cluster {
                    let gone: Vec<_> = s
                        .gone
                        .iter()
                        .map(|k| crate::cluster::wire::Entry::NatGone { reply: k.into() })
                        .collect();
                    shared.publish(&gone);
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeping the NAT table"),
        }
    }

    /// The outlier rule: a backend of a NAT VIP whose handshakes failed
    /// `failures` times within `window` is taken out for `cooldown`.
    fn outliers(&mut self) {
        let Some((_, stats)) = &self.last else { return };
        let now = Instant::now();
        let mut changes = Vec::new();
        for v in &self.config.vips {
            let Some(rule) = &v.outlier else { continue };
            let key_v = vip_addr(v);
            for b in &v.backends {
                let key = (key_v, b.address);
                let rsts = stats
                    .vips
                    .get(&key_v)
                    .and_then(|c| c.handshakes.get(&b.address))
                    .map_or(0, |h| h.rsts);
                let p = self.passive.entry(key).or_default();
                let total = rsts + p.timeouts;
                if total > p.last_total {
                    p.recent.push_back((now, total - p.last_total));
                }
                p.last_total = total;
                while p
                    .recent
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > rule.window)
                {
                    p.recent.pop_front();
                }
                match p.ejected_until {
                    Some(until) if now >= until => {
                        p.ejected_until = None;
                        p.recent.clear();
                        changes.push((
                            key,
                            false,
                            format!(
                                "cool-down of {} over",
                                crate::config::format_duration(rule.cooldown)
                            ),
                        ));
                    }
                    None => {
                        let failures: u64 = p.recent.iter().map(|(_, n)| n).sum();
                        if failures >= u64::from(rule.failures) {
                            p.ejected_until = Some(now + rule.cooldown);
                            changes.push((
                                key,
                                true,
                                format!(
                                    "{failures} handshake failures (RST or no SYN-ACK) within {}",
                                    crate::config::format_duration(rule.window)
                                ),
                            ));
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        if changes.is_empty() {
            return;
        }
        for (key, out, _) in &changes {
            if *out {
                self.checks.ejected.insert(*key);
            } else {
                self.checks.ejected.remove(key);
            }
        }
        self.apply_checks();
        let at = now_ms();
        for ((vip, backend), out, detail) in changes {
            let state = if out { "outlier down" } else { "outlier up" };
            self.event(at, vip, backend, state, detail);
        }
    }

    fn sample(&mut self) {
        if let Ok(s) = self.dp.stats() {
            self.prev = self.last.take();
            self.last = Some((Instant::now(), s));
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Change(change, reply) => {
                let _ = reply.send(self.change(change));
            }
            Request::Config(reply) => {
                let _ = reply.send(self.config.clone());
            }
            Request::Health {
                vip,
                backend,
                probe,
            } => self.health_result(vip, backend, probe),
            Request::Agent {
                vip,
                backend,
                probe,
                report,
            } => self.agent_result(vip, backend, probe, report),
            Request::Events(reply) => {
                let _ = reply.send(self.events.iter().cloned().collect());
            }
            Request::Stats(reply) => {
                let _ = reply.send(self.report());
            }
            Request::Flow {
                src,
                dst,
                proto,
                reply,
            } => {
                let _ = reply.send(self.flow(src, dst, proto));
            }
            Request::Shutdown => {}
            Request::ClusterSnapshot(reply) => {
                // Events already in the ring buffer are in the snapshot
                // too; sending them first keeps peers' queues in order.
                self.replicate();
                let _ = reply.send(crate::cluster::local::snapshot(&self.dp));
            }
            Request::PeerEntries { node, entries } => {
                if let Some((shared, mac)) = &self.cluster
                    && shared.settings.replicate
                {
                    let (shared, mac) = (shared.clone(), *mac);
                    let r = crate::cluster::local::install(
                        &mut self.dp,
                        &entries,
                        mac,
                        self.ingress_ifindex,
                    );
                    if r.unknown > 0 {
                        tracing::debug!(peer = %node, unknown = r.unknown, "cluster: entries for VIPs or backends this node does not have");
                    }
                    shared.installed(r.installed, r.unknown);
                }
            }
        }
    }

    /// Starts health checking: the targets of the current configuration now,
    /// and again after every change.
    pub fn check_with(&mut self, targets: tokio::sync::watch::Sender<Vec<Job>>) {
        self.targets = Some(targets);
        self.publish_targets();
    }

    /// Tells the checker what to probe, and keeps one state per checked
    /// backend (a backend whose check changes keeps its state).
    fn publish_targets(&mut self) {
        let mut jobs = Vec::new();
        for v in &self.config.vips {
            for b in &v.backends {
                if let Some(check) = v.health_for(b) {
                    jobs.push(Job::Health(Target {
                        vip: vip_addr(v),
                        backend: b.address,
                        port: check.port.unwrap_or(v.port),
                        check: check.clone(),
                    }));
                }
                if let Some(agent) = v.agent_for(b) {
                    jobs.push(Job::Agent(AgentTarget {
                        vip: vip_addr(v),
                        backend: b.address,
                        agent: agent.clone(),
                    }));
                }
            }
        }
        let health_keys: Vec<Key> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Health(t) => Some((t.vip, t.backend)),
                Job::Agent(_) => None,
            })
            .collect();
        self.checks.health.retain(|k, _| health_keys.contains(k));
        let agent_keys: Vec<Key> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Agent(t) => Some((t.vip, t.backend)),
                Job::Health(_) => None,
            })
            .collect();
        self.checks.agents.retain(|k, _| agent_keys.contains(k));
        for j in &jobs {
            match j {
                Job::Health(t) => {
                    self.checks
                        .health
                        .entry((t.vip, t.backend))
                        .or_insert_with(|| Health {
                            machine: Machine::new(t.check.rise, t.check.fall),
                            last: None,
                            changed_ms: None,
                            up_since: None,
                        });
                }
                Job::Agent(t) => {
                    let status = self
                        .checks
                        .agents
                        .entry((t.vip, t.backend))
                        .or_insert_with(|| AgentStatus::new(&t.agent));
                    // Bounds that changed apply to the current percentage.
                    status.percent = crate::agent::clamp_percent(status.percent, &t.agent);
                }
            }
        }
        if let Some(tx) = &self.targets {
            let _ = tx.send(jobs);
        }
    }

    fn health_result(&mut self, vip: VipAddr, backend: IpAddr, probe: Probe) {
        let Some(h) = self.checks.health.get_mut(&(vip, backend)) else {
            return; // a result from a check that was just removed
        };
        let changed = h.machine.observe(probe.ok);
        h.last = Some(probe.clone());
        let Some(up) = changed else { return };
        h.up_since = up.then(tokio::time::Instant::now);
        self.apply_checks();
        // The change time is when the data plane has it, not before.
        let at = now_ms();
        if let Some(h) = self.checks.health.get_mut(&(vip, backend)) {
            h.changed_ms = Some(at);
        }
        let state = if up { "up" } else { "down" };
        self.event(at, vip, backend, state, probe.detail);
    }

    /// An agent's answer: the weight follows at once (one table rebuild
    /// per change).
    fn agent_result(
        &mut self,
        vip: VipAddr,
        backend: IpAddr,
        probe: Probe,
        report: Option<Report>,
    ) {
        let Some(agent) = self
            .config
            .vips
            .iter()
            .find(|v| vip_addr(v) == vip)
            .and_then(|v| {
                v.backends
                    .iter()
                    .find(|b| b.address == backend)
                    .and_then(|b| v.agent_for(b))
            })
            .cloned()
        else {
            return;
        };
        let Some(status) = self.checks.agents.get_mut(&(vip, backend)) else {
            return;
        };
        if !probe.ok {
            tracing::debug!(vip = %vip, backend = %backend, detail = %probe.detail, "agent check failed; its last report stays in force");
        }
        let mode_before = status.mode;
        let detail = probe.detail.clone();
        if !status.apply(probe, report, &agent) {
            return;
        }
        let (percent, mode) = (status.percent, status.mode);
        self.apply_checks();
        let at = now_ms();
        if mode != mode_before {
            self.event(at, vip, backend, &format!("agent {mode}"), detail);
        } else {
            tracing::info!(vip = %vip, backend = %backend, percent, "agent weight {percent}%");
        }
    }

    /// Makes the data plane follow the checks' state.
    fn apply_checks(&mut self) {
        let config = self.config.clone();
        if let Err(e) = self.reconcile(&config, Duration::ZERO) {
            tracing::error!(error = %e.message, "applying a health change");
        }
    }

    /// Logs a state change as one line and keeps it for `hola events`.
    fn event(&mut self, at: u64, vip: VipAddr, backend: IpAddr, state: &str, detail: String) {
        tracing::warn!(vip = %vip, backend = %backend, state, detail = %detail, "backend {state}");
        self.events.push_back(Event {
            timestamp_ms: at,
            vip: vip.to_string(),
            backend: backend.to_string(),
            state: state.into(),
            detail,
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// Whether a backend is ramping up (slow start): its weight changes
    /// every second until it reaches the configured one.
    fn ramping(&self) -> bool {
        self.config.vips.iter().any(|v| {
            v.backends.iter().any(|b| {
                let ramp = v.health_for(b).and_then(|h| h.slow_start);
                let since = self
                    .checks
                    .health
                    .get(&(vip_addr(v), b.address))
                    .and_then(|h| h.up_since);
                matches!((ramp, since), (Some(r), Some(t)) if t.elapsed() < r + Duration::from_secs(1))
            })
        })
    }

    fn change(&mut self, change: Change) -> Result<(), ApiError> {
        let mut next = self.config.clone();
        change(&mut next)?;
        next.validate("request")
            .map_err(|e| ApiError::bad_request(describe(&next, &e)))?;
        if next == self.config {
            return Ok(());
        }
        let old = self.config.clone();
        if let Err(e) = self.reconcile(&next, Duration::from_secs(2)) {
            // Put the kernel back the way the persisted state says.
            if let Err(e2) = self.reconcile(&old, Duration::ZERO) {
                tracing::error!(error = %e2.message, "restoring the previous configuration failed");
            }
            return Err(e);
        }
        if let Err(e) = persist(&self.state_file, &next) {
            // Unsaved, the change would be undone by the next restart:
            // refuse it, and put the kernel back as the saved state says.
            if let Err(e2) = self.reconcile(&old, Duration::ZERO) {
                tracing::error!(error = %e2.message, "restoring the previous configuration failed");
            }
            return Err(ApiError::internal(format!(
                "saving the state file {} failed: {e}; the change is not made (check the \
                 space and permissions of {}, and that {} is a file or absent)",
                self.state_file.display(),
                self.state_file.parent().unwrap_or(Path::new(".")).display(),
                prev_path(&self.state_file).display()
            )));
        }
        self.config = next;
        self.publish_targets();
        tracing::info!(
            "configuration changed and saved to {}",
            self.state_file.display()
        );
        Ok(())
    }

    /// Makes the kernel match `config`. `wait` bounds how long a new
    /// backend's next hop is waited for (unresolved ones are installed
    /// without and retried every second).
    pub fn reconcile(&mut self, config: &Config, wait: Duration) -> Result<(), ApiError> {
        let want: BTreeMap<VipAddr, &VipConfig> =
            config.vips.iter().map(|v| (vip_addr(v), v)).collect();
        let have: Vec<(VipSpec, Vec<BackendSpec>)> = self.dp.vips().map(|(s, b)| (*s, b)).collect();
        for (spec, _) in &have {
            let keep = want
                .get(&spec.vip)
                .is_some_and(|v| self.spec_of(config, v) == *spec);
            if !keep {
                self.dp
                    .remove_vip(&spec.vip)
                    .map_err(|e| ApiError::internal(e.to_string()))?;
            }
        }
        for (addr, v) in &want {
            let spec = self.spec_of(config, v);
            if !self.dp.vips().any(|(s, _)| s.vip == *addr) {
                self.dp
                    .add_vip(spec)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
            }
            let mut specs = Vec::with_capacity(v.backends.len());
            let effective = self.checks.effective(v);
            for (b, &(weight, up)) in v.backends.iter().zip(&effective) {
                let nexthop = self.nexthop(b.address, wait);
                specs.push(BackendSpec {
                    addr: b.address,
                    weight,
                    nexthop,
                    up,
                    port: b.port.unwrap_or(0),
                });
            }
            self.dp
                .set_backends(addr, &specs)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        Ok(())
    }

    fn spec_of(&self, config: &Config, v: &VipConfig) -> VipSpec {
        VipSpec {
            vip: vip_addr(v),
            mode: match v.mode {
                VipMode::Dsr => Mode::Dsr,
                VipMode::Tunnel => Mode::Tunnel,
                VipMode::Nat => Mode::Nat,
                VipMode::FullNat => Mode::FullNat,
            },
            src_hash: v.hash == HashKind::Source,
            table_size: config.table_size(v),
        }
    }

    fn nexthop(&mut self, addr: IpAddr, wait: Duration) -> Option<Nexthop> {
        if let Some(n) = self.nexthops.get(&addr) {
            return Some(*n);
        }
        match neigh::resolve(addr, self.ingress_ifindex, wait) {
            Ok(n) => {
                tracing::info!(backend = %addr, "next hop resolved");
                self.nexthops.insert(addr, n);
                Some(n)
            }
            Err(e) => {
                if !wait.is_zero() {
                    tracing::warn!(backend = %addr, error = %e, "next hop unresolved; its packets are dropped (drop_no_nexthop) until it answers");
                }
                None
            }
        }
    }

    fn report(&mut self) -> Result<StatsReport, ApiError> {
        let now = self
            .dp
            .stats()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (interval, prev) = match (&self.prev, &self.last) {
            (Some((t0, s0)), Some((t1, s1))) => ((*t1 - *t0).as_secs_f64(), Some((s0, s1))),
            _ => (0.0, None),
        };
        let rate = |a: u64, b: u64| {
            if interval > 0.0 {
                b.saturating_sub(a) as f64 / interval
            } else {
                0.0
            }
        };
        let mut report = StatsReport {
            version: STATS_VERSION,
            timestamp_ms,
            interval_seconds: interval,
            nat: crate::stats::NatReport {
                capacity: self.dp.config().nat_capacity,
                ..self.nat
            },
            cluster: self
                .cluster
                .as_ref()
                .map(|(c, _)| crate::cluster::ClusterReport {
                    events_lost: self.dp.events_lost().unwrap_or(0),
                    ..c.report()
                }),
            ..Default::default()
        };
        for (name, r) in &now.reasons {
            report.reasons.insert(
                (*name).to_string(),
                PacketsBytes {
                    packets: r.packets,
                    bytes: r.bytes,
                },
            );
        }
        for v in &self.config.vips {
            let key = vip_addr(v);
            let Some(c) = now.vips.get(&key) else {
                continue;
            };
            let (p0, p1) = match prev {
                Some((s0, s1)) => (s0.vips.get(&key), s1.vips.get(&key)),
                None => (None, None),
            };
            let vr = |f: fn(&crate::dataplane::VipCounters) -> u64| match (p0, p1) {
                (Some(a), Some(b)) => rate(f(a), f(b)),
                _ => 0.0,
            };
            let mut vip = VipReport {
                vip: key.to_string(),
                address: v.address.to_string(),
                port: v.port,
                protocol: proto_of(v.protocol).to_string(),
                mode: match v.mode {
                    VipMode::Dsr => "dsr",
                    VipMode::Tunnel => "tunnel",
                    VipMode::Nat => "nat",
                    VipMode::FullNat => "fullnat",
                }
                .into(),
                hash: match v.hash {
                    HashKind::FiveTuple => "5-tuple",
                    HashKind::Source => "source",
                }
                .into(),
                table_size: self.config.table_size(v),
                packets: c.stats.packets,
                bytes: c.stats.bytes,
                new_flows: c.stats.new_flows,
                no_backend: c.stats.no_backend,
                rates: Rates {
                    packets_per_second: vr(|c| c.stats.packets),
                    bytes_per_second: vr(|c| c.stats.bytes),
                    new_flows_per_second: vr(|c| c.stats.new_flows),
                },
                backends: Vec::new(),
            };
            let effective = self.checks.effective(v);
            for (i, b) in v.backends.iter().enumerate() {
                let bc = c.backends.get(&b.address).copied().unwrap_or_default();
                let (b0, b1) = (
                    p0.and_then(|c| c.backends.get(&b.address)),
                    p1.and_then(|c| c.backends.get(&b.address)),
                );
                let br = |f: fn(&lb_common::BackendStats) -> u64| match (b0, b1) {
                    (Some(a), Some(b)) => rate(f(a), f(b)),
                    _ => 0.0,
                };
                let (eff, _) = effective[i];
                let h = self.checks.health.get(&(key, b.address));
                let ejected = self.checks.ejected.contains(&(key, b.address));
                let handshake = c.handshakes.get(&b.address).map(|hs| {
                    let timeouts = self
                        .passive
                        .get(&(key, b.address))
                        .map_or(0, |p| p.timeouts);
                    crate::stats::HandshakeReport::new(hs, timeouts)
                });
                vip.backends.push(BackendReport {
                    handshake,
                    health: match h {
                        _ if ejected => "down",
                        None => "unchecked",
                        Some(h) if h.machine.up => "up",
                        Some(_) => "down",
                    }
                    .into(),
                    last_check: h.and_then(|h| h.last.clone()),
                    last_change_ms: h.and_then(|h| h.changed_ms),
                    agent: self.checks.agents.get(&(key, b.address)).cloned(),
                    address: b.address.to_string(),
                    weight: b.weight,
                    effective_weight: eff,
                    state: if b.backup {
                        "backup"
                    } else if b.weight == 0 || b.drain {
                        "draining"
                    } else {
                        "active"
                    }
                    .into(),
                    nexthop_resolved: self.nexthops.contains_key(&b.address),
                    packets: bc.packets,
                    bytes: bc.bytes,
                    new_flows: bc.new_flows,
                    rates: Rates {
                        packets_per_second: br(|s| s.packets),
                        bytes_per_second: br(|s| s.bytes),
                        new_flows_per_second: br(|s| s.new_flows),
                    },
                });
            }
            report.vips.push(vip);
        }
        Ok(report)
    }

    fn flow(
        &self,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        proto: Protocol,
    ) -> Result<FlowAnswer, ApiError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(ApiError::bad_request(format!(
                "{src} and {dst} are of different address families"
            )));
        }
        let p = proto_of(proto);
        let vip = self
            .config
            .vips
            .iter()
            .map(vip_addr)
            .filter(|v| v.addr == dst.ip() && v.proto == p)
            .max_by_key(|v| v.port == dst.port())
            .filter(|v| v.port == dst.port() || v.port == 0)
            .ok_or_else(|| ApiError::not_found(format!("no VIP for {dst}/{p}")))?;
        let (s, family) = addr_bytes(src.ip());
        let (d, _) = addr_bytes(dst.ip());
        let key = FlowKey {
            src: s,
            dst: d,
            sport: src.port().to_be(),
            dport: dst.port().to_be(),
            proto: if p == Proto::Tcp {
                PROTO_TCP
            } else {
                PROTO_UDP
            },
            family: if family == FAMILY_V4 {
                FAMILY_V4
            } else {
                FAMILY_V6
            },
            _pad: [0; 2],
        };
        if let Some(entry) = self.dp.flow_entry(&key)
            && let Some(b) = self.dp.backend_by_id(&vip, entry.backend_id)
        {
            return Ok(FlowAnswer {
                vip: vip.to_string(),
                backend: Some(b.to_string()),
                reason: "flow-table entry".into(),
            });
        }
        // As the program: a flow learned from a cluster peer, when replication is on.
        if self
            .cluster
            .as_ref()
            .is_some_and(|(c, _)| c.settings.replicate)
            && let Some(entry) = self.dp.peer_flow(&key)
            && let Some(b) = self.dp.backend_by_id(&vip, entry.backend_id)
        {
            return Ok(FlowAnswer {
                vip: vip.to_string(),
                backend: Some(b.to_string()),
                reason: "learned from a cluster peer (PEER_FLOWS)".into(),
            });
        }
        let (slot, backend) = self
            .dp
            .maglev_slot(&vip, &key)
            .ok_or_else(|| ApiError::not_found(format!("VIP {vip} is not programmed")))?;
        Ok(FlowAnswer {
            vip: vip.to_string(),
            backend: backend.map(|b| b.to_string()),
            reason: match backend {
                Some(_) => format!("Maglev slot {slot} (new flow)"),
                None => {
                    format!("Maglev slot {slot} is empty: the VIP has no backend with weight > 0")
                }
            },
        })
    }
}

/// Where [`persist`] keeps the state a change replaced: `NAME.prev` beside
/// `NAME`.
pub fn prev_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".prev");
    path.with_file_name(name)
}

/// Writes `config` to `path` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. The state it replaces
/// stays beside it as [`prev_path`] (a hard link made before the rename, so
/// `path` itself is never missing). Writing what `path` already holds does
/// nothing, so that a restart does not overwrite the previous state.
pub fn persist(path: &Path, config: &Config) -> std::io::Result<()> {
    let text = config.to_toml();
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    if path.exists() {
        let prev_tmp = dir.join(format!(".{name}.prev.tmp"));
        let _ = std::fs::remove_file(&prev_tmp);
        if std::fs::hard_link(path, &prev_tmp).is_err() {
            // A file system without hard links: a copy, synced.
            std::fs::copy(path, &prev_tmp)?;
            std::fs::File::open(&prev_tmp)?.sync_all()?;
        }
        std::fs::rename(&prev_tmp, prev_path(path))?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A refused configuration change, in the terms of the request: each error
/// says which VIP and backend it is about (the field paths count VIPs and
/// backends by position, which a caller of the API does not see).
fn describe(config: &Config, errors: &crate::config::ConfigErrors) -> String {
    let lines: Vec<String> = errors
        .0
        .iter()
        .map(|e| match e.path().and_then(|p| subject(config, p)) {
            Some(s) => format!("{s}: {}", e.message()),
            None => e.message().to_string(),
        })
        .collect();
    lines.join("\n")
}

/// "VIP 198.18.1.1:80/tcp" or "VIP 198.18.1.1:80/tcp, backend 198.18.0.11"
/// for a field path under `vip[i]` or `vip[i].backend[j]`.
fn subject(config: &Config, path: &str) -> Option<String> {
    let index = |s: &str, key: &str| -> Option<(usize, usize)> {
        let rest = s.strip_prefix(key)?.strip_prefix('[')?;
        let end = rest.find(']')?;
        Some((rest[..end].parse().ok()?, key.len() + end + 2))
    };
    let (i, used) = index(path, "vip")?;
    let vip = config.vips.get(i)?;
    let mut s = format!("VIP {}", vip_addr(vip));
    if let Some((j, _)) = path[used..]
        .strip_prefix('.')
        .and_then(|rest| index(rest, "backend"))
        && let Some(b) = vip.backends.get(j)
    {
        s += &format!(", backend {}", b.address);
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, BackendConfig, CheckKind, HealthConfig};

    fn vip(backends: &[(&str, u32, bool)]) -> VipConfig {
        VipConfig {
            address: "198.18.1.1".parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
            mode: VipMode::Dsr,
            hash: HashKind::FiveTuple,
            table_size: None,
            health: Some(HealthConfig::new(CheckKind::Tcp)),
            agent: Some(AgentConfig::new(9999)),
            outlier: None,
            backends: backends
                .iter()
                .map(|(a, w, backup)| BackendConfig {
                    address: a.parse().expect("ip"),
                    weight: *w,
                    backup: *backup,
                    interface: None,
                    port: None,
                    drain: false,
                    health: None,
                    agent: None,
                })
                .collect(),
        }
    }

    fn checks(v: &VipConfig) -> Checks {
        let mut c = Checks::default();
        for b in &v.backends {
            let key = (vip_addr(v), b.address);
            c.health.insert(
                key,
                Health {
                    machine: Machine::new(1, 1),
                    last: None,
                    changed_ms: None,
                    up_since: None,
                },
            );
            c.agents
                .insert(key, AgentStatus::new(&AgentConfig::new(9999)));
        }
        c
    }

    fn all(c: &Checks, v: &VipConfig) -> Vec<(u32, bool)> {
        c.effective(v)
    }

    #[test]
    fn backups_take_over_only_when_no_primary_can() {
        let v = vip(&[
            ("198.18.0.11", 10, false),
            ("198.18.0.12", 20, false),
            ("198.18.0.13", 5, true),
        ]);
        let mut c = checks(&v);
        let key = |i: usize| (vip_addr(&v), v.backends[i].address);
        assert_eq!(all(&c, &v), [(10, true), (20, true), (0, true)]);
        c.health.get_mut(&key(0)).unwrap().machine.observe(false);
        assert_eq!(all(&c, &v), [(0, false), (20, true), (0, true)]);
        // The last primary drained by its agent: the backup takes new flows.
        c.agents.get_mut(&key(1)).unwrap().mode = AgentMode::Drain;
        assert_eq!(all(&c, &v), [(0, false), (0, true), (5, true)]);
        // Declared down by its agent instead: down, flows re-balanced.
        c.agents.get_mut(&key(1)).unwrap().mode = AgentMode::Down;
        assert_eq!(all(&c, &v), [(0, false), (0, false), (5, true)]);
        // The backup fails too: nothing takes flows.
        c.health.get_mut(&key(2)).unwrap().machine.observe(false);
        assert_eq!(all(&c, &v), [(0, false), (0, false), (0, false)]);
        // A primary back: the backup (up again too) gives new flows back.
        c.health.get_mut(&key(2)).unwrap().machine.observe(true);
        c.health.get_mut(&key(0)).unwrap().machine.observe(true);
        assert_eq!(all(&c, &v), [(10, true), (0, false), (0, true)]);
    }

    fn config_with(vips: Vec<VipConfig>) -> Config {
        let mut c =
            crate::config::parse("[global]\ninterfaces = [\"eth0\"]\n", "t").expect("config");
        c.vips = vips;
        c
    }

    #[test]
    fn persist_keeps_the_replaced_state_beside_and_skips_unchanged_writes() {
        let dir = std::env::temp_dir().join(format!("hola-unit-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = dir.join("state.toml");
        let prev = prev_path(&state);
        assert_eq!(prev, dir.join("state.toml.prev"));
        let c1 = config_with(vec![vip(&[("198.18.0.11", 1, false)])]);
        let c2 = config_with(vec![vip(&[("198.18.0.11", 2, false)])]);
        let c3 = config_with(vec![vip(&[("198.18.0.12", 3, false)])]);
        persist(&state, &c1).expect("first write");
        assert!(!prev.exists(), "nothing was replaced");
        persist(&state, &c1).expect("same state again");
        assert!(!prev.exists(), "an unchanged write replaces nothing");
        persist(&state, &c2).expect("second");
        persist(&state, &c3).expect("third");
        let read = |p: &Path| crate::config::load(p).expect("parses");
        assert_eq!(read(&state), c3);
        assert_eq!(read(&prev), c2, "the state before the last change");
        // Restarting writes the same state: the previous one stays.
        persist(&state, &c3).expect("unchanged");
        assert_eq!(read(&prev), c2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["state.toml", "state.toml.prev"],
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_refused_change_names_the_vip_and_the_backend() {
        let mut c = config_with(vec![vip(&[
            ("198.18.0.11", 1, false),
            ("198.18.0.12", 1, false),
        ])]);
        c.vips[0].backends[1].weight = 70_000;
        c.vips[0].table_size = Some(1000);
        let e = c.validate("request").expect_err("invalid");
        let msg = describe(&c, &e);
        assert!(
            msg.contains(
                "VIP 198.18.1.1:80/tcp, backend 198.18.0.12: vip[0].backend[1].weight = 70000: \
                 must be 0..=10000"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("VIP 198.18.1.1:80/tcp: vip[0].table_size = 1000: not prime"),
            "{msg}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn agent_percent_scales_and_slow_start_ramps() {
        let v = vip(&[("198.18.0.11", 100, false), ("198.18.0.12", 100, false)]);
        let mut c = checks(&v);
        let key = (vip_addr(&v), v.backends[0].address);
        c.agents.get_mut(&key).unwrap().percent = 50;
        assert_eq!(all(&c, &v), [(50, true), (100, true)]);
        // Just came up with a 30 s slow start: a tenth of the scaled weight.
        let mut v2 = v.clone();
        v2.backends[0].health = Some(HealthConfig {
            slow_start: Some(Duration::from_secs(30)),
            ..HealthConfig::new(CheckKind::Tcp)
        });
        c.health.get_mut(&key).unwrap().up_since = Some(tokio::time::Instant::now());
        assert_eq!(c.effective(&v2)[0], (5, true));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(c.effective(&v2)[0], (27, true), "5 + 45 × 15/30");
        tokio::time::advance(Duration::from_millis(14_999)).await;
        assert_eq!(c.effective(&v2)[0], (49, true), "not yet full");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(c.effective(&v2)[0], (50, true), "full weight at 30 s");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(c.effective(&v2)[0], (50, true));
    }
}
