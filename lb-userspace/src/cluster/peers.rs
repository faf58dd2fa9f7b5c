//! The replication streams: a sender per peer (dial, prove the key, send a
//! snapshot, then the queue as it fills) and the listener that takes the
//! peers' streams and hands their entries to the data-plane owner. Frames
//! are [`wire::MsgCodec`]'s, over `tokio_util`'s `Framed`.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::{codec::Framed, sync::CancellationToken, task::TaskTracker};

use super::{
    ClusterEvent, OutStats, Queue, Shared,
    wire::{self, BATCH, Entry, Msg, MsgCodec},
};

/// A sender with nothing to send still sends an empty batch this often,
/// so that a dead peer is noticed; a receiver that hears nothing for
/// `SILENCE` closes the connection.
const KEEPALIVE: Duration = Duration::from_secs(1);
const SILENCE: Duration = Duration::from_secs(5);
/// The handshake must be over within this.
const HANDSHAKE: Duration = Duration::from_secs(5);

/// A replication connection, one `Msg` a frame.
type Conn = Framed<TcpStream, MsgCodec>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn read_within(conn: &mut Conn, limit: Duration) -> anyhow::Result<Msg> {
    match tokio::time::timeout(limit, conn.next()).await {
        Err(_) => anyhow::bail!("nothing received for {limit:?}"),
        Ok(None) => anyhow::bail!("the connection was closed"),
        Ok(Some(m)) => Ok(m?),
    }
}

/// Hands `event` to the data-plane owner, waiting while its channel is
/// full (which stops this stream being read: back-pressure onto the peer).
async fn tell_owner(shared: &Shared, event: ClusterEvent) -> anyhow::Result<()> {
    shared
        .events
        .send(event)
        .await
        .map_err(|_| anyhow::anyhow!("the data-plane owner has stopped"))
}

/// Streams this node's entries to the peer at `addr` until `stop` is
/// cancelled (the peer expired, or the daemon stops), reconnecting (with a
/// fresh snapshot) after every failure.
pub(super) async fn send_to(
    shared: Arc<Shared>,
    addr: SocketAddr,
    queue: Arc<Queue>,
    stop: CancellationToken,
    out: Arc<OutStats>,
) {
    let mut last_error = String::new();
    loop {
        let r = stop
            .run_until_cancelled(session(&shared, addr, &queue, &out))
            .await;
        out.connected.store(false, Ordering::Relaxed);
        let Some(r) = r else { return };
        if let Err(e) = r {
            let e = format!("{e:#}");
            if e != last_error {
                tracing::warn!(peer = %addr, error = %e, "cluster: replication stream down; retrying every second");
                last_error = e.clone();
            }
            *out.last_error.lock().expect("error lock") = e;
        }
        let retry = tokio::time::sleep(Duration::from_secs(1));
        if stop.run_until_cancelled(retry).await.is_none() {
            return;
        }
    }
}

