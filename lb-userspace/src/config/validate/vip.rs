//! The checks of one `[[vip]]` and what it holds: its address and table
//! size, its fullnat source, its outlier, health and agent tables, and its
//! backends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::{
    FULLNAT_SOURCE_V4_EXAMPLE, FULLNAT_SOURCE_V6_EXAMPLE, check_ifname, check_range, foreign_key,
    table_size_problem,
};
use crate::config::defaults::*;
use crate::config::error::Sink;
use crate::config::values::{CheckKind, Protocol, Spelled, VipMode, format_duration};
use crate::config::{AgentConfig, Config, HealthConfig, VipConfig};

impl Config {
    /// One VIP at `path` (`vip[3]`) and everything in it.
    pub(super) fn check_vip(&self, sink: &mut Sink<'_>, path: &str, vip: &VipConfig) {
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
        check_outlier(sink, path, vip);
        let mut seen: HashMap<IpAddr, usize> = HashMap::new();
        for j in 0..vip.backends.len() {
            sink.about_backend(Some(j));
            check_backend(sink, path, vip, j, &mut seen);
            sink.about_backend(None);
        }
        self.check_fullnat_source(sink, path, vip);
        super::quic::check_quic(sink, path, vip);
    }

    /// A fullnat VIP needs the balancer's source address of its family.
    fn check_fullnat_source(&self, sink: &mut Sink<'_>, path: &str, vip: &VipConfig) {
        let g = &self.global;
        let (missing, key, example) = match vip.address {
            IpAddr::V4(_) => (
                g.fullnat_source_v4.is_none(),
                "v4",
                FULLNAT_SOURCE_V4_EXAMPLE,
            ),
            IpAddr::V6(_) => (
                g.fullnat_source_v6.is_none(),
                "v6",
                FULLNAT_SOURCE_V6_EXAMPLE,
            ),
        };
        if vip.mode == VipMode::FullNat && missing && !sink.is_poisoned(&format!("{path}.address"))
        {
            sink.error(
                &format!("{path}.mode"),
                format!(
                    "{path}.mode = \"fullnat\" needs global.fullnat_source_{key}, the balancer's \
                     address the backends answer to; add it, e.g. fullnat_source_{key} = \
                     \"{example}\""
                ),
            );
        }
    }
}

/// The `[vip.outlier]` table of the VIP at `path`, if any.
fn check_outlier(sink: &mut Sink<'_>, path: &str, vip: &VipConfig) {
    let Some(o) = &vip.outlier else { return };
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
    check_range(
        sink,
        &format!("{p}.failures"),
        o.failures,
        OUTLIER_FAILURES_RANGE,
    );
    for (key, d, range) in [
        ("window", o.window, OUTLIER_PERIOD_RANGE),
        ("cooldown", o.cooldown, OUTLIER_PERIOD_RANGE),
        ("syn_timeout", o.syn_timeout, SYN_TIMEOUT_RANGE),
    ] {
        check_range(sink, &format!("{p}.{key}"), d, range);
    }
}

