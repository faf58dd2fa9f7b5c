//! The `hola` daemon's configuration: a TOML file (see `docs/configuration.md`).
//!
//! Parsing goes through a private, lenient model first (every field optional,
//! numbers as `i64`, addresses as strings) so that one run reports every
//! mistake, each with the file, the line, the field path, the value and the
//! fix. Only unknown keys and wrong TOML types stop at the first (serde does).
//! The result is the public [`Config`], which carries no spans; [`Config::validate`]
//! runs the same semantic checks on a `Config` built elsewhere (the API), without
//! line numbers.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::de::{DeTable, DeValue};

use crate::maglev::{DEFAULT_TABLE_SIZE, is_prime};

/// Default values of every optional key, in one place (docs/configuration.md
/// repeats them).
pub mod defaults {
    use super::{Duration, HashKind, Protocol, VipMode, XdpMode};

    pub const XDP_MODE: XdpMode = XdpMode::Auto;
    pub const FLOW_CAPACITY_PER_CPU: u32 = 1 << 20;
    pub const MAX_VIPS: u32 = 256;
    pub const MAX_BACKENDS: u32 = 4096;
    pub const RING_CAPACITY: u32 = 1_048_592;
    pub const DEFAULT_TABLE_SIZE: u32 = crate::maglev::DEFAULT_TABLE_SIZE;
    pub const CONTROL_SOCKET: &str = "/run/hola/hola.sock";
    pub const METRICS_ADDRESS: &str = "127.0.0.1:9464";
    pub const STATE_FILE: &str = "/var/lib/hola/state.toml";
    pub const BPFFS_DIR: &str = "/sys/fs/bpf/hola";
    pub const TUNNEL_SOURCE_V4: &str = "198.18.255.0/24";
    pub const TUNNEL_SOURCE_V6: &str = "2001:db8:ffff::/112";
    pub const PROTOCOL: Protocol = Protocol::Tcp;
    pub const MODE: VipMode = VipMode::Dsr;
    pub const HASH: HashKind = HashKind::FiveTuple;
    pub const WEIGHT: u32 = 1;
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    /// Capped at the interval when that is shorter.
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HEALTH_RISE: u32 = 2;
    pub const HEALTH_FALL: u32 = 3;
    pub const HEALTH_PATH: &str = "/";
    pub const HEALTH_EXPECT_STATUS: u16 = 200;
    pub const HEALTH_SEND: &str = "hola-health";
    pub const NAT_CAPACITY: u32 = 1 << 20;
    pub const NAT_TCP_TIMEOUT: Duration = Duration::from_secs(900);
    pub const NAT_UDP_TIMEOUT: Duration = Duration::from_secs(60);
    pub const NAT_CLOSED_TIMEOUT: Duration = Duration::from_secs(10);
    /// `[cluster]`: UDP (announcements) and TCP (replication) port.
    pub const CLUSTER_PORT: u16 = 7947;
    /// `[cluster]`: an administratively scoped group (RFC 2365); sent with
    /// TTL 1, it never leaves the link.
    pub const CLUSTER_GROUP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(239, 255, 18, 1);
    pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);
    pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);
    pub const CLUSTER_QUEUE: u32 = 1 << 16;
    pub const AGENT_MIN_PERCENT: u32 = 10;
    pub const AGENT_MAX_PERCENT: u32 = 100;
}

/// Smallest and largest Maglev table size accepted (both prime).
pub const TABLE_SIZE_RANGE: (u32, u32) = (7, 16_777_259);
/// Largest backend weight; 0 drains.
pub const MAX_WEIGHT: u32 = 10_000;
/// Accepted health-check intervals.
pub const HEALTH_INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_millis(50), Duration::from_secs(3600));
/// Shortest health-check timeout (the longest is the interval).
pub const HEALTH_MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest slow start.
pub const MAX_SLOW_START: Duration = Duration::from_secs(3600);
/// Accepted agent `min_percent` and `max_percent`.
pub const AGENT_PERCENT_RANGE: (u32, u32) = (1, 1000);
/// Accepted `rise` and `fall`.
pub const HEALTH_COUNT_RANGE: (u32, u32) = (1, 100);

// ---------------------------------------------------------------------------
// Public model

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub global: Global,
    /// Balancer peers (docs/cluster.md); `None`: this node runs alone. Never
    /// written back (the state file and `hola config` leave it out: it holds
    /// the cluster key, and it always comes from the configuration file).
    #[serde(default, skip_serializing)]
    pub cluster: Option<ClusterConfig>,
    #[serde(rename = "vip", default)]
    pub vips: Vec<VipConfig>,
}

/// The `[cluster]` table: the peers this node replicates its flows to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Nodes of another cluster id are ignored.
    pub id: String,
    /// The shared key (at least 16 characters); or `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A file holding the shared key (its whole content, trailing newline
    /// removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// This node's name in the cluster; default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Where announcements go out and come in; default: the first of
    /// `global.interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// This node's replication address; default: the first IPv4 address
    /// of `interface`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// UDP port of the announcements and TCP port of replication.
    #[serde(default = "d::cluster_port")]
    pub port: u16,
    /// Discover peers by multicast announcements.
    #[serde(default = "d::yes")]
    pub multicast: bool,
    /// The multicast group (IPv4).
    #[serde(default = "d::cluster_group")]
    pub group: Ipv4Addr,
    /// Peers to replicate to whether or not they announce: addresses, with
    /// or without a port (default `port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    #[serde(default = "d::announce_interval", with = "duration_serde")]
    pub announce_interval: Duration,
    /// A peer that has not announced itself for this long is dropped.
    #[serde(default = "d::peer_timeout", with = "duration_serde")]
    pub peer_timeout: Duration,
    /// Entries queued per peer before the oldest are dropped.
    #[serde(default = "d::cluster_queue")]
    pub queue: u32,
    /// Send and install entries; `false` only discovers peers (for tests
    /// and for comparing behaviour without replication).
    #[serde(default = "d::yes")]
    pub replicate: bool,
}

impl ClusterConfig {
    /// A `peers` entry as an address and port.
    pub fn peer_addr(&self, s: &str) -> Option<SocketAddr> {
        s.parse::<SocketAddr>().ok().or_else(|| {
            s.parse::<IpAddr>()
                .ok()
                .map(|a| SocketAddr::new(a, self.port))
        })
    }
}

/// The `[global]` table: where and how the balancer runs, and its capacities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Global {
    /// Where the balancer attaches; the first is the main one.
    pub interfaces: Vec<String>,
    #[serde(default = "d::xdp_mode")]
    pub xdp_mode: XdpMode,
    #[serde(default = "d::flow_capacity_per_cpu")]
    pub flow_capacity_per_cpu: u32,
    #[serde(default = "d::max_vips")]
    pub max_vips: u32,
    #[serde(default = "d::max_backends")]
    pub max_backends: u32,
    /// NAT mode: entries of the translation table (one per flow).
    #[serde(default = "d::nat_capacity")]
    pub nat_capacity: u32,
    /// NAT mode: an idle TCP flow's translation is forgotten after this.
    #[serde(default = "d::nat_tcp_timeout", with = "duration_serde")]
    pub nat_tcp_timeout: Duration,
    /// NAT mode: an idle UDP flow's translation is forgotten after this.
    #[serde(default = "d::nat_udp_timeout", with = "duration_serde")]
    pub nat_udp_timeout: Duration,
    /// NAT mode: a TCP flow's translation is forgotten this long after its
    /// first FIN or RST.
    #[serde(default = "d::nat_closed_timeout", with = "duration_serde")]
    pub nat_closed_timeout: Duration,
    /// fullnat: the IPv4 source address requests get (an address of the
    /// balancer on the backends' side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fullnat_source_v4: Option<std::net::Ipv4Addr>,
    /// fullnat: the IPv6 source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fullnat_source_v6: Option<std::net::Ipv6Addr>,
    /// fullnat: the source ports, split evenly among the CPUs.
    #[serde(default = "d::fullnat_ports")]
    pub fullnat_ports: String,
    /// Total Maglev slots shared by all VIPs' tables.
    #[serde(default = "d::ring_capacity")]
    pub ring_capacity: u32,
    #[serde(default = "d::default_table_size")]
    pub default_table_size: u32,
    #[serde(default = "d::control_socket")]
    pub control_socket: PathBuf,
    /// `None` (written `""`) disables `/metrics`.
    #[serde(default = "d::metrics_address", with = "metrics_address_serde")]
    pub metrics_address: Option<SocketAddr>,
    #[serde(default = "d::state_file")]
    pub state_file: PathBuf,
    #[serde(default = "d::bpffs_dir")]
    pub bpffs_dir: PathBuf,
    #[serde(default = "d::tunnel_source_v4")]
    pub tunnel_source_v4: Ipv4Cidr,
    #[serde(default = "d::tunnel_source_v6")]
    pub tunnel_source_v6: Ipv6Cidr,
}

/// One `[[vip]]`: a virtual service and its backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub address: IpAddr,
    /// 0 means every port.
    pub port: u16,
    #[serde(default = "d::protocol")]
    pub protocol: Protocol,
    #[serde(default = "d::mode")]
    pub mode: VipMode,
    #[serde(default = "d::hash")]
    pub hash: HashKind,
    /// `None`: `global.default_table_size` (see [`Config::table_size`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// Active health check of the backends; `None`: none (always up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthConfig>,
    /// Agent check (load-aware weights); `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
    /// NAT mode: take out backends whose TCP handshakes fail (passive
    /// health); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<OutlierConfig>,
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendConfig>,
}

impl VipConfig {
    /// The VIP's identity: address, port, protocol.
    pub fn key(&self) -> crate::model::VipAddr {
        crate::model::VipAddr {
            addr: self.address,
            port: self.port,
            proto: self.protocol.into(),
        }
    }

    /// The health check of `backend`: its own, else the VIP's, else none.
    pub fn health_for<'a>(&'a self, backend: &'a BackendConfig) -> Option<&'a HealthConfig> {
        backend.health.as_ref().or(self.health.as_ref())
    }

    /// The agent check of `backend`: its own, else the VIP's, else none.
    pub fn agent_for<'a>(&'a self, backend: &'a BackendConfig) -> Option<&'a AgentConfig> {
        backend.agent.as_ref().or(self.agent.as_ref())
    }
}

/// One `[[vip.backend]]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: IpAddr,
    /// 0..=10000; 0 drains the backend.
    #[serde(default = "d::weight")]
    pub weight: u32,
    /// Used only when no primary backend is healthy.
    #[serde(default)]
    pub backup: bool,
    /// Egress interface, when not the main one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// NAT mode: the port the backend listens on (default: the VIP's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Drained: no new flows, established flows stay; the weight is kept
    /// for when it is undrained.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
    /// Replaces the VIP's health check for this backend (the whole table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthConfig>,
    /// Replaces the VIP's agent check for this backend (the whole table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
}

/// A `[vip.outlier]` table (NAT mode, TCP): a backend whose handshakes
/// fail `failures` times within `window` (SYN answered by RST, or not
/// answered within `syn_timeout`) is taken out like a failed health check
/// for `cooldown`, then put back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    #[serde(default = "d::outlier_failures")]
    pub failures: u32,
    #[serde(default = "d::outlier_window", with = "duration_serde")]
    pub window: Duration,
    #[serde(default = "d::outlier_cooldown", with = "duration_serde")]
    pub cooldown: Duration,
    #[serde(default = "d::outlier_syn_timeout", with = "duration_serde")]
    pub syn_timeout: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            failures: d::outlier_failures(),
            window: d::outlier_window(),
            cooldown: d::outlier_cooldown(),
            syn_timeout: d::outlier_syn_timeout(),
        }
    }
}

/// A `[vip.agent]` or `[vip.backend.agent]` table: the agent check. The
/// backend's agent answers on `port` (over plain TCP, or HTTP GET of
/// `path`) with its load: `75%`, `drain`, `down`, `up`; the backend's
/// weight is scaled by the percentage, kept within
/// `min_percent..=max_percent`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "AgentWire")]
pub struct AgentConfig {
    pub port: u16,
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// At most `interval`.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// `None`: plain TCP (read one line); else HTTP GET of this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The lowest percentage a report can set (a lower one is raised).
    pub min_percent: u32,
    /// The highest percentage a report can set (a higher one is lowered).
    pub max_percent: u32,
}

impl AgentConfig {
    /// An agent on `port` with every other key at its default.
    pub fn new(port: u16) -> Self {
        AgentConfig {
            port,
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            path: None,
            min_percent: defaults::AGENT_MIN_PERCENT,
            max_percent: defaults::AGENT_MAX_PERCENT,
        }
    }
}

/// What [`AgentConfig`] deserializes from: every key but `port` optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentWire {
    port: u16,
    #[serde(default, with = "opt_duration_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "opt_duration_serde")]
    timeout: Option<Duration>,
    path: Option<String>,
    min_percent: Option<u32>,
    max_percent: Option<u32>,
}

impl From<AgentWire> for AgentConfig {
    fn from(w: AgentWire) -> Self {
        let d = AgentConfig::new(w.port);
        let interval = w.interval.unwrap_or(d.interval);
        AgentConfig {
            port: w.port,
            interval,
            timeout: w.timeout.unwrap_or(d.timeout.min(interval)),
            path: w.path,
            min_percent: w.min_percent.unwrap_or(d.min_percent),
            max_percent: w.max_percent.unwrap_or(d.max_percent),
        }
    }
}

