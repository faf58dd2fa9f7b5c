//! The replication streams: a sender per peer (dial, prove the key, send a
//! snapshot, then the queue as it fills) and the listener that takes the
//! peers' streams and hands their entries to the data-plane owner.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::ClusterEvent;
use super::{
    OutStats, Queue, Shared,
    wire::{self, Entry, Msg},
};

/// Entries per batch.
const BATCH: usize = 1024;
/// A sender with nothing to send still sends an empty batch this often,
/// so that a dead peer is noticed; a receiver that hears nothing for
/// `SILENCE` closes the connection.
const KEEPALIVE: Duration = Duration::from_secs(1);
const SILENCE: Duration = Duration::from_secs(5);
/// The handshake must be over within this.
const HANDSHAKE: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn write(s: &mut TcpStream, m: &Msg) -> std::io::Result<()> {
    s.write_all(&wire::encode(m)).await
}

async fn read(s: &mut TcpStream) -> anyhow::Result<Msg> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(
        len <= wire::MAX_FRAME,
        "a frame of {len} bytes (the limit is {})",
        wire::MAX_FRAME
    );
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(wire::decode(&body)?)
}

async fn read_within(s: &mut TcpStream, limit: Duration) -> anyhow::Result<Msg> {
    tokio::time::timeout(limit, read(s))
        .await
        .map_err(|_| anyhow::anyhow!("nothing received for {limit:?}"))?
}