/// Backend `j` of the VIP at `path`; `seen` maps the addresses so far to
/// their index.
fn check_backend(
    sink: &mut Sink<'_>,
    path: &str,
    vip: &VipConfig,
    j: usize,
    seen: &mut HashMap<IpAddr, usize>,
) {
    let b = &vip.backends[j];
    let bp = format!("{path}.backend[{j}]");
    let (a, b_addr) = (vip.address, b.address);
    if b_addr.is_unspecified() || b_addr.is_multicast() || b_addr == IpAddr::V4(Ipv4Addr::BROADCAST)
    {
        sink.error(
            &format!("{bp}.address"),
            format!(
                "{bp}.address = \"{b_addr}\": not a unicast address; use the address \
                 the backend receives traffic on"
            ),
        );
    } else if b_addr.is_ipv4() != a.is_ipv4() && !sink.is_poisoned(&format!("{path}.address")) {
        let (fam, vfam) = if a.is_ipv4() {
            ("IPv6", "IPv4")
        } else {
            ("IPv4", "IPv6")
        };
        sink.error(
            &format!("{bp}.address"),
            format!(
                "{bp}.address = \"{b_addr}\": {fam} but the VIP {a} is {vfam}; a VIP's backends \
                 must be {vfam} (make a separate {fam} VIP)"
            ),
        );
    }
    if let Some(first) = seen.get(&b_addr) {
        sink.error(
            &format!("{bp}.address"),
            format!(
                "{bp}.address = \"{b_addr}\": already {path}.backend[{first}]; remove one \
                 (weight sets its share)"
            ),
        );
    } else {
        seen.insert(b_addr, j);
    }
    check_range(sink, &format!("{bp}.weight"), b.weight, WEIGHT_RANGE);
    if let Some(port) = b.port {
        let p = format!("{bp}.port");
        if !PORT_RANGE.contains(port) {
            check_range(sink, &p, port, PORT_RANGE);
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
    if let Some(name) = &b.interface {
        check_ifname(sink, &format!("{bp}.interface"), name);
    }
    if let Some(h) = &b.health {
        check_health(sink, &format!("{bp}.health"), h, vip.port);
    }
    if let Some(a) = &b.agent {
        check_agent(sink, &format!("{bp}.agent"), a);
    }
}

/// The checks of one agent table at `path`.
fn check_agent(sink: &mut Sink<'_>, path: &str, a: &AgentConfig) {
    check_interval_timeout(sink, path, a.interval, a.timeout);
    check_range(sink, &format!("{path}.port"), a.port, PORT_RANGE);
    let p = format!("{path}.min_percent");
    check_range(sink, &p, a.min_percent, AGENT_PERCENT_RANGE);
    check_range(
        sink,
        &format!("{path}.max_percent"),
        a.max_percent,
        AGENT_PERCENT_RANGE,
    );
    if a.min_percent > a.max_percent {
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

/// `interval` within its range and `timeout` within its minimum and `interval`.
fn check_interval_timeout(sink: &mut Sink<'_>, path: &str, interval: Duration, timeout: Duration) {
    check_range(
        sink,
        &format!("{path}.interval"),
        interval,
        HEALTH_INTERVAL_RANGE,
    );
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
                "{p} = \"{}\": must be at least {} (and at most the interval)",
                format_duration(timeout),
                HEALTH_MIN_TIMEOUT.spelled()
            ),
        );
    }
}

/// The checks of one health table at `path`, of a VIP on `vip_port`.
fn check_health(sink: &mut Sink<'_>, path: &str, h: &HealthConfig, vip_port: u16) {
    check_interval_timeout(sink, path, h.interval, h.timeout);
    check_range(sink, &format!("{path}.rise"), h.rise, HEALTH_COUNT_RANGE);
    check_range(sink, &format!("{path}.fall"), h.fall, HEALTH_COUNT_RANGE);
    let p = format!("{path}.port");
    match h.port {
        Some(port) => check_range(sink, &p, port, HEALTH_PORT_RANGE),
        None if vip_port == 0 => sink.error(
            &p,
            format!(
                "{p} is missing: the VIP has port 0 (all ports), so the check needs its own; \
                 add it, e.g. port = 80"
            ),
        ),
        None => {}
    }
    if let Some(s) = h.slow_start {
        check_range(sink, &format!("{path}.slow_start"), s, SLOW_START_RANGE);
    }
    if sink.is_poisoned(&format!("{path}.type")) {
        return;
    }
    // Values of another type's keys (only reachable through the API: the
    // file's are reported while reading it).
    check_foreign_keys(sink, path, h);
    match h.kind {
        CheckKind::Http => {
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
            check_range(sink, &p, h.expect_status, EXPECT_STATUS_RANGE);
        }
        CheckKind::Exec => {
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

/// Keys of another check type than `h.kind` that differ from their default.
fn check_foreign_keys(sink: &mut Sink<'_>, path: &str, h: &HealthConfig) {
    use CheckKind::{Exec, Http, Udp};
    let d = HealthConfig::new(h.kind);
    let quoted = |v: &String| format!("{v:?}");
    for (key, value, owner) in [
        ("path", (h.path != d.path).then(|| quoted(&h.path)), Http),
        ("host", h.host.as_ref().map(quoted), Http),
        (
            "expect_status",
            (h.expect_status != d.expect_status).then(|| h.expect_status.to_string()),
            Http,
        ),
        ("expect_body", h.expect_body.as_ref().map(quoted), Http),
        ("send", (h.send != d.send).then(|| quoted(&h.send)), Udp),
        ("expect", h.expect.as_ref().map(quoted), Udp),
        (
            "command",
            (!h.command.is_empty()).then(|| format!("{:?}", h.command)),
            Exec,
        ),
    ] {
        if let Some(v) = value
            && h.kind != owner
        {
            foreign_key(sink, path, key, &v, owner, h.kind);
        }
    }
}
