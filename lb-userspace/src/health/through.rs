//! Checks through the VIP (`[vip.health] through = "vip"`): the probe's
//! socket is addressed to the VIP and carries a mark
//! (`lb_common::probe`) naming its backend; a routing rule sends marked
//! packets to `lo`, where the `hola_probe` tc program rewrites them as the
//! balancer rewrites a client's packet (dsr: the backend's MAC; tunnel:
//! IP-in-IP from the tunnel source) and redirects them to the backend's
//! interface. The backend answers from the VIP to the balancer's own
//! address, which the probe socket is bound to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

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

/// The rule that looks marked probes up in [`PROBE_TABLE`], as a request
/// on `handle` (to add, or as the message to delete).
fn probe_rule(handle: &rtnetlink::Handle) -> rtnetlink::RuleAddRequest<Ipv4Addr> {
    let mut rule = handle
        .rule()
        .add()
        .v4()
        .fw_mark(lb_common::probe::PROBE_MARK_TAG)
        .table_id(PROBE_TABLE)
        .priority(PROBE_RULE_PRIORITY)
        .action(netlink_packet_route::rule::RuleAction::ToTable);
    rule.message_mut()
        .attributes
        .push(netlink_packet_route::rule::RuleAttribute::FwMask(
            PROBE_MARK_MASK,
        ));
    rule
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
fn rule_text() -> String {
    format!(
        "fwmark {:#x}/{PROBE_MARK_MASK:#x} lookup {PROBE_TABLE}",
        lb_common::probe::PROBE_MARK_TAG
    )
}

/// Whether a netlink error is `errno`.
fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.to_io().raw_os_error() == Some(errno))
}

/// Installs (idempotently) the rule that looks marked probes up in
/// [`PROBE_TABLE`] and that table's one route, `default dev lo`: probes
/// leave by `lo`, where `hola_probe` takes them (a NOARP device, so no
/// neighbour is needed for the VIP). Only packets with a probe mark use it.
pub async fn install_route() -> Result<(), String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("opening a netlink socket: {e}"))?;
    let task = tokio::spawn(conn);
    let result = async {
        match probe_rule(&handle).execute().await {
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            r => r.map_err(|e| format!("adding the rule `{}`: {e}", rule_text()))?,
        }
        handle
            .route()
            .add(probe_route())
            .replace()
            .execute()
            .await
            .map_err(|e| format!("adding the route `default dev lo table {PROBE_TABLE}`: {e}"))
    }
    .await;
    task.abort();
    result
}

/// Removes what [`install_route`] installed (`hola down`): what was
/// removed, as lines to print (none when neither was there).
pub async fn remove_route() -> Result<Vec<String>, String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("opening a netlink socket: {e}"))?;
    let task = tokio::spawn(conn);
    let result = async {
        let mut removed = Vec::new();
        let rule = probe_rule(&handle).message_mut().clone();
        match handle.rule().del(rule).execute().await {
            Ok(()) => removed.push(format!("the probe rule `{}`", rule_text())),
            Err(e) if is_errno(&e, libc::ENOENT) => {}
            Err(e) => return Err(format!("removing the rule `{}`: {e}", rule_text())),
        }
        match handle.route().del(probe_route()).execute().await {
            Ok(()) => removed.push(format!("the route `default dev lo table {PROBE_TABLE}`")),
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => {}
            Err(e) => {
                return Err(format!(
                    "removing the route `default dev lo table {PROBE_TABLE}`: {e}"
                ));
            }
        }
        Ok(removed)
    }
    .await;
    task.abort();
    result
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