/// A `[vip.health]` or `[vip.backend.health]` table: an active health check.
/// Keys of another check type than `kind` keep their defaults (they are
/// not written by [`Config::to_toml`], and [`Config::validate`] rejects
/// other values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "HealthWire")]
pub struct HealthConfig {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    #[serde(serialize_with = "serialize_duration")]
    pub interval: Duration,
    /// At most `interval`.
    #[serde(serialize_with = "serialize_duration")]
    pub timeout: Duration,
    /// Consecutive successes for a down backend to come up.
    pub rise: u32,
    /// Consecutive failures for an up backend to go down.
    pub fall: u32,
    /// `None`: the VIP's port (which must then not be 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP: the request path.
    #[serde(skip_serializing_if = "is_default_path")]
    pub path: String,
    /// HTTP: the Host header; `None`: the backend address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP: the status that counts as up.
    #[serde(skip_serializing_if = "is_default_status")]
    pub expect_status: u16,
    /// HTTP: a substring the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// UDP: the datagram sent.
    #[serde(skip_serializing_if = "is_default_send")]
    pub send: String,
    /// UDP: a substring the reply must contain; `None`: any reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// Exec: program and arguments; exit status 0 is up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// After coming up, the weight ramps from a tenth to the full weight
    /// over this long.
    #[serde(
        serialize_with = "opt_duration_serde::serialize",
        skip_serializing_if = "Option::is_none"
    )]
    pub slow_start: Option<Duration>,
}

impl HealthConfig {
    /// A check of `kind` with every other key at its default.
    pub fn new(kind: CheckKind) -> Self {
        Self {
            kind,
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            rise: defaults::HEALTH_RISE,
            fall: defaults::HEALTH_FALL,
            port: None,
            path: defaults::HEALTH_PATH.to_string(),
            host: None,
            expect_status: defaults::HEALTH_EXPECT_STATUS,
            expect_body: None,
            send: defaults::HEALTH_SEND.to_string(),
            expect: None,
            command: Vec::new(),
            slow_start: None,
        }
    }
}

fn is_default_path(p: &str) -> bool {
    p == defaults::HEALTH_PATH
}
fn is_default_status(s: &u16) -> bool {
    *s == defaults::HEALTH_EXPECT_STATUS
}
fn is_default_send(s: &str) -> bool {
    s == defaults::HEALTH_SEND
}

/// What [`HealthConfig`] deserializes from (JSON of the API, `to_toml`
/// output): every key but `type` optional; the default timeout depends on
/// the interval.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthWire {
    #[serde(rename = "type")]
    kind: CheckKind,
    #[serde(default, with = "opt_duration_serde")]
    interval: Option<Duration>,
    #[serde(default, with = "opt_duration_serde")]
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
    port: Option<u16>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
    send: Option<String>,
    expect: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default, with = "opt_duration_serde")]
    slow_start: Option<Duration>,
}

impl From<HealthWire> for HealthConfig {
    fn from(w: HealthWire) -> Self {
        let d = HealthConfig::new(w.kind);
        let interval = w.interval.unwrap_or(d.interval);
        Self {
            kind: w.kind,
            interval,
            timeout: w.timeout.unwrap_or(d.timeout.min(interval)),
            rise: w.rise.unwrap_or(d.rise),
            fall: w.fall.unwrap_or(d.fall),
            port: w.port,
            path: w.path.unwrap_or(d.path),
            host: w.host,
            expect_status: w.expect_status.unwrap_or(d.expect_status),
            expect_body: w.expect_body,
            send: w.send.unwrap_or(d.send),
            expect: w.expect,
            command: w.command.unwrap_or_default(),
            slow_start: w.slow_start,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP/1.1 GET answers the expected status (and body).
    Http,
    /// A UDP datagram gets a reply.
    Udp,
    /// A command exits with status 0.
    Exec,
}

/// Parses `"<n>ms"` or `"<n>s"`, `n` a decimal number such as `500`, `2`
/// or `1.5` (at most nanosecond precision).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (num, nanos_per_unit): (&str, u64) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1_000_000)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000_000_000)
    } else {
        return None;
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (num.contains('.') && frac.is_empty()) {
        return None;
    }
    let mut nanos = int.parse::<u64>().ok()?.checked_mul(nanos_per_unit)?;
    let mut scale = nanos_per_unit;
    for b in frac.bytes() {
        scale /= 10;
        let d = u64::from(b - b'0');
        if scale == 0 {
            if d != 0 {
                return None; // finer than a nanosecond
            }
            continue;
        }
        nanos = nanos.checked_add(d * scale)?;
    }
    Some(Duration::from_nanos(nanos))
}

/// The spelling of `d` that [`parse_duration`] reads back: `"2s"`,
/// `"500ms"`, `"1.5ms"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else {
        let frac = format!("{:06}", nanos % 1_000_000);
        format!("{}.{}ms", nanos / 1_000_000, frac.trim_end_matches('0'))
    }
}

const DURATION_RULE: &str = "not a duration; write a number of milliseconds or seconds such as \"500ms\", \"2s\" or \"1.5s\"";

/// A duration as its [`format_duration`] string.
fn serialize_duration<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*v))
}

/// `"LOW-HIGH"` with 1024 <= LOW < HIGH <= 65535.
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let (lo, hi): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (lo >= 1024 && lo < hi).then_some((lo, hi))
}

/// A duration written as a string such as `"60s"`.
mod duration_serde {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?}: {DURATION_RULE}")))
    }
}

/// An optional duration; `None` is not written.
mod opt_duration_serde {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                parse_duration(&s)
                    .ok_or_else(|| serde::de::Error::custom(format!("{s:?}: {DURATION_RULE}")))
            })
            .transpose()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VipMode {
    /// Direct server return: rewrite the destination MAC only.
    Dsr,
    /// IP-in-IP / IPv6 encapsulation to the backend.
    Tunnel,
    /// Destination NAT to the backend, replies translated back: the
    /// balancer is the backends' gateway.
    Nat,
    /// As `Nat`, and the source becomes a balancer address and port, so
    /// that backends need no route through the balancer.
    #[serde(rename = "fullnat")]
    FullNat,
}

impl From<Protocol> for crate::model::Proto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => crate::model::Proto::Tcp,
            Protocol::Udp => crate::model::Proto::Udp,
        }
    }
}

impl From<VipMode> for crate::model::Mode {
    fn from(m: VipMode) -> Self {
        match m {
            VipMode::Dsr => crate::model::Mode::Dsr,
            VipMode::Tunnel => crate::model::Mode::Tunnel,
            VipMode::Nat => crate::model::Mode::Nat,
            VipMode::FullNat => crate::model::Mode::FullNat,
        }
    }
}

impl VipMode {
    /// `nat` or `fullnat`: hola translates both directions.
    pub fn is_nat(self) -> bool {
        matches!(self, VipMode::Nat | VipMode::FullNat)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HashKind {
    #[serde(rename = "5-tuple")]
    FiveTuple,
    /// Source address only: client affinity.
    #[serde(rename = "source")]
    Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Driver mode, falling back to generic with a warning.
    Auto,
    Driver,
    Generic,
}

/// The TOML spelling of each enum value; must agree with the serde renames
/// above (the round-trip test checks it).
trait Choice: Copy + 'static {
    const CHOICES: &'static [(&'static str, Self)];
    fn name(self) -> &'static str
    where
        Self: PartialEq,
    {
        Self::CHOICES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }
}
impl Choice for Protocol {
    const CHOICES: &'static [(&'static str, Self)] = &[("tcp", Self::Tcp), ("udp", Self::Udp)];
}
impl Choice for VipMode {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("dsr", Self::Dsr),
        ("tunnel", Self::Tunnel),
        ("nat", Self::Nat),
        ("fullnat", Self::FullNat),
    ];
}
impl Choice for HashKind {
    const CHOICES: &'static [(&'static str, Self)] =
        &[("5-tuple", Self::FiveTuple), ("source", Self::Source)];
}
impl Choice for CheckKind {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("tcp", Self::Tcp),
        ("http", Self::Http),
        ("udp", Self::Udp),
        ("exec", Self::Exec),
    ];
}
impl Choice for XdpMode {
    const CHOICES: &'static [(&'static str, Self)] = &[
        ("auto", Self::Auto),
        ("driver", Self::Driver),
        ("generic", Self::Generic),
    ];
}

macro_rules! display_choice {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}
display_choice!(Protocol, VipMode, HashKind, XdpMode, CheckKind);

macro_rules! cidr {
    ($name:ident, $addr:ty, $bits:ty, $max:expr, $example:expr) => {
        /// An address prefix, written `ADDRESS/PREFIX`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name {
            pub addr: $addr,
            pub prefix: u8,
        }

        impl $name {
            /// The network address (host bits cleared), when `prefix` is in range.
            pub fn network(&self) -> Option<$addr> {
                if self.prefix > $max {
                    return None;
                }
                let mask = <$bits>::MAX
                    .checked_shl(u32::from($max - self.prefix))
                    .unwrap_or(0);
                Some(<$addr>::from(<$bits>::from(self.addr) & mask))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}", self.addr, self.prefix)
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let bad = || {
                    format!(
                        "not a CIDR; write ADDRESS/PREFIX with a prefix of 0..={} such as \"{}\"",
                        $max, $example
                    )
                };
                let (a, p) = s.split_once('/').ok_or_else(bad)?;
                let addr = a.parse().map_err(|_| bad())?;
                let prefix: u8 = p.parse().map_err(|_| bad())?;
                if prefix > $max {
                    return Err(bad());
                }
                Ok(Self { addr, prefix })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
cidr!(Ipv4Cidr, Ipv4Addr, u32, 32u8, defaults::TUNNEL_SOURCE_V4);
cidr!(Ipv6Cidr, Ipv6Addr, u128, 128u8, defaults::TUNNEL_SOURCE_V6);

/// Serde default functions (serde wants paths to functions).
mod d {
    use super::*;
    pub fn yes() -> bool {
        true
    }
    pub fn cluster_port() -> u16 {
        defaults::CLUSTER_PORT
    }
    pub fn cluster_group() -> Ipv4Addr {
        defaults::CLUSTER_GROUP
    }
    pub fn announce_interval() -> Duration {
        defaults::ANNOUNCE_INTERVAL
    }
    pub fn peer_timeout() -> Duration {
        defaults::PEER_TIMEOUT
    }
    pub fn cluster_queue() -> u32 {
        defaults::CLUSTER_QUEUE
    }
    pub fn xdp_mode() -> XdpMode {
        defaults::XDP_MODE
    }
    pub fn flow_capacity_per_cpu() -> u32 {
        defaults::FLOW_CAPACITY_PER_CPU
    }
    pub fn max_vips() -> u32 {
        defaults::MAX_VIPS
    }
    pub fn max_backends() -> u32 {
        defaults::MAX_BACKENDS
    }
    pub fn ring_capacity() -> u32 {
        defaults::RING_CAPACITY
    }
    pub fn nat_capacity() -> u32 {
        defaults::NAT_CAPACITY
    }
    pub fn fullnat_ports() -> String {
        "20000-59999".into()
    }
    pub fn outlier_failures() -> u32 {
        5
    }
    pub fn outlier_window() -> Duration {
        Duration::from_secs(10)
    }
    pub fn outlier_cooldown() -> Duration {
        Duration::from_secs(30)
    }
    pub fn outlier_syn_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn nat_tcp_timeout() -> Duration {
        defaults::NAT_TCP_TIMEOUT
    }
    pub fn nat_udp_timeout() -> Duration {
        defaults::NAT_UDP_TIMEOUT
    }
    pub fn nat_closed_timeout() -> Duration {
        defaults::NAT_CLOSED_TIMEOUT
    }
    pub fn default_table_size() -> u32 {
        defaults::DEFAULT_TABLE_SIZE
    }
    pub fn control_socket() -> PathBuf {
        defaults::CONTROL_SOCKET.into()
    }
    pub fn metrics_address() -> Option<SocketAddr> {
        defaults::METRICS_ADDRESS.parse().ok()
    }
    pub fn state_file() -> PathBuf {
        defaults::STATE_FILE.into()
    }
    pub fn bpffs_dir() -> PathBuf {
        defaults::BPFFS_DIR.into()
    }
    pub fn tunnel_source_v4() -> Ipv4Cidr {
        defaults::TUNNEL_SOURCE_V4
            .parse()
            .expect("the default is a valid CIDR")
    }
    pub fn tunnel_source_v6() -> Ipv6Cidr {
        defaults::TUNNEL_SOURCE_V6
            .parse()
            .expect("the default is a valid CIDR")
    }
    pub fn protocol() -> Protocol {
        defaults::PROTOCOL
    }
    pub fn mode() -> VipMode {
        defaults::MODE
    }
    pub fn hash() -> HashKind {
        defaults::HASH
    }
    pub fn weight() -> u32 {
        defaults::WEIGHT
    }
}

/// `metrics_address`: a socket address, or `""` for none.
mod metrics_address_serde {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        parse_metrics_address(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_metrics_address(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        "not a socket address; write IP:PORT such as \"127.0.0.1:9464\" or \"[::1]:9464\", \
         or \"\" to disable /metrics"
            .to_string()
    })
}

// ---------------------------------------------------------------------------
// Errors

/// One mistake in a configuration, located as precisely as known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", location(.file, .line))]
pub struct ConfigError {
    file: String,
    line: Option<usize>,
    /// The field the error is about (`vip[1].backend[0].weight`), when known.
    path: Option<String>,
    message: String,
}

fn location(file: &str, line: &Option<usize>) -> String {
    match line {
        Some(l) => format!("{file}:{l}"),
        None => file.to_string(),
    }
}

impl ConfigError {
    /// The file name (the `origin` given to [`parse`] or [`Config::validate`]).
    pub fn file(&self) -> &str {
        &self.file
    }
    /// 1-based line, when the error comes from a file.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
    /// The field path (`vip[1].backend[0].weight`), when the error is about one field.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
    /// What is wrong and how to fix it, starting with the field path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Every mistake found in one configuration, in file order where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------
// Entry points

/// Reads and parses `path`; errors name the path as the file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &origin),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: origin,
            line: None,
            path: None,
            message: format!(
                "cannot read the configuration file: {e}; check the path and its permissions \
                 (docs/hola.example.toml is a starting point)"
            ),
        }])),
    }
}

