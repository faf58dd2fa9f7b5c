//! Multicast discovery: every `announce_interval` a node sends an
//! authenticated announcement (cluster id, node name, replication address,
//! time) to the group on its cluster interface, with TTL 1 (it never leaves
//! the link); it takes in its peers' announcements and drops peers that
//! fall silent for `peer_timeout`.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Multicast, Shared, Source,
    wire::{self, Announce, AnnounceError},
};

/// Announcements whose time differs from ours by more are ignored
/// (replayed, or a node whose clock is far off: said in the log).
const REPLAY_WINDOW_MS: u64 = 30_000;

/// The announcement socket: bound to the group's port, member of the group
/// on the interface, sending out of it with TTL 1 and no loopback.
pub fn socket(m: &Multicast) -> std::io::Result<tokio::net::UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, m.port)).into())?;
    s.join_multicast_v4(&m.group, &m.interface_addr)?;
    s.set_multicast_if_v4(&m.interface_addr)?;
    s.set_multicast_ttl_v4(1)?;
    s.set_multicast_loop_v4(false)?;
    s.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(s.into())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Announces this node and takes in its peers' announcements until
/// `shutdown`; the senders of the peers it finds run on `tracker`.
pub(super) async fn run(
    shared: Arc<Shared>,
    sock: tokio::net::UdpSocket,
    m: Multicast,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let s = &shared.settings;
    let group = SocketAddr::V4(SocketAddrV4::new(m.group, m.port));
    let mut tick = tokio::time::interval(s.announce_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Complaints about one source are logged at most once a minute.
    let mut complained: HashMap<IpAddr, Instant> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    tracing::info!(group = %group, interface = %m.interface, "cluster discovery: announcing");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let a = Announce {
                    magic: wire::MAGIC,
                    version: wire::VERSION,
                    cluster: s.id.clone(),
                    node: s.node.clone(),
                    replication: s.replication,
                    time_ms: now_ms(),
                };
                if let Err(e) = sock.send_to(&wire::seal_announce(&a, &s.key), group).await {
                    let first = complained
                        .get(&group.ip())
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
                    if first {
                        complained.insert(group.ip(), Instant::now());
                        tracing::warn!(group = %group, interface = %m.interface, error = %e, "cluster: cannot send announcements");
                    }
                }
                shared.expire();
            }
            r = sock.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster: receiving announcements");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let mut complain = |what: String| {
                    let due = complained
                        .get(&from.ip())
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(60));
                    if due {
                        complained.insert(from.ip(), Instant::now());
                        tracing::warn!(from = %from, "cluster: ignoring an announcement: {what}");
                    }
                };
                match wire::open_announce(&buf[..n], &s.key) {
                    Ok(a) if a.cluster != s.id => {
                        tracing::debug!(from = %from, cluster = %a.cluster, "announcement of another cluster");
                    }
                    Ok(a) if a.node == s.node => {
                        if a.replication != s.replication {
                            complain(format!(
                                "node {} at {} uses this node's name; node names must be unique",
                                a.node, a.replication
                            ));
                        }
                    }
                    Ok(a) => {
                        let skew = now_ms().abs_diff(a.time_ms);
                        if skew > REPLAY_WINDOW_MS {
                            complain(format!(
                                "node {} is {skew} ms off this node's clock (replayed, or its clock is \
                                 wrong; the window is {REPLAY_WINDOW_MS} ms)",
                                a.node
                            ));
                            shared.announcements_rejected.fetch_add(1, Ordering::Relaxed);
                        } else {
                            shared.saw(a.replication, &a.node, Source::Multicast, &shutdown, &tracker);
                        }
                    }
                    Err(AnnounceError::NotOurs) => {
                        tracing::debug!(from = %from, "a datagram on the discovery port that is not an announcement");
                    }
                    Err(e) => {
                        shared.announcements_rejected.fetch_add(1, Ordering::Relaxed);
                        complain(e.to_string());
                    }
                }
            }
        }
    }
}