/// One connection to a peer: the handshake, the snapshot, then the queue
/// until something fails.
async fn session(
    shared: &Shared,
    addr: SocketAddr,
    queue: &Queue,
    out: &OutStats,
) -> anyhow::Result<()> {
    let (mut conn, peer) = dial(shared, addr).await?;
    *out.node.lock().expect("node lock") = peer.clone();
    out.last_error.lock().expect("error lock").clear();
    out.connected.store(true, Ordering::Relaxed);

    // Everything queued so far is in the snapshot, taken after the queue
    // is emptied: nothing is lost between the two.
    queue.clear();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tell_owner(shared, ClusterEvent::Snapshot(tx)).await?;
    let snapshot = rx
        .await
        .map_err(|_| anyhow::anyhow!("the data-plane owner dropped the snapshot request"))?;
    let total = snapshot.len() as u64;
    let started = Instant::now();
    for chunk in snapshot.chunks(BATCH) {
        let batch = Msg::Batch {
            sent_ms: now_ms(),
            entries: chunk.to_vec(),
        };
        conn.send(&batch).await?;
    }
    conn.send(&Msg::SnapshotDone { entries: total }).await?;
    out.sent.fetch_add(total, Ordering::Relaxed);
    out.snapshots.fetch_add(1, Ordering::Relaxed);
    tracing::info!(peer = %peer, address = %addr, entries = total, took = ?started.elapsed(), "cluster: snapshot sent; streaming");

    loop {
        let (entries, oldest) = queue.take(BATCH);
        if entries.is_empty() {
            tokio::select! {
                _ = queue.notify.notified() => continue,
                _ = tokio::time::sleep(KEEPALIVE) => {}
            }
        }
        let n = entries.len() as u64;
        let batch = Msg::Batch {
            sent_ms: now_ms(),
            entries,
        };
        conn.send(&batch).await?;
        out.sent.fetch_add(n, Ordering::Relaxed);
        if let Some(t) = oldest {
            out.lag_ms
                .store(t.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// Connects to the peer at `addr` and proves the key both ways: the
/// connection and the peer's name.
async fn dial(shared: &Shared, addr: SocketAddr) -> anyhow::Result<(Conn, String)> {
    let s = &shared.settings;
    let stream = tokio::time::timeout(HANDSHAKE, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr}: no answer within {HANDSHAKE:?}"))?
        .map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}"))?;
    stream.set_nodelay(true)?;
    let mut conn = Framed::new(stream, MsgCodec::new());
    let Msg::Challenge { version, nonce } = read_within(&mut conn, HANDSHAKE).await? else {
        anyhow::bail!("{addr} did not start with a challenge: not a hola replication listener?");
    };
    anyhow::ensure!(
        version == wire::VERSION,
        "{addr} speaks replication version {version}, this node {}",
        wire::VERSION
    );
    let ours = wire::nonce();
    let hello = Msg::Hello {
        version: wire::VERSION,
        cluster: s.id.clone(),
        node: s.node.clone(),
        proof: wire::proof(&s.key, &nonce, &s.id, &s.node),
        nonce: ours,
    };
    conn.send(&hello).await?;
    match read_within(&mut conn, HANDSHAKE).await? {
        Msg::Welcome { node, proof } => {
            // The listener must hold the key too before it gets anything.
            if !wire::check_proof(&s.key, &ours, &s.id, &node, &proof) {
                shared.connections_rejected.fetch_add(1, Ordering::Relaxed);
                anyhow::bail!(
                    "{addr} ({node}) failed to prove the cluster key: nothing sent (a different key, \
                     or not a node of this cluster at that address)"
                );
            }
            Ok((conn, node))
        }
        Msg::Reject { reason } => anyhow::bail!("{addr} refused this node: {reason}"),
        other => anyhow::bail!("{addr} answered the handshake with {other:?}"),
    }
}

/// Accepts the peers' replication streams until `shutdown`; each stream is
/// received in a task on `tracker` that ends with it.
pub(super) async fn accept(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let Some(accepted) = shutdown.run_until_cancelled(listener.accept()).await else {
            return;
        };
        match accepted {
            Ok((stream, from)) => {
                let (shared, shutdown) = (shared.clone(), shutdown.clone());
                tracker.spawn(async move {
                    if let Err(e) = receive(&shared, stream, from, &shutdown).await {
                        tracing::warn!(from = %from, error = %format!("{e:#}"), "cluster: replication stream from a peer ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: accepting a replication connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One peer's stream to this node, until it fails or `shutdown`.
async fn receive(
    shared: &Shared,
    stream: TcpStream,
    from: SocketAddr,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut conn = Framed::new(stream, MsgCodec::new());
    let Some(admitted) = shutdown
        .run_until_cancelled(admit(shared, &mut conn, from))
        .await
    else {
        return Ok(());
    };
    let Some(node) = admitted? else {
        return Ok(());
    };
    tracing::info!(peer = %node, from = %from, "cluster: receiving a peer's entries");
    shared.inbound(&node, |i| {
        i.connected = true;
        // A new stream starts with a new snapshot.
        i.snapshot_entries = None;
    });
    let r = shutdown
        .run_until_cancelled(stream_in(shared, &mut conn, &node))
        .await
        .unwrap_or(Ok(()));
    shared.inbound(&node, |i| i.connected = false);
    r
}

/// The listener's side of the handshake: the peer's name once both sides
/// have proved the key, `None` when the peer was refused (and told why).
async fn admit(
    shared: &Shared,
    conn: &mut Conn,
    from: SocketAddr,
) -> anyhow::Result<Option<String>> {
    let s = &shared.settings;
    let nonce = wire::nonce();
    let challenge = Msg::Challenge {
        version: wire::VERSION,
        nonce,
    };
    conn.send(&challenge).await?;
    let (node, theirs, ok) = match read_within(conn, HANDSHAKE).await? {
        Msg::Hello {
            version,
            cluster,
            node,
            proof,
            nonce: theirs,
        } => {
            let ok = if version != wire::VERSION {
                Err(format!(
                    "replication version {version}, this node speaks {}",
                    wire::VERSION
                ))
            } else if !wire::check_proof(&s.key, &nonce, &cluster, &node, &proof) {
                Err("authentication failed (a different cluster key?)".to_string())
            } else if cluster != s.id {
                Err(format!("cluster {cluster:?}, this node is in {:?}", s.id))
            } else {
                Ok(())
            };
            (node, theirs, ok)
        }
        other => (
            String::new(),
            [0; 32],
            Err(format!("no hello but {other:?}")),
        ),
    };
    if let Err(reason) = ok {
        shared.connections_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(from = %from, node = %node, "cluster: refusing a replication stream: {reason}");
        let _ = conn.send(&Msg::Reject { reason }).await;
        return Ok(None);
    }
    let welcome = Msg::Welcome {
        node: s.node.clone(),
        proof: wire::proof(&s.key, &theirs, &s.id, &s.node),
    };
    conn.send(&welcome).await?;
    Ok(Some(node))
}

/// The admitted peer `node`'s batches, handed on to the owner as they
/// come; returns only with an error.
async fn stream_in(shared: &Shared, conn: &mut Conn, node: &str) -> anyhow::Result<()> {
    loop {
        match read_within(conn, SILENCE).await? {
            Msg::Batch { sent_ms, entries } => {
                anyhow::ensure!(
                    entries.len() <= BATCH,
                    "{node} sent a batch of {} entries; the limit is {BATCH}",
                    entries.len()
                );
                let lag = now_ms().saturating_sub(sent_ms);
                let n = entries.len() as u64;
                shared.inbound(node, |i| {
                    i.received += n;
                    i.lag_ms = lag;
                });
                if !entries.is_empty() {
                    deliver(shared, node, entries).await?;
                }
            }
            Msg::SnapshotDone { entries } => {
                tracing::info!(peer = %node, entries, "cluster: snapshot received");
                shared.inbound(node, |i| i.snapshot_entries = Some(entries));
            }
            other => anyhow::bail!("unexpected {other:?} from {node}"),
        }
    }
}

async fn deliver(shared: &Shared, node: &str, entries: Vec<Entry>) -> anyhow::Result<()> {
    let event = ClusterEvent::PeerEntries {
        node: node.to_string(),
        entries,
    };
    tell_owner(shared, event).await
}
