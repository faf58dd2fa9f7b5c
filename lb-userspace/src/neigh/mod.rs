//! Next hops for backends, read from the kernel's routing and neighbour
//! tables over rtnetlink, so the program never guesses a MAC.
//!
//! Two ways in:
//! - [`spawn`] starts the resolver task. The owner tells it which backends
//!   it wants ([`Resolver::want`]); the task looks their next hops up,
//!   provokes ARP or neighbour discovery for the missing ones, follows the
//!   kernel's neighbour, route and link notifications, and sends the owner
//!   a [`NeighEvent`] whenever a backend's next hop changes. The owner
//!   never waits for the kernel.
//! - [`resolve`], [`link_mac`] and [`link_ipv4`] are blocking one-shot
//!   lookups for start-up and tests.
//!
//! A netlink socket belongs to the network namespace of the thread that
//! creates it: the resolver creates its sockets inside its task (on the
//! runtime's threads, which the daemon starts in its namespace); the
//! blocking calls create theirs on the calling thread, or on a thread they
//! start, which inherits the caller's namespace.

mod netlink;
mod resolver;
mod track;

use std::{
    fmt,
    future::Future,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use futures_util::TryStreamExt as _;
use netlink_packet_route::AddressFamily;
use tokio::{task::JoinSet, time::Instant};

pub use resolver::{Resolver, spawn};

use crate::model::Nexthop;
use netlink::{
    HopState, connect, egress, first_ipv4, hop_state, link_get, neigh_get, netlink, provoke,
};

/// How often the resolver retries backends without a usable next hop,
/// provoking resolution again each time.
pub const RETRY: Duration = Duration::from_secs(1);
/// How long a missing neighbour entry may stay missing before the owner is
/// told the backend is unresolved: as long as the daemon waited for the
/// first resolution at start-up before the resolver existed.
pub const GRACE: Duration = Duration::from_secs(2);
/// How often every wanted backend is looked up again even without a
/// notification: notifications can be lost when the socket's buffer fills.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long one lookup (route, link, neighbour) may take before the
/// netlink connection is taken for dead and opened again.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("opening a netlink socket to read the routing and neighbour tables: {0}")]
    Socket(std::io::Error),
    #[error("starting a runtime for a netlink lookup: {0}")]
    Runtime(std::io::Error),
    #[error("netlink {what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error(
        "netlink {what} got no answer within {}s: the connection is opened again",
        LOOKUP_TIMEOUT.as_secs()
    )]
    Timeout { what: String },
    #[error("the netlink notification socket closed; it is opened again")]
    Closed,
    #[error("no route to backend {0} (add a route or an address in its subnet)")]
    NoRoute(IpAddr),
    #[error("interface {0} not found (`ip link` lists the interfaces)")]
    NoLink(String),
    #[error(
        "no MAC address for next hop {hop} on {dev} toward backend {backend}: the neighbour did not answer (is it up and on that link?)"
    )]
    Unresolved {
        backend: IpAddr,
        hop: IpAddr,
        dev: String,
    },
    #[error(
        "next hop {hop} on {dev} toward backend {backend} failed: the kernel's neighbour entry is FAILED (is it up and on that link?)"
    )]
    Failed {
        backend: IpAddr,
        hop: IpAddr,
        dev: String,
    },
}

impl NeighError {
    /// Whether the error is the connection's, not the looked-up object's:
    /// the resolver then opens its sockets again.
    fn connection_lost(&self) -> bool {
        matches!(
            self,
            NeighError::Timeout { .. }
                | NeighError::Closed
                | NeighError::Netlink {
                    source: rtnetlink::Error::RequestFailed,
                    ..
                }
        )
    }
}

