//! The owner of the data plane: one thread holds the `Dataplane` (every map
//! handle) and the desired configuration; everything else sends it events
//! and requests on bounded channels, each producer its own type:
//!
//! - the control API: [`Request`] (typed commands and queries, in
//!   `command.rs` beside this folder: the API depends on that contract,
//!   never on the owner);
//! - the health checker: [`CheckEvent`];
//! - the next-hop resolver: [`NeighEvent`];
//! - the cluster's tasks: [`ClusterEvent`].
//!
//! The loop ([`Owner::run`]) never waits on anything but its inputs and its
//! timers. What it does with them lives beside it: changes and reconcile
//! (`change`), `hola apply` and its preview (`apply`), health bookkeeping and events (`checks`), replication
//! (`replicate`), stats (`report`), flow explanations (`flow`).

mod announce;
mod apply;
mod change;
mod checks;
mod flow;
mod replicate;
mod report;
mod trace;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, sync::oneshot};
use tokio_util::sync::CancellationToken;

pub use crate::command::{Command, ErrorKind, OwnerError, Request};
pub use crate::stats::{Event, FlowAnswer};
use crate::{
    cluster::{ClusterEvent, Shared as ClusterShared},
    config::Config,
    dataplane::{Dataplane, Stats},
    health::{
        CheckEvent, Checks, Job,
        outlier::Outliers,
        saved::{SavedChecks, health_path},
    },
    model::Nexthop,
    neigh::{NeighEvent, Resolver},
    stats::NatReport,
};
pub use announce::{Announce, Want};

/// How many state changes `hola events` keeps (the oldest go first).
pub const MAX_EVENTS: usize = 1000;

/// How long a change that adds backends waits for their next hops before
/// it is answered (unresolved ones are installed without, and follow).
pub const NEXTHOP_WAIT: Duration = Duration::from_secs(2);

/// Capacities of the owner's inbound channels. A full channel makes its
/// producer wait: requests and events are never dropped, and memory stays
/// bounded whatever the producers send.
pub const REQUESTS: usize = 64;
pub const CHECK_EVENTS: usize = 1024;
pub const NEIGH_EVENTS: usize = 256;

/// The owner's inbound channels.
pub struct Inputs {
    pub requests: mpsc::Receiver<Request>,
    pub checks: mpsc::Receiver<CheckEvent>,
    pub neigh: mpsc::Receiver<NeighEvent>,
    pub cluster: mpsc::Receiver<ClusterEvent>,
}

/// The senders of [`Inputs`], for the producers.
#[derive(Clone)]
pub struct Senders {
    pub requests: mpsc::Sender<Request>,
    pub checks: mpsc::Sender<CheckEvent>,
    pub neigh: mpsc::Sender<NeighEvent>,
    pub cluster: mpsc::Sender<ClusterEvent>,
}

/// Makes the owner's bounded channels.
pub fn channels() -> (Senders, Inputs) {
    let (requests, r) = mpsc::channel(REQUESTS);
    let (checks, c) = mpsc::channel(CHECK_EVENTS);
    let (neigh, n) = mpsc::channel(NEIGH_EVENTS);
    let (cluster, k) = mpsc::channel(crate::cluster::EVENT_CAPACITY);
    (
        Senders {
            requests,
            checks,
            neigh,
            cluster,
        },
        Inputs {
            requests: r,
            checks: c,
            neigh: n,
            cluster: k,
        },
    )
}

/// A reply held until the next hops it needs are known, or its deadline.
struct Pending {
    deadline: tokio::time::Instant,
    backends: Vec<IpAddr>,
    reply: Reply,
}

enum Reply {
    Change(oneshot::Sender<Result<(), OwnerError>>),
    Apply(
        oneshot::Sender<Result<crate::command::ApplyReport, OwnerError>>,
        Box<crate::command::ApplyReport>,
    ),
    Ready(oneshot::Sender<()>),
}

