//! The kernel's routing, link and neighbour tables over rtnetlink: parsing
//! its messages (pure) and the lookups.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteVia},
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::task::JoinSet;

use super::{LOOKUP_TIMEOUT, NeighError, track::Outcome};
use crate::model::Nexthop;

/// The link a route leaves by and the hop to resolve: the gateway, or the
/// backend itself when it is on the link.
fn route_hop(msg: &RouteMessage, backend: IpAddr) -> Option<(u32, IpAddr)> {
    let mut oif = None;
    let mut hop = backend;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => hop = IpAddr::V4(*g),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => hop = IpAddr::V6(*g),
            RouteAttribute::Via(RouteVia::Inet(g)) => hop = IpAddr::V4(*g),
            RouteAttribute::Via(RouteVia::Inet6(g)) => hop = IpAddr::V6(*g),
            _ => {}
        }
    }
    Some((oif?, hop))
}

/// A link's index, name and MAC (zero when it has none, as loopback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    pub(super) index: u32,
    pub(super) name: String,
    pub(super) mac: [u8; 6],
}

fn link_of(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
    };
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Address(a) => {
                if let Ok(m) = <[u8; 6]>::try_from(a.as_slice()) {
                    link.mac = m;
                }
            }
            _ => {}
        }
    }
    link
}

/// The first IPv4 address wider in scope than the host: the local one of
/// each entry (on a point-to-point link `Address` is the peer's).
pub(super) fn first_ipv4(addrs: &[AddressMessage]) -> Option<Ipv4Addr> {
    addrs
        .iter()
        .filter(|a| a.header.scope != AddressScope::Host)
        .find_map(|a| {
            let (mut local, mut address) = (None, None);
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(v)) => local = Some(*v),
                    AddressAttribute::Address(IpAddr::V4(v)) => address = Some(*v),
                    _ => {}
                }
            }
            local.or(address)
        })
}

/// A neighbour entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Neigh {
    pub(super) ifindex: u32,
    pub(super) dst: Option<IpAddr>,
    pub(super) mac: Option<[u8; 6]>,
    pub(super) state: NeighbourState,
}

pub(super) fn neigh_of(msg: &NeighbourMessage) -> Neigh {
    let mut n = Neigh {
        ifindex: msg.header.ifindex,
        dst: None,
        mac: None,
        state: msg.header.state,
    };
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => {
                n.dst = Some(IpAddr::V4(*d))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => {
                n.dst = Some(IpAddr::V6(*d))
            }
            NeighbourAttribute::LinkLayerAddress(a) => {
                n.mac = <[u8; 6]>::try_from(a.as_slice()).ok()
            }
            _ => {}
        }
    }
    n
}

/// What a neighbour entry says of a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HopState {
    /// A MAC frames can be sent to (REACHABLE, STALE, DELAY, PROBE,
    /// PERMANENT, NOARP: the kernel would use it too).
    Usable([u8; 6]),
    /// The kernel gave up: no answer to its probes.
    Failed,
    /// No entry, or resolution still under way (INCOMPLETE).
    Missing,
}

pub(super) fn hop_state(n: Option<&Neigh>) -> HopState {
    match n {
        Some(n) if n.state == NeighbourState::Failed => HopState::Failed,
        Some(n) if n.state == NeighbourState::Incomplete => HopState::Missing,
        Some(Neigh { mac: Some(m), .. }) => HopState::Usable(*m),
        _ => HopState::Missing,
    }
}

/// The way out toward a backend: the egress link and the hop whose MAC
/// frames need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Egress {
    pub(super) link: Link,
    pub(super) hop: IpAddr,
}

impl Egress {
    /// The next hop through this egress to `dmac`. A backend behind the
    /// ingress interface is sent with XDP_TX: ifindex 0.
    pub(super) fn nexthop(&self, dmac: [u8; 6], ingress_ifindex: u32) -> Nexthop {
        Nexthop {
            dmac,
            smac: self.link.mac,
            ifindex: if self.link.index == ingress_ifindex {
                0
            } else {
                self.link.index
            },
        }
    }