/// "aa:bb:cc:dd:ee:ff", for logs.
struct Mac([u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// What the resolver tells the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeighEvent {
    Resolved { backend: IpAddr, nexthop: Nexthop },
    Unresolved { backend: IpAddr, error: String },
}

// ---------------------------------------------------------------------------
// Blocking one-shot lookups.

/// Runs `make()`'s future to completion on a current-thread runtime of its
/// own. Called from inside a runtime (where blocking on another would
/// panic) it runs on a scoped thread, which inherits the caller's network
/// namespace.
fn block_on<T, F>(make: impl FnOnce() -> F + Send) -> Result<T, NeighError>
where
    T: Send,
    F: Future<Output = Result<T, NeighError>>,
{
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(NeighError::Runtime)?
            .block_on(make())
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return run();
    }
    std::thread::scope(|s| match s.spawn(run).join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// The MAC address of interface `dev` (zero if it has none). Blocking.
pub fn link_mac(dev: &str) -> Result<[u8; 6], NeighError> {
    block_on(|| async {
        let mut tasks = JoinSet::new();
        let h = connect(&mut tasks)?;
        Ok(link_get(&h, Err(dev)).await?.mac)
    })
}

/// The first IPv4 address of interface `dev` whose scope is wider than the
/// host, if it has one. Blocking.
pub fn link_ipv4(dev: &str) -> Result<Option<Ipv4Addr>, NeighError> {
    block_on(|| async {
        let mut tasks = JoinSet::new();
        let h = connect(&mut tasks)?;
        let link = link_get(&h, Err(dev)).await?;
        let mut req = h.address().get().set_link_index_filter(link.index);
        req.message_mut().header.family = AddressFamily::Inet;
        let addrs: Vec<_> = req
            .execute()
            .try_collect()
            .await
            .map_err(netlink(format!("address dump of {dev}")))?;
        Ok(first_ipv4(&addrs))
    })
}

/// Resolves the next hop toward `backend`, blocking. When the neighbour
/// entry is missing it provokes resolution with one datagram and polls up
/// to `wait`. `ingress_ifindex` is the interface the balancer runs on: a
/// backend behind it is sent with XDP_TX (ifindex 0 in the result).
pub fn resolve(
    backend: IpAddr,
    ingress_ifindex: u32,
    wait: Duration,
) -> Result<Nexthop, NeighError> {
    block_on(|| async move {
        let mut tasks = JoinSet::new();
        let h = connect(&mut tasks)?;
        let deadline = Instant::now() + wait;
        let mut provoked = false;
        loop {
            let eg = egress(&h, backend).await?;
            let n = neigh_get(&h, eg.link.index, eg.hop).await?;
            if let HopState::Usable(mac) = hop_state(n.as_ref()) {
                return Ok(eg.nexthop(mac, ingress_ifindex));
            }
            if Instant::now() >= deadline {
                let (hop, dev) = (eg.hop, eg.link.name);
                return Err(NeighError::Unresolved { backend, hop, dev });
            }
            if !provoked {
                provoke(eg.hop);
                provoked = true;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{Mac, NeighError, link_ipv4, link_mac};

    #[test]
    fn macs_print_as_ip_does() {
        assert_eq!(
            Mac([2, 0, 0x0a, 0x0b, 0xff, 1]).to_string(),
            "02:00:0a:0b:ff:01"
        );
    }

    // Reading links over netlink needs no privilege; loopback is in every
    // network namespace.
    #[test]
    fn loopback_has_no_mac_and_no_global_ipv4() {
        assert_eq!(link_mac("lo").expect("reading lo"), [0; 6]);
        assert_eq!(link_ipv4("lo").expect("reading lo's addresses"), None);
    }

    #[test]
    fn a_missing_interface_is_named() {
        let e = link_mac("hola-nosuch0").expect_err("no such interface");
        assert!(
            matches!(&e, NeighError::NoLink(n) if n == "hola-nosuch0"),
            "{e:?}"
        );
        assert!(e.to_string().contains("hola-nosuch0"), "{e}");
    }

    #[tokio::test]
    async fn blocking_lookups_work_inside_a_runtime_too() {
        assert_eq!(link_mac("lo").expect("reading lo"), [0; 6]);
    }
}
