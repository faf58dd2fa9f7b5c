//! Balancer peers (docs/cluster.md): nodes of one cluster find each other
//! by authenticated UDP multicast (or a static list), and each streams the
//! flow-table and NAT entries its data plane creates to every peer over
//! TCP, so that a peer that takes over a flow (after a failure moves it
//! there) sends it to the same backend and translates it the same way.
//!
//! The data-plane owner is the only writer of the maps: it drains the
//! program's new-entry ring buffer and [`Shared::publish`]es what it finds
//! to every peer's queue, and answers the [`ClusterEvent`]s the tasks here
//! send it (snapshots for peers that connect, peers' entries to install);
//! this module never names the owner. The tasks only move bytes:
//! [`discovery`] keeps the peer list, [`peers`] dials each peer and streams
//! its queue (after a snapshot), and accepts the peers' streams. Every task
//! runs under the daemon's shutdown token, on its task tracker ([`start`]).

pub mod discovery;
pub mod local;
pub mod peers;
pub mod wire;

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use wire::Entry;

/// What the cluster's tasks ask of the data-plane owner.
#[derive(Debug)]
pub enum ClusterEvent {
    /// A peer connected: every entry this node holds, for its snapshot.
    Snapshot(tokio::sync::oneshot::Sender<Vec<wire::Entry>>),
    /// Entries a peer sent, to install.
    PeerEntries {
        node: String,
        entries: Vec<wire::Entry>,
    },
}

/// A capacity for the channel of [`ClusterEvent`]s (the caller makes it).
/// A `PeerEntries` holds at most [`wire::BATCH`] entries, so at most about
/// 64 Ki entries (some 10 MiB) wait for the owner; when it is full, a
/// peer's receiver waits, its TCP stream stops being read, and the
/// sending node's bounded queue drops (and counts) its oldest entries.
pub const EVENT_CAPACITY: usize = 64;

/// The cluster section of the configuration, checked.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Nodes announcing another id are ignored.
    pub id: String,
    /// The shared key (HMAC-SHA256) announcements and connections are
    /// authenticated with.
    pub key: Vec<u8>,
    /// This node's name, unique in the cluster.
    pub node: String,
    /// Where this node accepts replication connections (and what it
    /// announces).
    pub replication: SocketAddr,
    /// Multicast discovery: the group and port, and the interface (name
    /// and IPv4 address) announcements go out of and are received on.
    pub multicast: Option<Multicast>,
    /// Peers dialled whether or not they announce (networks without
    /// multicast); never dropped.
    pub static_peers: Vec<SocketAddr>,
    pub announce_interval: Duration,
    /// A multicast peer not heard from for this long is dropped.
    pub peer_timeout: Duration,
    /// Entries queued per peer before the oldest are dropped.
    pub queue: usize,
    /// Off: peers are discovered and shown, but nothing is sent or
    /// installed (what a node does without replication).
    pub replicate: bool,
}

#[derive(Clone, Debug)]
pub struct Multicast {
    pub group: Ipv4Addr,
    pub port: u16,
    pub interface: String,
    pub interface_addr: Ipv4Addr,
}

/// How a peer became known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Multicast,
    Static,
}

/// One peer's outgoing queue: bounded, the oldest dropped (and counted)
/// when full, so that a slow peer never holds up the data-plane owner.
pub struct Queue {
    entries: Mutex<VecDeque<(Instant, Entry)>>,
    cap: usize,
    dropped: AtomicU64,
    notify: tokio::sync::Notify,
}