/// Parses and validates `text`; `origin` names it in messages (usually the
/// file name). Reports every error found, one per line.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let mut errors: Vec<ConfigError> = syntax
            .iter()
            .map(|e| ConfigError {
                file: origin.to_string(),
                line: e.span().map(|s| line_at(text, s.start)),
                path: None,
                message: format!("syntax error: {}", e.message().trim_end()),
            })
            .collect();
        // The parser recovers line by line; after the first error on a line
        // the others are mostly its echo.
        errors.sort_by_key(|e| e.line);
        errors.dedup_by_key(|e| e.line);
        return Err(ConfigErrors(errors));
    }
    let locator = Locator::new(text, &root);
    let raw = match RawConfig::deserialize(toml::de::Deserializer::from(root)) {
        Ok(raw) => raw,
        Err(e) => {
            let (line, path) = match e.span() {
                Some(span) => (Some(line_at(text, span.start)), locator.path_at(&span)),
                None => (None, None),
            };
            let message = e.message().trim_end();
            let path = path.filter(|p| !p.is_empty());
            let message = match &path {
                Some(p) => format!("{p}: {message}"),
                None => message.to_string(),
            };
            return Err(ConfigErrors(vec![ConfigError {
                file: origin.to_string(),
                line,
                path,
                message,
            }]));
        }
    };
    let mut sink = Sink::new(origin, &locator);
    // Missing or unreadable values become placeholders whose paths are
    // "poisoned", so the checks still run on everything else.
    let config = raw.convert(&mut sink);
    config.check(&mut sink);
    if sink.errors.is_empty() {
        return Ok(config);
    }
    let mut errors = sink.errors;
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    Err(ConfigErrors(errors))
}

impl Config {
    /// The configuration as TOML that [`parse`] reads back to an equal `Config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serializes to TOML")
    }

    /// The semantic checks of [`parse`], for a `Config` that did not come
    /// from a file (errors carry no line number).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigErrors> {
        let locator = Locator::default();
        let mut sink = Sink::new(origin, &locator);
        self.check(&mut sink);
        if sink.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(sink.errors))
        }
    }

    /// The Maglev table size of `vip`: its own, or the global default.
    pub fn table_size(&self, vip: &VipConfig) -> u32 {
        vip.table_size.unwrap_or(self.global.default_table_size)
    }
}

// ---------------------------------------------------------------------------
// Locating fields in the text

fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Field path (`vip[1].backend[0].weight`) to where it is written.
#[derive(Default)]
struct Locator {
    /// Line of each path's key (or of the table, for array elements).
    lines: HashMap<String, usize>,
    /// Every key and value span with its path, to name the field of a serde error.
    spans: Vec<(Range<usize>, String)>,
}

impl Locator {
    fn new(text: &str, root: &toml::Spanned<DeTable<'_>>) -> Self {
        let mut me = Self::default();
        me.walk_table(text, root.get_ref(), "");
        me
    }

    fn walk_table(&mut self, text: &str, table: &DeTable<'_>, prefix: &str) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.lines
                .entry(path.clone())
                .or_insert_with(|| line_at(text, key.span().start));
            self.spans.push((key.span(), path.clone()));
            self.walk_value(text, value, &path);
        }
    }

    fn walk_value(&mut self, text: &str, value: &toml::Spanned<DeValue<'_>>, path: &str) {
        self.spans.push((value.span(), path.to_string()));
        match value.get_ref() {
            DeValue::Table(t) => self.walk_table(text, t, path),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.lines
                        .insert(p.clone(), line_at(text, item.span().start));
                    self.walk_value(text, item, &p);
                }
            }
            _ => {}
        }
    }

    /// The line of `path`, or of the nearest enclosing field that is written
    /// (a defaulted `vip[1].table_size` points at `vip[1]`).
    fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(&l) = self.lines.get(p) {
                return Some(l);
            }
            p = &p[..p.rfind(['.', '['])?];
        }
    }

    /// The innermost field whose key or value covers `span`.
    fn path_at(&self, span: &Range<usize>) -> Option<String> {
        self.spans
            .iter()
            .filter(|(s, _)| s.start <= span.start && span.end <= s.end.max(s.start + 1))
            .min_by_key(|(s, _)| s.len())
            .map(|(_, p)| p.clone())
    }
}

/// Where errors go while parsing and checking.
struct Sink<'a> {
    origin: &'a str,
    locator: &'a Locator,
    errors: Vec<ConfigError>,
    /// Fields holding a placeholder for a missing or unreadable value,
    /// already reported: further errors about them would only be noise.
    poisoned: Vec<String>,
}

impl<'a> Sink<'a> {
    fn new(origin: &'a str, locator: &'a Locator) -> Self {
        Self {
            origin,
            locator,
            errors: Vec::new(),
            poisoned: Vec::new(),
        }
    }

