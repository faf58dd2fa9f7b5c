//! The `[bgp]` table (docs/cluster.md): where hola writes the routes of the
//! VIPs it wants announced, and what `hola bgp config` tells BIRD about
//! the BGP sessions. Its schema, its lenient TOML twin and its checks live
//! together here, as one concept.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults::{
    ANNOUNCE_DELAY, ANNOUNCE_DELAY_RANGE, AS_RANGE, AS_TRANS, BFD_INTERVAL, BFD_INTERVAL_RANGE,
    BFD_MULTIPLIER, BFD_MULTIPLIER_RANGE, BGP_ROUTE_PROTOCOL, BGP_ROUTE_PROTOCOL_RANGE, BGP_TABLE,
    BGP_TABLE_RANGE, BIRD_ROUTE_PROTOCOL, WITHDRAW_ON_STOP, fns as d,
};
use super::error::Sink;
use super::values::{duration_serde, format_duration};

/// The `[bgp]` table: hola announces its VIPs through a BGP daemon (BIRD 2)
/// by writing one route per VIP address into `table`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// This node's AS number.
    pub local_as: u32,
    /// BIRD's router id; `None`: BIRD picks the lowest IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<Ipv4Addr>,
    /// The kernel routing table the announced VIPs' routes go into (no
    /// `ip rule` points at it: it is read only by BIRD).
    #[serde(default = "d::bgp_table")]
    pub table: u32,
    /// The route protocol number of those routes; BIRD imports only these.
    #[serde(default = "d::bgp_route_protocol")]
    pub route_protocol: u8,
    /// Withdraw every VIP when `hola run` stops (SIGTERM); by default the
    /// routes stay, as the data plane keeps forwarding.
    #[serde(default)]
    pub withdraw_on_stop: bool,
    /// A VIP that starts serving (at start, or after its backends were
    /// down) is announced once it has served this long without a break:
    /// every backend's check has time to come back first, and a flapping
    /// backend does not flap the route.
    #[serde(default = "d::announce_delay", with = "duration_serde")]
    pub announce_delay: Duration,
    /// BFD's transmit and receive interval on the sessions.
    #[serde(default = "d::bfd_interval", with = "duration_serde")]
    pub bfd_interval: Duration,
    /// Missed BFD packets before a session is declared down.
    #[serde(default = "d::bfd_multiplier")]
    pub bfd_multiplier: u32,
    /// The routers this node announces to.
    #[serde(rename = "peer", default)]
    pub peers: Vec<BgpPeer>,
}

/// One `[[bgp.peer]]`: a BGP neighbour (a router).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpPeer {
    pub address: IpAddr,
    pub remote_as: u32,
}

/// `[bgp]` as written: every field optional, so that every mistake is
/// reported in one run.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    local_as: Option<i64>,
    router_id: Option<String>,
    table: Option<i64>,
    route_protocol: Option<i64>,
    withdraw_on_stop: Option<bool>,
    announce_delay: Option<String>,
    bfd_interval: Option<String>,
    bfd_multiplier: Option<i64>,
    #[serde(default)]
    peer: Vec<RawPeer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    address: Option<String>,
    remote_as: Option<i64>,
}