pub struct Owner {
    dp: Dataplane,
    config: Config,
    state_file: PathBuf,
    nexthops: HashMap<IpAddr, Nexthop>,
    /// Backends just added whose next hop is being resolved, until when:
    /// they take no new flow before it is known (or the time is up).
    held: HashMap<IpAddr, tokio::time::Instant>,
    resolver: Option<Resolver>,
    checks: Checks,
    outliers: Outliers,
    /// Where the checks' state is kept across restarts, and what was last
    /// written there.
    health_file: PathBuf,
    health_written: Option<SavedChecks>,
    events: VecDeque<Event>,
    targets: Option<tokio::sync::watch::Sender<Vec<Job>>>,
    prev: Option<(Instant, Stats)>,
    last: Option<(Instant, Stats)>,
    /// When flood mode was last logged.
    flood_logged: Option<Instant>,
    nat: NatReport,
    nat_swept: Option<Instant>,
    pending: Vec<Pending>,
    /// Cluster replication, and this node's MAC on the main interface
    /// (the source of NAT replies it sends for peers' flows).
    cluster: Option<(Arc<ClusterShared>, [u8; 6])>,
    ingress_ifindex: u32,
    /// BGP: where the addresses to announce go (`[bgp]` only).
    announcing: Option<announce::Announcing>,
    /// Checks may go through the VIP: `hola_probe` is attached and the
    /// probes' route installed (`through_vip`).
    probe_through: bool,
    /// The same for IPv6 VIPs (their route through the balancer's
    /// interface could be installed).
    probe_through_v6: bool,
    /// `hola trace`: the trace in progress, and the last generation given.
    tracing: Option<trace::Tracing>,
    trace_generation: u32,
}

impl Owner {
    /// An owner of `dp` that is to make the kernel hold `config`, saving
    /// every change to `state_file`.
    pub fn new(dp: Dataplane, config: Config, state_file: PathBuf, ingress_ifindex: u32) -> Self {
        // Next hops a previous daemon left in the maps stay in use until the
        // resolver says otherwise: a restart must not drop a packet.
        let nexthops = dp
            .tables()
            .vips()
            .flat_map(|v| &v.backends)
            .filter_map(|b| Some((b.spec.addr, b.spec.nexthop?)))
            .collect();
        let health_file = health_path(&state_file);
        let mut checks = Checks::default();
        let mut outliers = Outliers::default();
        let health_written = match SavedChecks::read(&health_file) {
            Ok(Some(saved)) => {
                let keys: Vec<_> = config
                    .vips
                    .iter()
                    .flat_map(|v| v.backends.iter().map(|b| (v.key(), b.address)))
                    .collect();
                tracing::info!(
                    "backend health from {} ({} backends)",
                    health_file.display(),
                    saved.backends.len()
                );
                saved.clone().restore(&mut checks, &mut outliers, &keys);
                Some(saved)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(
                    "the saved backend health cannot be used ({e}): every checked backend \
                     starts as its check's `initial` says; the file is replaced at the first \
                     health change"
                );
                None
            }
        };
        Owner {
            dp,
            config,
            state_file,
            nexthops,
            held: HashMap::new(),
            resolver: None,
            checks,
            outliers,
            health_file,
            health_written,
            events: VecDeque::new(),
            targets: None,
            prev: None,
            last: None,
            flood_logged: None,
            nat: NatReport::default(),
            nat_swept: None,
            pending: Vec::new(),
            cluster: None,
            ingress_ifindex,
            announcing: None,
            tracing: None,
            trace_generation: 0,
            probe_through: false,
            probe_through_v6: false,
        }
    }

    /// Lets checks of IPv4 VIPs, and of IPv6 ones when `v6`, go through
    /// the VIP from now on (`hola_probe` attached, the marked probes'
    /// routes installed).
    pub fn through_vip(&mut self, v6: bool) {
        self.probe_through = true;
        self.probe_through_v6 = v6;
        if self.targets.is_some() {
            self.publish_targets();
        }
    }