    /// What a hop state means for `backend`.
    pub(super) fn outcome(
        &self,
        backend: IpAddr,
        state: HopState,
        ingress_ifindex: u32,
    ) -> Outcome {
        let (hop, dev) = (self.hop, self.link.name.clone());
        match state {
            HopState::Usable(mac) => Outcome::Found(self.nexthop(mac, ingress_ifindex)),
            HopState::Failed => {
                Outcome::Failed(NeighError::Failed { backend, hop, dev }.to_string())
            }
            HopState::Missing => {
                Outcome::Missing(NeighError::Unresolved { backend, hop, dev }.to_string())
            }
        }
    }

    /// What a neighbour notification says of this egress's hop, if it is
    /// about it. An entry that disappears (flushed, or collected) is
    /// missing, not failed: the resolver provokes it again.
    pub(super) fn notice(
        &self,
        backend: IpAddr,
        n: &Neigh,
        deleted: bool,
        ingress_ifindex: u32,
    ) -> Option<Outcome> {
        if n.ifindex != self.link.index || n.dst != Some(self.hop) {
            return None;
        }
        let state = if deleted {
            HopState::Missing
        } else {
            hop_state(Some(n))
        };
        // An INCOMPLETE entry is resolution under way: the retry decides.
        if state == HopState::Missing && !deleted {
            return None;
        }
        Some(self.outcome(backend, state, ingress_ifindex))
    }
}

/// Opens a request connection, its driver spawned into `tasks`.
pub(super) fn connect(tasks: &mut JoinSet<()>) -> Result<Handle, NeighError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NeighError::Socket)?;
    tasks.spawn(conn);
    Ok(handle)
}

pub(super) fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NeighError {
    let what = what.into();
    move |source| NeighError::Netlink { what, source }
}

/// The errno of a kernel's answer, if it is an error.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

/// `ip route get BACKEND`: the egress link's index and the hop.
async fn route_get(h: &Handle, backend: IpAddr) -> Result<(u32, IpAddr), NeighError> {
    let msg = match backend {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    };
    let mut routes = h.route().get(msg).execute();
    // The kernel's answers when nothing routes there: no route, an
    // unreachable or prohibit route, a link that is down.
    const NO_ROUTE: [i32; 4] = [
        libc::ENETUNREACH,
        libc::EHOSTUNREACH,
        libc::EACCES,
        libc::ENETDOWN,
    ];
    match routes.try_next().await {
        Ok(Some(r)) => route_hop(&r, backend).ok_or(NeighError::NoRoute(backend)),
        Ok(None) => Err(NeighError::NoRoute(backend)),
        Err(e) if errno(&e).is_some_and(|n| NO_ROUTE.contains(&n)) => {
            Err(NeighError::NoRoute(backend))
        }
        Err(e) => Err(netlink(format!("route get {backend}"))(e)),
    }
}

/// `ip link show` of one link, by index or by name.
pub(super) async fn link_get(h: &Handle, by: Result<u32, &str>) -> Result<Link, NeighError> {
    let (req, what) = match by {
        Ok(i) => (
            h.link().get().match_index(i),
            format!("interface index {i}"),
        ),
        Err(n) => (h.link().get().match_name(n), n.to_string()),
    };
    match req.execute().try_next().await {
        Ok(Some(l)) => Ok(link_of(&l)),
        Ok(None) => Err(NeighError::NoLink(what)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Err(NeighError::NoLink(what)),
        Err(e) => Err(netlink(format!("link get {what}"))(e)),
    }
}

/// `ip neigh get HOP dev IFINDEX` (one entry, not a dump of the table);
/// `None` when there is no entry.
pub(super) async fn neigh_get(
    h: &Handle,
    ifindex: u32,
    hop: IpAddr,
) -> Result<Option<Neigh>, NeighError> {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = ifindex;
    let (family, dst) = match hop {
        IpAddr::V4(a) => (AddressFamily::Inet, NeighbourAddress::Inet(a)),
        IpAddr::V6(a) => (AddressFamily::Inet6, NeighbourAddress::Inet6(a)),
    };
    msg.header.family = family;
    msg.attributes.push(NeighbourAttribute::Destination(dst));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(msg));
    req.header.flags = NLM_F_REQUEST;
    let what = || format!("neigh get {hop} dev #{ifindex}");
    let mut answers = h.clone().request(req).map_err(netlink(what()))?;
    while let Some(answer) = answers.next().await {
        match answer.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                return Ok(Some(neigh_of(&n)));
            }
            NetlinkPayload::Error(e) if e.to_io().raw_os_error() == Some(libc::ENOENT) => {
                return Ok(None);
            }
            NetlinkPayload::Error(e) => {
                return Err(netlink(what())(rtnetlink::Error::NetlinkError(e)));
            }
            _ => {}
        }
    }
    Ok(None)
}

