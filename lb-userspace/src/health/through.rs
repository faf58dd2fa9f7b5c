//! Checks through the VIP (`[vip.health] through = "vip"`): the probe's
//! socket is addressed to the VIP and carries a mark
//! (`lb_common::probe`) naming its backend; a routing rule sends marked
//! packets to `lo`, where the `hola_probe` tc program rewrites them as the
//! balancer rewrites a client's packet (dsr: the backend's MAC; tunnel:
//! IP-in-IP from the tunnel source) and redirects them to the backend's
//! interface. The backend answers from the VIP to the balancer's own
//! address, which the probe socket is bound to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use futures_util::TryStreamExt as _;

use lb_common::probe::PROBE_MARK_MASK;
use rtnetlink::RouteMessageBuilder;

/// The routing table marked probes are looked up in ("hola" in ASCII).
pub const PROBE_TABLE: u32 = 0x686f_6c61;
/// The priority of the rule that sends marked probes to [`PROBE_TABLE`]:
/// after `local` (0), before `main` (32766).
pub const PROBE_RULE_PRIORITY: u32 = 32_000;

/// How a probe goes through the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via {
    /// The socket mark (`lb_common::probe::probe_mark`).
    pub mark: u32,
    /// Tunnel mode (else dsr): only for the failure's reason.
    pub tunnel: bool,
}

/// The balancer's own address toward `backend` (the route's preferred
/// source): what the probe socket is bound to, so that the backend's
/// answer from the VIP comes back to it. No packet is sent.
pub fn source_toward(backend: IpAddr) -> std::io::Result<IpAddr> {
    let any: SocketAddr = match backend {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(any)?;
    s.connect((backend, 9))?;
    Ok(s.local_addr()?.ip())
}

/// A socket of `kind` for a probe through the VIP: marked, bound to the
/// balancer's address toward `backend`, non-blocking.
pub fn socket(kind: socket2::Type, via: Via, backend: IpAddr) -> std::io::Result<socket2::Socket> {
    let src = source_toward(backend)?;
    let s = socket2::Socket::new(
        socket2::Domain::for_address(SocketAddr::new(src, 0)),
        kind,
        None,
    )?;
    s.set_mark(via.mark)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The reason a check through the VIP failed, as `hola backend list` and
/// `hola events` show it: what the probe saw, what that likely means for
/// the mode, and, when it was tried, what the same check to the backend's
/// own address saw (`direct`: `Ok(passed)` or `Err(failed)`).
pub fn failure_detail(
    vip: SocketAddr,
    backend: IpAddr,
    tunnel: bool,
    failed: &str,
    direct: Option<Result<String, String>>,
) -> String {
    let hint = if tunnel {
        format!("tunnel: is hola-decap attached on {backend}?")
    } else {
        format!("dsr: is {} on {backend}'s loopback?", vip.ip())
    };
    let mut s = format!("no answer through the VIP {vip} ({failed}; {hint})");
    let own = SocketAddr::new(backend, vip.port());
    match direct {
        Some(Ok(passed)) => s.push_str(&format!("; the check to {own} itself passes ({passed})")),
        Some(Err(failed)) => {
            s.push_str(&format!("; the check to {own} itself fails too ({failed})"))
        }
        None => {}
    }
    s
}

/// The rule that looks marked probes of one family up in [`PROBE_TABLE`],
/// as a request to add (its message is the one to delete).
fn probe_rule(handle: &rtnetlink::Handle, v6: bool) -> rtnetlink::RuleAddRequest {
    let mut r = handle
        .rule()
        .add()
        .fw_mark(lb_common::probe::PROBE_MARK_TAG)
        .table_id(PROBE_TABLE)
        .priority(PROBE_RULE_PRIORITY)
        .action(netlink_packet_route::rule::RuleAction::ToTable);
    let m = r.message_mut();
    m.header.family = if v6 {
        netlink_packet_route::AddressFamily::Inet6
    } else {
        netlink_packet_route::AddressFamily::Inet
    };
    m.attributes
        .push(netlink_packet_route::rule::RuleAttribute::FwMask(
            PROBE_MARK_MASK,
        ));
    r
}

/// The link-local next hop IPv6 probes are routed to (`fe80::686f:6c61`,
/// "hola"): no host has it; a permanent neighbour entry on the
/// balancer's interface gives it a MAC, so no neighbour discovery is
/// sent, and `hola_probe` on that interface's egress takes the probe
/// before it leaves. (IPv4 probes leave by `lo`; Linux turns an IPv6
/// route through `lo` into a reject route.)
pub const PROBE_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x686f, 0x6c61);
/// The MAC of [`PROBE_GATEWAY_V6`] (locally administered; `hola_probe`
/// writes the backend's MACs over it).
const PROBE_GATEWAY_MAC: [u8; 6] = [0x02, 0x68, 0x6f, 0x6c, 0x61, 0x00];

/// [`PROBE_TABLE`]'s IPv6 route: `default via fe80::686f:6c61 dev IFACE`.
fn probe_route_v6(ifindex: u32) -> netlink_packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv6Addr>::new()
        .table_id(PROBE_TABLE)
        .output_interface(ifindex)
        .gateway(PROBE_GATEWAY_V6)
        .build()
}