    /// Resolves next hops through `resolver` from now on.
    pub fn resolve_with(&mut self, resolver: Resolver) {
        self.resolver = Some(resolver);
        self.want_nexthops();
    }

    /// Starts health checking: the targets of the current configuration now,
    /// and again after every change.
    pub fn check_with(&mut self, targets: tokio::sync::watch::Sender<Vec<Job>>) {
        self.targets = Some(targets);
        self.publish_targets();
    }

    /// Makes the kernel hold the configuration (at start: what the pinned
    /// maps hold already is kept, only differences are written).
    pub fn start(&mut self) -> Result<(), OwnerError> {
        let config = self.config.clone();
        // The saved health first: a backend that was down must not be
        // written up, even for the time until the checker starts.
        self.checks.track(&crate::health::jobs(&config));
        self.hold_new(&config);
        self.reconcile(&config)
    }

    /// The backends of `config` whose next hops are not known yet take no
    /// new flow until they are, for up to [`NEXTHOP_WAIT`] (a packet sent
    /// to a backend without one is dropped).
    pub(super) fn hold_new(&mut self, config: &Config) {
        let until = tokio::time::Instant::now() + NEXTHOP_WAIT;
        for b in config.vips.iter().flat_map(|v| &v.backends) {
            if !self.nexthops.contains_key(&b.address) {
                self.held.entry(b.address).or_insert(until);
            }
        }
    }

    /// Lets held backends take flows once their next hop is known or their
    /// time is up.
    fn release_held(&mut self) {
        let now = tokio::time::Instant::now();
        let before = self.held.len();
        let nexthops = &self.nexthops;
        self.held
            .retain(|a, until| *until > now && !nexthops.contains_key(a));
        if self.held.len() != before {
            self.apply_checks("backends whose next hop is known or overdue");
        }
    }

    /// The held backends, for `reconcile::hold_unresolved`.
    pub(super) fn held(&self) -> HashSet<IpAddr> {
        self.held.keys().copied().collect()
    }