pub(super) async fn egress(h: &Handle, backend: IpAddr) -> Result<Egress, NeighError> {
    let (oif, hop) = route_get(h, backend).await?;
    let link = link_get(h, Ok(oif)).await?;
    Ok(Egress { link, hop })
}

/// One full look at a backend: route, link, neighbour. `Err` only when the
/// connection is lost; every other failure is an outcome for the backend.
pub(super) async fn look(
    h: &Handle,
    backend: IpAddr,
    ingress_ifindex: u32,
) -> Result<(Option<Egress>, Outcome), NeighError> {
    let looked = async {
        let eg = egress(h, backend).await?;
        let n = neigh_get(h, eg.link.index, eg.hop).await?;
        Ok::<_, NeighError>((eg, n))
    };
    let what = || format!("lookup of backend {backend}");
    match tokio::time::timeout(LOOKUP_TIMEOUT, looked).await {
        Err(_) => Err(NeighError::Timeout { what: what() }),
        Ok(Err(e)) if e.connection_lost() => Err(e),
        Ok(Err(e)) => Ok((None, Outcome::Failed(e.to_string()))),
        Ok(Ok((eg, n))) => {
            let outcome = eg.outcome(backend, hop_state(n.as_ref()), ingress_ifindex);
            // A FAILED entry stays so until traffic through the kernel
            // (which frames sent by XDP are not) makes it probe again.
            if !matches!(outcome, Outcome::Found(_)) {
                provoke(eg.hop);
            }
            Ok((Some(eg), outcome))
        }
    }
}