    fn is_poisoned(&self, path: &str) -> bool {
        self.poisoned.iter().any(|p| {
            path.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// Records `message` (which starts with `path`) at the line of `path`.
    fn error(&mut self, path: &str, message: String) {
        if self.is_poisoned(path) {
            return;
        }
        self.errors.push(ConfigError {
            file: self.origin.to_string(),
            line: self.locator.line(path),
            path: Some(path.to_string()),
            message,
        });
    }

    /// A duration such as `"2s"` at `path`, if given; an unreadable one is
    /// reported (and its path poisoned) and counts as absent.
    fn duration(&mut self, path: &str, value: Option<String>) -> Option<Duration> {
        let s = value?;
        parse_duration(&s).or_else(|| {
            self.error(path, format!("{path} = {s:?}: {DURATION_RULE}"));
            self.poisoned.push(path.to_string());
            None
        })
    }

    /// `value` (or `default` when absent) as a `T`; a value `T` cannot hold is
    /// reported with `range` and replaced by `default`. Ranges inside `T`
    /// are checked later, on the public model.
    fn int<T: TryFrom<i64> + fmt::Display>(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: T,
        range: &str,
    ) -> T {
        match value {
            None => default,
            Some(v) => T::try_from(v).unwrap_or_else(|_| {
                self.error(path, format!("{path} = {v}: must be {range}"));
                default
            }),
        }
    }

    fn choice<T: Choice + PartialEq>(
        &mut self,
        path: &str,
        value: Option<String>,
        default: T,
    ) -> T {
        let Some(v) = value else { return default };
        if let Some((_, c)) = T::CHOICES.iter().find(|(n, _)| *n == v) {
            return *c;
        }
        let names: Vec<String> = T::CHOICES.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.error(
            path,
            format!("{path} = {v:?}: must be one of {}", names.join(", ")),
        );
        default
    }

    /// `value`, or `placeholder` after reporting it missing.
    fn required<T>(&mut self, path: &str, value: Option<T>, placeholder: T, example: &str) -> T {
        value.unwrap_or_else(|| {
            self.error(path, format!("{path} is missing: add it, e.g. {example}"));
            self.poisoned.push(path.to_string());
            placeholder
        })
    }

    /// A required IP address; the placeholder is the unspecified IPv4 address.
    fn ip(&mut self, path: &str, value: Option<String>, example: &str) -> IpAddr {
        let placeholder = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let Some(value) = value else {
            return self.required(path, None, placeholder, &format!("address = \"{example}\""));
        };
        value.parse().unwrap_or_else(|_| {
            self.error(
                path,
                format!(
                    "{path} = {value:?}: not an IP address; write an IPv4 address such as \
                     \"{example}\" or an IPv6 one such as \"2001:db8::1\""
                ),
            );
            self.poisoned.push(path.to_string());
            placeholder
        })
    }
}

// ---------------------------------------------------------------------------
// The lenient model the file is read into

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    id: Option<String>,
    key: Option<String>,
    key_file: Option<String>,
    node: Option<String>,
    interface: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    multicast: Option<bool>,
    group: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    announce_interval: Option<String>,
    peer_timeout: Option<String>,
    queue: Option<i64>,
    replicate: Option<bool>,
}

impl RawCluster {
    fn convert(self, sink: &mut Sink<'_>) -> ClusterConfig {
        let id = sink.required("cluster.id", self.id, String::new(), "id = \"prod-a\"");
        let port = sink.int(
            "cluster.port",
            self.port,
            defaults::CLUSTER_PORT,
            "1..=65535",
        );
        let address = self.address.and_then(|a| {
            a.parse().ok().or_else(|| {
                sink.error(
                    "cluster.address",
                    format!("cluster.address = {a:?}: not an IP address, e.g. \"198.18.0.2\""),
                );
                None
            })
        });
        let group = match self.group {
            None => defaults::CLUSTER_GROUP,
            Some(g) => g.parse().unwrap_or_else(|_| {
                sink.error(
                    "cluster.group",
                    format!(
                        "cluster.group = {g:?}: not an IPv4 multicast address, e.g. \"{}\"",
                        defaults::CLUSTER_GROUP
                    ),
                );
                defaults::CLUSTER_GROUP
            }),
        };
        let announce_interval = sink
            .duration("cluster.announce_interval", self.announce_interval)
            .unwrap_or(defaults::ANNOUNCE_INTERVAL);
        let peer_timeout = sink
            .duration("cluster.peer_timeout", self.peer_timeout)
            .unwrap_or(defaults::PEER_TIMEOUT);
        let queue = sink.int(
            "cluster.queue",
            self.queue,
            defaults::CLUSTER_QUEUE,
            QUEUE_RANGE,
        );
        ClusterConfig {
            id,
            key: self.key,
            key_file: self.key_file.map(PathBuf::from),
            node: self.node,
            interface: self.interface,
            address,
            port,
            multicast: self.multicast.unwrap_or(true),
            group,
            peers: self.peers,
            announce_interval,
            peer_timeout,
            queue,
            replicate: self.replicate.unwrap_or(true),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    global: Option<RawGlobal>,
    cluster: Option<RawCluster>,
    #[serde(default)]
    vip: Vec<RawVip>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<String>,
    flow_capacity_per_cpu: Option<i64>,
    max_vips: Option<i64>,
    max_backends: Option<i64>,
    ring_capacity: Option<i64>,
    nat_capacity: Option<i64>,
    nat_tcp_timeout: Option<String>,
    nat_udp_timeout: Option<String>,
    nat_closed_timeout: Option<String>,
    fullnat_source_v4: Option<String>,
    fullnat_source_v6: Option<String>,
    fullnat_ports: Option<String>,
    default_table_size: Option<i64>,
    control_socket: Option<String>,
    metrics_address: Option<String>,
    state_file: Option<String>,
    bpffs_dir: Option<String>,
    tunnel_source_v4: Option<String>,
    tunnel_source_v6: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    address: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    mode: Option<String>,
    hash: Option<String>,
    table_size: Option<i64>,
    health: Option<RawHealth>,
    agent: Option<RawAgent>,
    outlier: Option<RawOutlier>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    failures: Option<i64>,
    window: Option<String>,
    cooldown: Option<String>,
    syn_timeout: Option<String>,
}

impl RawOutlier {
    fn convert(self, sink: &mut Sink<'_>, path: &str) -> OutlierConfig {
        let mut o = OutlierConfig::default();
        o.failures = sink.int(
            &format!("{path}.failures"),
            self.failures,
            o.failures,
            "1..=1000",
        );
        for (key, v, slot) in [
            ("window", self.window, &mut o.window),
            ("cooldown", self.cooldown, &mut o.cooldown),
            ("syn_timeout", self.syn_timeout, &mut o.syn_timeout),
        ] {
            if let Some(d) = sink.duration(&format!("{path}.{key}"), v) {
                *slot = d;
            }
        }
        o
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    weight: Option<i64>,
    backup: Option<bool>,
    interface: Option<String>,
    port: Option<i64>,
    drain: Option<bool>,
    health: Option<RawHealth>,
    agent: Option<RawAgent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    port: Option<i64>,
    interval: Option<String>,
    timeout: Option<String>,
    path: Option<String>,
    min_percent: Option<i64>,
    max_percent: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(rename = "type")]
    kind: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    port: Option<i64>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<i64>,
    expect_body: Option<String>,
    send: Option<String>,
    expect: Option<String>,
    command: Option<Vec<String>>,
    slow_start: Option<String>,
}

impl RawConfig {
    /// The public model; what is missing or unreadable is reported to
    /// `sink` and replaced by a placeholder (range checks come later).
    fn convert(self, sink: &mut Sink<'_>) -> Config {
        let global = self.global.unwrap_or_else(|| {
            sink.error(
                "global",
                "global is missing: add a [global] table with at least interfaces = [\"eth0\"]"
                    .to_string(),
            );
            sink.poisoned.push("global.interfaces".to_string());
            RawGlobal::default()
        });
        Config {
            global: global.convert(sink),
            cluster: self.cluster.map(|c| c.convert(sink)),
            vips: (self.vip.into_iter().enumerate())
                .map(|(i, v)| v.convert(sink, &format!("vip[{i}]")))
                .collect(),
        }
    }
}

impl RawGlobal {
    fn convert(self, sink: &mut Sink<'_>) -> Global {
        let u32_field = |sink: &mut Sink<'_>, name: &str, v: Option<i64>, def: u32, range: &str| {
            sink.int(&format!("global.{name}"), v, def, range)
        };
        let interfaces = sink.required(
            "global.interfaces",
            self.interfaces,
            Vec::new(),
            "interfaces = [\"eth0\"]",
        );
        let xdp_mode = sink.choice("global.xdp_mode", self.xdp_mode, defaults::XDP_MODE);
        let flow_capacity_per_cpu = u32_field(
            sink,
            "flow_capacity_per_cpu",
            self.flow_capacity_per_cpu,
            defaults::FLOW_CAPACITY_PER_CPU,
            FLOW_RANGE,
        );
        let max_vips = u32_field(
            sink,
            "max_vips",
            self.max_vips,
            defaults::MAX_VIPS,
            VIPS_RANGE,
        );
        let max_backends = u32_field(
            sink,
            "max_backends",
            self.max_backends,
            defaults::MAX_BACKENDS,
            BACKENDS_RANGE,
        );
        let ring_capacity = u32_field(
            sink,
            "ring_capacity",
            self.ring_capacity,
            defaults::RING_CAPACITY,
            "1..=4294967295",
        );
        let nat_capacity = u32_field(
            sink,
            "nat_capacity",
            self.nat_capacity,
            defaults::NAT_CAPACITY,
            NAT_CAPACITY_RANGE,
        );
        let duration = |sink: &mut Sink<'_>, key: &str, v: Option<String>, def: Duration| {
            sink.duration(&format!("global.{key}"), v).unwrap_or(def)
        };
        let nat_tcp_timeout = duration(
            sink,
            "nat_tcp_timeout",
            self.nat_tcp_timeout,
            defaults::NAT_TCP_TIMEOUT,
        );
        let nat_udp_timeout = duration(
            sink,
            "nat_udp_timeout",
            self.nat_udp_timeout,
            defaults::NAT_UDP_TIMEOUT,
        );
        let nat_closed_timeout = duration(
            sink,
            "nat_closed_timeout",
            self.nat_closed_timeout,
            defaults::NAT_CLOSED_TIMEOUT,
        );
        let default_table_size = u32_field(
            sink,
            "default_table_size",
            self.default_table_size,
            DEFAULT_TABLE_SIZE,
            &table_size_range(),
        );
        let metrics_address = match self.metrics_address {
            None => d::metrics_address(),
            Some(s) => parse_metrics_address(&s).unwrap_or_else(|why| {
                sink.error(
                    "global.metrics_address",
                    format!("global.metrics_address = {s:?}: {why}"),
                );
                None
            }),
        };
        let tunnel_source_v4 = cidr_field(
            sink,
            "global.tunnel_source_v4",
            self.tunnel_source_v4,
            d::tunnel_source_v4(),
        );
        let tunnel_source_v6 = cidr_field(
            sink,
            "global.tunnel_source_v6",
            self.tunnel_source_v6,
            d::tunnel_source_v6(),
        );
        Global {
            interfaces,
            xdp_mode,
            flow_capacity_per_cpu,
            max_vips,
            max_backends,
            ring_capacity,
            nat_capacity,
            nat_tcp_timeout,
            nat_udp_timeout,
            nat_closed_timeout,
            fullnat_source_v4: self.fullnat_source_v4.and_then(|s| {
                s.parse().ok().or_else(|| {
                    sink.error(
                        "global.fullnat_source_v4",
                        format!("global.fullnat_source_v4 = {s:?}: not an IPv4 address, e.g. \"198.18.2.1\""),
                    );
                    None
                })
            }),
            fullnat_source_v6: self.fullnat_source_v6.and_then(|s| {
                s.parse().ok().or_else(|| {
                    sink.error(
                        "global.fullnat_source_v6",
                        format!("global.fullnat_source_v6 = {s:?}: not an IPv6 address, e.g. \"2001:db8:2::1\""),
                    );
                    None
                })
            }),
            fullnat_ports: self.fullnat_ports.unwrap_or_else(d::fullnat_ports),
            default_table_size,
            control_socket: self
                .control_socket
                .map_or_else(d::control_socket, PathBuf::from),
            metrics_address,
            state_file: self.state_file.map_or_else(d::state_file, PathBuf::from),
            bpffs_dir: self.bpffs_dir.map_or_else(d::bpffs_dir, PathBuf::from),
            tunnel_source_v4,
            tunnel_source_v6,
        }
    }
}

fn cidr_field<T: FromStr<Err = String>>(
    sink: &mut Sink<'_>,
    path: &str,
    value: Option<String>,
    default: T,
) -> T {
    match value {
        None => default,
        Some(s) => s.parse().unwrap_or_else(|why| {
            sink.error(path, format!("{path} = {s:?}: {why}"));
            default
        }),
    }
}

impl RawVip {
    fn convert(self, sink: &mut Sink<'_>, path: &str) -> VipConfig {
        let address = sink.ip(&format!("{path}.address"), self.address, "198.18.1.1");
        let port = sink.required(
            &format!("{path}.port"),
            self.port,
            0,
            "port = 80 (0 = all ports)",
        );
        let port = sink.int(&format!("{path}.port"), Some(port), 0u16, PORT_RANGE);
        let protocol = sink.choice(
            &format!("{path}.protocol"),
            self.protocol,
            defaults::PROTOCOL,
        );
        let mode = sink.choice(&format!("{path}.mode"), self.mode, defaults::MODE);
        let hash = sink.choice(&format!("{path}.hash"), self.hash, defaults::HASH);
        let table_size = self.table_size.and_then(|t| {
            let p = format!("{path}.table_size");
            u32::try_from(t).ok().or_else(|| {
                sink.error(
                    &p,
                    format!("{p} = {t}: must be a prime in {}", table_size_range()),
                );
                None
            })
        });
        let health = self
            .health
            .map(|h| h.convert(sink, &format!("{path}.health")));
        let agent = self
            .agent
            .map(|a| a.convert(sink, &format!("{path}.agent")));
        let outlier = self
            .outlier
            .map(|o| o.convert(sink, &format!("{path}.outlier")));
        let backends = (self.backend.into_iter().enumerate())
            .map(|(i, b)| b.convert(sink, &format!("{path}.backend[{i}]")))
            .collect();
        VipConfig {
            address,
            port,
            protocol,
            mode,
            hash,
            table_size,
            health,
            agent,
            outlier,
            backends,
        }
    }
}

impl RawBackend {
    fn convert(self, sink: &mut Sink<'_>, path: &str) -> BackendConfig {
        let address = sink.ip(&format!("{path}.address"), self.address, "198.18.0.11");
        let weight = sink.int(
            &format!("{path}.weight"),
            self.weight,
            defaults::WEIGHT,
            WEIGHT_RANGE,
        );
        BackendConfig {
            address,
            weight,
            backup: self.backup.unwrap_or(false),
            interface: self.interface,
            port: self.port.and_then(|v| {
                let p = format!("{path}.port");
                u16::try_from(v).ok().filter(|v| *v != 0).or_else(|| {
                    sink.error(&p, format!("{p} = {v}: must be {BACKEND_PORT_RANGE}"));
                    sink.poisoned.push(p.clone());
                    None
                })
            }),
            drain: self.drain.unwrap_or(false),
            health: self
                .health
                .map(|h| h.convert(sink, &format!("{path}.health"))),
            agent: self
                .agent
                .map(|a| a.convert(sink, &format!("{path}.agent"))),
        }
    }
}

/// A key of one check type, for the "only for type = ..." error.
fn other_type_key(
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

impl RawAgent {
    fn convert(self, sink: &mut Sink<'_>, path: &str) -> AgentConfig {
        let p = format!("{path}.port");
        let port = sink.required(&p, self.port, 1, "port = 9999 (where the agent answers)");
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .unwrap_or_else(|| {
                sink.error(&p, format!("{p} = {port}: must be 1..=65535"));
                sink.poisoned.push(p.clone());
                1
            });
        let mut a = AgentConfig::new(port);
        let duration = |sink: &mut Sink<'_>, key: &str, v: Option<String>| {
            sink.duration(&format!("{path}.{key}"), v)
        };
        if let Some(i) = duration(sink, "interval", self.interval) {
            a.interval = i;
        }
        a.timeout = duration(sink, "timeout", self.timeout).unwrap_or(a.timeout.min(a.interval));
        a.path = self.path;
        a.min_percent = sink.int(
            &format!("{path}.min_percent"),
            self.min_percent,
            a.min_percent,
            AGENT_PERCENT_RULE,
        );
        a.max_percent = sink.int(
            &format!("{path}.max_percent"),
            self.max_percent,
            a.max_percent,
            AGENT_PERCENT_RULE,
        );
        a
    }
}

impl RawHealth {
    fn convert(self, sink: &mut Sink<'_>, path: &str) -> HealthConfig {
        let type_path = format!("{path}.type");
        let kind = match self.kind {
            None => {
                sink.error(
                    &type_path,
                    format!(
                        "{type_path} is missing: add it, e.g. type = \"tcp\" (one of \"tcp\", \
                         \"http\", \"udp\", \"exec\")"
                    ),
                );
                None
            }
            Some(k) => match CheckKind::CHOICES.iter().find(|(n, _)| *n == k) {
                Some((_, c)) => Some(*c),
                None => {
                    sink.choice(&type_path, Some(k), CheckKind::Tcp);
                    None
                }
            },
        };
        if kind.is_none() {
            sink.poisoned.push(type_path);
        }
        let mut h = HealthConfig::new(kind.unwrap_or(CheckKind::Tcp));
        let duration = |sink: &mut Sink<'_>, key: &str, v: Option<String>| {
            sink.duration(&format!("{path}.{key}"), v)
        };
        if let Some(i) = duration(sink, "interval", self.interval) {
            h.interval = i;
        }
        h.timeout = duration(sink, "timeout", self.timeout).unwrap_or(h.timeout.min(h.interval));
        h.slow_start = duration(sink, "slow_start", self.slow_start);
        h.rise = sink.int(&format!("{path}.rise"), self.rise, h.rise, COUNT_RANGE);
        h.fall = sink.int(&format!("{path}.fall"), self.fall, h.fall, COUNT_RANGE);
        h.port = self.port.and_then(|v| {
            let p = format!("{path}.port");
            u16::try_from(v).ok().or_else(|| {
                sink.error(&p, format!("{p} = {v}: must be {HEALTH_PORT_RANGE}"));
                sink.poisoned.push(p.clone());
                None
            })
        });
        // Keys of another type are reported (when the type is known) and dropped.
        let keep = |sink: &mut Sink<'_>, key: &str, value: String, owner: CheckKind| match kind {
            Some(k) if k != owner => {
                other_type_key(sink, path, key, &value, owner, k);
                false
            }
            _ => true,
        };
        use CheckKind::{Exec, Http, Udp};
        if let Some(v) = self.path
            && keep(sink, "path", format!("{v:?}"), Http)
        {
            h.path = v;
        }
        if let Some(v) = self.host
            && keep(sink, "host", format!("{v:?}"), Http)
        {
            h.host = Some(v);
        }
        if let Some(v) = self.expect_status
            && keep(sink, "expect_status", v.to_string(), Http)
        {
            h.expect_status = sink.int(
                &format!("{path}.expect_status"),
                Some(v),
                h.expect_status,
                STATUS_RANGE,
            );
        }
        if let Some(v) = self.expect_body
            && keep(sink, "expect_body", format!("{v:?}"), Http)
        {
            h.expect_body = Some(v);
        }
        if let Some(v) = self.send
            && keep(sink, "send", format!("{v:?}"), Udp)
        {
            h.send = v;
        }
        if let Some(v) = self.expect
            && keep(sink, "expect", format!("{v:?}"), Udp)
        {
            h.expect = Some(v);
        }
        if let Some(v) = self.command
            && keep(sink, "command", format!("{v:?}"), Exec)
        {
            h.command = v;
        }
        h
    }
}

// ---------------------------------------------------------------------------
// Semantic checks, shared by `parse` and `Config::validate`

const FLOW_RANGE: &str = "1..=16777216";
const NAT_CAPACITY_RANGE: &str = "1..=67108864";
const BACKEND_PORT_RANGE: &str = "1..=65535";
const VIPS_RANGE: &str = "1..=65535";
const BACKENDS_RANGE: &str = "1..=1048576";
const PORT_RANGE: &str = "0..=65535 (0 = all ports)";
const WEIGHT_RANGE: &str = "0..=10000 (0 drains the backend)";
const COUNT_RANGE: &str = "1..=100";
const STATUS_RANGE: &str = "100..=599";
const AGENT_PERCENT_RULE: &str = "1..=1000 (percent of the configured weight)";
const HEALTH_PORT_RANGE: &str = "1..=65535 (remove it to use the VIP's port)";

