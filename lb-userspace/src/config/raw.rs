//! The TOML front end's second half: the lenient model the text is read
//! into (every field optional, numbers as `i64`, addresses and enums as
//! strings), and its conversion into a [`Config`]. Every value that cannot
//! be read is reported with its field path (the [`Sink`] adds the line) and
//! replaced by a placeholder whose path is "poisoned", so that one run
//! reports every mistake; the range checks come after, in `validate`.
//!
//! Why the lenient `Raw*` types exist next to the schema: see the module
//! documentation of `config`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::defaults::*;
use super::error::Sink;
use super::validate::{FULLNAT_SOURCE_V4_EXAMPLE, FULLNAT_SOURCE_V6_EXAMPLE, foreign_key};
use super::values::{
    CheckKind, Choice, DURATION_RULE, Initial, Through, parse_duration, parse_metrics_address,
};
use super::{AgentConfig, BackendConfig, Config, Global, HealthConfig, OutlierConfig, VipConfig};

// ---------------------------------------------------------------------------
// Reading values

/// The front end's readers: each turns a value as written into its type,
/// reports what it cannot read and returns a placeholder. (The rest of
/// [`Sink`] is in `error`.)
impl Sink<'_> {
    /// A duration such as `"2s"` at `path`, if given; an unreadable one is
    /// reported (and its path poisoned) and counts as absent.
    pub(super) fn duration(&mut self, path: &str, value: Option<String>) -> Option<Duration> {
        let s = value?;
        parse_duration(&s).or_else(|| {
            self.error(path, format!("{path} = {s:?}: {DURATION_RULE}"));
            self.poison(path);
            None
        })
    }

    /// `value` (or `default` when absent) as a `T`; a value `T` cannot hold is
    /// reported with `rule` and replaced by `default`. Ranges inside `T`
    /// are checked later, on the schema.
    pub(super) fn int<T: TryFrom<i64>>(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: T,
        rule: impl fmt::Display,
    ) -> T {
        match value {
            None => default,
            Some(v) => T::try_from(v).unwrap_or_else(|_| {
                self.error(path, format!("{path} = {v}: must be {rule}"));
                default
            }),
        }
    }

    /// A port that is not 0; else reported, poisoned and `None`.
    fn port(&mut self, path: &str, value: i64) -> Option<u16> {
        u16::try_from(value)
            .ok()
            .filter(|p| PORT_RANGE.contains(*p))
            .or_else(|| {
                self.error(path, format!("{path} = {value}: must be {PORT_RANGE}"));
                self.poison(path);
                None
            })
    }

    fn choice<T: Choice>(&mut self, path: &str, value: Option<String>, default: T) -> T {
        let Some(v) = value else { return default };
        T::named(&v).unwrap_or_else(|| {
            self.error(
                path,
                format!("{path} = {v:?}: must be one of {}", T::names()),
            );
            default
        })
    }

    /// `value` read by `parse` (or `default` when absent); a value `parse`
    /// rejects is reported with its reason and replaced by `default`.
    pub(super) fn parsed<T>(
        &mut self,
        path: &str,
        value: Option<String>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(s) = value else { return default };
        parse(&s).unwrap_or_else(|why| {
            self.error(path, format!("{path} = {s:?}: {why}"));
            default
        })
    }

    /// `value`, or `placeholder` after reporting it missing.
    pub(super) fn required<T>(
        &mut self,
        path: &str,
        value: Option<T>,
        placeholder: T,
        example: &str,
    ) -> T {
        value.unwrap_or_else(|| {
            self.error(path, format!("{path} is missing: add it, e.g. {example}"));
            self.poison(path);
            placeholder
        })
    }

    /// A required IP address; the placeholder is the unspecified IPv4 address.
    pub(super) fn ip(&mut self, path: &str, value: Option<String>, example: &str) -> IpAddr {
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
            self.poison(path);
            placeholder
        })
    }
}

/// `s` parsed as a `T`, or `why`.
pub(super) fn parse_or<T: FromStr>(why: String) -> impl FnOnce(&str) -> Result<T, String> {
    move |s| s.parse().map_err(|_| why)
}

/// `s` parsed as a `T`, as `Some`, or `why`.
pub(super) fn parse_some<T: FromStr>(
    why: String,
) -> impl FnOnce(&str) -> Result<Option<T>, String> {
    move |s| s.parse().map(Some).map_err(|_| why)
}

