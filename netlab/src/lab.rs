//! The lab a balancer is tried in: a client, the balancer and backends on
//! one bridge, the VIPs on the backends' loopback (README, "The lab").
//!
//! ```text
//!   <client>  eth0 198.18.0.1   2001:db8::1   ─┐
//!   lb        eth0 198.18.0.2   2001:db8::2   ─┤  sw: br0 (ports p-<host>)
//!   b1..bN    eth0 198.18.0.11  2001:db8::11  ─┘
//!                  ..           ..            the VIPs on lo
//! ```
//!
//! The client reaches 198.18.1.0/24 and 2001:db8:1::/64 (where the VIPs
//! are) through the balancer; a backend answers from the VIP on its
//! loopback straight to the client (dsr), so no host filters by reverse
//! path. What runs in it (the balancer's XDP program, hola-decap on the
//! backends, an XDP program on the balancer's bridge port) is the caller's.

use crate::{Error, Namespaces};

/// The host that holds the bridge.
pub const SWITCH: &str = "sw";
/// The bridge every host's `eth0` is a port of.
pub const BRIDGE: &str = "br0";
/// The balancer's host.
pub const BALANCER: &str = "lb";

pub const CLIENT_V4: &str = "198.18.0.1";
pub const CLIENT_V6: &str = "2001:db8::1";
pub const LB_V4: &str = "198.18.0.2";
pub const LB_V6: &str = "2001:db8::2";
/// Where the VIPs are: the client routes these through the balancer.
pub const VIP_NET_V4: &str = "198.18.1.0/24";
pub const VIP_NET_V6: &str = "2001:db8:1::/64";
pub const DSR_VIP_V4: &str = "198.18.1.1";
pub const TUNNEL_VIP_V4: &str = "198.18.1.2";
pub const DSR_VIP_V6: &str = "2001:db8:1::1";
pub const TUNNEL_VIP_V6: &str = "2001:db8:1::2";

/// Backend `i` (1-based): its host name and IPv4 address.
pub fn backend(i: usize) -> (String, String) {
    numbered('b', i, 10)
}

/// Host `i` (1-based) of a numbered kind on the bridge's 198.18.0.0/24:
/// named `<kind><i>`, at 198.18.0.`<first + i>`.
pub(crate) fn numbered(kind: char, i: usize, first: usize) -> (String, String) {
    (format!("{kind}{i}"), format!("198.18.0.{}", first + i))
}

/// Backend `i`'s IPv6 address.
pub fn backend_v6(i: usize) -> String {
    format!("2001:db8::{}", 10 + i)
}

/// The bridge port whose peer is host `h`'s `eth0`.
pub fn port(h: &str) -> String {
    format!("p-{h}")
}

/// `addr` as a host route: `/32` or `/128`.
pub fn host_cidr(addr: &str) -> String {
    let len = if addr.contains(':') { 128 } else { 32 };
    format!("{addr}/{len}")
}

/// An address family the lab's hosts get addresses in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The address of a host on the bridge, with the link's prefix length.
    fn link_cidr(self, v4: &str, v6: &str) -> String {
        match self {
            Family::V4 => format!("{v4}/24"),
            Family::V6 => format!("{v6}/64"),
        }
    }

    /// The VIPs' network and the balancer's address, for the client's route.
    fn vip_route(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => (VIP_NET_V4, LB_V4),
            Family::V6 => (VIP_NET_V6, LB_V6),
        }
    }
}

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct LabSpec<'a> {
    /// Namespaces are named `<prefix>-<host>`.
    pub prefix: &'a str,
    /// The client's host name (`client` in `cargo xtask lab`, `cl` in tests).
    pub client: &'a str,
    /// How many backends: `b1..bN`.
    pub backends: usize,
    /// The families every host gets an address in.
    pub families: &'a [Family],
    /// The addresses every backend holds on `lo` (the VIPs).
    pub vips: &'a [&'a str],
}

/// Makes the namespaces `sw`, the client, `lb` and `b1..bN`, the bridge,
/// the veths, addresses and routes; they go away when the returned value
/// is dropped (see [`Namespaces::keep`]).
pub fn build(spec: &LabSpec<'_>) -> Result<Namespaces, Error> {
    let mut hosts = vec![
        (
            spec.client.to_string(),
            CLIENT_V4.to_string(),
            CLIENT_V6.to_string(),
        ),
        (BALANCER.to_string(), LB_V4.to_string(), LB_V6.to_string()),
    ];
    hosts.extend((1..=spec.backends).map(|i| {
        let (b, v4) = backend(i);
        (b, v4, backend_v6(i))
    }));
    let mut names = vec![SWITCH];
    names.extend(hosts.iter().map(|(h, _, _)| h.as_str()));
    let t = Namespaces::new(spec.prefix, &names)?;
    t.bridge(SWITCH, BRIDGE)?;
    for (h, v4, v6) in &hosts {
        t.on_bridge(h, "eth0", SWITCH, &port(h), BRIDGE)?;
        for f in spec.families {
            t.addr(h, "eth0", &f.link_cidr(v4, v6))?;
        }
        t.no_rp_filter(h, &["all", "default", "eth0", "lo"])?;
    }
    for f in spec.families {
        let (net, via) = f.vip_route();
        t.route(spec.client, net, via)?;
    }
    t.no_tx_offload(spec.client, "eth0")?;
    for i in 1..=spec.backends {
        let (b, _) = backend(i);
        for vip in spec.vips {
            t.addr(&b, "lo", &host_cidr(vip))?;
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_match_the_readme() {
        assert_eq!(backend(1), ("b1".to_string(), "198.18.0.11".to_string()));
        assert_eq!(backend(3), ("b3".to_string(), "198.18.0.13".to_string()));
        assert_eq!(backend_v6(2), "2001:db8::12");
        assert_eq!(port("lb"), "p-lb");
        assert_eq!(Family::V4.link_cidr(CLIENT_V4, CLIENT_V6), "198.18.0.1/24");
        assert_eq!(Family::V6.link_cidr(CLIENT_V4, CLIENT_V6), "2001:db8::1/64");
        assert_eq!(Family::V6.vip_route(), ("2001:db8:1::/64", "2001:db8::2"));
    }

    #[test]
    fn vips_are_host_routes() {
        assert_eq!(host_cidr(DSR_VIP_V4), "198.18.1.1/32");
        assert_eq!(host_cidr(TUNNEL_VIP_V6), "2001:db8:1::2/128");
    }
}
