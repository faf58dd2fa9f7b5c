//! hola's routes over rtnetlink: one blackhole route per announced VIP
//! address (a /32 or /128) in the `[bgp]` table, with hola's route
//! protocol number. No `ip rule` points at the table, so the routes never
//! steer a packet; they exist only for BIRD's `protocol kernel` to import.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::BgpError;

/// Where hola's routes live and what marks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table {
    pub table: u32,
    pub protocol: u8,
}

/// The route of `addr` in `t`, as added or deleted.
fn message(t: Table, addr: IpAddr) -> RouteMessage {
    let proto = RouteProtocol::from(t.protocol);
    match addr {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .table_id(t.table)
            .protocol(proto)
            .kind(RouteType::BlackHole)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .table_id(t.table)
            .protocol(proto)
            .kind(RouteType::BlackHole)
            .build(),
    }
}

/// The host address a route of hola's is for, if `msg` is one: in `t`'s
/// table, with its protocol, a full-length prefix.
pub(super) fn ours(t: Table, msg: &RouteMessage) -> Option<IpAddr> {
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    if table != t.table || u8::from(msg.header.protocol) != t.protocol {
        return None;
    }
    let dst = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })?;
    let full = if dst.is_ipv4() { 32 } else { 128 };
    (msg.header.destination_prefix_length == full).then_some(dst)
}

/// The addresses hola's routes in `t` are for now (both families).
pub async fn list(h: &Handle, t: Table) -> Result<BTreeSet<IpAddr>, BgpError> {
    let mut out = BTreeSet::new();
    let dumps = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for msg in dumps {
        let mut routes = h.route().get(msg).execute();
        while let Some(r) = routes
            .try_next()
            .await
            .map_err(netlink("listing routes", t))?
        {
            out.extend(ours(t, &r));
        }
    }
    Ok(out)
}

/// Adds (or replaces) the route of `addr`.
pub async fn add(h: &Handle, t: Table, addr: IpAddr) -> Result<(), BgpError> {
    h.route()
        .add(message(t, addr))
        .replace()
        .execute()
        .await
        .map_err(netlink(&format!("adding the route of {addr}"), t))
}

/// Deletes the route of `addr`; one already gone is no error.
pub async fn del(h: &Handle, t: Table, addr: IpAddr) -> Result<(), BgpError> {
    match h.route().del(message(t, addr)).execute().await {
        Err(rtnetlink::Error::NetlinkError(e)) if e.to_io().raw_os_error() == Some(libc::ESRCH) => {
            Ok(())
        }
        r => r.map_err(netlink(&format!("deleting the route of {addr}"), t)),
    }
}

fn netlink(what: &str, t: Table) -> impl FnOnce(rtnetlink::Error) -> BgpError {
    let what = format!("{what} in table {} (protocol {})", t.table, t.protocol);
    move |source| BgpError::Netlink { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_ours_by_table_protocol_and_length() {
        let t = Table {
            table: 201,
            protocol: 201,
        };
        let a: IpAddr = "198.18.1.1".parse().unwrap();
        assert_eq!(ours(t, &message(t, a)), Some(a));
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ours(t, &message(t, b)), Some(b));
        let other_table = Table { table: 100, ..t };
        assert_eq!(ours(t, &message(other_table, a)), None);
        let other_proto = Table { protocol: 12, ..t };
        assert_eq!(ours(t, &message(other_proto, a)), None);
        let mut wide = message(t, a);
        wide.header.destination_prefix_length = 24;
        assert_eq!(ours(t, &wide), None);
        // Tables above 255 travel in an attribute, with 0 in the header.
        let big = Table { table: 70000, ..t };
        assert_eq!(ours(big, &message(big, a)), Some(a));
    }
}
