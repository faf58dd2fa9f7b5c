//! The semantic checks of a [`Config`], shared by [`parse`](super::parse)
//! (after the TOML front end) and [`Config::validate`] (a `Config` from the
//! API). They collect every error in one pass into a [`Sink`], which knows
//! each field's line when the configuration came from a file.
//!
//! This file checks the configuration as a whole (`[global]`, `[cluster]`,
//! what the VIPs need together) and holds the helpers; `vip` checks one
//! `[[vip]]` and what it holds.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use super::defaults::*;
use super::error::{Sink, Subject};
use super::values::{Bounds, CheckKind, Ipv4Cidr, Ipv6Cidr, Protocol, Spelled};
use super::values::{format_duration, format_port_range};
use super::{ClusterConfig, Config, Global};
use crate::maglev::is_prime;

mod quic;
mod vip;

/// Reports `key` of the `owner` check type, set in a check of type `kind`.
pub(in crate::config) fn foreign_key(
    sink: &mut Sink<'_>,
    path: &str,
    key: &str,
    value: &str,
    owner: CheckKind,
    kind: CheckKind,
) {
    let p = format!("{path}.{key}");
    sink.error(
        &p,
        format!(
            "{p} = {value}: only for type = \"{owner}\", not \"{kind}\"; remove it or change \
             {path}.type"
        ),
    );
}

/// Example fullnat source addresses, for messages.
pub(in crate::config) const FULLNAT_SOURCE_V4_EXAMPLE: &str = "198.18.2.1";
pub(in crate::config) const FULLNAT_SOURCE_V6_EXAMPLE: &str = "2001:db8:2::1";

/// Reports `value` at `path` unless `bounds` hold it.
fn check_range<T: Spelled + PartialOrd>(
    sink: &mut Sink<'_>,
    path: &str,
    value: T,
    bounds: Bounds<T>,
) {
    if !bounds.contains(value) {
        sink.error(
            path,
            format!("{path} = {}: must be {bounds}", value.spelled()),
        );
    }
}

/// The smallest prime strictly above `n` (saturating at the range's top).
fn next_prime(n: u32) -> u32 {
    let mut p = n.saturating_add(1);
    while p < TABLE_SIZE_RANGE.hi && !is_prime(p) {
        p += 1;
    }
    p
}

/// Problems with a table size, if any; `backends` is how many it must hold.
pub(super) fn table_size_problem(size: u32, backends: usize) -> Option<String> {
    if !TABLE_SIZE_RANGE.contains(size) {
        return Some(format!(
            "must be a prime in {TABLE_SIZE_RANGE}, such as 65537 or 655373"
        ));
    }
    if !is_prime(size) {
        return Some(format!(
            "not prime; 65537 and 655373 are primes (the next prime above {size} is {})",
            next_prime(size)
        ));
    }
    if backends >= size as usize {
        return Some(format!(
            "must be greater than the VIP's {backends} backends; use a prime at least 100 times \
             that, such as {}",
            next_prime(u32::try_from(backends.saturating_mul(100)).unwrap_or(u32::MAX))
        ));
    }
    None
}

