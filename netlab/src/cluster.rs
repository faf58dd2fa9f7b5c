//! The cluster lab: a client behind a router that spreads the VIP's flows
//! over two or three balancer nodes with a multipath route (ECMP, hashed on
//! the 5-tuple), the nodes and the backends on one bridge
//! (docs/cluster.md).
//!
//! ```text
//!  <client> 198.18.100.2 ── rt 198.18.100.1 / 198.18.0.1 ── br0 ── n1 198.18.0.2
//!                                                            ├── n2 198.18.0.3
//!                                                            ├── (n3 198.18.0.4)
//!                                                            └── b1.. 198.18.0.11..
//! ```
//!
//! In `dsr` mode the backends hold the VIP on lo and answer the client
//! through the router; in `nat` mode their replies go back through the
//! nodes, spread by a multipath route of their own (so a reply may reach
//! another node than its request: only replication makes that work).

use crate::{
    Error, Namespaces,
    lab::{BRIDGE, DSR_VIP_V4, SWITCH, backend, host_cidr, numbered, port},
};

/// The router's host.
pub const ROUTER: &str = "rt";
pub const CLIENT: &str = "198.18.100.2";
/// The client's network, behind the router.
pub const CLIENT_NET: &str = "198.18.100.0/24";
/// The router's address on the client's side (`eth0`).
pub const ROUTER_FRONT: &str = "198.18.100.1";
/// The router's address on the bridge (`eth1`).
pub const ROUTER_BACK: &str = "198.18.0.1";
/// The VIP the nodes share: the lab's dsr VIP.
pub const VIP: &str = DSR_VIP_V4;

/// Node `i` (1-based): its host name and address.
pub fn node(i: usize) -> (String, String) {
    numbered('n', i, 1)
}

/// How the backends' replies reach the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Through the router, from the VIP on their loopback.
    Dsr,
    /// Through the nodes, which translate them back.
    Nat,
}

impl Mode {
    /// The name of the mode in hola's configuration.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Dsr => "dsr",
            Mode::Nat => "nat",
        }
    }
}

/// How the router learns where the VIP is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// A static multipath route over every node ([`route_via`] changes it).
    Static,
    /// No route: BIRD on the router learns it from the nodes over BGP
    /// (the caller starts the daemons, see [`crate::bird`]).
    Bgp,
}

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct ClusterSpec<'a> {
    /// Namespaces are named `<prefix>-<host>`.
    pub prefix: &'a str,
    /// The client's host name (`client` in `cargo xtask lab`, `cl` in tests).
    pub client: &'a str,
    /// Balancer nodes `n1..nN`.
    pub nodes: usize,
    /// Backends `b1..bN`.
    pub backends: usize,
    pub mode: Mode,
    pub routing: Routing,
}

/// Makes the namespaces, the bridge (multicast reaching every port: the
/// nodes find each other by announcements), the veths, addresses and
/// routes; the router sends the VIP to every node. They go away when the
/// returned value is dropped (see [`Namespaces::keep`]).
pub fn build(spec: &ClusterSpec<'_>) -> Result<Namespaces, Error> {
    let mut on_bridge: Vec<(String, String, &str)> =
        vec![(ROUTER.into(), ROUTER_BACK.into(), "eth1")];
    on_bridge.extend((1..=spec.nodes).map(|i| {
        let (n, a) = node(i);
        (n, a, "eth0")
    }));
    on_bridge.extend((1..=spec.backends).map(|i| {
        let (b, a) = backend(i);
        (b, a, "eth0")
    }));
    let mut hosts = vec![SWITCH, spec.client];
    hosts.extend(on_bridge.iter().map(|(h, _, _)| h.as_str()));
    let t = Namespaces::new(spec.prefix, &hosts)?;
    t.bridge(SWITCH, BRIDGE)?;
    // Announcements go to every port (no IGMP snooping to wait for).
    t.ip(
        SWITCH,
        &[
            "link",
            "set",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ],
    )?;

    t.veth(spec.client, "eth0", ROUTER, "eth0")?;
    t.addr(spec.client, "eth0", &format!("{CLIENT}/24"))?;
    t.ip(
        spec.client,
        &["route", "add", "default", "via", ROUTER_FRONT],
    )?;
    t.addr(ROUTER, "eth0", &format!("{ROUTER_FRONT}/24"))?;
    for (h, addr, dev) in &on_bridge {
        t.on_bridge(h, dev, SWITCH, &port(h), BRIDGE)?;
        t.addr(h, dev, &format!("{addr}/24"))?;
        t.no_rp_filter(h, &["all", dev])?;
        t.no_tx_offload(h, dev)?;
    }
    t.no_tx_offload(spec.client, "eth0")?;
    t.no_tx_offload(ROUTER, "eth0")?;
    t.sysctl(ROUTER, "net.ipv4.ip_forward=1")?;
    t.sysctl(ROUTER, "net.ipv4.fib_multipath_hash_policy=1")?;
    let all: Vec<usize> = (1..=spec.nodes).collect();
    if spec.routing == Routing::Static {
        route_via(&t, &all)?;
    }
    for i in 1..=spec.backends {
        let (b, _) = backend(i);
        t.sysctl(&b, "net.ipv4.fib_multipath_hash_policy=1")?;
        if spec.mode == Mode::Dsr {
            t.addr(&b, "lo", &host_cidr(VIP))?;
            t.no_rp_filter(&b, &["lo"])?;
        }
    }
    backends_via(&t, spec.mode, spec.backends, &all)?;
    Ok(t)
}

/// The router sends the VIP's flows to these nodes (1-based), spread by
/// 5-tuple: what a routing daemon does as nodes announce or withdraw.
pub fn route_via(t: &Namespaces, nodes: &[usize]) -> Result<(), Error> {
    let mut args = vec!["route".to_string(), "replace".into(), host_cidr(VIP)];
    args.extend(gateways(nodes));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    t.ip(ROUTER, &refs).map(drop)
}

/// How backends `b1..bN` reach the client: through the router (dsr:
/// replies go straight back), or spread over these nodes (nat: replies
/// must be translated back by a node).
pub fn backends_via(
    t: &Namespaces,
    mode: Mode,
    backends: usize,
    nodes: &[usize],
) -> Result<(), Error> {
    let mut args = vec!["route".to_string(), "replace".into(), CLIENT_NET.into()];
    match mode {
        Mode::Dsr => args.extend(["via".into(), ROUTER_BACK.into()]),
        Mode::Nat => args.extend(gateways(nodes)),
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    for i in 1..=backends {
        t.ip(&backend(i).0, &refs)?;
    }
    Ok(())
}

/// The next hops of a route through these nodes: `via A` for one,
/// `nexthop via A nexthop via B ...` (multipath) for more.
fn gateways(nodes: &[usize]) -> Vec<String> {
    if let [one] = nodes {
        return vec!["via".into(), node(*one).1];
    }
    nodes
        .iter()
        .flat_map(|i| ["nexthop".into(), "via".into(), node(*i).1])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_is_a_plain_route_more_are_multipath() {
        assert_eq!(gateways(&[2]), ["via", "198.18.0.3"]);
        assert_eq!(
            gateways(&[1, 3]),
            [
                "nexthop",
                "via",
                "198.18.0.2",
                "nexthop",
                "via",
                "198.18.0.4"
            ]
        );
    }

    #[test]
    fn names_and_modes() {
        assert_eq!(node(1), ("n1".to_string(), "198.18.0.2".to_string()));
        assert_eq!(Mode::Dsr.name(), "dsr");
        assert_eq!(Mode::Nat.name(), "nat");
    }
}