/// [`PROBE_TABLE`]'s one route, `default dev lo`.
fn probe_route() -> netlink_packet_route::route::RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(PROBE_TABLE)
        .output_interface(LOOPBACK_IFINDEX)
        .scope(netlink_packet_route::route::RouteScope::Link)
        .build()
}

/// The rule as `ip rule` shows it, for messages.
fn rule_text(v6: bool) -> String {
    format!(
        "{}fwmark {:#x}/{PROBE_MARK_MASK:#x} lookup {PROBE_TABLE}",
        if v6 { "-6 " } else { "" },
        lb_common::probe::PROBE_MARK_TAG
    )
}

/// Whether a netlink error is `errno`.
fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.to_io().raw_os_error() == Some(errno))
}

/// Installs (idempotently) the rule that looks marked IPv4 probes up in
/// [`PROBE_TABLE`] and that table's route, `default dev lo`: probes leave
/// by `lo`, where `hola_probe` takes them (a NOARP device, so no neighbour
/// is needed for the VIP). Only packets with a probe mark use it.
pub async fn install_route() -> Result<(), String> {
    netlink(async |handle| {
        add_rule(handle, false).await?;
        handle
            .route()
            .add(probe_route())
            .replace()
            .execute()
            .await
            .map_err(|e| format!("adding the route `default dev lo table {PROBE_TABLE}`: {e}"))
    })
    .await
}

/// The same for IPv6 probes: the rule, a permanent neighbour for
/// [`PROBE_GATEWAY_V6`] on the balancer's interface `ifindex`, and the
/// route `default via fe80::686f:6c61 dev IFACE` in [`PROBE_TABLE`].
/// Fails where the interface has no IPv6 (then checks of IPv6 VIPs go to
/// the backends' own addresses).
pub async fn install_route_v6(ifindex: u32) -> Result<(), String> {
    netlink(async |handle| {
        add_rule(handle, true).await?;
        handle
            .neighbours()
            .add(ifindex, IpAddr::V6(PROBE_GATEWAY_V6))
            .link_layer_address(&PROBE_GATEWAY_MAC)
            .state(netlink_packet_route::neighbour::NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                format!("adding the neighbour {PROBE_GATEWAY_V6} on ifindex {ifindex}: {e}")
            })?;
        handle
            .route()
            .add(probe_route_v6(ifindex))
            .replace()
            .execute()
            .await
            .map_err(|e| {
                format!(
                    "adding the route `default via {PROBE_GATEWAY_V6} table {PROBE_TABLE}` \
                     (ifindex {ifindex}): {e}"
                )
            })
    })
    .await
}

/// Runs `f` with a netlink handle of its own.
async fn netlink<T>(
    f: impl AsyncFnOnce(&rtnetlink::Handle) -> Result<T, String>,
) -> Result<T, String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("opening a netlink socket: {e}"))?;
    let task = tokio::spawn(conn);
    let result = f(&handle).await;
    task.abort();
    result
}

/// Adds the probe rule of one family; there already is fine.
async fn add_rule(handle: &rtnetlink::Handle, v6: bool) -> Result<(), String> {
    match probe_rule(handle, v6).execute().await {
        Err(e) if is_errno(&e, libc::EEXIST) => Ok(()),
        r => r.map_err(|e| format!("adding the rule `{}`: {e}", rule_text(v6))),
    }
}