/// Makes the kernel resolve `hop`: any datagram toward it starts ARP or
/// neighbour discovery. Port 9 is the discard service; nothing needs to
/// answer.
pub(super) fn provoke(hop: IpAddr) {
    let bind: std::net::SocketAddr = match hop {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(s) = std::net::UdpSocket::bind(bind) {
        let _ = s.send_to(b"hola", (hop, 9));
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage, AddressScope},
        link::{LinkAttribute, LinkMessage},
        neighbour::NeighbourState,
    };

    use super::{
        Egress, HopState, Link, Neigh, first_ipv4, hop_state, link_of, neigh_of, route_hop,
    };
    use crate::{dataplane::Nexthop, neigh::track::Outcome};

    const BACKEND: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const OWN: [u8; 6] = [2, 0, 0, 0, 0, 1];

    /// One route attribute as the kernel lays it out: length, type, data,
    /// padded to 4 bytes.
    fn nla(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut v = ((4 + data.len()) as u16).to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v.extend(data);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    /// A whole netlink message of type `kind` around `body`, parsed as the
    /// resolver's sockets parse what they receive.
    fn parse(kind: u16, body: &[u8]) -> RouteNetlinkMessage {
        let mut buf = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        buf.extend(kind.to_ne_bytes());
        buf.extend([0u8; 10]); // flags, sequence number, port id
        buf.extend(body);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf)
            .expect("a valid message")
            .payload
        {
            NetlinkPayload::InnerMessage(m) => m,
            other => panic!("not an rtnetlink message: {other:?}"),
        }
    }

    const RTM_NEWROUTE: u16 = 24;
    const RTM_NEWNEIGH: u16 = 28;
    const AF_INET: u8 = 2;

    /// An RTM_NEWROUTE answer to `route get 198.18.0.11`, through `oif`,
    /// via `gateway` if any.
    fn route(oif: u32, gateway: Option<Ipv4Addr>) -> RouteNetlinkMessage {
        // rtmsg: family, dst_len, src_len, tos, table (main), protocol,
        // scope, type (unicast), flags.
        let mut body = vec![AF_INET, 32, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0];
        body.extend(nla(1, &[198, 18, 0, 11])); // RTA_DST
        body.extend(nla(4, &oif.to_ne_bytes())); // RTA_OIF
        if let Some(g) = gateway {
            body.extend(nla(5, &g.octets())); // RTA_GATEWAY
        }
        parse(RTM_NEWROUTE, &body)
    }

    /// An RTM_NEWNEIGH for 198.18.0.11 on `ifindex` in NUD `state`.
    fn neigh(ifindex: u32, state: u16, mac: Option<[u8; 6]>) -> RouteNetlinkMessage {
        // ndmsg: family, padding, ifindex, state, flags, type (unicast).
        let mut body = vec![AF_INET, 0, 0, 0];
        body.extend(ifindex.to_ne_bytes());
        body.extend(state.to_ne_bytes());
        body.extend([0, 1]);
        body.extend(nla(1, &[198, 18, 0, 11])); // NDA_DST
        if let Some(m) = mac {
            body.extend(nla(2, &m)); // NDA_LLADDR
        }
        parse(RTM_NEWNEIGH, &body)
    }

    fn neigh_msg(ifindex: u32, state: u16, mac: Option<[u8; 6]>) -> Neigh {
        match neigh(ifindex, state, mac) {
            RouteNetlinkMessage::NewNeighbour(m) => neigh_of(&m),
            other => panic!("not a neighbour: {other:?}"),
        }
    }

    fn egress(index: u32) -> Egress {
        Egress {
            link: Link {
                index,
                name: "eth0".into(),
                mac: OWN,
            },
            hop: BACKEND,
        }
    }

    #[test]
    fn a_route_on_the_link_resolves_the_backend_itself() {
        let RouteNetlinkMessage::NewRoute(r) = route(3, None) else {
            panic!("not a route")
        };
        assert_eq!(route_hop(&r, BACKEND), Some((3, BACKEND)));
    }

    #[test]
    fn a_route_via_a_gateway_resolves_the_gateway() {
        let RouteNetlinkMessage::NewRoute(r) = route(7, Some(GATEWAY)) else {
            panic!("not a route")
        };
        assert_eq!(route_hop(&r, BACKEND), Some((7, IpAddr::V4(GATEWAY))));
    }

    #[test]
    fn neighbour_messages_parse_into_entries() {
        let n = neigh_msg(3, 0x02, Some(MAC_A));
        assert_eq!(
            n,
            Neigh {
                ifindex: 3,
                dst: Some(BACKEND),
                mac: Some(MAC_A),
                state: NeighbourState::Reachable,
            }
        );
        assert_eq!(neigh_msg(3, 0x01, None).state, NeighbourState::Incomplete);
    }

    #[test]
    fn usable_states_are_those_the_kernel_would_send_to() {
        // REACHABLE, STALE, DELAY, PROBE, NOARP, PERMANENT with a MAC.
        for state in [0x02, 0x04, 0x08, 0x10, 0x40, 0x80] {
            let n = neigh_msg(3, state, Some(MAC_A));
            assert_eq!(
                hop_state(Some(&n)),
                HopState::Usable(MAC_A),
                "state {state:#x}"
            );
        }
        // FAILED, even with a MAC left from before.
        assert_eq!(
            hop_state(Some(&neigh_msg(3, 0x20, Some(MAC_A)))),
            HopState::Failed
        );
        // INCOMPLETE, no MAC, no entry.
        assert_eq!(
            hop_state(Some(&neigh_msg(3, 0x01, Some(MAC_A)))),
            HopState::Missing
        );
        assert_eq!(
            hop_state(Some(&neigh_msg(3, 0x02, None))),
            HopState::Missing
        );
        assert_eq!(hop_state(None), HopState::Missing);
    }

    #[test]
    fn the_ingress_interface_is_ifindex_zero() {
        let n = neigh_msg(3, 0x02, Some(MAC_A));
        let Outcome::Found(through_ingress) = egress(3).outcome(BACKEND, hop_state(Some(&n)), 3)
        else {
            panic!("usable entry not found")
        };
        assert_eq!(
            through_ingress,
            Nexthop {
                dmac: MAC_A,
                smac: OWN,
                ifindex: 0
            }
        );
        assert_eq!(
            egress(3).nexthop(MAC_A, 2).ifindex,
            3,
            "another interface: redirect"
        );
    }

    #[test]
    fn notifications_about_the_hop_become_outcomes() {
        let eg = egress(3);
        let found = |mac| Some(Outcome::Found(eg.nexthop(mac, 3)));
        // A gratuitous ARP leaves the entry STALE with the new MAC.
        assert_eq!(
            eg.notice(BACKEND, &neigh_msg(3, 0x04, Some(MAC_B)), false, 3),
            found(MAC_B)
        );
        assert_eq!(
            eg.notice(BACKEND, &neigh_msg(3, 0x02, Some(MAC_A)), false, 3),
            found(MAC_A)
        );
        assert!(matches!(
            eg.notice(BACKEND, &neigh_msg(3, 0x20, None), false, 3),
            Some(Outcome::Failed(e)) if e.contains("FAILED") && e.contains("198.18.0.11")
        ));
        assert!(matches!(
            eg.notice(BACKEND, &neigh_msg(3, 0x02, Some(MAC_A)), true, 3),
            Some(Outcome::Missing(_))
        ));
        // Resolution under way: the retry decides, not the notification.
        assert_eq!(
            eg.notice(BACKEND, &neigh_msg(3, 0x01, None), false, 3),
            None
        );
        // Another interface, or another address: not this hop.
        assert_eq!(
            eg.notice(BACKEND, &neigh_msg(4, 0x02, Some(MAC_B)), false, 3),
            None
        );
        let mut other = neigh_msg(3, 0x02, Some(MAC_B));
        other.dst = Some(IpAddr::V4(GATEWAY));
        assert_eq!(eg.notice(BACKEND, &other, false, 3), None);
    }

    #[test]
    fn links_give_their_index_name_and_mac() {
        let mut m = LinkMessage::default();
        m.header.index = 5;
        m.attributes.push(LinkAttribute::IfName("eth1".into()));
        m.attributes.push(LinkAttribute::Address(MAC_A.to_vec()));
        assert_eq!(
            link_of(&m),
            Link {
                index: 5,
                name: "eth1".into(),
                mac: MAC_A
            }
        );
        // Loopback and tunnels have no 6-byte address: zero, as before.
        let mut lo = LinkMessage::default();
        lo.attributes.push(LinkAttribute::Address(vec![0; 4]));
        assert_eq!(link_of(&lo).mac, [0; 6]);
    }

    #[test]
    fn the_first_ipv4_skips_host_scope_and_prefers_the_local_address() {
        let addr = |scope, attrs: Vec<AddressAttribute>| {
            let mut m = AddressMessage::default();
            m.header.scope = scope;
            m.attributes = attrs;
            m
        };
        let v4 = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
        let addrs = [
            addr(
                AddressScope::Host,
                vec![AddressAttribute::Local(v4([127, 0, 0, 1]))],
            ),
            addr(
                AddressScope::Universe,
                vec![
                    AddressAttribute::Address(v4([198, 18, 0, 99])),
                    AddressAttribute::Local(v4([198, 18, 0, 2])),
                ],
            ),
        ];
        assert_eq!(first_ipv4(&addrs), Some(Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(first_ipv4(&addrs[..1]), None);
    }
}