/// Whether `name` can be a Linux interface name (the kernel's dev_valid_name).
fn valid_ifname(name: &str) -> bool {
    IFNAME_LEN_RANGE.contains(name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Reports the interface `name` at `path` unless it is a valid one.
fn check_ifname(sink: &mut Sink<'_>, path: &str, name: &str) {
    if !valid_ifname(name) {
        sink.error(
            path,
            format!(
                "{path} = {name:?}: not an interface name: {IFNAME_LEN_RANGE} characters, no '/', \
                 ':' or whitespace (`ip link` lists them)"
            ),
        );
    }
}

fn check_path(sink: &mut Sink<'_>, path: &str, value: &Path) {
    if value.as_os_str().is_empty() {
        sink.error(
            path,
            format!("{path} = \"\": must not be empty; remove the line to use the default"),
        );
    }
}

/// Reports a cluster id or node name at `path` unless it is one.
fn check_name(sink: &mut Sink<'_>, path: &str, name: &str, example: &str) {
    let ok = NAME_LEN_RANGE.contains(name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        let Bounds { lo, hi, .. } = NAME_LEN_RANGE;
        sink.error(
            path,
            format!(
                "{path} = {name:?}: {lo} to {hi} letters, digits, '.', '_' or '-', e.g. \
                 \"{example}\""
            ),
        );
    }
}

fn check_cluster(sink: &mut Sink<'_>, c: &ClusterConfig) {
    if !sink.is_poisoned("cluster.id") {
        check_name(sink, "cluster.id", &c.id, "prod-a");
    }
    match (&c.key, &c.key_file) {
        (None, None) => sink.error(
            "cluster",
            format!(
                "cluster: neither key nor key_file is set; announcements and replication are \
                 authenticated with a shared key: add key_file = \"/etc/hola/cluster.key\" (a \
                 file of at least {CLUSTER_KEY_MIN_LEN} random characters, the same on every node)"
            ),
        ),
        (Some(_), Some(_)) => sink.error(
            "cluster.key",
            "cluster.key and cluster.key_file are both set: keep one",
        ),
        (Some(k), None) if k.len() < CLUSTER_KEY_MIN_LEN => sink.error(
            "cluster.key",
            format!(
                "cluster.key is {} characters: use at least {CLUSTER_KEY_MIN_LEN} random \
                 characters (or key_file)",
                k.len()
            ),
        ),
        _ => {}
    }
    if let Some(n) = &c.node {
        check_name(sink, "cluster.node", n, "lb1");
    }
    if let Some(i) = &c.interface {
        check_ifname(sink, "cluster.interface", i);
    }
    check_range(sink, "cluster.port", c.port, PORT_RANGE);
    if !c.group.is_multicast() {
        sink.error(
            "cluster.group",
            format!(
                "cluster.group = \"{}\": not a multicast address (224.0.0.0/4), e.g. \"{}\"",
                c.group, CLUSTER_GROUP
            ),
        );
    }
    for (i, p) in c.peers.iter().enumerate() {
        if c.peer_addr(p).is_none() {
            sink.error(
                &format!("cluster.peers[{i}]"),
                format!(
                    "cluster.peers[{i}] = {p:?}: not an address or address:port, e.g. \
                     \"198.18.0.3\" or \"198.18.0.3:{}\"",
                    c.port
                ),
            );
        }
    }
    if !c.multicast && c.peers.is_empty() {
        sink.error(
            "cluster.multicast",
            "cluster.multicast = false and no cluster.peers: this node would find no peer; \
             list them in peers = [\"198.18.0.3\"] or turn multicast on",
        );
    }
    let announce = ANNOUNCE_INTERVAL_RANGE;
    if !announce.contains(c.announce_interval) {
        sink.error(
            "cluster.announce_interval",
            format!(
                "cluster.announce_interval = \"{}\": must be {}..={}",
                format_duration(c.announce_interval),
                format_duration(announce.lo),
                format_duration(announce.hi)
            ),
        );
    }
    if !sink.is_poisoned("cluster.peer_timeout") && c.peer_timeout < c.announce_interval * 2 {
        sink.error(
            "cluster.peer_timeout",
            format!(
                "cluster.peer_timeout = \"{}\": must be at least twice announce_interval (\"{}\"), \
                 or one lost announcement drops a peer",
                format_duration(c.peer_timeout),
                format_duration(c.announce_interval * 2)
            ),
        );
    }
    check_range(sink, "cluster.queue", c.queue, CLUSTER_QUEUE_RANGE);
    if let Some(n) = c.peer_flow_capacity {
        check_range(
            sink,
            "cluster.peer_flow_capacity",
            n,
            PEER_FLOW_CAPACITY_RANGE,
        );
    }
}

fn check_global(sink: &mut Sink<'_>, g: &Global) {
    if g.interfaces.is_empty() {
        sink.error(
            "global.interfaces",
            "global.interfaces = []: list at least one interface, e.g. [\"eth0\"]",
        );
    }
    let mut seen = HashSet::new();
    for (i, name) in g.interfaces.iter().enumerate() {
        let p = format!("global.interfaces[{i}]");
        if !valid_ifname(name) {
            check_ifname(sink, &p, name);
        } else if !seen.insert(name) {
            sink.error(&p, format!("{p} = {name:?}: listed twice; remove one"));
        }
    }
    for (key, value, range) in [
        (
            "flow_capacity_per_cpu",
            g.flow_capacity_per_cpu,
            FLOW_CAPACITY_RANGE,
        ),
        (
            "flow_capacity_v6_per_cpu",
            g.flow_capacity_v6_per_cpu.unwrap_or(FLOW_CAPACITY_RANGE.lo),
            FLOW_CAPACITY_RANGE,
        ),
        ("max_vips", g.max_vips, MAX_VIPS_RANGE),
        ("max_backends", g.max_backends, MAX_BACKENDS_RANGE),
        ("nat_capacity", g.nat_capacity, NAT_CAPACITY_RANGE),
        ("new_flow_rate", g.new_flow_rate, NEW_FLOW_RATE_RANGE),
    ] {
        check_range(sink, &format!("global.{key}"), value, range);
    }
    for (key, value, range) in [
        ("nat_tcp_timeout", g.nat_tcp_timeout, NAT_TIMEOUT_RANGE),
        ("nat_udp_timeout", g.nat_udp_timeout, NAT_TIMEOUT_RANGE),
        (
            "nat_closed_timeout",
            g.nat_closed_timeout,
            NAT_CLOSED_TIMEOUT_RANGE,
        ),
        ("table_grace", g.table_grace, TABLE_GRACE_RANGE),
    ] {
        check_range(sink, &format!("global.{key}"), value, range);
    }
    if super::parse_port_range(&g.fullnat_ports).is_none() {
        let Bounds { lo, hi, .. } = FULLNAT_PORT_RANGE;
        sink.error(
            "global.fullnat_ports",
            format!(
                "global.fullnat_ports = {:?}: must be \"LOW-HIGH\" with {lo} <= LOW < HIGH <= \
                 {hi}, e.g. \"{}\"",
                g.fullnat_ports,
                format_port_range(FULLNAT_PORTS)
            ),
        );
    }
    if !RING_CAPACITY_RANGE.contains(g.ring_capacity) {
        sink.error(
            "global.ring_capacity",
            "global.ring_capacity = 0: must be at least the sum of the VIPs' table sizes",
        );
    }
    if let Some(why) = table_size_problem(g.default_table_size, 0) {
        sink.error(
            "global.default_table_size",
            format!(
                "global.default_table_size = {}: {why}",
                g.default_table_size
            ),
        );
    }
    check_path(sink, "global.control_socket", &g.control_socket);
    check_path(sink, "global.state_file", &g.state_file);
    check_path(sink, "global.bpffs_dir", &g.bpffs_dir);
    check_tunnel_sources(sink, g);
}

fn check_tunnel_sources(sink: &mut Sink<'_>, g: &Global) {
    let (v4, v6) = (g.tunnel_source_v4, g.tunnel_source_v6);
    let host_bits = |sink: &mut Sink<'_>, key: &str, written: String, net: String, prefix| {
        let p = format!("global.{key}");
        sink.error(
            &p,
            format!("{p} = \"{written}\": host bits are set; write \"{net}/{prefix}\""),
        );
    };
    if let Some(net) = v4.network()
        && net != v4.addr
    {
        host_bits(
            sink,
            "tunnel_source_v4",
            v4.to_string(),
            net.to_string(),
            v4.prefix,
        );
    } else if v4.prefix > Ipv4Cidr::MAX_PREFIX {
        sink.error(
            "global.tunnel_source_v4",
            format!(
                "global.tunnel_source_v4 = \"{v4}\": the prefix must be 0..={}",
                Ipv4Cidr::MAX_PREFIX
            ),
        );
    }
    let prefixes = TUNNEL_SOURCE_V6_PREFIX_RANGE;
    if !prefixes.contains(v6.prefix) {
        sink.error(
            "global.tunnel_source_v6",
            format!(
                "global.tunnel_source_v6 = \"{v6}\": the prefix must be {prefixes} (the \
                 balancer varies only the last {} bits), e.g. \"{TUNNEL_SOURCE_V6}\"",
                Ipv6Cidr::MAX_PREFIX - prefixes.lo
            ),
        );
    } else if let Some(net) = v6.network()
        && net != v6.addr
    {
        host_bits(
            sink,
            "tunnel_source_v6",
            v6.to_string(),
            net.to_string(),
            v6.prefix,
        );
    }
}

impl Config {
    /// Every check, each error reported to `sink`.
    pub(super) fn check(&self, sink: &mut Sink<'_>) {
        if let Some(b) = &self.bgp {
            super::bgp::check(sink, b);
        }
        if let Some(c) = &self.cluster {
            check_cluster(sink, c);
        }
        check_global(sink, &self.global);
        self.check_vips(sink);
    }

    /// Each VIP, and what they must fit in together.
    fn check_vips(&self, sink: &mut Sink<'_>) {
        let g = &self.global;
        let mut vips_seen: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
        let mut total_backends = 0usize;
        let mut total_slots = 0u64;
        for (i, vip) in self.vips.iter().enumerate() {
            let path = format!("vip[{i}]");
            sink.about(Some(Subject {
                vip: i,
                backend: None,
            }));
            self.check_vip(sink, &path, vip);
            let key = (vip.address, vip.port, vip.protocol);
            if let Some(first) = vips_seen.insert(key, i) {
                vips_seen.insert(key, first);
                sink.error(
                    &format!("{path}.address"),
                    format!(
                        "{path} = {}:{}/{}: the same address, port and protocol as vip[{first}]; \
                         merge their backends or change one",
                        vip.address, vip.port, vip.protocol
                    ),
                );
            }
            total_backends += vip.backends.len();
            total_slots += u64::from(self.table_size(vip));
        }
        sink.about(None);
        let n = self.vips.len();
        if n > g.max_vips as usize {
            sink.error(
                "global.max_vips",
                format!(
                    "global.max_vips = {}: {n} VIPs are configured; raise global.max_vips to at \
                     least {n} or remove VIPs",
                    g.max_vips
                ),
            );
        }
        if total_backends > g.max_backends as usize {
            sink.error(
                "global.max_backends",
                format!(
                    "global.max_backends = {}: the VIPs have {total_backends} backends in total; \
                     raise global.max_backends to at least {total_backends}",
                    g.max_backends
                ),
            );
        }
        if total_slots > u64::from(g.ring_capacity) {
            sink.error(
                "global.ring_capacity",
                format!(
                    "global.ring_capacity = {}: the {n} VIPs' Maglev tables need {total_slots} \
                     slots (the sum of their table sizes); raise global.ring_capacity to at \
                     least {total_slots} or use smaller table_size values",
                    g.ring_capacity
                ),
            );
        }
    }
}