// ---------------------------------------------------------------------------
// The lenient model

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    global: Option<RawGlobal>,
    cluster: Option<super::cluster::RawCluster>,
    bgp: Option<super::bgp::RawBgp>,
    #[serde(default)]
    vip: Vec<RawVip>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGlobal {
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<String>,
    flow_capacity_per_cpu: Option<i64>,
    flow_capacity_v6_per_cpu: Option<i64>,
    max_vips: Option<i64>,
    max_backends: Option<i64>,
    ring_capacity: Option<i64>,
    nat_capacity: Option<i64>,
    nat_tcp_timeout: Option<String>,
    nat_udp_timeout: Option<String>,
    nat_closed_timeout: Option<String>,
    table_grace: Option<String>,
    new_flow_rate: Option<i64>,
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
    quic: Option<bool>,
    health: Option<RawHealth>,
    agent: Option<RawAgent>,
    outlier: Option<RawOutlier>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    weight: Option<i64>,
    backup: Option<bool>,
    interface: Option<String>,
    port: Option<i64>,
    server_id: Option<i64>,
    drain: Option<bool>,
    health: Option<RawHealth>,
    agent: Option<RawAgent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    failures: Option<i64>,
    window: Option<String>,
    cooldown: Option<String>,
    syn_timeout: Option<String>,
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
    initial: Option<String>,
    through: Option<String>,
}

// ---------------------------------------------------------------------------
// From the lenient model to the schema

impl RawConfig {
    /// The schema; what is missing or unreadable is reported to `sink` and
    /// replaced by a placeholder (range checks come later).
    pub(super) fn convert(self, sink: &mut Sink<'_>) -> Config {
        let global = self.global.unwrap_or_else(|| {
            sink.error(
                "global",
                "global is missing: add a [global] table with at least interfaces = [\"eth0\"]"
                    .to_string(),
            );
            sink.poison("global.interfaces");
            RawGlobal::default()
        });
        Config {
            global: global.convert(sink),
            cluster: self.cluster.map(|c| c.convert(sink)),
            bgp: self.bgp.map(|b| b.convert(sink)),
            vips: (self.vip.into_iter().enumerate())
                .map(|(i, v)| v.convert(sink, &format!("vip[{i}]")))
                .collect(),
        }
    }
}

/// `global.flow_capacity_v6_per_cpu`, when set: a value no `u32` holds is
/// reported here (and replaced by one in range, so it is not reported
/// twice); the range is checked with the other capacities.
fn v6_capacity(sink: &mut Sink<'_>, v: Option<i64>) -> Option<u32> {
    v.map(|v| {
        sink.int(
            "global.flow_capacity_v6_per_cpu",
            Some(v),
            FLOW_CAPACITY_RANGE.lo,
            FLOW_CAPACITY_RANGE,
        )
    })
}