impl Queue {
    fn new(cap: usize) -> Self {
        Queue {
            entries: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            dropped: AtomicU64::new(0),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn push(&self, now: Instant, entries: &[Entry]) {
        let mut q = self.entries.lock().expect("queue lock");
        for e in entries {
            if q.len() == self.cap {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back((now, e.clone()));
        }
        drop(q);
        self.notify.notify_one();
    }

    /// Up to `max` entries, oldest first, and when the oldest was queued.
    fn take(&self, max: usize) -> (Vec<Entry>, Option<Instant>) {
        let mut q = self.entries.lock().expect("queue lock");
        let oldest = q.front().map(|(t, _)| *t);
        let n = q.len().min(max);
        (q.drain(..n).map(|(_, e)| e).collect(), oldest)
    }

    fn clear(&self) {
        self.entries.lock().expect("queue lock").clear();
    }

    fn len(&self) -> usize {
        self.entries.lock().expect("queue lock").len()
    }
}

/// A peer this node sends to.
struct Peer {
    node: String,
    source: Source,
    last_seen: Instant,
    queue: Arc<Queue>,
    /// Stops its sender: a child of the daemon's shutdown token.
    stop: CancellationToken,
    out: Arc<OutStats>,
}

/// What the sender of one peer reports.
#[derive(Default)]
pub struct OutStats {
    connected: AtomicBool,
    sent: AtomicU64,
    snapshots: AtomicU64,
    /// Age of the oldest entry of the last batch sent (ms).
    lag_ms: AtomicU64,
    /// The peer's name, as it said in `Welcome`.
    node: Mutex<String>,
    last_error: Mutex<String>,
}

/// What arrives from one peer (by its node name).
#[derive(Default, Clone)]
struct InStats {
    received: u64,
    /// Our clock minus the sender's when its last batch arrived (ms).
    lag_ms: u64,
    snapshot_entries: Option<u64>,
    connected: bool,
}

/// State shared by the owner and the cluster's tasks.
pub struct Shared {
    pub settings: Settings,
    peers: Mutex<BTreeMap<SocketAddr, Peer>>,
    inbound: Mutex<BTreeMap<String, InStats>>,
    announcements_rejected: AtomicU64,
    connections_rejected: AtomicU64,
    installed: AtomicU64,
    unknown: AtomicU64,
    /// To the data-plane owner; bounded, so a slow owner slows the
    /// peers' streams instead of growing memory.
    events: tokio::sync::mpsc::Sender<ClusterEvent>,
}

impl Shared {
    /// `events` goes to the data-plane owner; its capacity is the
    /// caller's ([`EVENT_CAPACITY`] is one).
    pub fn new(settings: Settings, events: tokio::sync::mpsc::Sender<ClusterEvent>) -> Arc<Self> {
        Arc::new(Shared {
            settings,
            peers: Mutex::new(BTreeMap::new()),
            inbound: Mutex::new(BTreeMap::new()),
            announcements_rejected: AtomicU64::new(0),
            connections_rejected: AtomicU64::new(0),
            installed: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
            events,
        })
    }

    /// Queues `entries` for every peer (nothing when replication is off).
    pub fn publish(&self, entries: &[Entry]) {
        if entries.is_empty() || !self.settings.replicate {
            return;
        }
        let now = Instant::now();
        for p in self.peers.lock().expect("peers lock").values() {
            p.queue.push(now, entries);
        }
    }

    /// Counts what the owner did with entries from peers.
    pub fn installed(&self, installed: u64, unknown: u64) {
        self.installed.fetch_add(installed, Ordering::Relaxed);
        self.unknown.fetch_add(unknown, Ordering::Relaxed);
    }

    /// A peer was heard from (or is configured): known peers are refreshed,
    /// new ones get a queue and a sender (on `tracker`, stopped by
    /// `shutdown` or when the peer expires).
    fn saw(
        self: &Arc<Self>,
        addr: SocketAddr,
        node: &str,
        source: Source,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) {
        let mut peers = self.peers.lock().expect("peers lock");
        if let Some(p) = peers.get_mut(&addr) {
            p.last_seen = Instant::now();
            if p.node != node && !node.is_empty() {
                p.node = node.to_string();
            }
            return;
        }
        tracing::info!(peer = %node, address = %addr, via = ?source, "new peer");
        let p = Peer {
            node: node.to_string(),
            source,
            last_seen: Instant::now(),
            queue: Arc::new(Queue::new(self.settings.queue)),
            stop: shutdown.child_token(),
            out: Arc::new(OutStats::default()),
        };
        if self.settings.replicate {
            tracker.spawn(peers::send_to(
                self.clone(),
                addr,
                p.queue.clone(),
                p.stop.clone(),
                p.out.clone(),
            ));
        }
        peers.insert(addr, p);
    }

    /// Drops multicast peers not heard from within the timeout.
    fn expire(&self) {
        let timeout = self.settings.peer_timeout;
        self.peers.lock().expect("peers lock").retain(|addr, p| {
            let keep = p.source == Source::Static || p.last_seen.elapsed() < timeout;
            if !keep {
                tracing::warn!(peer = %p.node, address = %addr, after = ?timeout, "peer stopped announcing; dropped");
                p.stop.cancel();
            }
            keep
        });
    }

    fn inbound(&self, node: &str, f: impl FnOnce(&mut InStats)) {
        f(self
            .inbound
            .lock()
            .expect("inbound lock")
            .entry(node.to_string())
            .or_default());
    }

    /// What `hola stats` shows.
    pub fn report(&self) -> ClusterReport {
        let inbound = self.inbound.lock().expect("inbound lock").clone();
        let mut peers: Vec<PeerReport> = Vec::new();
        for (addr, p) in self.peers.lock().expect("peers lock").iter() {
            let said = p.out.node.lock().expect("node lock").clone();
            // A static peer that never answered is known by its address.
            let node = if !said.is_empty() {
                said
            } else if !p.node.is_empty() {
                p.node.clone()
            } else {
                addr.to_string()
            };
            let i = inbound.get(&node).cloned().unwrap_or_default();
            let err = p.out.last_error.lock().expect("error lock").clone();
            peers.push(PeerReport {
                node,
                address: addr.to_string(),
                source: p.source,
                last_seen_ms_ago: (p.source == Source::Multicast)
                    .then(|| p.last_seen.elapsed().as_millis() as u64),
                sending: p.out.connected.load(Ordering::Relaxed),
                entries_sent: p.out.sent.load(Ordering::Relaxed),
                entries_dropped: p.queue.dropped.load(Ordering::Relaxed),
                queued: p.queue.len() as u64,
                send_lag_ms: p.out.lag_ms.load(Ordering::Relaxed),
                snapshots_sent: p.out.snapshots.load(Ordering::Relaxed),
                receiving: i.connected,
                entries_received: i.received,
                receive_lag_ms: i.lag_ms,
                snapshot_received: i.snapshot_entries,
                last_error: (!err.is_empty()).then_some(err),
            });
        }
        // Peers that send to us but that we do not (yet) know of.
        for (node, i) in inbound {
            if !peers.iter().any(|p| p.node == node) {
                peers.push(PeerReport {
                    node,
                    address: String::new(),
                    source: Source::Multicast,
                    last_seen_ms_ago: None,
                    sending: false,
                    entries_sent: 0,
                    entries_dropped: 0,
                    queued: 0,
                    send_lag_ms: 0,
                    snapshots_sent: 0,
                    receiving: i.connected,
                    entries_received: i.received,
                    receive_lag_ms: i.lag_ms,
                    snapshot_received: i.snapshot_entries,
                    last_error: None,
                });
            }
        }
        ClusterReport {
            cluster: self.settings.id.clone(),
            node: self.settings.node.clone(),
            replicate: self.settings.replicate,
            replication_address: self.settings.replication.to_string(),
            peers,
            announcements_rejected: self.announcements_rejected.load(Ordering::Relaxed),
            connections_rejected: self.connections_rejected.load(Ordering::Relaxed),
            entries_installed: self.installed.load(Ordering::Relaxed),
            entries_unknown_backend: self.unknown.load(Ordering::Relaxed),
            events_lost: 0,
        }
    }
}

/// The cluster in `hola stats --json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    pub cluster: String,
    pub node: String,
    pub replicate: bool,
    pub replication_address: String,
    pub peers: Vec<PeerReport>,
    /// Announcements that failed authentication (another key) or spoke
    /// another protocol version.
    pub announcements_rejected: u64,
    /// Replication connections refused (wrong key or cluster).
    pub connections_rejected: u64,
    /// Entries from peers written to this node's maps.
    pub entries_installed: u64,
    /// Entries from peers naming a VIP or backend this node does not have
    /// (configurations differ): not installed.
    pub entries_unknown_backend: u64,
    /// New entries the data plane could not hand to userspace because its
    /// ring buffer was full (peers learn them at their next snapshot).
    #[serde(default)]
    pub events_lost: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    pub node: String,
    /// Where its replication connection goes.
    pub address: String,
    pub source: Source,
    /// Since its last announcement (multicast peers).
    pub last_seen_ms_ago: Option<u64>,
    /// Whether our stream to it is up.
    pub sending: bool,
    pub entries_sent: u64,
    /// Entries dropped from its queue because it did not keep up.
    pub entries_dropped: u64,
    pub queued: u64,
    /// Age of the oldest entry of the last batch sent to it.
    pub send_lag_ms: u64,
    pub snapshots_sent: u64,
    /// Whether its stream to us is up.
    pub receiving: bool,
    pub entries_received: u64,
    /// Our clock minus its clock when its last batch arrived.
    pub receive_lag_ms: u64,
    /// The size of the snapshot it sent when it connected.
    pub snapshot_received: Option<u64>,
    pub last_error: Option<String>,
}

/// Starts discovery, the replication listener and the static peers' senders
/// on the current tokio runtime, every task (and every task they start) on
/// `tracker` and ending soon after `shutdown` is cancelled: cancel it, then
/// `tracker.close()` and `tracker.wait().await` to stop them all.
pub async fn start(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    if shared.settings.replicate {
        let listener = tokio::net::TcpListener::bind(shared.settings.replication)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cluster: cannot listen for replication on {}: {e}; set cluster.address to an \
                     address of this node (and cluster.port to a free port)",
                    shared.settings.replication
                )
            })?;
        tracing::info!(address = %shared.settings.replication, "cluster replication listening");
        tracker.spawn(peers::accept(
            shared.clone(),
            listener,
            shutdown.clone(),
            tracker.clone(),
        ));
    } else {
        tracing::warn!(
            "cluster.replicate = false: peers are discovered but no entry is sent or installed"
        );
    }
    for addr in shared.settings.static_peers.clone() {
        shared.saw(addr, "", Source::Static, &shutdown, tracker);
    }
    if let Some(m) = shared.settings.multicast.clone() {
        let sock = discovery::socket(&m).map_err(|e| {
            anyhow::anyhow!(
                "cluster: multicast on {} ({}) group {}:{}: {e}",
                m.interface,
                m.interface_addr,
                m.group,
                m.port
            )
        })?;
        tracker.spawn(discovery::run(
            shared.clone(),
            sock,
            m,
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    Ok(())
}

/// The settings of `cfg`'s `[cluster]` as this machine resolves them (the
/// node name, the interface's address, the key file); `None` without one.
pub fn settings(cfg: &crate::config::Config) -> anyhow::Result<Option<Settings>> {
    let Some(c) = &cfg.cluster else {
        return Ok(None);
    };
    let node = match &c.node {
        Some(n) => n.clone(),
        None => {
            let h = hostname()?;
            anyhow::ensure!(
                !h.is_empty()
                    && h.len() <= 64
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "cluster: the host name {h:?} cannot be a node name (1 to 64 letters, digits, '.', \
                 '_' or '-'); set cluster.node"
            );
            h
        }
    };
    let interface = c
        .interface
        .clone()
        .or_else(|| cfg.global.interfaces.first().cloned())
        .ok_or_else(|| anyhow::anyhow!("cluster: no interface; set cluster.interface"))?;
    let interface_addr = crate::neigh::link_ipv4(&interface)
        .map_err(|e| anyhow::anyhow!("cluster: reading the addresses of {interface}: {e}"))?;
    let address = match (c.address, interface_addr) {
        (Some(a), _) => a,
        (None, Some(a)) => IpAddr::V4(a),
        (None, None) => anyhow::bail!(
            "cluster: {interface} has no IPv4 address to replicate from; give it one or set \
             cluster.address"
        ),
    };
    let key = match (&c.key, &c.key_file) {
        (Some(k), _) => k.as_bytes().to_vec(),
        (None, Some(f)) => {
            let text = std::fs::read(f).map_err(|e| {
                anyhow::anyhow!("cluster: reading the key file {}: {e}", f.display())
            })?;
            let mut k = text;
            while k.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                k.pop();
            }
            let min = crate::config::defaults::CLUSTER_KEY_MIN_LEN;
            anyhow::ensure!(
                k.len() >= min,
                "cluster: the key in {} is {} bytes; use at least {min} random characters",
                f.display(),
                k.len()
            );
            k
        }
        (None, None) => anyhow::bail!("cluster: set key or key_file"),
    };
    let multicast = if c.multicast {
        let interface_addr = interface_addr.ok_or_else(|| {
            anyhow::anyhow!(
                "cluster: multicast discovery needs an IPv4 address on {interface}; give it one, \
                 or set multicast = false and list the peers"
            )
        })?;
        Some(Multicast {
            group: c.group,
            port: c.port,
            interface: interface.clone(),
            interface_addr,
        })
    } else {
        None
    };
    let replication = SocketAddr::new(address, c.port);
    let static_peers = c
        .peers
        .iter()
        .filter_map(|p| c.peer_addr(p))
        .filter(|p| *p != replication)
        .collect();
    Ok(Some(Settings {
        id: c.id.clone(),
        key,
        node,
        replication,
        multicast,
        static_peers,
        announce_interval: c.announce_interval,
        peer_timeout: c.peer_timeout,
        queue: c.queue as usize,
        replicate: c.replicate,
    }))
}

fn hostname() -> anyhow::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; gethostname writes at
    // most that many bytes.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    anyhow::ensure!(
        r == 0,
        "cluster: gethostname failed ({}); set cluster.node",
        std::io::Error::last_os_error()
    );
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Entry, WireKey};

    fn gone(n: u8) -> Entry {
        Entry::NatGone {
            reply: WireKey {
                src: [n; 16],
                dst: [0; 16],
                sport: 0,
                dport: 0,
                proto: 6,
                family: 4,
            },
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts() {
        let q = Queue::new(3);
        let t = Instant::now();
        q.push(t, &[gone(1), gone(2)]);
        q.push(t, &[gone(3), gone(4), gone(5)]);
        assert_eq!(q.dropped.load(Ordering::Relaxed), 2);
        let (got, oldest) = q.take(10);
        assert_eq!(got, vec![gone(3), gone(4), gone(5)]);
        assert_eq!(oldest, Some(t));
        assert_eq!(q.take(10).0, vec![]);
    }

    const KEY: &[u8] = b"a loopback test key";

    /// A node on loopback that replicates to `peers`, and its channel to
    /// the owner (capacity 1: the tests play the owner).
    fn node(
        name: &str,
        replication: SocketAddr,
        peers: Vec<SocketAddr>,
    ) -> (Arc<Shared>, tokio::sync::mpsc::Receiver<ClusterEvent>) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let settings = Settings {
            id: "lab".into(),
            key: KEY.to_vec(),
            node: name.into(),
            replication,
            multicast: None,
            static_peers: peers,
            announce_interval: Duration::from_millis(200),
            peer_timeout: Duration::from_secs(1),
            queue: 16,
            replicate: true,
        };
        (Shared::new(settings, tx), rx)
    }

    /// A loopback address with a port that was free a moment ago.
    fn free_addr() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        l.local_addr().expect("local address")
    }

    async fn next(rx: &mut tokio::sync::mpsc::Receiver<ClusterEvent>) -> ClusterEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("the channel is open")
    }

    /// Two nodes on loopback: a dials b, sends its snapshot, then what is
    /// published; cancelling the shutdown token ends every task.
    #[tokio::test]
    async fn a_peer_gets_the_snapshot_then_the_queue_and_every_task_stops() {
        let (b_addr, a_addr) = (free_addr(), free_addr());
        let (b, mut b_events) = node("b", b_addr, vec![]);
        let (a, mut a_events) = node("a", a_addr, vec![b_addr]);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        start(b.clone(), shutdown.clone(), &tracker)
            .await
            .expect("b starts");
        start(a.clone(), shutdown.clone(), &tracker)
            .await
            .expect("a starts");

        let ClusterEvent::Snapshot(reply) = next(&mut a_events).await else {
            panic!("a's first event is not a snapshot request");
        };
        reply
            .send(vec![gone(1), gone(2)])
            .expect("a waits for its snapshot");
        let ClusterEvent::PeerEntries { node, entries } = next(&mut b_events).await else {
            panic!("b's first event is not entries");
        };
        assert_eq!((node.as_str(), entries), ("a", vec![gone(1), gone(2)]));
        a.publish(&[gone(3)]);
        let ClusterEvent::PeerEntries { entries, .. } = next(&mut b_events).await else {
            panic!("b's second event is not entries");
        };
        assert_eq!(entries, vec![gone(3)]);
        let sending = a.report().peers;
        assert_eq!(sending.len(), 1, "{sending:#?}");
        assert!(sending[0].sending && sending[0].node == "b", "{sending:#?}");
        assert_eq!(sending[0].snapshots_sent, 1);
        let receiving = b.report().peers;
        assert!(receiving[0].receiving, "{receiving:#?}");
        assert_eq!(receiving[0].snapshot_received, Some(2));

        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("every cluster task ends within 5 s of the shutdown");
        assert!(!a.report().peers[0].sending);
        assert!(!b.report().peers[0].receiving);
    }

    /// A peer that proves the key but sends a batch over `wire::BATCH`
    /// entries is cut off before anything reaches the owner.
    #[tokio::test]
    async fn a_batch_over_the_limit_ends_the_stream_and_reaches_no_owner() {
        use futures_util::{SinkExt as _, StreamExt as _};
        let b_addr = free_addr();
        let (b, mut b_events) = node("b", b_addr, vec![]);
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        start(b.clone(), shutdown.clone(), &tracker)
            .await
            .expect("b starts");

        let stream = tokio::net::TcpStream::connect(b_addr)
            .await
            .expect("connect to b");
        let mut conn = tokio_util::codec::Framed::new(stream, wire::MsgCodec::new());
        let Some(Ok(wire::Msg::Challenge { nonce, .. })) = conn.next().await else {
            panic!("b did not send a challenge");
        };
        let hello = wire::Msg::Hello {
            version: wire::VERSION,
            cluster: "lab".into(),
            node: "x".into(),
            proof: wire::proof(KEY, &nonce, "lab", "x"),
            nonce: wire::nonce(),
        };
        conn.send(&hello).await.expect("send hello");
        let Some(Ok(wire::Msg::Welcome { .. })) = conn.next().await else {
            panic!("b did not welcome a node with the key");
        };
        let batch = wire::Msg::Batch {
            sent_ms: 0,
            entries: vec![gone(1); wire::BATCH + 1],
        };
        conn.send(&batch).await.expect("send the batch");
        let end = tokio::time::timeout(Duration::from_secs(5), conn.next())
            .await
            .expect("b closes the stream within 5 s");
        assert!(!matches!(end, Some(Ok(_))), "b answered {end:?}");
        assert!(b_events.try_recv().is_err(), "the batch reached the owner");
        assert_eq!(b.report().peers[0].entries_received, 0);

        shutdown.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("every cluster task ends within 5 s of the shutdown");
    }
}
