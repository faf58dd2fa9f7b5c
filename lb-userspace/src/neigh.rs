//! Next hops for backends, from the kernel's routing and neighbour tables
//! (through iproute2's JSON output), so the program never guesses a MAC.
//!
//! Runs in the caller's network namespace: a thread that has entered a
//! namespace spawns `ip` there too.

use std::{net::IpAddr, process::Command, time::Duration};

use serde::Deserialize;

use crate::model::Nexthop;

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("running `{cmd}`: {source} (is iproute2 installed? `cargo xtask setup` installs it)")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("`{cmd}` printed output that is not the expected JSON: {source}")]
    Parse {
        cmd: String,
        source: serde_json::Error,
    },
    #[error("no route to backend {0} (add a route or an address in its subnet)")]
    NoRoute(IpAddr),
    #[error(
        "no MAC address for next hop {hop} on {dev} toward backend {backend}: the neighbour did not answer (is it up and on that link?)"
    )]
    Unresolved {
        backend: IpAddr,
        hop: IpAddr,
        dev: String,
    },
}

#[derive(Deserialize)]
struct Route {
    dev: Option<String>,
    gateway: Option<IpAddr>,
}

#[derive(Deserialize)]
struct Neigh {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

#[derive(Deserialize)]
struct Link {
    ifindex: u32,
    address: Option<String>,
}

fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<T, NeighError> {
    let cmd = format!("ip -j {}", args.join(" "));
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|source| NeighError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NeighError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let text = if text.trim().is_empty() {
        "[]"
    } else {
        text.trim()
    };
    serde_json::from_str(text).map_err(|source| NeighError::Parse { cmd, source })
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The MAC address of interface `dev`.
pub fn link_mac(dev: &str) -> Result<[u8; 6], NeighError> {
    let links: Vec<Link> = ip_json(&["link", "show", "dev", dev])?;
    Ok(links
        .into_iter()
        .next()
        .and_then(|l| l.address)
        .as_deref()
        .and_then(parse_mac)
        .unwrap_or_default())
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    local: Option<String>,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize)]
struct LinkAddrs {
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

/// The first global IPv4 address of interface `dev`, if it has one.
pub fn link_ipv4(dev: &str) -> Result<Option<std::net::Ipv4Addr>, NeighError> {
    let links: Vec<LinkAddrs> = ip_json(&["-4", "addr", "show", "dev", dev])?;
    Ok(links
        .into_iter()
        .flat_map(|l| l.addr_info)
        .filter(|a| a.family == "inet" && a.scope != "host")
        .find_map(|a| a.local?.parse().ok()))
}

/// The interface a backend is reached through, its ifindex and MAC.
pub fn egress(backend: IpAddr) -> Result<(String, u32, [u8; 6], IpAddr), NeighError> {
    let routes: Vec<Route> = ip_json(&["route", "get", &backend.to_string()])?;
    let route = routes
        .into_iter()
        .next()
        .ok_or(NeighError::NoRoute(backend))?;
    let dev = route.dev.ok_or(NeighError::NoRoute(backend))?;
    let hop = route.gateway.unwrap_or(backend);
    let links: Vec<Link> = ip_json(&["link", "show", "dev", &dev])?;
    let link = links
        .into_iter()
        .next()
        .ok_or(NeighError::NoRoute(backend))?;
    let smac = link
        .address
        .as_deref()
        .and_then(parse_mac)
        .unwrap_or_default();
    Ok((dev, link.ifindex, smac, hop))
}

/// Makes the kernel resolve `hop`: any datagram toward it starts ARP or
/// neighbour discovery. Port 9 is the discard service; nothing needs to
/// answer.
fn provoke(hop: IpAddr) {
    let bind: std::net::SocketAddr = match hop {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(s) = std::net::UdpSocket::bind(bind) {
        let _ = s.send_to(b"hola", (hop, 9));
    }
}

/// Resolves the next hop toward `backend`. When the neighbour entry is
/// missing it provokes resolution with one datagram and waits up to `wait`.
/// `ingress_ifindex` is the interface the balancer runs on: a backend
/// behind it is sent with XDP_TX (ifindex 0 in the result).
pub fn resolve(
    backend: IpAddr,
    ingress_ifindex: u32,
    wait: Duration,
) -> Result<Nexthop, NeighError> {
    let (dev, ifindex, smac, hop) = egress(backend)?;
    let deadline = std::time::Instant::now() + wait;
    let mut provoked = false;
    loop {
        let neighs: Vec<Neigh> = ip_json(&["neigh", "show", "to", &hop.to_string(), "dev", &dev])?;
        let good = neighs.iter().find_map(|n| {
            let bad = n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE");
            if bad {
                None
            } else {
                n.lladdr.as_deref().and_then(parse_mac)
            }
        });
        if let Some(dmac) = good {
            let ifindex = if ifindex == ingress_ifindex {
                0
            } else {
                ifindex
            };
            return Ok(Nexthop {
                dmac,
                smac,
                ifindex,
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(NeighError::Unresolved { backend, hop, dev });
        }
        if !provoked {
            provoke(hop);
            provoked = true;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What the resolver tells the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NeighEvent {
    Resolved { backend: IpAddr, nexthop: Nexthop },
    Unresolved { backend: IpAddr, error: String },
}

/// The owner's handle on the resolver task.
#[derive(Clone)]
pub struct Resolver {
    wanted: tokio::sync::watch::Sender<Vec<IpAddr>>,
}

impl Resolver {
    /// Replaces the set of backends whose next hops are wanted.
    pub fn want(&self, backends: Vec<IpAddr>) {
        self.wanted.send_replace(backends);
    }
}

/// Resolves the wanted backends' next hops off the owner's thread, once a
/// second, and tells the owner of every change.
pub fn spawn(
    ingress_ifindex: u32,
    events: tokio::sync::mpsc::Sender<NeighEvent>,
    shutdown: tokio_util::sync::CancellationToken,
) -> (Resolver, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        let mut known: std::collections::HashMap<IpAddr, Option<Nexthop>> = Default::default();
        loop {
            let wanted = rx.borrow_and_update().clone();
            known.retain(|a, _| wanted.contains(a));
            for backend in wanted {
                let r = tokio::task::spawn_blocking(move || {
                    resolve(backend, ingress_ifindex, Duration::from_millis(500))
                })
                .await;
                let Ok(r) = r else { return };
                let now = r.as_ref().ok().copied();
                if known.get(&backend) == Some(&now) {
                    continue;
                }
                known.insert(backend, now);
                let e = match r {
                    Ok(nexthop) => NeighEvent::Resolved { backend, nexthop },
                    Err(e) => NeighEvent::Unresolved {
                        backend,
                        error: e.to_string(),
                    },
                };
                if events.send(e).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = rx.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    (Resolver { wanted: tx }, task)
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:0B:ff:01"), Some([2, 0, 10, 11, 255, 1]));
        assert_eq!(parse_mac("02:00:0a:0b:ff"), None);
        assert_eq!(parse_mac("02:00:0a:0b:ff:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:0b:ff:01"), None);
    }
}