    /// Serves its inputs until `shutdown`. Samples the counters once a
    /// second (for rates), sweeps NAT entries, applies the outlier rule
    /// and slow start; with a cluster, drains new entries every 20 ms.
    pub async fn run(mut self, mut inputs: Inputs, shutdown: CancellationToken) {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // With peers, new entries leave within this.
        let mut drain = tokio::time::interval(Duration::from_millis(20));
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let replicating = self.cluster.is_some();
        loop {
            let deadline = self
                .pending
                .iter()
                .map(|p| p.deadline)
                .chain(self.held.values().copied())
                .chain(self.announce_deadline())
                .min();
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(r) = inputs.requests.recv() => self.handle(r),
                Some(e) = inputs.neigh.recv() => self.neigh_event(e),
                Some(e) = inputs.checks.recv() => self.check_event(e),
                Some(e) = inputs.cluster.recv() => self.cluster_event(e),
                () = sleep_until(deadline), if deadline.is_some() => {}
                _ = second.tick() => self.every_second(),
                _ = drain.tick(), if replicating || self.tracing.is_some() => {}
            }
            self.trace_drain();
            self.release_held();
            self.answer_pending();
            self.replicate();
            self.announce();
        }
        // Changes held for their next hops are made and saved: say so.
        self.held.clear();
        for p in self.pending.iter_mut() {
            p.deadline = tokio::time::Instant::now();
        }
        self.answer_pending();
        self.save_health();
        self.trace_stop();
    }

    /// Once a second: counters sampled, NAT swept, egress MTUs re-read,
    /// outliers, slow start.
    fn every_second(&mut self) {
        if let Ok(s) = self.dp.stats() {
            self.prev = self.last.take();
            self.last = Some((Instant::now(), s));
            self.log_flood();
        }
        self.sweep_nat();
        if let Err(e) = self.dp.end_grace_periods() {
            tracing::warn!(error = %e, "ending the previous Maglev tables' grace periods");
        }
        // An egress interface's MTU may change under us (tunnel "too big").
        if let Err(e) = self.dp.refresh_egress_mtus() {
            tracing::warn!(error = %e, "re-reading the egress interfaces' MTUs");
        }
        self.outliers();
        self.save_health();
        if self.checks.ramping(&self.config) {
            self.apply_checks("slow start");
        } else if self.dp.tables().has_dirty() {
            self.apply_checks("a retry of map writes that failed");
        }
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Change(command, reply) => {
                let wait_for = command.new_backends();
                match self.change(*command) {
                    Ok(()) => self.hold(wait_for, Reply::Change(reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Request::Apply {
                file,
                vips,
                dry_run,
                reply,
            } => {
                let wait_for = Command::Apply(vips.clone()).new_backends();
                match self.apply(&file, vips, dry_run) {
                    Ok(r) if !dry_run => self.hold(wait_for, Reply::Apply(reply, Box::new(r))),
                    r => {
                        let _ = reply.send(r);
                    }
                }
            }
            Request::Ready(reply) => {
                let all = self.config.vips.iter().flat_map(|v| &v.backends);
                let backends = all.map(|b| b.address).collect();
                self.hold(backends, Reply::Ready(reply));
            }
            Request::Drain(drained, reply) => {
                let _ = reply.send(self.set_drained(drained));
            }
            Request::Config(reply) => {
                let _ = reply.send(self.config.clone());
            }
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
            Request::Trace { spec, out, reply } => {
                let _ = reply.send(self.trace_start(spec, out));
            }
        }
    }

    /// Holds `reply` until the next hops of `backends` are known, or
    /// [`NEXTHOP_WAIT`].
    fn hold(&mut self, backends: Vec<IpAddr>, reply: Reply) {
        self.pending.push(Pending {
            deadline: tokio::time::Instant::now() + NEXTHOP_WAIT,
            backends,
            reply,
        });
        self.answer_pending();
    }

    /// Answers the held replies whose next hops are known or whose time
    /// is up.
    fn answer_pending(&mut self) {
        let now = tokio::time::Instant::now();
        let (done, wait): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| {
                p.deadline <= now || p.backends.iter().all(|b| self.nexthops.contains_key(b))
            });
        self.pending = wait;
        for p in done {
            for b in p.backends.iter().filter(|b| !self.nexthops.contains_key(b)) {
                tracing::warn!(backend = %b, "next hop unresolved; its packets are dropped (drop_no_nexthop) until it answers");
            }
            match p.reply {
                Reply::Change(r) => {
                    let _ = r.send(Ok(()));
                }
                Reply::Ready(r) => {
                    let _ = r.send(());
                }
                Reply::Apply(r, report) => {
                    let _ = r.send(Ok(*report));
                }
            }
        }
    }

    /// A next hop resolved, changed or lost: the backends behind it get it
    /// in their entries (only the VIPs that have them are written).
    fn neigh_event(&mut self, e: NeighEvent) {
        match e {
            NeighEvent::Resolved { backend, nexthop } => {
                self.held.remove(&backend);
                if self.nexthops.insert(backend, nexthop) != Some(nexthop) {
                    self.apply_checks("a next-hop change");
                }
            }
            // A next hop once known stays in use (as a restart keeps the
            // pinned one): a neighbour that stops answering for a while
            // does not cut its established flows; a new MAC replaces it.
            NeighEvent::Unresolved { backend, error } => {
                tracing::debug!(backend = %backend, error = %error, "next hop unresolved");
            }
        }
    }

    /// Tells the resolver which backends' next hops are wanted. Next hops
    /// of backends no longer configured are kept: the resolver reports
    /// only changes, and one removed and added back before it looked would
    /// otherwise never get its next hop again.
    fn want_nexthops(&mut self) {
        let mut all: Vec<IpAddr> = self
            .config
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.address))
            .collect();
        all.sort_unstable();
        all.dedup();
        if let Some(r) = &self.resolver {
            r.want(all);
        }
    }
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