fn table_size_range() -> String {
    format!("{}..={}", TABLE_SIZE_RANGE.0, TABLE_SIZE_RANGE.1)
}

/// The smallest prime strictly above `n` (saturating at the range's top).
fn next_prime(n: u32) -> u32 {
    let mut p = n.saturating_add(1);
    while p < TABLE_SIZE_RANGE.1 && !is_prime(p) {
        p += 1;
    }
    p
}

/// Whether `name` can be a Linux interface name (the kernel's dev_valid_name).
fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

const IFNAME_RULE: &str =
    "not an interface name: 1..=15 characters, no '/', ':' or whitespace (`ip link` lists them)";

/// Problems with a table size, if any; `backends` is how many it must hold.
fn table_size_problem(size: u32, backends: usize) -> Option<String> {
    let (lo, hi) = TABLE_SIZE_RANGE;
    if !(lo..=hi).contains(&size) {
        return Some(format!(
            "must be a prime in {lo}..={hi}, such as 65537 or 655373"
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

fn check_range(sink: &mut Sink<'_>, path: &str, value: u32, lo: u32, hi: u32, hint: &str) {
    if !(lo..=hi).contains(&value) {
        sink.error(path, format!("{path} = {value}: must be {lo}..={hi}{hint}"));
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

/// Accepted `cluster.queue`.
const QUEUE_RANGE: &str = "1..=16777216";

fn check_cluster(sink: &mut Sink<'_>, c: &ClusterConfig) {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !sink.is_poisoned("cluster.id") && !name_ok(&c.id) {
        sink.error(
            "cluster.id",
            format!(
                "cluster.id = {:?}: 1 to 64 letters, digits, '.', '_' or '-', e.g. \"prod-a\"",
                c.id
            ),
        );
    }
    match (&c.key, &c.key_file) {
        (None, None) => sink.error(
            "cluster",
            "cluster: neither key nor key_file is set; announcements and replication are \
             authenticated with a shared key: add key_file = \"/etc/hola/cluster.key\" (a file \
             of at least 16 random characters, the same on every node)"
                .to_string(),
        ),
        (Some(_), Some(_)) => sink.error(
            "cluster.key",
            "cluster.key and cluster.key_file are both set: keep one".to_string(),
        ),
        (Some(k), None) if k.len() < 16 => sink.error(
            "cluster.key",
            format!(
                "cluster.key is {} characters: use at least 16 random characters (or key_file)",
                k.len()
            ),
        ),
        _ => {}
    }
    if let Some(n) = &c.node
        && !name_ok(n)
    {
        sink.error(
            "cluster.node",
            format!("cluster.node = {n:?}: 1 to 64 letters, digits, '.', '_' or '-', e.g. \"lb1\""),
        );
    }
    if let Some(i) = &c.interface
        && !valid_ifname(i)
    {
        sink.error(
            "cluster.interface",
            format!("cluster.interface = {i:?}: {IFNAME_RULE}"),
        );
    }
    if c.port == 0 {
        sink.error(
            "cluster.port",
            "cluster.port = 0: must be 1..=65535".to_string(),
        );
    }
    if !c.group.is_multicast() {
        sink.error(
            "cluster.group",
            format!(
                "cluster.group = \"{}\": not a multicast address (224.0.0.0/4), e.g. \"{}\"",
                c.group,
                defaults::CLUSTER_GROUP
            ),
        );
    }
    for (i, p) in c.peers.iter().enumerate() {
        if c.peer_addr(p).is_none() {
            sink.error(
                &format!("cluster.peers[{i}]"),
                format!(
                    "cluster.peers[{i}] = {p:?}: not an address or address:port, e.g. \"198.18.0.3\" or \"198.18.0.3:{}\"",
                    c.port
                ),
            );
        }
    }
    if !c.multicast && c.peers.is_empty() {
        sink.error(
            "cluster.multicast",
            "cluster.multicast = false and no cluster.peers: this node would find no peer; \
             list them in peers = [\"198.18.0.3\"] or turn multicast on"
                .to_string(),
        );
    }
    let (lo, hi) = (Duration::from_millis(100), Duration::from_secs(60));
    if !sink.is_poisoned("cluster.announce_interval") && !(lo..=hi).contains(&c.announce_interval) {
        sink.error(
            "cluster.announce_interval",
            format!(
                "cluster.announce_interval = \"{}\": must be 100ms..=60s",
                format_duration(c.announce_interval)
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
    if c.queue == 0 || c.queue > 16_777_216 {
        sink.error(
            "cluster.queue",
            format!("cluster.queue = {}: must be {QUEUE_RANGE}", c.queue),
        );
    }
}

impl Config {
    fn check(&self, sink: &mut Sink<'_>) {
        if let Some(c) = &self.cluster {
            check_cluster(sink, c);
        }
        let g = &self.global;
        if g.interfaces.is_empty() {
            sink.error(
                "global.interfaces",
                "global.interfaces = []: list at least one interface, e.g. [\"eth0\"]".to_string(),
            );
        }
        let mut seen = HashSet::new();
        for (i, name) in g.interfaces.iter().enumerate() {
            let p = format!("global.interfaces[{i}]");
            if !valid_ifname(name) {
                sink.error(&p, format!("{p} = {name:?}: {IFNAME_RULE}"));
            } else if !seen.insert(name) {
                sink.error(&p, format!("{p} = {name:?}: listed twice; remove one"));
            }
        }
        check_range(
            sink,
            "global.flow_capacity_per_cpu",
            g.flow_capacity_per_cpu,
            1,
            1 << 24,
            "",
        );
        check_range(sink, "global.max_vips", g.max_vips, 1, 65535, "");
        check_range(sink, "global.max_backends", g.max_backends, 1, 1 << 20, "");
        check_range(sink, "global.nat_capacity", g.nat_capacity, 1, 1 << 26, "");
        for (key, d, lo, hi) in [
            ("nat_tcp_timeout", g.nat_tcp_timeout, 1, 86_400),
            ("nat_udp_timeout", g.nat_udp_timeout, 1, 86_400),
            ("nat_closed_timeout", g.nat_closed_timeout, 0, 3600),
        ] {
            let p = format!("global.{key}");
            if !sink.is_poisoned(&p)
                && !(Duration::from_secs(lo)..=Duration::from_secs(hi)).contains(&d)
            {
                sink.error(
                    &p,
                    format!(
                        "{p} = \"{}\": must be \"{lo}s\"..=\"{hi}s\"",
                        format_duration(d)
                    ),
                );
            }
        }
        if parse_port_range(&g.fullnat_ports).is_none() {
            sink.error(
                "global.fullnat_ports",
                format!(
                    "global.fullnat_ports = {:?}: must be \"LOW-HIGH\" with 1024 <= LOW < HIGH <= 65535, e.g. \"20000-59999\"",
                    g.fullnat_ports
                ),
            );
        }
        if g.ring_capacity == 0 {
            sink.error(
                "global.ring_capacity",
                "global.ring_capacity = 0: must be at least the sum of the VIPs' table sizes"
                    .to_string(),
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
        let v4 = g.tunnel_source_v4;
        if let Some(net) = v4.network()
            && net != v4.addr
        {
            sink.error(
                "global.tunnel_source_v4",
                format!(
                    "global.tunnel_source_v4 = \"{v4}\": host bits are set; write \"{net}/{}\"",
                    v4.prefix
                ),
            );
        } else if v4.prefix > 32 {
            sink.error(
                "global.tunnel_source_v4",
                format!("global.tunnel_source_v4 = \"{v4}\": the prefix must be 0..=32"),
            );
        }
        let v6 = g.tunnel_source_v6;
        if !(96..=128).contains(&v6.prefix) {
            sink.error(
                "global.tunnel_source_v6",
                format!(
                    "global.tunnel_source_v6 = \"{v6}\": the prefix must be 96..=128 (the \
                     balancer varies only the last 32 bits), e.g. \"{}\"",
                    defaults::TUNNEL_SOURCE_V6
                ),
            );
        } else if let Some(net) = v6.network()
            && net != v6.addr
        {
            sink.error(
                "global.tunnel_source_v6",
                format!(
                    "global.tunnel_source_v6 = \"{v6}\": host bits are set; write \"{net}/{}\"",
                    v6.prefix
                ),
            );
        }

        let mut vips_seen: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
        let mut total_backends = 0usize;
        let mut total_slots = 0u64;
        for (i, vip) in self.vips.iter().enumerate() {
            let path = format!("vip[{i}]");
            self.check_vip(sink, &path, vip);
            if vip.mode == VipMode::FullNat {
                let (missing, key, example) = if vip.address.is_ipv4() {
                    (
                        self.global.fullnat_source_v4.is_none(),
                        "fullnat_source_v4",
                        "198.18.2.1",
                    )
                } else {
                    (
                        self.global.fullnat_source_v6.is_none(),
                        "fullnat_source_v6",
                        "2001:db8:2::1",
                    )
                };
                if missing && !sink.is_poisoned(&format!("{path}.address")) {
                    sink.error(
                        &format!("{path}.mode"),
                        format!(
                            "{path}.mode = \"fullnat\" needs global.{key}, the balancer's address the \
                             backends answer to; add it, e.g. {key} = \"{example}\""
                        ),
                    );
                }
            }
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

    fn check_vip(&self, sink: &mut Sink<'_>, path: &str, vip: &VipConfig) {
        let a = vip.address;
        if a.is_unspecified() || a.is_multicast() {
            let what = if a.is_unspecified() {
                "unspecified"
            } else {
                "multicast"
            };
            sink.error(
                &format!("{path}.address"),
                format!(
                    "{path}.address = \"{a}\": a VIP cannot be the {what} address; use a unicast \
                     address that clients reach this host on"
                ),
            );
        }
        let size = self.table_size(vip);
        if let Some(why) = table_size_problem(size, vip.backends.len()) {
            // An inherited bad default is reported once, at global.default_table_size.
            if vip.table_size.is_some() {
                let p = format!("{path}.table_size");
                sink.error(&p, format!("{p} = {size}: {why}"));
            } else if table_size_problem(size, 0).is_none() {
                let p = format!("{path}.table_size");
                sink.error(
                    &p,
                    format!("{p} = {size} (global.default_table_size): {why}; set {p}"),
                );
            }
        }
        if let Some(h) = &vip.health {
            check_health(sink, &format!("{path}.health"), h, vip.port);
        }
        if let Some(a) = &vip.agent {
            check_agent(sink, &format!("{path}.agent"), a);
        }
        if let Some(o) = &vip.outlier {
            let p = format!("{path}.outlier");
            if !vip.mode.is_nat() || vip.protocol != Protocol::Tcp {
                sink.error(
                    &p,
                    format!(
                        "{p}: only for mode = \"nat\" and protocol = \"tcp\" (hola sees the \
                         handshakes only then); remove it or change {path}.mode"
                    ),
                );
            }
            check_range(sink, &format!("{p}.failures"), o.failures, 1, 1000, "");
            for (key, d, lo, hi) in [
                ("window", o.window, 1000, 3_600_000),
                ("cooldown", o.cooldown, 1000, 3_600_000),
                ("syn_timeout", o.syn_timeout, 100, 60_000),
            ] {
                let kp = format!("{p}.{key}");
                if !sink.is_poisoned(&kp)
                    && !(Duration::from_millis(lo)..=Duration::from_millis(hi)).contains(&d)
                {
                    sink.error(
                        &kp,
                        format!(
                            "{kp} = \"{}\": must be \"{}\"..=\"{}\"",
                            format_duration(d),
                            format_duration(Duration::from_millis(lo)),
                            format_duration(Duration::from_millis(hi))
                        ),
                    );
                }
            }
        }
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for (j, b) in vip.backends.iter().enumerate() {
            let bp = format!("{path}.backend[{j}]");
            let b_addr = b.address;
            if b_addr.is_unspecified()
                || b_addr.is_multicast()
                || b_addr == IpAddr::V4(Ipv4Addr::BROADCAST)
            {
                sink.error(
                    &format!("{bp}.address"),
                    format!(
                        "{bp}.address = \"{b_addr}\": not a unicast address; use the address \
                         the backend receives traffic on"
                    ),
                );
            } else if b_addr.is_ipv4() != a.is_ipv4()
                && !sink.is_poisoned(&format!("{path}.address"))
            {
                let (fam, vfam) = if a.is_ipv4() {
                    ("IPv6", "IPv4")
                } else {
                    ("IPv4", "IPv6")
                };
                sink.error(
                    &format!("{bp}.address"),
                    format!(
                        "{bp}.address = \"{}\": {fam} but the VIP {a} is {vfam}; a VIP's backends \
                         must be {vfam} (make a separate {fam} VIP)",
                        b.address
                    ),
                );
            }
            if let Some(first) = seen.get(&b.address) {
                sink.error(
                    &format!("{bp}.address"),
                    format!(
                        "{bp}.address = \"{}\": already {path}.backend[{first}]; remove one \
                         (weight sets its share)",
                        b.address
                    ),
                );
            } else {
                seen.insert(b.address, j);
            }
            check_range(
                sink,
                &format!("{bp}.weight"),
                b.weight,
                0,
                MAX_WEIGHT,
                " (0 drains the backend)",
            );
            if let Some(port) = b.port {
                let p = format!("{bp}.port");
                if port == 0 {
                    sink.error(&p, format!("{p} = 0: must be {BACKEND_PORT_RANGE}"));
                } else if !vip.mode.is_nat() && !sink.is_poisoned(&format!("{path}.mode")) {
                    sink.error(
                        &p,
                        format!(
                            "{p} = {port}: only for mode = \"nat\" ({} keeps the VIP's port); \
                             remove it or set {path}.mode = \"nat\"",
                            vip.mode
                        ),
                    );
                } else if vip.port == 0 {
                    sink.error(
                        &p,
                        format!(
                            "{p} = {port}: the VIP has port 0 (all ports), whose flows keep \
                             their port; remove it or give the VIP a port"
                        ),
                    );
                }
            }
            if let Some(name) = &b.interface
                && !valid_ifname(name)
            {
                let p = format!("{bp}.interface");
                sink.error(&p, format!("{p} = {name:?}: {IFNAME_RULE}"));
            }
            if let Some(h) = &b.health {
                check_health(sink, &format!("{bp}.health"), h, vip.port);
            }
            if let Some(a) = &b.agent {
                check_agent(sink, &format!("{bp}.agent"), a);
            }
        }
    }
}

/// The checks of one agent table at `path`.
fn check_agent(sink: &mut Sink<'_>, path: &str, a: &AgentConfig) {
    check_interval_timeout(sink, path, a.interval, a.timeout);
    let p = format!("{path}.port");
    if a.port == 0 && !sink.is_poisoned(&p) {
        sink.error(&p, format!("{p} = 0: must be 1..=65535"));
    }
    let (lo, hi) = AGENT_PERCENT_RANGE;
    check_range(
        sink,
        &format!("{path}.min_percent"),
        a.min_percent,
        lo,
        hi,
        "",
    );
    check_range(
        sink,
        &format!("{path}.max_percent"),
        a.max_percent,
        lo,
        hi,
        "",
    );
    if a.min_percent > a.max_percent {
        let p = format!("{path}.min_percent");
        sink.error(
            &p,
            format!(
                "{p} = {}: more than max_percent = {}; make min_percent at most max_percent",
                a.min_percent, a.max_percent
            ),
        );
    }
    if let Some(path_value) = &a.path
        && (!path_value.starts_with('/') || path_value.contains(char::is_whitespace))
    {
        let p = format!("{path}.path");
        sink.error(
            &p,
            format!(
                "{p} = {path_value:?}: must start with '/' and contain no spaces, e.g. \"/load\" \
                 (or remove it for a plain TCP agent)"
            ),
        );
    }
}

/// `interval` within its range and `timeout` within 10ms..=`interval`.
fn check_interval_timeout(sink: &mut Sink<'_>, path: &str, interval: Duration, timeout: Duration) {
    let (lo, hi) = HEALTH_INTERVAL_RANGE;
    let p = format!("{path}.interval");
    if !(lo..=hi).contains(&interval) {
        sink.error(
            &p,
            format!(
                "{p} = \"{}\": must be \"50ms\"..=\"3600s\" (one hour)",
                format_duration(interval)
            ),
        );
    }
    let p = format!("{path}.timeout");
    if timeout > interval && !sink.is_poisoned(&format!("{path}.interval")) {
        sink.error(
            &p,
            format!(
                "{p} = \"{}\": longer than interval \"{}\"; make it at most the interval",
                format_duration(timeout),
                format_duration(interval)
            ),
        );
    } else if timeout < HEALTH_MIN_TIMEOUT {
        sink.error(
            &p,
            format!(
                "{p} = \"{}\": must be at least \"10ms\" (and at most the interval)",
                format_duration(timeout)
            ),
        );
    }
}

/// The checks of one health table at `path`, of a VIP on `vip_port`.
fn check_health(sink: &mut Sink<'_>, path: &str, h: &HealthConfig, vip_port: u16) {
    check_interval_timeout(sink, path, h.interval, h.timeout);
    let (lo, hi) = HEALTH_COUNT_RANGE;
    check_range(sink, &format!("{path}.rise"), h.rise, lo, hi, "");
    check_range(sink, &format!("{path}.fall"), h.fall, lo, hi, "");
    let p = format!("{path}.port");
    match h.port {
        Some(0) => sink.error(&p, format!("{p} = 0: must be {HEALTH_PORT_RANGE}")),
        None if vip_port == 0 => sink.error(
            &p,
            format!(
                "{p} is missing: the VIP has port 0 (all ports), so the check needs its own; \
                 add it, e.g. port = 80"
            ),
        ),
        _ => {}
    }
    if let Some(s) = h.slow_start
        && s > MAX_SLOW_START
    {
        let p = format!("{path}.slow_start");
        sink.error(
            &p,
            format!(
                "{p} = \"{}\": must be \"0s\"..=\"3600s\" (one hour)",
                format_duration(s)
            ),
        );
    }
    // Values of another type's keys (only reachable through the API: the
    // file's are reported while reading it).
    let type_path = format!("{path}.type");
    if sink.is_poisoned(&type_path) {
        return;
    }
    let d = HealthConfig::new(h.kind);
    let mut foreign = |key: &str, value: Option<String>, owner: CheckKind| {
        if let Some(v) = value
            && h.kind != owner
        {
            other_type_key(sink, path, key, &v, owner, h.kind);
        }
    };
    use CheckKind::{Exec, Http, Udp};
    foreign(
        "path",
        (h.path != d.path).then(|| format!("{:?}", h.path)),
        Http,
    );
    foreign("host", h.host.as_ref().map(|v| format!("{v:?}")), Http);
    foreign(
        "expect_status",
        (h.expect_status != d.expect_status).then(|| h.expect_status.to_string()),
        Http,
    );
    foreign(
        "expect_body",
        h.expect_body.as_ref().map(|v| format!("{v:?}")),
        Http,
    );
    foreign(
        "send",
        (h.send != d.send).then(|| format!("{:?}", h.send)),
        Udp,
    );
    foreign("expect", h.expect.as_ref().map(|v| format!("{v:?}")), Udp);
    foreign(
        "command",
        (!h.command.is_empty()).then(|| format!("{:?}", h.command)),
        Exec,
    );
    match h.kind {
        Http => {
            let p = format!("{path}.path");
            if !h.path.starts_with('/') || h.path.contains(char::is_whitespace) {
                sink.error(
                    &p,
                    format!(
                        "{p} = {:?}: must start with '/' and contain no spaces, e.g. \"/healthz\"",
                        h.path
                    ),
                );
            }
            let p = format!("{path}.expect_status");
            check_range(sink, &p, u32::from(h.expect_status), 100, 599, "");
        }
        Exec => {
            let p = format!("{path}.command");
            if h.command.is_empty() {
                sink.error(
                    &p,
                    format!(
                        "{p} is missing or empty: type = \"exec\" needs the program and its \
                         arguments, e.g. command = [\"/usr/local/bin/check\", \"--fast\"]"
                    ),
                );
            } else if h.command[0].is_empty() {
                sink.error(
                    &p,
                    format!("{p}[0] = \"\": the program must not be empty; give its path"),
                );
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../docs/hola.example.toml");

    fn errors(text: &str) -> Vec<String> {
        match parse(text, "hola.toml") {
            Ok(c) => panic!("expected errors, parsed {c:?}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    /// The one error of `text`, which must start with `hola.toml:LINE: PATH`.
    fn one_error(text: &str, line: usize, path: &str) -> String {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        let want = format!("hola.toml:{line}: {path}");
        assert!(
            errs[0].starts_with(&want),
            "{:?} does not start with {want:?}",
            errs[0]
        );
        errs[0].clone()
    }

    const BASE: &str = "[global]\ninterfaces = [\"eth0\"]\n";

    #[test]
    fn example_parses_and_validates() {
        let c = parse(EXAMPLE, "hola.example.toml").unwrap_or_else(|e| panic!("{e}"));
        c.validate("hola.example.toml").unwrap();
        assert!(!c.vips.is_empty());
        assert_eq!(c.global.interfaces[0], "eth0");
    }

    #[test]
    fn defaults_apply() {
        let c = parse(
            "[global]\ninterfaces = [\"eth0\"]\n[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\n",
            "hola.toml",
        )
        .unwrap();
        let g = &c.global;
        assert_eq!(g.xdp_mode, XdpMode::Auto);
        assert_eq!(g.flow_capacity_per_cpu, 1_048_576);
        assert_eq!(g.max_vips, 256);
        assert_eq!(g.max_backends, 4096);
        assert_eq!(g.ring_capacity, 1_048_592);
        assert_eq!(g.default_table_size, 65537);
        assert_eq!(g.control_socket, Path::new("/run/hola/hola.sock"));
        assert_eq!(g.metrics_address, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(g.tunnel_source_v4.to_string(), "198.18.255.0/24");
        assert_eq!(g.tunnel_source_v6.to_string(), "2001:db8:ffff::/112");
        assert_eq!(g.nat_capacity, 1 << 20);
        assert_eq!(
            (g.nat_tcp_timeout, g.nat_udp_timeout, g.nat_closed_timeout),
            (
                Duration::from_secs(900),
                Duration::from_secs(60),
                Duration::from_secs(10)
            )
        );
        let v = &c.vips[0];
        assert_eq!(
            (v.protocol, v.mode, v.hash, v.table_size),
            (Protocol::Tcp, VipMode::Dsr, HashKind::FiveTuple, None)
        );
        assert_eq!(c.table_size(v), 65537);
        let b = &v.backends[0];
        assert_eq!(
            (b.weight, b.backup, b.interface.as_deref()),
            (1, false, None)
        );
    }

    #[test]
    fn nat_keys_are_checked() {
        let base = "[global]\ninterfaces = [\"eth0\"]\nnat_udp_timeout = \"0s\"\n\
                    nat_tcp_timeout = \"soon\"\nnat_capacity = 0\n\
                    [[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"dsr\"\n\
                    [[vip.backend]]\naddress = \"198.18.0.11\"\nport = 8080\n\
                    [[vip]]\naddress = \"198.18.1.2\"\nport = 0\nmode = \"nat\"\n\
                    [[vip.backend]]\naddress = \"198.18.0.12\"\nport = 8080\n";
        let e = parse(base, "n.toml").unwrap_err().to_string();
        for want in [
            "global.nat_udp_timeout = \"0s\": must be \"1s\"..=\"86400s\"",
            "global.nat_tcp_timeout = \"soon\": not a duration",
            "global.nat_capacity = 0",
            "vip[0].backend[0].port = 8080: only for mode = \"nat\" (dsr keeps the VIP's port)",
            "vip[1].backend[0].port = 8080: the VIP has port 0 (all ports)",
        ] {
            assert!(e.contains(want), "{want:?} in:\n{e}");
        }
    }

    #[test]
    fn round_trip() {
        let mut c = parse(EXAMPLE, "x").unwrap();
        // Cover every enum value and the optional fields both ways.
        c.global.metrics_address = None;
        c.global.xdp_mode = XdpMode::Generic;
        c.vips[0].hash = HashKind::Source;
        c.vips[0].protocol = Protocol::Udp;
        c.vips[0].mode = VipMode::Tunnel;
        c.vips[0].table_size = Some(655_373);
        c.global.ring_capacity = 2_000_000;
        c.vips[0].backends[0].interface = Some("eth1".into());
        c.vips[0].backends[0].backup = true;
        for cfg in [parse(EXAMPLE, "x").unwrap(), c] {
            let text = cfg.to_toml();
            let back = parse(&text, "round-trip").unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, cfg, "{text}");
        }
        // The hand-written names agree with serde's.
        for (n, v) in XdpMode::CHOICES {
            assert_eq!(toml::Value::try_from(v).unwrap().as_str(), Some(*n));
        }
        for (n, v) in HashKind::CHOICES {
            assert_eq!(toml::Value::try_from(v).unwrap().as_str(), Some(*n));
        }
        for (n, v) in VipMode::CHOICES {
            assert_eq!(toml::Value::try_from(v).unwrap().as_str(), Some(*n));
        }
        for (n, v) in Protocol::CHOICES {
            assert_eq!(toml::Value::try_from(v).unwrap().as_str(), Some(*n));
        }
    }

    fn vip_text(extra_global: &str, vips: &str) -> String {
        format!("{BASE}{extra_global}{vips}")
    }

    #[test]
    fn cluster_parses_with_defaults_and_is_never_written_back() {
        let text = format!(
            "{BASE}[cluster]\nid = \"prod-a\"\nkey = \"0123456789abcdef\"\npeers = [\"198.18.0.3\", \"198.18.0.4:8000\"]\n"
        );
        let c = parse(&text, "hola.toml").unwrap_or_else(|e| panic!("{e}"));
        let k = c.cluster.as_ref().expect("cluster");
        assert_eq!(k.port, defaults::CLUSTER_PORT);
        assert_eq!(k.group, defaults::CLUSTER_GROUP);
        assert_eq!(k.announce_interval, defaults::ANNOUNCE_INTERVAL);
        assert_eq!(k.peer_timeout, defaults::PEER_TIMEOUT);
        assert!(k.multicast && k.replicate);
        assert_eq!(
            k.peers
                .iter()
                .filter_map(|p| k.peer_addr(p))
                .collect::<Vec<_>>(),
            [
                "198.18.0.3:7947".parse::<SocketAddr>().expect("literal"),
                "198.18.0.4:8000".parse().expect("literal")
            ]
        );
        // The key never reaches the state file or `hola config`.
        let written = c.to_toml();
        assert!(!written.contains("cluster") && !written.contains("0123456789abcdef"));
    }

    #[test]
    fn cluster_errors_name_the_key_and_the_fix() {
        let cases = [
            ("key = \"0123456789abcdef\"\n", "cluster.id is missing"),
            ("id = \"a\"\n", "neither key nor key_file"),
            (
                "id = \"a\"\nkey = \"short\"\n",
                "cluster.key is 5 characters",
            ),
            (
                "id = \"a\"\nkey = \"0123456789abcdef\"\nkey_file = \"/k\"\n",
                "both set",
            ),
            (
                "id = \"a b\"\nkey = \"0123456789abcdef\"\n",
                "cluster.id = \"a b\"",
            ),
            (
                "id = \"a\"\nkey = \"0123456789abcdef\"\ngroup = \"198.18.0.1\"\n",
                "not a multicast address",
            ),
            (
                "id = \"a\"\nkey = \"0123456789abcdef\"\npeers = [\"nowhere\"]\n",
                "cluster.peers[0] = \"nowhere\"",
            ),
            (
                "id = \"a\"\nkey = \"0123456789abcdef\"\nmulticast = false\n",
                "would find no peer",
            ),
            (
                "id = \"a\"\nkey = \"0123456789abcdef\"\nannounce_interval = \"1s\"\npeer_timeout = \"1s\"\n",
                "at least twice announce_interval",
            ),
            (
                "id = \"a\"\nkey = \"0123456789abcdef\"\nqueue = 0\n",
                "cluster.queue = 0",
            ),
            (
                "id = \"a\"\nkey = \"0123456789abcdef\"\nport = 0\n",
                "cluster.port = 0",
            ),
        ];
        for (body, want) in cases {
            let errs = errors(&format!("{BASE}[cluster]\n{body}"));
            assert!(
                errs.iter().any(|e| e.contains(want)),
                "{body:?}: {want:?} not in {errs:#?}"
            );
        }
    }

    #[test]
    fn weight_out_of_range() {
        let text = vip_text(
            "",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
             [[vip]]\naddress = \"198.18.1.2\"\nport = 80\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\nweight = 70000\n",
        );
        let e = one_error(&text, 11, "vip[1].backend[0].weight = 70000");
        assert!(
            e.ends_with("must be 0..=10000 (0 drains the backend)"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_vip() {
        let text = vip_text(
            "",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
             [[vip]]\naddress = \"198.18.1.1\"\nport = 80\n",
        );
        let e = one_error(&text, 7, "vip[1] = 198.18.1.1:80/tcp");
        assert!(e.contains("vip[0]"), "{e}");
        // Another protocol is another VIP.
        parse(
            &text.replace(
                "port = 80\n[[vip]]",
                "port = 80\nprotocol = \"udp\"\n[[vip]]",
            ),
            "x",
        )
        .unwrap();
    }

    #[test]
    fn duplicate_backend() {
        let text = vip_text(
            "",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\n",
        );
        let e = one_error(&text, 9, "vip[0].backend[1].address = \"198.18.0.11\"");
        assert!(e.contains("vip[0].backend[0]"), "{e}");
    }

    #[test]
    fn family_mismatch() {
        let text = vip_text(
            "",
            "[[vip]]\naddress = \"2001:db8::1\"\nport = 443\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\n",
        );
        let e = one_error(&text, 7, "vip[0].backend[0].address = \"198.18.0.11\"");
        assert!(e.contains("IPv4 but the VIP 2001:db8::1 is IPv6"), "{e}");
    }

    #[test]
    fn table_size_not_prime() {
        let text = vip_text(
            "",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\ntable_size = 65536\n",
        );
        let e = one_error(&text, 6, "vip[0].table_size = 65536");
        assert!(e.contains("not prime; 65537 and 655373 are primes"), "{e}");
        let text = format!("{BASE}default_table_size = 100\n");
        one_error(&text, 3, "global.default_table_size = 100: not prime");
    }

    #[test]
    fn table_too_small_for_backends() {
        let mut text = vip_text(
            "",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\ntable_size = 7\n",
        );
        for i in 0..7 {
            text.push_str(&format!("[[vip.backend]]\naddress = \"198.18.0.{i}\"\n"));
        }
        let e = one_error(&text, 6, "vip[0].table_size = 7");
        assert!(e.contains("greater than the VIP's 7 backends"), "{e}");
    }

    #[test]
    fn ring_capacity_too_small() {
        let text = vip_text(
            "ring_capacity = 100000\n",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
             [[vip]]\naddress = \"198.18.1.1\"\nport = 443\n",
        );
        let e = one_error(&text, 3, "global.ring_capacity = 100000");
        assert!(
            e.contains("raise global.ring_capacity to at least 131074"),
            "{e}"
        );
        // Not written: the line of [global].
        let text = text
            .replace("ring_capacity = 100000\n", "")
            .replace("port = 443", "port = 443\ntable_size = 1048573");
        let e = one_error(&text, 1, "global.ring_capacity = 1048592");
        assert!(e.contains("at least 1114110"), "{e}");
    }

    #[test]
    fn too_many_vips_and_backends() {
        let text = vip_text(
            "max_vips = 1\nmax_backends = 1\n",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
             [[vip.backend]]\naddress = \"198.18.0.1\"\n\
             [[vip]]\naddress = \"198.18.1.1\"\nport = 443\n\
             [[vip.backend]]\naddress = \"198.18.0.1\"\n",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].starts_with("hola.toml:3: global.max_vips = 1: 2 VIPs"),
            "{errs:#?}"
        );
        assert!(
            errs[1].starts_with("hola.toml:4: global.max_backends = 1: the VIPs have 2 backends"),
            "{errs:#?}"
        );
    }

    #[test]
    fn bad_vip_addresses() {
        for (addr, what) in [
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("::", "unspecified"),
        ] {
            let text = vip_text("", &format!("[[vip]]\nport = 80\naddress = \"{addr}\"\n"));
            let e = one_error(&text, 5, &format!("vip[0].address = \"{addr}\""));
            assert!(e.contains(what), "{e}");
        }
        let e = one_error(
            &vip_text("", "[[vip]]\naddress = \"198.18.1\"\nport = 80\n"),
            4,
            "vip[0].address = \"198.18.1\"",
        );
        assert!(e.contains("not an IP address"), "{e}");
    }

    #[test]
    fn bad_cidrs() {
        let e = one_error(
            &format!("{BASE}tunnel_source_v4 = \"198.18.255.0/33\"\n"),
            3,
            "global.tunnel_source_v4 = \"198.18.255.0/33\"",
        );
        assert!(e.contains("prefix of 0..=32"), "{e}");
        let e = one_error(
            &format!("{BASE}tunnel_source_v4 = \"198.18.255.1/24\"\n"),
            3,
            "global.tunnel_source_v4",
        );
        assert!(e.contains("write \"198.18.255.0/24\""), "{e}");
        let e = one_error(
            &format!("{BASE}tunnel_source_v6 = \"2001:db8::/64\"\n"),
            3,
            "global.tunnel_source_v6 = \"2001:db8::/64\"",
        );
        assert!(e.contains("96..=128"), "{e}");
        one_error(
            &format!("{BASE}tunnel_source_v6 = \"nope\"\n"),
            3,
            "global.tunnel_source_v6 = \"nope\": not a CIDR",
        );
    }

    #[test]
    fn other_fields() {
        one_error(
            &format!("{BASE}xdp_mode = \"skb\"\n"),
            3,
            "global.xdp_mode = \"skb\": must be one of \"auto\", \"driver\", \"generic\"",
        );
        one_error(
            &format!("{BASE}metrics_address = \"localhost\"\n"),
            3,
            "global.metrics_address = \"localhost\": not a socket address",
        );
        assert_eq!(
            parse(&format!("{BASE}metrics_address = \"\"\n"), "x")
                .unwrap()
                .global
                .metrics_address,
            None
        );
        one_error(
            "[global]\ninterfaces = [\"eth0\", \"a/b\"]\n",
            2,
            "global.interfaces[1] = \"a/b\": not an interface name",
        );
        one_error("[global]\ninterfaces = []\n", 2, "global.interfaces = []");
        one_error(
            "[global]\nxdp_mode = \"auto\"\n",
            1,
            "global.interfaces is missing",
        );
        let errs = errors("[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n");
        assert_eq!(
            errs,
            [
                "hola.toml: global is missing: add a [global] table with at least interfaces = [\"eth0\"]"
            ]
        );
    }

    #[test]
    fn port_out_of_range() {
        let text = vip_text("", "[[vip]]\naddress = \"198.18.1.1\"\nport = 70000\n");
        one_error(
            &text,
            5,
            "vip[0].port = 70000: must be 0..=65535 (0 = all ports)",
        );
    }

    #[test]
    fn unknown_key() {
        let text = vip_text(
            "",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\nweigth = 3\n",
        );
        let e = one_error(&text, 8, "vip[0].backend[0].weigth: unknown field `weigth`");
        assert!(e.contains("`weight`"), "{e}");
        let e = one_error(
            &format!("{BASE}max_vip = 3\n"),
            3,
            "global.max_vip: unknown field `max_vip`",
        );
        assert!(e.contains("`max_vips`"), "{e}");
    }

    #[test]
    fn wrong_type_and_syntax() {
        one_error(
            &format!("{BASE}max_vips = \"3\"\n"),
            3,
            "global.max_vips: invalid type",
        );
        let errs = errors(&format!("{BASE}max_vips = \n"));
        assert!(
            errs[0].starts_with("hola.toml:3: syntax error"),
            "{errs:#?}"
        );
    }

    #[test]
    fn missing_values_do_not_hide_other_errors() {
        let text = "[global]\ninterfaces = [\"eth 1\"]\ntunnel_source_v6 = \"2001:db8::/64\"\n\
                    [[vip]]\nport = 80\n[[vip.backend]]\naddress = \"2001:db8::2\"\nweight = 20000\n\
                    [[vip]]\naddress = \"198.18.1.1\"\nport = 80\n[[vip.backend]]\nweight = 1\n";
        let errs = errors(text);
        let want = [
            "hola.toml:2: global.interfaces[0] = \"eth 1\": not an interface name",
            "hola.toml:3: global.tunnel_source_v6 = \"2001:db8::/64\": the prefix must be 96..=128",
            "hola.toml:4: vip[0].address is missing",
            "hola.toml:8: vip[0].backend[0].weight = 20000",
            "hola.toml:12: vip[1].backend[0].address is missing",
        ];
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (e, w) in errs.iter().zip(want) {
            assert!(e.starts_with(w), "{e:?} does not start with {w:?}");
        }
    }

    #[test]
    fn syntax_errors_one_per_line() {
        let errs = errors("[global]\ninterfaces = [\"eth0\"]\nmax_vips = \nmax_backends = 1 2\n");
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].starts_with("hola.toml:3: syntax error: "),
            "{errs:#?}"
        );
        assert!(
            errs[1].starts_with("hola.toml:4: syntax error: "),
            "{errs:#?}"
        );
    }

    #[test]
    fn all_errors_at_once() {
        let text = vip_text(
            "flow_capacity_per_cpu = 0\n",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\ntable_size = 1000\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\nweight = 70000\n",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(
            errs[0]
                .starts_with("hola.toml:3: global.flow_capacity_per_cpu = 0: must be 1..=16777216")
        );
        assert!(errs[1].starts_with("hola.toml:7: vip[0].table_size = 1000: not prime"));
        assert!(errs[2].starts_with("hola.toml:10: vip[0].backend[0].weight = 70000"));
        let rendered = parse(&text, "hola.toml").unwrap_err().to_string();
        assert_eq!(rendered.lines().count(), 3, "{rendered}");
    }

    #[test]
    fn validate_without_lines() {
        let mut c = parse(EXAMPLE, "x").unwrap();
        c.vips[0].backends[0].weight = 70_000;
        let e = c.validate("api").unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].line(), None);
        assert!(
            e.to_string()
                .starts_with("api: vip[0].backend[0].weight = 70000: must be 0..=10000"),
            "{e}"
        );
    }

    const HEALTH_DOC: &str = include_str!("../../docs/health-checks.md");

    /// Every check type, every key, a per-backend override.
    const ALL_CHECKS: &str = r#"[global]
interfaces = ["eth0"]
[[vip]]
address = "198.18.1.1"
port = 80
[vip.health]
type = "http"
interval = "1.5s"
timeout = "500ms"
rise = 4
fall = 5
port = 8080
path = "/healthz"
host = "www.example.com"
expect_status = 204
expect_body = "ok"
slow_start = "30s"
[[vip.backend]]
address = "198.18.0.11"
[[vip.backend]]
address = "198.18.0.12"
[vip.backend.health]
type = "tcp"
[[vip.backend]]
address = "198.18.0.13"
[vip.backend.health]
type = "udp"
send = "ping"
expect = "pong"
interval = "100ms"
[[vip.backend]]
address = "198.18.0.14"
[vip.backend.health]
type = "exec"
command = ["/usr/local/bin/check", "--fast"]
slow_start = "0s"
"#;

    #[test]
    fn health_checks_parse_and_round_trip() {
        let c = parse(ALL_CHECKS, "hola.toml").unwrap_or_else(|e| panic!("{e}"));
        let v = &c.vips[0];
        let h = v.health.as_ref().unwrap();
        assert_eq!(
            *h,
            HealthConfig {
                kind: CheckKind::Http,
                interval: Duration::from_millis(1500),
                timeout: Duration::from_millis(500),
                rise: 4,
                fall: 5,
                port: Some(8080),
                path: "/healthz".into(),
                host: Some("www.example.com".into()),
                expect_status: 204,
                expect_body: Some("ok".into()),
                send: "hola-health".into(),
                expect: None,
                command: Vec::new(),
                slow_start: Some(Duration::from_secs(30)),
            }
        );
        let tcp = v.backends[1].health.as_ref().unwrap();
        assert_eq!(*tcp, HealthConfig::new(CheckKind::Tcp));
        let udp = v.backends[2].health.as_ref().unwrap();
        assert_eq!(
            (udp.kind, udp.send.as_str(), udp.expect.as_deref()),
            (CheckKind::Udp, "ping", Some("pong"))
        );
        // The default timeout is capped at the interval.
        assert_eq!(udp.timeout, Duration::from_millis(100));
        let exec = v.backends[3].health.as_ref().unwrap();
        assert_eq!(exec.command, ["/usr/local/bin/check", "--fast"]);
        assert_eq!(exec.slow_start, Some(Duration::ZERO));
        let text = c.to_toml();
        assert!(text.contains("interval = \"1500ms\""), "{text}");
        assert!(text.contains("timeout = \"500ms\""), "{text}");
        assert!(text.contains("interval = \"2s\""), "{text}");
        let back = parse(&text, "round-trip").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, c, "{text}");
        // JSON (the API) round-trips too, and fills defaults.
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);
        let h: HealthConfig = serde_json::from_str(r#"{"type":"tcp","interval":"300ms"}"#).unwrap();
        assert_eq!(h.timeout, Duration::from_millis(300));
        assert_eq!(h.rise, 2);
        for (n, v) in CheckKind::CHOICES {
            assert_eq!(toml::Value::try_from(v).unwrap().as_str(), Some(*n));
        }
    }

    #[test]
    fn health_for_picks_the_override() {
        let c = parse(ALL_CHECKS, "x").unwrap();
        let v = &c.vips[0];
        assert_eq!(v.health_for(&v.backends[0]).unwrap().kind, CheckKind::Http);
        assert_eq!(v.health_for(&v.backends[1]).unwrap().kind, CheckKind::Tcp);
        assert_eq!(v.health_for(&v.backends[3]).unwrap().kind, CheckKind::Exec);
        let mut v = v.clone();
        v.health = None;
        assert_eq!(v.health_for(&v.backends[0]), None);
        assert_eq!(v.health_for(&v.backends[2]).unwrap().kind, CheckKind::Udp);
    }

    #[test]
    fn durations() {
        for (s, ms) in [
            ("500ms", 500),
            ("2s", 2000),
            ("1.5s", 1500),
            ("0s", 0),
            ("0.05s", 50),
        ] {
            assert_eq!(parse_duration(s), Some(Duration::from_millis(ms)), "{s}");
        }
        for s in [
            "", "1", "s", "ms", "1.s", ".5s", "-1s", "1m", "1 s", "1h", "1.5.5s",
        ] {
            assert_eq!(parse_duration(s), None, "{s:?}");
        }
        for d in [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_secs(2),
            Duration::from_millis(1500),
            Duration::from_micros(1500),
            Duration::from_nanos(1),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d), "{d:?}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }

    fn health_text(health: &str) -> String {
        vip_text(
            "",
            &format!(
                "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n[vip.health]\n{health}\
                 [[vip.backend]]\naddress = \"198.18.0.11\"\n"
            ),
        )
    }

    #[test]
    fn health_errors() {
        // Line 7 is the first key of [vip.health].
        let e = one_error(
            &health_text("type = \"tcp\"\ninterval = \"2 s\"\n"),
            8,
            "vip[0].health.interval = \"2 s\": not a duration",
        );
        assert!(e.contains("\"1.5s\""), "{e}");
        one_error(
            &health_text("type = \"tcp\"\ninterval = \"1s\"\ntimeout = \"3s\"\n"),
            9,
            "vip[0].health.timeout = \"3s\": longer than interval \"1s\"; make it at most the \
             interval",
        );
        one_error(
            &health_text("type = \"tcp\"\ninterval = \"10ms\"\n"),
            8,
            "vip[0].health.interval = \"10ms\": must be \"50ms\"..=\"3600s\"",
        );
        one_error(
            &health_text("type = \"tcp\"\npath = \"/healthz\"\n"),
            8,
            "vip[0].health.path = \"/healthz\": only for type = \"http\", not \"tcp\"",
        );
        one_error(
            &health_text("type = \"http\"\nsend = \"x\"\n"),
            8,
            "vip[0].health.send = \"x\": only for type = \"udp\", not \"http\"",
        );
        one_error(
            &health_text("type = \"exec\"\n"),
            6,
            "vip[0].health.command is missing or empty",
        );
        one_error(
            &health_text("type = \"exec\"\ncommand = []\n"),
            8,
            "vip[0].health.command is missing or empty",
        );
        let e = one_error(
            &health_text("type = \"http\"\npath = \"healthz\"\n"),
            8,
            "vip[0].health.path = \"healthz\": must start with '/'",
        );
        assert!(e.contains("\"/healthz\""), "{e}");
        one_error(
            &health_text("type = \"http\"\nexpect_status = 42\n"),
            8,
            "vip[0].health.expect_status = 42: must be 100..=599",
        );
        one_error(
            &health_text("type = \"tcp\"\nrise = 0\n"),
            8,
            "vip[0].health.rise = 0: must be 1..=100",
        );
        one_error(
            &health_text("type = \"tcp\"\nslow_start = \"2h\"\n"),
            8,
            "vip[0].health.slow_start = \"2h\": not a duration",
        );
        one_error(
            &health_text("type = \"tcp\"\nslow_start = \"7200s\"\n"),
            8,
            "vip[0].health.slow_start = \"7200s\": must be \"0s\"..=\"3600s\"",
        );
        one_error(
            &health_text("type = \"ping\"\n"),
            7,
            "vip[0].health.type = \"ping\": must be one of \"tcp\", \"http\", \"udp\", \"exec\"",
        );
        one_error(
            &health_text("interval = \"1s\"\n"),
            6,
            "vip[0].health.type is missing",
        );
        let e = one_error(
            &health_text("type = \"tcp\"\npaht = \"/\"\n"),
            8,
            "vip[0].health.paht: unknown field `paht`",
        );
        assert!(e.contains("`path`"), "{e}");
        // All-ports VIP: the check needs a port.
        let text = health_text("type = \"tcp\"\n").replace("port = 80\n", "port = 0\n");
        one_error(
            &text,
            6,
            "vip[0].health.port is missing: the VIP has port 0",
        );
        parse(
            &text.replace("type = \"tcp\"\n", "type = \"tcp\"\nport = 22\n"),
            "x",
        )
        .unwrap();
    }

    #[test]
    fn backend_health_errors() {
        let text = vip_text(
            "",
            "[[vip]]\naddress = \"198.18.1.1\"\nport = 80\n\
             [[vip.backend]]\naddress = \"198.18.0.11\"\n\
             [vip.backend.health]\ntype = \"udp\"\ncommand = [\"/bin/true\"]\n",
        );
        one_error(
            &text,
            10,
            "vip[0].backend[0].health.command = [\"/bin/true\"]: only for type = \"exec\", not \
             \"udp\"",
        );
    }

    #[test]
    fn health_validate_without_lines() {
        let mut c = parse(ALL_CHECKS, "x").unwrap();
        c.vips[0].backends[1].health.as_mut().unwrap().path = "/x".into();
        c.vips[0].health.as_mut().unwrap().timeout = Duration::from_secs(2);
        let e = c.validate("api").unwrap_err().to_string();
        assert!(
            e.contains("api: vip[0].health.timeout = \"2s\": longer than interval \"1500ms\""),
            "{e}"
        );
        assert!(
            e.contains("api: vip[0].backend[1].health.path = \"/x\": only for type = \"http\""),
            "{e}"
        );
    }

    /// Each ```toml block of docs/health-checks.md.
    fn toml_blocks(doc: &str) -> Vec<String> {
        let mut blocks = Vec::new();
        let mut current: Option<String> = None;
        for line in doc.lines() {
            match &mut current {
                None if line.trim() == "```toml" => current = Some(String::new()),
                Some(b) if line.trim() == "```" => {
                    blocks.push(std::mem::take(b));
                    current = None;
                }
                Some(b) => {
                    b.push_str(line);
                    b.push('\n');
                }
                None => {}
            }
        }
        assert!(current.is_none(), "an unterminated ```toml block");
        blocks
    }

    #[test]
    fn health_doc_examples_parse() {
        let blocks = toml_blocks(HEALTH_DOC);
        assert!(blocks.len() >= 5, "{}", blocks.len());
        let mut kinds = HashSet::new();
        for (i, b) in blocks.iter().enumerate() {
            let c = parse(b, &format!("health-checks.md block {i}"))
                .unwrap_or_else(|e| panic!("{e}\n{b}"));
            for v in &c.vips {
                for b in &v.backends {
                    kinds.insert(v.health_for(b).expect("every example checks").kind);
                }
            }
        }
        assert_eq!(kinds.len(), CheckKind::CHOICES.len(), "{kinds:?}");
        let agents: Vec<_> = blocks
            .iter()
            .filter_map(|b| parse(b, "x").ok())
            .flat_map(|c| c.vips)
            .filter_map(|v| v.agent.clone())
            .collect();
        assert_eq!(
            agents,
            vec![AgentConfig {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                ..AgentConfig::new(9999)
            }],
            "the agent example"
        );
    }

    const CLUSTER_DOC: &str = include_str!("../../docs/cluster.md");

    /// The hola configurations of docs/cluster.md (its ```toml blocks with a
    /// `[cluster]` table) parse and validate; its other ```toml blocks are
    /// gobgpd's.
    #[test]
    fn cluster_doc_examples_parse() {
        let blocks = toml_blocks(CLUSTER_DOC);
        let (hola, other): (Vec<&String>, Vec<&String>) = blocks
            .iter()
            .partition(|b| b.lines().any(|l| l.trim() == "[cluster]"));
        assert!(hola.len() >= 2, "{} hola configurations", hola.len());
        for (i, b) in hola.iter().enumerate() {
            let origin = format!("cluster.md block {i}");
            let c = parse(b, &origin).unwrap_or_else(|e| panic!("{e}\n{b}"));
            c.validate(&origin).unwrap_or_else(|e| panic!("{e}\n{b}"));
            assert!(c.cluster.is_some() && !c.vips.is_empty(), "{b}");
        }
        for b in other {
            assert!(
                b.contains("[global.config]"),
                "a ```toml block of docs/cluster.md that is neither hola's nor gobgpd's:\n{b}"
            );
        }
    }

    #[test]
    fn agent_checks_parse_round_trip_and_fail_clearly() {
        let text = r#"
[global]
interfaces = ["eth0"]

[[vip]]
address = "198.18.1.5"
port = 80

[vip.agent]
port = 9999

[[vip.backend]]
address = "198.18.0.51"

[vip.backend.agent]
port = 8080
path = "/load"
min_percent = 50
max_percent = 200
"#;
        let c = parse(text, "a.toml").unwrap();
        let v = &c.vips[0];
        assert_eq!(v.agent, Some(AgentConfig::new(9999)));
        let own = v.agent_for(&v.backends[0]).unwrap();
        assert_eq!(
            *own,
            AgentConfig {
                path: Some("/load".into()),
                min_percent: 50,
                max_percent: 200,
                ..AgentConfig::new(8080)
            }
        );
        let again = parse(&c.to_toml(), "dump").unwrap();
        assert_eq!(again, c, "to_toml round-trips agents");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), c);

        let bad = text
            .replace(
                "port = 9999",
                "port = 0\ninterval = \"1s\"\ntimeout = \"2s\"",
            )
            .replace("min_percent = 50", "min_percent = 300")
            .replace("path = \"/load\"", "path = \"load\"\ncolour = 1");
        let e = parse(&bad, "a.toml").unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let bad = text
            .replace(
                "port = 9999",
                "port = 0\ninterval = \"1s\"\ntimeout = \"2s\"",
            )
            .replace("min_percent = 50", "min_percent = 300")
            .replace("path = \"/load\"", "path = \"load\"");
        let e = parse(&bad, "a.toml").unwrap_err().to_string();
        for want in [
            "vip[0].agent.port = 0: must be 1..=65535",
            "vip[0].agent.timeout = \"2s\": longer than interval \"1s\"",
            "vip[0].backend[0].agent.min_percent = 300: more than max_percent = 200",
            "vip[0].backend[0].agent.path = \"load\": must start with '/'",
        ] {
            assert!(e.contains(want), "{want:?} in:\n{e}");
        }
        let missing = text.replace("port = 8080\n", "");
        let e = parse(&missing, "a.toml").unwrap_err().to_string();
        assert!(
            e.contains("vip[0].backend[0].agent.port is missing: add it, e.g. port = 9999"),
            "{e}"
        );
    }

    #[test]
    fn example_has_health_checks() {
        let c = parse(EXAMPLE, "x").unwrap();
        let v = &c.vips[0];
        assert_eq!(v.health.as_ref().unwrap().kind, CheckKind::Http);
        assert!(v.backends.iter().any(|b| b.health.is_some()));
    }

    #[test]
    fn missing_file() {
        let e = load(Path::new("/nonexistent/hola.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/hola.toml: cannot read"), "{e}");
        assert!(e.contains("No such file"), "{e}");
    }
}
