//! The `hola` daemon's configuration: a TOML file (see `docs/configuration.md`).
//!
//! This file holds the schema (the public [`Config`] and its tables) and the
//! entry points [`load`], [`parse`] and [`Config::to_toml`]. [`parse`] runs
//! three stages, each collecting every error it finds:
//!
//! - `toml` reads the text into the lenient model of `raw` and records each
//!   field's line; only a syntax error, an unknown key or a wrong TOML type
//!   stops here (at the first: serde does).
//! - `raw` turns the lenient model (every field optional, numbers as `i64`,
//!   addresses and enums as strings) into a `Config`, reporting every value
//!   it cannot read, and puts a placeholder in its place.
//! - `validate` runs the semantic checks; [`Config::validate`] runs the
//!   same checks on a `Config` built elsewhere (the API's JSON), without
//!   lines.
//!
//! `error` holds the errors and the `Sink` that collects them with their
//! lines, [`defaults`] every default and accepted range, `values` the value
//! types (durations, prefixes, port ranges, the enums).
//!
//! # Two models of each table, not three
//!
//! Each table has its schema type here, which serde reads and writes (the
//! API's JSON, the state file, `hola config dump`), and a lenient twin in
//! `raw` (`RawHealth` for [`HealthConfig`], `RawAgent` for [`AgentConfig`],
//! and so on) that only the TOML front end uses. Both are needed:
//!
//! - The schema type cannot be the lenient one: the API's errors come from
//!   serde reading typed fields, which names the field, its line and column
//!   and what was expected (``invalid value: integer `-1`, expected u32``),
//!   and the rest of hola wants typed values.
//! - The lenient one cannot be the schema: reading `rise = -1` or
//!   `interval = "2 s"` into typed fields stops at the first bad value,
//!   while a file's every mistake is reported in one run, in hola's words
//!   (`must be 1..=100`), with its line.
//!
//! The health and agent checks had a third model, a serde-only twin with
//! every key optional (`HealthWire`, `AgentWire`). It existed because an
//! unwritten timeout is the interval when that is shorter than the default,
//! a default serde's per-field `default` cannot express. It is gone: the
//! schema types derive serde with `remote = "Self"` and fill in such
//! defaults after the derive has run (`check_table_serde`).

mod bgp;
mod cluster;
pub mod defaults;
pub mod diff;
mod error;
mod raw;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod toml;
mod validate;
mod values;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use bgp::{BgpConfig, BgpPeer};
pub use error::{ConfigError, ConfigErrors, Subject};
pub use values::{
    Bounds, CheckKind, HashKind, Initial, Ipv4Cidr, Ipv6Cidr, Protocol, Through, VipMode, XdpMode,
    format_duration, format_port_range, parse_duration,
};

use defaults::fns as d;
use error::{NoLines, Sink};
use values::{duration_serde, metrics_address_serde, opt_duration_serde};

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
    /// Announcing the VIPs over BGP through BIRD (docs/cluster.md); `None`:
    /// hola announces nothing. Like `[cluster]`, never written back: it
    /// always comes from the configuration file.
    #[serde(default, skip_serializing)]
    pub bgp: Option<BgpConfig>,
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
    #[serde(default = "d::cluster_multicast")]
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
    /// Entries of `PEER_FLOWS`, the flows peers send (preallocated: each
    /// costs kernel memory whether used or not); `None`: as many as the
    /// flow table (`global.flow_capacity_per_cpu` × possible CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_flow_capacity: Option<u32>,
    /// Send and install entries; `false` only discovers peers (for tests
    /// and for comparing behaviour without replication).
    #[serde(default = "d::cluster_replicate")]
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
    /// IPv6 flow-table (`FLOWS`) entries per possible CPU; `None`: a
    /// quarter of `flow_capacity_per_cpu`, at least 4,096 (or as many as
    /// that when it is fewer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_capacity_v6_per_cpu: Option<u32>,
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
    /// How long a VIP keeps its previous Maglev table after a change: a
    /// non-SYN TCP packet that misses the flow table meanwhile goes to the
    /// backend that table gave, if it can still take it. 0 turns it off.
    #[serde(default = "d::table_grace", with = "duration_serde")]
    pub table_grace: Duration,
    /// New flows each CPU records per second at most; above it new flows
    /// are forwarded by the Maglev table unrecorded (flood mode). 0: no
    /// limit.
    #[serde(default = "d::new_flow_rate")]
    pub new_flow_rate: u32,
    /// fullnat: the IPv4 source address requests get (an address of the
    /// balancer on the backends' side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fullnat_source_v4: Option<Ipv4Addr>,
    /// fullnat: the IPv6 source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fullnat_source_v6: Option<Ipv6Addr>,
    /// fullnat: the source ports, split evenly among the CPUs, as written
    /// (`"20000-59999"`); read them with [`Global::fullnat_port_range`].
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