/// Removes what [`install_route`] installed (`hola down`): what was
/// removed, as lines to print (none when nothing was there).
pub async fn remove_route() -> Result<Vec<String>, String> {
    netlink(async |handle| {
        let mut removed = Vec::new();
        for v6 in [false, true] {
            let rule = probe_rule(handle, v6).message_mut().clone();
            match handle.rule().del(rule).execute().await {
                Ok(()) => removed.push(format!("the probe rule `{}`", rule_text(v6))),
                Err(e) if is_errno(&e, libc::ENOENT) => {}
                Err(e) => return Err(format!("removing the rule `{}`: {e}", rule_text(v6))),
            }
        }
        let gone = |e: &rtnetlink::Error| is_errno(e, libc::ESRCH) || is_errno(e, libc::ENOENT);
        match handle.route().del(probe_route()).execute().await {
            Ok(()) => removed.push(format!("the route `default dev lo table {PROBE_TABLE}`")),
            Err(e) if gone(&e) => {}
            Err(e) => {
                return Err(format!(
                    "removing the route `default dev lo table {PROBE_TABLE}`: {e}"
                ));
            }
        }
        // The IPv6 route and neighbour, on whichever interface they are.
        let mut neighbours = handle
            .neighbours()
            .get()
            .set_address_family(netlink_packet_route::AddressFamily::Inet6)
            .execute();
        let mut ours = Vec::new();
        while let Some(m) = neighbours
            .try_next()
            .await
            .map_err(|e| format!("listing IPv6 neighbours: {e}"))?
        {
            let is_gateway = m.attributes.iter().any(|a| {
                matches!(a, netlink_packet_route::neighbour::NeighbourAttribute::Destination(
                    netlink_packet_route::neighbour::NeighbourAddress::Inet6(ip)) if *ip == PROBE_GATEWAY_V6)
            });
            if is_gateway {
                ours.push(m);
            }
        }
        for m in ours {
            let ifindex = m.header.ifindex;
            match handle.route().del(probe_route_v6(ifindex)).execute().await {
                Ok(()) => removed.push(format!(
                    "the route `default via {PROBE_GATEWAY_V6} table {PROBE_TABLE}` (ifindex {ifindex})"
                )),
                Err(e) if gone(&e) => {}
                Err(e) => {
                    return Err(format!(
                        "removing the route `default via {PROBE_GATEWAY_V6} table {PROBE_TABLE}`: {e}"
                    ));
                }
            }
            match handle.neighbours().del(m).execute().await {
                Ok(()) => removed.push(format!(
                    "the neighbour {PROBE_GATEWAY_V6} (ifindex {ifindex})"
                )),
                Err(e) if gone(&e) => {}
                Err(e) => return Err(format!("removing the neighbour {PROBE_GATEWAY_V6}: {e}")),
            }
        }
        Ok(removed)
    })
    .await
}

/// `lo`'s index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_the_mode_and_what_the_direct_check_saw() {
        let vip: SocketAddr = "198.18.1.1:80".parse().unwrap();
        let b: IpAddr = "198.18.0.11".parse().unwrap();
        assert_eq!(
            failure_detail(
                vip,
                b,
                false,
                "timeout after 100ms",
                Some(Ok("connected".into()))
            ),
            "no answer through the VIP 198.18.1.1:80 (timeout after 100ms; dsr: is 198.18.1.1 \
             on 198.18.0.11's loopback?); the check to 198.18.0.11:80 itself passes (connected)"
        );
        assert_eq!(
            failure_detail(
                vip,
                b,
                true,
                "timeout after 100ms",
                Some(Err("refused".into()))
            ),
            "no answer through the VIP 198.18.1.1:80 (timeout after 100ms; tunnel: is hola-decap \
             attached on 198.18.0.11?); the check to 198.18.0.11:80 itself fails too (refused)"
        );
        assert_eq!(
            failure_detail(vip, b, true, "x", None),
            "no answer through the VIP 198.18.1.1:80 (x; tunnel: is hola-decap attached on \
             198.18.0.11?)"
        );
    }

    #[test]
    fn the_source_toward_a_loopback_backend_is_loopback() {
        assert_eq!(
            source_toward("127.0.0.1".parse().unwrap()).unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