impl RawGlobal {
    /// The fields in the order their errors are reported (which matters
    /// only for an inline table, all on one line).
    fn convert(self, sink: &mut Sink<'_>) -> Global {
        let int = |sink: &mut Sink<'_>, key: &str, v: Option<i64>, default: u32, range| {
            sink.int(&format!("global.{key}"), v, default, range)
        };
        let duration = |sink: &mut Sink<'_>, key: &str, v: Option<String>, default: Duration| {
            sink.duration(&format!("global.{key}"), v)
                .unwrap_or(default)
        };
        let path =
            |v: Option<String>, default: &str| PathBuf::from(v.as_deref().unwrap_or(default));
        Global {
            interfaces: sink.required(
                "global.interfaces",
                self.interfaces,
                Vec::new(),
                "interfaces = [\"eth0\"]",
            ),
            xdp_mode: sink.choice("global.xdp_mode", self.xdp_mode, XDP_MODE),
            flow_capacity_per_cpu: int(
                sink,
                "flow_capacity_per_cpu",
                self.flow_capacity_per_cpu,
                FLOW_CAPACITY_PER_CPU,
                FLOW_CAPACITY_RANGE,
            ),
            flow_capacity_v6_per_cpu: v6_capacity(sink, self.flow_capacity_v6_per_cpu),
            max_vips: int(sink, "max_vips", self.max_vips, MAX_VIPS, MAX_VIPS_RANGE),
            max_backends: int(
                sink,
                "max_backends",
                self.max_backends,
                MAX_BACKENDS,
                MAX_BACKENDS_RANGE,
            ),
            ring_capacity: int(
                sink,
                "ring_capacity",
                self.ring_capacity,
                RING_CAPACITY,
                RING_CAPACITY_RANGE,
            ),
            nat_capacity: int(
                sink,
                "nat_capacity",
                self.nat_capacity,
                NAT_CAPACITY,
                NAT_CAPACITY_RANGE,
            ),
            nat_tcp_timeout: duration(
                sink,
                "nat_tcp_timeout",
                self.nat_tcp_timeout,
                NAT_TCP_TIMEOUT,
            ),
            nat_udp_timeout: duration(
                sink,
                "nat_udp_timeout",
                self.nat_udp_timeout,
                NAT_UDP_TIMEOUT,
            ),
            nat_closed_timeout: duration(
                sink,
                "nat_closed_timeout",
                self.nat_closed_timeout,
                NAT_CLOSED_TIMEOUT,
            ),
            table_grace: duration(sink, "table_grace", self.table_grace, TABLE_GRACE),
            new_flow_rate: int(
                sink,
                "new_flow_rate",
                self.new_flow_rate,
                NEW_FLOW_RATE,
                NEW_FLOW_RATE_RANGE,
            ),
            default_table_size: int(
                sink,
                "default_table_size",
                self.default_table_size,
                DEFAULT_TABLE_SIZE,
                TABLE_SIZE_RANGE,
            ),
            metrics_address: sink.parsed(
                "global.metrics_address",
                self.metrics_address,
                Some(METRICS_ADDRESS),
                parse_metrics_address,
            ),
            tunnel_source_v4: sink.parsed(
                "global.tunnel_source_v4",
                self.tunnel_source_v4,
                TUNNEL_SOURCE_V4,
                str::parse,
            ),
            tunnel_source_v6: sink.parsed(
                "global.tunnel_source_v6",
                self.tunnel_source_v6,
                TUNNEL_SOURCE_V6,
                str::parse,
            ),
            fullnat_source_v4: sink.parsed(
                "global.fullnat_source_v4",
                self.fullnat_source_v4,
                None,
                parse_some(format!(
                    "not an IPv4 address, e.g. \"{FULLNAT_SOURCE_V4_EXAMPLE}\""
                )),
            ),
            fullnat_source_v6: sink.parsed(
                "global.fullnat_source_v6",
                self.fullnat_source_v6,
                None,
                parse_some(format!(
                    "not an IPv6 address, e.g. \"{FULLNAT_SOURCE_V6_EXAMPLE}\""
                )),
            ),
            fullnat_ports: self.fullnat_ports.unwrap_or_else(fns::fullnat_ports),
            control_socket: path(self.control_socket, CONTROL_SOCKET),
            state_file: path(self.state_file, STATE_FILE),
            bpffs_dir: path(self.bpffs_dir, BPFFS_DIR),
        }
    }
}