impl Global {
    /// fullnat's source ports, `(LOW, HIGH)`: `fullnat_ports` read here so
    /// that nothing else parses the string. A `Global` that has not passed
    /// [`Config::validate`] may hold an unreadable range; it gets
    /// [`defaults::FULLNAT_PORTS`].
    pub fn fullnat_port_range(&self) -> (u16, u16) {
        parse_port_range(&self.fullnat_ports).unwrap_or(defaults::FULLNAT_PORTS)
    }
}

/// `"LOW-HIGH"` with LOW < HIGH, both within
/// [`defaults::FULLNAT_PORT_RANGE`] (1024 <= LOW < HIGH <= 65535).
pub fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = values::split_port_range(s)?;
    let allowed = defaults::FULLNAT_PORT_RANGE;
    (allowed.contains(lo) && allowed.contains(hi) && lo < hi).then_some((lo, hi))
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
    /// UDP, dsr or tunnel: a QUIC service whose backends' connection IDs
    /// carry their `server_id`; short headers go to the backend that owns
    /// the ID whatever their 5-tuple (docs/modes.md, QUIC).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quic: bool,
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
    /// `quic` VIPs: the server ID (1..=65535, unique within the VIP) that
    /// this backend's QUIC connection IDs carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<u16>,
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
            failures: defaults::OUTLIER_FAILURES,
            window: defaults::OUTLIER_WINDOW,
            cooldown: defaults::OUTLIER_COOLDOWN,
            syn_timeout: defaults::OUTLIER_SYN_TIMEOUT,
        }
    }
}

/// A `[vip.agent]` or `[vip.backend.agent]` table: the agent check. The
/// backend's agent answers on `port` (over plain TCP, or HTTP GET of
/// `path`) with its load: `75%`, `drain`, `down`, `up`; the backend's
/// weight is scaled by the percentage, kept within
/// `min_percent..=max_percent`.
///
/// Its serde is derived with `remote = "Self"` (see `check_table_serde`):
/// deserialize it through the `Deserialize` trait, never by calling
/// `AgentConfig::deserialize`, which leaves an unwritten interval or
/// timeout unset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct AgentConfig {
    pub port: u16,
    #[serde(default = "unset", with = "unset_or_duration")]
    pub interval: Duration,
    /// At most `interval`.
    #[serde(default = "unset", with = "unset_or_duration")]
    pub timeout: Duration,
    /// `None`: plain TCP (read one line); else HTTP GET of this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The lowest percentage a report can set (a lower one is raised).
    #[serde(
        default = "d::agent_min_percent",
        deserialize_with = "nullable::agent_min_percent"
    )]
    pub min_percent: u32,
    /// The highest percentage a report can set (a higher one is lowered).
    #[serde(
        default = "d::agent_max_percent",
        deserialize_with = "nullable::agent_max_percent"
    )]
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

/// A `[vip.health]` or `[vip.backend.health]` table: an active health check.
/// Keys of another check type than `kind` keep their defaults (they are
/// not written by [`Config::to_toml`], and [`Config::validate`] rejects
/// other values).
///
/// Its serde is derived with `remote = "Self"` (see `check_table_serde`):
/// deserialize it through the `Deserialize` trait, never by calling
/// `HealthConfig::deserialize`, which leaves an unwritten interval or
/// timeout unset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct HealthConfig {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    #[serde(default = "unset", with = "unset_or_duration")]
    pub interval: Duration,
    /// At most `interval`.
    #[serde(default = "unset", with = "unset_or_duration")]
    pub timeout: Duration,
    /// Consecutive successes for a down backend to come up.
    #[serde(default = "d::health_rise", deserialize_with = "nullable::health_rise")]
    pub rise: u32,
    /// Consecutive failures for an up backend to go down.
    #[serde(default = "d::health_fall", deserialize_with = "nullable::health_fall")]
    pub fall: u32,
    /// `None`: the VIP's port (which must then not be 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP: the request path.
    #[serde(
        default = "d::health_path",
        deserialize_with = "nullable::health_path",
        skip_serializing_if = "is_default_path"
    )]
    pub path: String,
    /// HTTP: the Host header; `None`: the backend address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP: the status that counts as up.
    #[serde(
        default = "d::health_expect_status",
        deserialize_with = "nullable::health_expect_status",
        skip_serializing_if = "is_default_status"
    )]
    pub expect_status: u16,
    /// HTTP: a substring the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// UDP: the datagram sent.
    #[serde(
        default = "d::health_send",
        deserialize_with = "nullable::health_send",
        skip_serializing_if = "is_default_send"
    )]
    pub send: String,
    /// UDP: a substring the reply must contain; `None`: any reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// Exec: program and arguments; exit status 0 is up.
    #[serde(
        default,
        deserialize_with = "nullable::command",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub command: Vec<String>,
    /// After coming up, the weight ramps from a tenth to the full weight
    /// over this long.
    #[serde(
        default,
        with = "opt_duration_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub slow_start: Option<Duration>,
    /// How a backend without saved health starts (added while hola runs,
    /// or hola's first start): up, or down until `rise` passes.
    #[serde(default, skip_serializing_if = "Initial::is_up")]
    pub initial: Initial,
    /// `None`: by the VIP's mode (`HealthConfig::through_vip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<Through>,
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
            initial: Initial::Up,
            through: None,
        }
    }

    /// Whether the check goes through the VIP (`through`): as written, or
    /// by default for dsr and tunnel VIPs (IPv4 and IPv6). nat and fullnat
    /// reach the backend's own address as a client's packet does.
    pub fn through_vip(&self, mode: VipMode) -> bool {
        let carried = matches!(mode, VipMode::Dsr | VipMode::Tunnel);
        carried && self.through != Some(Through::Backend) && self.kind != CheckKind::Exec
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

/// A check's `interval` or `timeout` while it is read, when it is not
/// written (or `null`): a value no duration string reaches
/// (`parse_duration` stops at `u64::MAX` nanoseconds).
const UNSET: Duration = Duration::MAX;

fn unset() -> Duration {
    UNSET
}

/// A check's `interval` or `timeout`: written as a duration string, read
/// as one or as `null` ([`UNSET`], as a missing key).
mod unset_or_duration {
    use super::*;

    pub use super::duration_serde::serialize;

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        Ok(opt_duration_serde::deserialize(de)?.unwrap_or(UNSET))
    }
}