/// Streams this node's entries to the peer at `addr` until told to stop,
/// reconnecting (with a fresh snapshot) after every failure.
pub async fn send_to(
    shared: Arc<Shared>,
    addr: SocketAddr,
    queue: Arc<Queue>,
    stop: Arc<AtomicBool>,
    out: Arc<OutStats>,
) {
    let mut last_error = String::new();
    while !stop.load(Ordering::Relaxed) {
        let r = session(&shared, addr, &queue, &stop, &out).await;
        out.connected.store(false, Ordering::Relaxed);
        if let Err(e) = r {
            let e = format!("{e:#}");
            if e != last_error {
                tracing::warn!(peer = %addr, error = %e, "cluster: replication stream down; retrying every second");
                last_error = e.clone();
            }
            *out.last_error.lock().expect("error lock") = e;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn session(
    shared: &Shared,
    addr: SocketAddr,
    queue: &Queue,
    stop: &AtomicBool,
    out: &OutStats,
) -> anyhow::Result<()> {
    let s = &shared.settings;
    let mut conn = tokio::time::timeout(HANDSHAKE, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr}: no answer within {HANDSHAKE:?}"))?
        .map_err(|e| anyhow::anyhow!("connecting to {addr}: {e}"))?;
    conn.set_nodelay(true)?;
    let Msg::Challenge { version, nonce } = read_within(&mut conn, HANDSHAKE).await? else {
        anyhow::bail!("{addr} did not start with a challenge: not a hola replication listener?");
    };
    anyhow::ensure!(
        version == wire::VERSION,
        "{addr} speaks replication version {version}, this node {}",
        wire::VERSION
    );
    let proof = wire::proof(&s.key, &nonce, &s.id, &s.node);
    let ours = wire::nonce();
    write(
        &mut conn,
        &Msg::Hello {
            version: wire::VERSION,
            cluster: s.id.clone(),
            node: s.node.clone(),
            proof,
            nonce: ours,
        },
    )
    .await?;
    let peer = match read_within(&mut conn, HANDSHAKE).await? {
        Msg::Welcome { node, proof } => {
            // The listener must hold the key too before it gets anything.
            if !wire::check_proof(&s.key, &ours, &s.id, &node, &proof) {
                shared.connections_rejected.fetch_add(1, Ordering::Relaxed);
                anyhow::bail!(
                    "{addr} ({node}) failed to prove the cluster key: nothing sent (a different key, \
                     or not a node of this cluster at that address)"
                );
            }
            node
        }
        Msg::Reject { reason } => anyhow::bail!("{addr} refused this node: {reason}"),
        other => anyhow::bail!("{addr} answered the handshake with {other:?}"),
    };
    *out.node.lock().expect("node lock") = peer.clone();
    out.last_error.lock().expect("error lock").clear();
    out.connected.store(true, Ordering::Relaxed);

    // Everything queued so far is in the snapshot, taken after the queue
    // is emptied: nothing is lost between the two.
    queue.clear();
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared
        .owner
        .send(ClusterEvent::Snapshot(tx))
        .await
        .map_err(|_| anyhow::anyhow!("the data-plane owner has stopped"))?;
    let snapshot = rx
        .await
        .map_err(|_| anyhow::anyhow!("the data-plane owner dropped the snapshot request"))?;
    let total = snapshot.len() as u64;
    let started = Instant::now();
    for chunk in snapshot.chunks(BATCH) {
        write(
            &mut conn,
            &Msg::Batch {
                sent_ms: now_ms(),
                entries: chunk.to_vec(),
            },
        )
        .await?;
    }
    write(&mut conn, &Msg::SnapshotDone { entries: total }).await?;
    out.sent.fetch_add(total, Ordering::Relaxed);
    out.snapshots.fetch_add(1, Ordering::Relaxed);
    tracing::info!(peer = %peer, address = %addr, entries = total, took = ?started.elapsed(), "cluster: snapshot sent; streaming");

    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (entries, oldest) = queue.take(BATCH);
        if entries.is_empty() {
            tokio::select! {
                _ = queue.notify.notified() => continue,
                _ = tokio::time::sleep(KEEPALIVE) => {}
            }
        }
        let n = entries.len() as u64;
        write(
            &mut conn,
            &Msg::Batch {
                sent_ms: now_ms(),
                entries,
            },
        )
        .await?;
        out.sent.fetch_add(n, Ordering::Relaxed);
        if let Some(t) = oldest {
            out.lag_ms
                .store(t.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// Accepts the peers' replication streams.
pub async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((conn, from)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = receive(&shared, conn, from).await {
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

async fn receive(shared: &Shared, mut conn: TcpStream, from: SocketAddr) -> anyhow::Result<()> {
    let s = &shared.settings;
    let nonce = wire::nonce();
    write(
        &mut conn,
        &Msg::Challenge {
            version: wire::VERSION,
            nonce,
        },
    )
    .await?;
    let (node, theirs, ok) = match read_within(&mut conn, HANDSHAKE).await? {
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
        let _ = write(&mut conn, &Msg::Reject { reason }).await;
        return Ok(());
    }
    write(
        &mut conn,
        &Msg::Welcome {
            node: s.node.clone(),
            proof: wire::proof(&s.key, &theirs, &s.id, &s.node),
        },
    )
    .await?;
    tracing::info!(peer = %node, from = %from, "cluster: receiving a peer's entries");
    shared.inbound(&node, |i| {
        i.connected = true;
        // A new stream starts with a new snapshot.
        i.snapshot_entries = None;
    });
    let r = async {
        loop {
            match read_within(&mut conn, SILENCE).await? {
                Msg::Batch { sent_ms, entries } => {
                    let lag = now_ms().saturating_sub(sent_ms);
                    let n = entries.len() as u64;
                    shared.inbound(&node, |i| {
                        i.received += n;
                        i.lag_ms = lag;
                    });
                    if !entries.is_empty() {
                        deliver(shared, &node, entries).await?;
                    }
                }
                Msg::SnapshotDone { entries } => {
                    tracing::info!(peer = %node, entries, "cluster: snapshot received");
                    shared.inbound(&node, |i| i.snapshot_entries = Some(entries));
                }
                other => anyhow::bail!("unexpected {other:?} from {node}"),
            }
        }
    }
    .await;
    shared.inbound(&node, |i| i.connected = false);
    r
}

async fn deliver(shared: &Shared, node: &str, entries: Vec<Entry>) -> anyhow::Result<()> {
    shared
        .owner
        .send(ClusterEvent::PeerEntries {
            node: node.to_string(),
            entries,
        })
        .await
        .map_err(|_| anyhow::anyhow!("the data-plane owner has stopped"))
}
