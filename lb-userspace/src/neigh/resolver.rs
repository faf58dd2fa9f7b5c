//! The resolver task: follows the next hops of the backends the owner
//! wants, off the owner's thread, and tells it of every change.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use futures_util::StreamExt as _;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, MulticastGroup};
use tokio::{
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{
    Mac, NeighError, NeighEvent, REFRESH, RETRY,
    netlink::{connect, look, neigh_of, provoke},
    track::{Outcome, Told, Track},
};

/// The owner's handle on the resolver: says which backends it wants.
#[derive(Clone, Debug)]
pub struct Resolver {
    wanted: watch::Sender<BTreeSet<IpAddr>>,
}

impl Resolver {
    /// Replaces the set of backends whose next hops the owner wants. Never
    /// blocks (a watch channel: the resolver sees the latest set); callable
    /// from any thread. Backends no longer wanted are forgotten without an
    /// event; one wanted again starts afresh.
    pub fn want(&self, backends: Vec<IpAddr>) {
        let set: BTreeSet<IpAddr> = backends.into_iter().collect();
        self.wanted.send_if_modified(|cur| {
            let changed = *cur != set;
            *cur = set;
            changed
        });
    }
}

/// Spawns the resolver on the current tokio runtime. Events go to
/// `events`; it stops when `shutdown` is cancelled, or when `events` is
/// closed. The daemon awaits the returned handle.
pub fn spawn(
    ingress_ifindex: u32,
    events: mpsc::Sender<NeighEvent>,
    shutdown: CancellationToken,
) -> (Resolver, JoinHandle<()>) {
    let (tx, rx) = watch::channel(BTreeSet::new());
    let mut state = State {
        ingress_ifindex,
        tracks: HashMap::new(),
        events,
        shutdown,
    };
    let task = tokio::spawn(async move { state.run(rx).await });
    (Resolver { wanted: tx }, task)
}

/// Why the resolver's watch over the kernel ended.
enum Stop {
    /// Shutdown, or the owner is gone: the task ends.
    Done,
    /// The netlink connection failed: it is opened again.
    Lost(NeighError),
}

impl From<NeighError> for Stop {
    fn from(e: NeighError) -> Self {
        Stop::Lost(e)
    }
}

struct State {
    ingress_ifindex: u32,
    tracks: HashMap<IpAddr, Track>,
    events: mpsc::Sender<NeighEvent>,
    shutdown: CancellationToken,
}

impl State {
    async fn run(&mut self, mut wanted: watch::Receiver<BTreeSet<IpAddr>>) {
        loop {
            match self.watch(&mut wanted).await {
                Stop::Done => return,
                Stop::Lost(e) => {
                    tracing::error!(error = %e, "next-hop resolver: netlink failed; opening it again in {}s", RETRY.as_secs());
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY) => {}
                        _ = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn watch(&mut self, wanted: &mut watch::Receiver<BTreeSet<IpAddr>>) -> Stop {
        match self.follow(wanted).await {
            Err(stop) => stop,
            Ok(never) => match never {},
        }
    }

    /// Opens the sockets (here, on the runtime's thread, in its network
    /// namespace) and follows the kernel until shutdown or a failure.
    async fn follow(
        &mut self,
        wanted: &mut watch::Receiver<BTreeSet<IpAddr>>,
    ) -> Result<std::convert::Infallible, Stop> {
        // The connection drivers end when this returns (JoinSet aborts
        // them on drop).
        let mut tasks = JoinSet::new();
        let h = connect(&mut tasks)?;
        let groups = [
            MulticastGroup::Neigh,
            MulticastGroup::Link,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ];
        let (conn, _, mut notices) =
            rtnetlink::new_multicast_connection(&groups).map_err(NeighError::Socket)?;
        tasks.spawn(conn);
        let mut tick = tokio::time::interval_at(Instant::now() + RETRY, RETRY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Notifications may have been missed while there were no sockets
        // (after a failure): everything already wanted gets a fresh look
        // at the first tick; the wanted set is (re)read at once.
        wanted.mark_changed();
        let mut all = !self.tracks.is_empty();
        let mut refresh_at = Instant::now() + REFRESH;
        loop {
            let r = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(Stop::Done),
                changed = wanted.changed() => match changed {
                    Err(_) => return Err(Stop::Done),
                    Ok(()) => {
                        let set = wanted.borrow_and_update().clone();
                        self.set_wanted(&h, set).await
                    }
                },
                notice = notices.next() => match notice {
                    None => return Err(Stop::Lost(NeighError::Closed)),
                    Some((msg, _)) => {
                        all |= self.notice(msg.payload).await?;
                        Ok(())
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now >= refresh_at {
                        all = true;
                        refresh_at = now + REFRESH;
                    }
                    self.retry(&h, std::mem::take(&mut all)).await
                }
            };
            r?;
        }
    }

    /// Takes in a new wanted set: forgets the others, looks at the new.
    async fn set_wanted(&mut self, h: &Handle, set: BTreeSet<IpAddr>) -> Result<(), Stop> {
        self.tracks.retain(|b, _| set.contains(b));
        for b in set {
            if let std::collections::hash_map::Entry::Vacant(v) = self.tracks.entry(b) {
                v.insert(Track::default());
                self.check(h, b).await?;
            }
        }
        Ok(())
    }

    /// Looks again at the unsettled backends, or at all of them.
    async fn retry(&mut self, h: &Handle, all: bool) -> Result<(), Stop> {
        let due: Vec<IpAddr> = self
            .tracks
            .iter()
            .filter(|(_, t)| all || t.unsettled())
            .map(|(b, _)| *b)
            .collect();
        for b in due {
            self.check(h, b).await?;
        }
        Ok(())
    }

    async fn check(&mut self, h: &Handle, backend: IpAddr) -> Result<(), Stop> {
        let (egress, outcome) = look(h, backend, self.ingress_ifindex).await?;
        if let Some(t) = self.tracks.get_mut(&backend) {
            t.egress = egress;
        }
        self.apply(backend, outcome).await
    }

    /// Takes in a notification. Returns whether every backend needs a
    /// fresh look (a route or link changed, or notifications were lost).
    async fn notice(&mut self, payload: NetlinkPayload<RouteNetlinkMessage>) -> Result<bool, Stop> {
        let (msg, deleted) = match payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => (m, false),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(m)) => (m, true),
            NetlinkPayload::InnerMessage(_) | NetlinkPayload::Overrun(_) => return Ok(true),
            _ => return Ok(false),
        };
        let n = neigh_of(&msg);
        let hits: Vec<(IpAddr, Outcome)> = self
            .tracks
            .iter()
            .filter_map(|(b, t)| {
                let eg = t.egress.as_ref()?;
                Some((*b, eg.notice(*b, &n, deleted, self.ingress_ifindex)?))
            })
            .collect();
        for (b, outcome) in hits {
            // A flushed or failed entry of a host that is still there comes
            // back at once; one that is gone is provoked in vain, as at each
            // retry.
            if !matches!(outcome, Outcome::Found(_))
                && let Some(hop) = n.dst
            {
                provoke(hop);
            }
            self.apply(b, outcome).await?;
        }
        Ok(false)
    }

    async fn apply(&mut self, backend: IpAddr, outcome: Outcome) -> Result<(), Stop> {
        let Some(t) = self.tracks.get_mut(&backend) else {
            return Ok(());
        };
        let old = t.told;
        let Some(event) = t.step(backend, outcome, Instant::now()) else {
            return Ok(());
        };
        log_event(old, &event);
        tokio::select! {
            sent = self.events.send(event) => sent.map_err(|_| Stop::Done),
            _ = self.shutdown.cancelled() => Err(Stop::Done),
        }
    }
}

/// The log line of a change the owner is told of, `old` being what it had
/// been told before.
fn log_event(old: Told, event: &NeighEvent) {
    match (old, event) {
        (
            Told::Resolved(o),
            NeighEvent::Resolved {
                backend,
                nexthop: n,
            },
        ) if o.dmac != n.dmac => {
            tracing::info!(backend = %backend, old_mac = %Mac(o.dmac), new_mac = %Mac(n.dmac), ifindex = n.ifindex, "next hop MAC changed");
        }
        (
            Told::Resolved(o),
            NeighEvent::Resolved {
                backend,
                nexthop: n,
            },
        ) => {
            tracing::info!(backend = %backend, mac = %Mac(n.dmac), old_ifindex = o.ifindex, ifindex = n.ifindex, "next hop interface changed");
        }
        (
            _,
            NeighEvent::Resolved {
                backend,
                nexthop: n,
            },
        ) => {
            tracing::info!(backend = %backend, mac = %Mac(n.dmac), ifindex = n.ifindex, "next hop resolved");
        }
        (_, NeighEvent::Unresolved { backend, error }) => {
            tracing::warn!(backend = %backend, error = %error, "next hop unresolved; its packets are dropped (drop_no_nexthop) until it answers");
        }
    }
}