impl RawBgp {
    pub(super) fn convert(self, sink: &mut Sink<'_>) -> BgpConfig {
        let local_as = sink.required("bgp.local_as", self.local_as, 1, "local_as = 65001");
        let local_as = sink.int("bgp.local_as", Some(local_as), 1, AS_RANGE);
        let router_id = sink.parsed("bgp.router_id", self.router_id, None, |s| {
            s.parse().map(Some).map_err(|_| {
                String::from(
                    "not an IPv4 address; BIRD's router id is written as one, e.g. \"198.18.0.2\"",
                )
            })
        });
        let peers = (self.peer.into_iter().enumerate())
            .map(|(i, p)| {
                let path = format!("bgp.peer[{i}]");
                BgpPeer {
                    address: sink.ip(&format!("{path}.address"), p.address, "198.18.0.1"),
                    remote_as: {
                        let path = format!("{path}.remote_as");
                        let v = sink.required(&path, p.remote_as, 1, "remote_as = 65000");
                        sink.int(&path, Some(v), 1, AS_RANGE)
                    },
                }
            })
            .collect();
        BgpConfig {
            local_as,
            router_id,
            table: sink.int("bgp.table", self.table, BGP_TABLE, BGP_TABLE_RANGE),
            route_protocol: sink.int(
                "bgp.route_protocol",
                self.route_protocol,
                BGP_ROUTE_PROTOCOL,
                BGP_ROUTE_PROTOCOL_RANGE,
            ),
            withdraw_on_stop: self.withdraw_on_stop.unwrap_or(WITHDRAW_ON_STOP),
            announce_delay: sink
                .duration("bgp.announce_delay", self.announce_delay)
                .unwrap_or(ANNOUNCE_DELAY),
            bfd_interval: sink
                .duration("bgp.bfd_interval", self.bfd_interval)
                .unwrap_or(BFD_INTERVAL),
            bfd_multiplier: sink.int(
                "bgp.bfd_multiplier",
                self.bfd_multiplier,
                BFD_MULTIPLIER,
                BFD_MULTIPLIER_RANGE,
            ),
            peers,
        }
    }
}

/// The semantic checks of `[bgp]`.
pub(super) fn check(sink: &mut Sink<'_>, b: &BgpConfig) {
    check_as(sink, "bgp.local_as", b.local_as);
    if (253..=255).contains(&b.table) || !BGP_TABLE_RANGE.contains(b.table) {
        sink.error(
            "bgp.table",
            format!(
                "bgp.table = {}: must be {BGP_TABLE_RANGE}; hola's routes need a table of their \
                 own that no `ip rule` uses, e.g. table = {BGP_TABLE}",
                b.table
            ),
        );
    }
    if b.route_protocol == BIRD_ROUTE_PROTOCOL
        || !BGP_ROUTE_PROTOCOL_RANGE.contains(b.route_protocol)
    {
        sink.error(
            "bgp.route_protocol",
            format!(
                "bgp.route_protocol = {}: must be {BGP_ROUTE_PROTOCOL_RANGE}, a number no other \
                 program writes routes with (see /etc/iproute2/rt_protos), e.g. route_protocol = \
                 {BGP_ROUTE_PROTOCOL}",
                b.route_protocol
            ),
        );
    }
    if !sink.is_poisoned("bgp.bfd_interval") && !BFD_INTERVAL_RANGE.contains(b.bfd_interval) {
        sink.error(
            "bgp.bfd_interval",
            format!(
                "bgp.bfd_interval = \"{}\": must be {BFD_INTERVAL_RANGE}",
                format_duration(b.bfd_interval)
            ),
        );
    }
    if !sink.is_poisoned("bgp.announce_delay") && !ANNOUNCE_DELAY_RANGE.contains(b.announce_delay) {
        sink.error(
            "bgp.announce_delay",
            format!(
                "bgp.announce_delay = \"{}\": must be {ANNOUNCE_DELAY_RANGE}",
                format_duration(b.announce_delay)
            ),
        );
    }
    if !BFD_MULTIPLIER_RANGE.contains(b.bfd_multiplier) {
        sink.error(
            "bgp.bfd_multiplier",
            format!(
                "bgp.bfd_multiplier = {}: must be {BFD_MULTIPLIER_RANGE}",
                b.bfd_multiplier
            ),
        );
    }
    if b.peers.is_empty() {
        sink.error(
            "bgp.peer",
            "bgp has no peer: add one per router, e.g. [[bgp.peer]] address = \"198.18.0.1\", \
             remote_as = 65000",
        );
    }
    for (i, p) in b.peers.iter().enumerate() {
        let path = format!("bgp.peer[{i}].address");
        if !sink.is_poisoned(&path) && (p.address.is_unspecified() || p.address.is_multicast()) {
            sink.error(
                &path,
                format!(
                    "{path} = \"{}\": a router's unicast address, e.g. \"198.18.0.1\"",
                    p.address
                ),
            );
        }
        if let Some(j) = b.peers[..i].iter().position(|q| q.address == p.address) {
            sink.error(
                &path,
                format!(
                    "{path} = \"{}\": bgp.peer[{j}] has the same address; list each router once",
                    p.address
                ),
            );
        }
        check_as(sink, &format!("bgp.peer[{i}].remote_as"), p.remote_as);
    }
}