impl RawVip {
    fn convert(self, sink: &mut Sink<'_>, path: &str) -> VipConfig {
        let address = sink.ip(&format!("{path}.address"), self.address, "198.18.1.1");
        let p = format!("{path}.port");
        let port = sink.required(&p, self.port, 0, "port = 80 (0 = all ports)");
        let port = sink.int(&p, Some(port), 0u16, VIP_PORT_RANGE);
        let protocol = sink.choice(&format!("{path}.protocol"), self.protocol, PROTOCOL);
        let mode = sink.choice(&format!("{path}.mode"), self.mode, MODE);
        let hash = sink.choice(&format!("{path}.hash"), self.hash, HASH);
        let table_size = self.table_size.and_then(|t| {
            let p = format!("{path}.table_size");
            u32::try_from(t).ok().or_else(|| {
                sink.error(
                    &p,
                    format!("{p} = {t}: must be a prime in {TABLE_SIZE_RANGE}"),
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
            quic: self.quic.unwrap_or(false),
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
        let weight = sink.int(&format!("{path}.weight"), self.weight, WEIGHT, WEIGHT_RANGE);
        BackendConfig {
            address,
            weight,
            backup: self.backup.unwrap_or(false),
            interface: self.interface,
            port: self
                .port
                .and_then(|v| sink.port(&format!("{path}.port"), v)),
            server_id: self.server_id.and_then(|v| {
                let p = format!("{path}.server_id");
                u16::try_from(v).ok().or_else(|| {
                    sink.error(&p, format!("{p} = {v}: must be 1..=65535"));
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

impl RawOutlier {
    fn convert(self, sink: &mut Sink<'_>, path: &str) -> OutlierConfig {
        let mut o = OutlierConfig::default();
        o.failures = sink.int(
            &format!("{path}.failures"),
            self.failures,
            o.failures,
            OUTLIER_FAILURES_RANGE,
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

impl RawAgent {
    fn convert(self, sink: &mut Sink<'_>, path: &str) -> AgentConfig {
        let p = format!("{path}.port");
        let port = sink.required(&p, self.port, 1, "port = 9999 (where the agent answers)");
        let mut a = AgentConfig::new(sink.port(&p, port).unwrap_or(1));
        let duration = |sink: &mut Sink<'_>, key: &str, v: Option<String>| {
            sink.duration(&format!("{path}.{key}"), v)
        };
        if let Some(i) = duration(sink, "interval", self.interval) {
            a.interval = i;
        }
        a.timeout = duration(sink, "timeout", self.timeout).unwrap_or(timeout_for(a.interval));
        a.path = self.path;
        let percent = AGENT_PERCENT_RANGE.noted("percent of the configured weight");
        let mut percent_key = |key: &str, v: Option<i64>, default: u32| {
            sink.int(&format!("{path}.{key}"), v, default, percent)
        };
        a.min_percent = percent_key("min_percent", self.min_percent, a.min_percent);
        a.max_percent = percent_key("max_percent", self.max_percent, a.max_percent);
        a
    }
}

impl RawHealth {
    /// The check's type, if given and known (else reported and poisoned).
    fn kind(&mut self, sink: &mut Sink<'_>, path: &str) -> Option<CheckKind> {
        let type_path = format!("{path}.type");
        let kind = match self.kind.take() {
            None => {
                sink.error(
                    &type_path,
                    format!(
                        "{type_path} is missing: add it, e.g. type = \"tcp\" (one of {})",
                        CheckKind::names()
                    ),
                );
                None
            }
            Some(k) => CheckKind::named(&k).or_else(|| {
                sink.choice(&type_path, Some(k), CheckKind::Tcp);
                None
            }),
        };
        if kind.is_none() {
            sink.poison(&type_path);
        }
        kind
    }

    fn convert(mut self, sink: &mut Sink<'_>, path: &str) -> HealthConfig {
        let kind = self.kind(sink, path);
        let mut h = HealthConfig::new(kind.unwrap_or(CheckKind::Tcp));
        let duration = |sink: &mut Sink<'_>, key: &str, v: Option<String>| {
            sink.duration(&format!("{path}.{key}"), v)
        };
        if let Some(i) = duration(sink, "interval", self.interval) {
            h.interval = i;
        }
        h.timeout = duration(sink, "timeout", self.timeout).unwrap_or(timeout_for(h.interval));
        h.slow_start = duration(sink, "slow_start", self.slow_start);
        h.initial = sink.choice(&format!("{path}.initial"), self.initial.take(), Initial::Up);
        if let Some(t) = self.through.take() {
            h.through = Some(sink.choice(&format!("{path}.through"), Some(t), Through::Vip));
        }
        let count = |sink: &mut Sink<'_>, key: &str, v: Option<i64>, default: u32| {
            sink.int(&format!("{path}.{key}"), v, default, HEALTH_COUNT_RANGE)
        };
        h.rise = count(sink, "rise", self.rise, h.rise);
        h.fall = count(sink, "fall", self.fall, h.fall);
        h.port = self.port.and_then(|v| {
            let p = format!("{path}.port");
            u16::try_from(v).ok().or_else(|| {
                sink.error(&p, format!("{p} = {v}: must be {HEALTH_PORT_RANGE}"));
                sink.poison(&p);
                None
            })
        });
        // Keys of another type are reported (when the type is known) and dropped.
        let keep = |sink: &mut Sink<'_>, key: &str, value: String, owner: CheckKind| match kind {
            Some(k) if k != owner => {
                foreign_key(sink, path, key, &value, owner, k);
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
            let p = format!("{path}.expect_status");
            h.expect_status = sink.int(&p, Some(v), h.expect_status, EXPECT_STATUS_RANGE);
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