/// Serde of a check table (`HealthConfig`, `AgentConfig`). Its derive has
/// `remote = "Self"`, which makes inherent `serialize` / `deserialize`
/// functions instead of the traits; the traits call them, then give an
/// unset interval its default and an unset timeout
/// [`defaults::timeout_for`] the interval: a default that depends on
/// another key, which serde's per-field defaults cannot express.
macro_rules! check_table_serde {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                <$t>::serialize(self, s)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let mut check = <$t>::deserialize(d)?;
                if check.interval == UNSET {
                    check.interval = defaults::HEALTH_INTERVAL;
                }
                if check.timeout == UNSET {
                    check.timeout = defaults::timeout_for(check.interval);
                }
                Ok(check)
            }
        }
    )*};
}
check_table_serde!(HealthConfig, AgentConfig);

/// Serde readers of the check keys that have a default: `null` reads as
/// the default, as a missing key does (the API has always taken
/// `"rise": null`).
mod nullable {
    use super::*;

    macro_rules! nullable {
        ($($name:ident: $t:ty;)*) => {$(
            pub fn $name<'de, D: Deserializer<'de>>(de: D) -> Result<$t, D::Error> {
                Ok(Option::<$t>::deserialize(de)?.unwrap_or_else(d::$name))
            }
        )*};
    }

    nullable! {
        health_rise: u32;
        health_fall: u32;
        health_path: String;
        health_expect_status: u16;
        health_send: String;
        agent_min_percent: u32;
        agent_max_percent: u32;
    }

    pub fn command<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
        Ok(Option::deserialize(de)?.unwrap_or_default())
    }
}

// ---------------------------------------------------------------------------
// Entry points

/// Reads and parses `path`; errors name the path as the file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &origin),
        Err(e) => Err(ConfigErrors(vec![ConfigError::new(
            &origin,
            None,
            None,
            format!(
                "cannot read the configuration file: {e}; check the path and its permissions \
                 (docs/hola.example.toml is a starting point)"
            ),
        )])),
    }
}

/// Parses and validates `text`; `origin` names it in messages (usually the
/// file name). Reports every error found, one per line.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let (raw, locator) = toml::read(text, origin)?;
    let mut sink = Sink::new(origin, &locator);
    // Missing or unreadable values become placeholders whose paths are
    // "poisoned", so the checks still run on everything else.
    let config = raw.convert(&mut sink);
    config.check(&mut sink);
    sink.finish(config)
}

impl Config {
    /// The configuration as TOML that [`parse`] reads back to an equal `Config`.
    pub fn to_toml(&self) -> String {
        ::toml::to_string(self).expect("a Config always serializes to TOML")
    }

    /// The semantic checks of [`parse`], for a `Config` that did not come
    /// from a file (errors carry no line number).
    pub fn validate(&self, origin: &str) -> Result<(), ConfigErrors> {
        let mut sink = Sink::new(origin, &NoLines);
        self.check(&mut sink);
        sink.finish(())
    }

    /// The Maglev table size of `vip`: its own, or the global default.
    pub fn table_size(&self, vip: &VipConfig) -> u32 {
        vip.table_size.unwrap_or(self.global.default_table_size)
    }
}