fn check_as(sink: &mut Sink<'_>, path: &str, v: u32) {
    if sink.is_poisoned(path) {
        return;
    }
    if v == AS_TRANS || !AS_RANGE.contains(v) {
        sink.error(
            path,
            format!("{path} = {v}: must be {AS_RANGE}; private AS numbers are 64512..=65534"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "[global]\ninterfaces = [\"eth0\"]\n\n";

    fn errors(bgp: &str) -> Vec<String> {
        let e = crate::config::parse(&format!("{HEAD}{bgp}"), "hola.toml").unwrap_err();
        e.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn bgp_parses_with_defaults_and_is_never_written_back() {
        let c = crate::config::parse(
            &format!("{HEAD}[bgp]\nlocal_as = 65001\n\n[[bgp.peer]]\naddress = \"198.18.0.1\"\nremote_as = 65000\n"),
            "hola.toml",
        )
        .unwrap();
        let b = c.bgp.clone().unwrap();
        assert_eq!(
            b,
            BgpConfig {
                local_as: 65001,
                router_id: None,
                table: 201,
                route_protocol: 201,
                withdraw_on_stop: false,
                announce_delay: Duration::from_secs(3),
                bfd_interval: Duration::from_millis(100),
                bfd_multiplier: 3,
                peers: vec![BgpPeer {
                    address: "198.18.0.1".parse().unwrap(),
                    remote_as: 65000
                }],
            }
        );
        assert!(!c.to_toml().contains("bgp"));
    }

    #[test]
    fn bgp_errors_name_the_key_and_the_fix() {
        let e = errors(
            "[bgp]\nlocal_as = 23456\ntable = 254\nroute_protocol = 12\nbfd_interval = \"5ms\"\n\
             bfd_multiplier = 0\nrouter_id = \"2001:db8::1\"\n",
        );
        let want = [
            "hola.toml:10: bgp.router_id = \"2001:db8::1\": not an IPv4 address; BIRD's router id is written as one, e.g. \"198.18.0.2\"",
            "hola.toml:5: bgp.local_as = 23456: must be 1..=4294967294 (not 23456 (AS_TRANS)); private AS numbers are 64512..=65534",
            "hola.toml:6: bgp.table = 254: must be 1..=4294967295 (not 253, 254 or 255: default, main and local); hola's routes need a table of their own that no `ip rule` uses, e.g. table = 201",
            "hola.toml:7: bgp.route_protocol = 12: must be 5..=255 (not 12: BIRD's own routes carry it), a number no other program writes routes with (see /etc/iproute2/rt_protos), e.g. route_protocol = 201",
            "hola.toml:8: bgp.bfd_interval = \"5ms\": must be \"10ms\"..=\"10s\"",
            "hola.toml:9: bgp.bfd_multiplier = 0: must be 1..=255",
            "hola.toml:4: bgp has no peer: add one per router, e.g. [[bgp.peer]] address = \"198.18.0.1\", remote_as = 65000",
        ];
        for w in want {
            assert!(e.iter().any(|x| x == w), "{w}\nnot in\n{e:#?}");
        }
        let e = errors(
            "[bgp]\n[[bgp.peer]]\naddress = \"198.18.0.1\"\n[[bgp.peer]]\naddress = \"198.18.0.1\"\n\
             remote_as = 65000\n",
        );
        for w in [
            "bgp.local_as is missing: add it, e.g. local_as = 65001",
            "bgp.peer[0].remote_as is missing: add it, e.g. remote_as = 65000",
            "bgp.peer[1].address = \"198.18.0.1\": bgp.peer[0] has the same address; list each router once",
        ] {
            assert!(e.iter().any(|x| x.ends_with(w)), "{w}\nnot in\n{e:#?}");
        }
    }
}
