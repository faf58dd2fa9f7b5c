//! Every human-readable rendering of the CLI: each function takes the data
//! (a daemon's answer, a loaded configuration) and returns the exact text
//! to print, each line ending in a newline. Nothing here talks to the
//! daemon, so each rendering is tested on its own. (Writing to a `String`
//! cannot fail: hence `let _ = writeln!`.)

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use lb_userspace::{
    api::VipRef,
    config::{Config, VipConfig, format_duration},
    stats::{AnnounceReport, BackendReport, StatsReport},
    stats::{Event, FlowAnswer},
};

use super::drain::Seen;

/// A change the daemon made, confirmed by one line.
pub enum Changed {
    VipAdded(VipRef),
    VipRemoved(VipRef),
    BackendAdded {
        vip: VipRef,
        backend: IpAddr,
    },
    BackendRemoved {
        vip: VipRef,
        backend: IpAddr,
    },
    Weight {
        vip: VipRef,
        backend: IpAddr,
        weight: u32,
    },
    Drain {
        vip: VipRef,
        backend: IpAddr,
        drain: bool,
    },
}

/// The line that confirms a change.
pub fn changed(c: &Changed) -> String {
    let line = match c {
        Changed::VipAdded(vip) => format!("VIP {vip} added"),
        Changed::VipRemoved(vip) => format!("VIP {vip} removed"),
        Changed::BackendAdded { vip, backend } => format!("backend {backend} added to {vip}"),
        Changed::BackendRemoved { vip, backend } => {
            format!("backend {backend} removed from {vip}")
        }
        Changed::Weight {
            vip,
            backend,
            weight,
        } => format!("backend {backend} of {vip}: weight {weight}"),
        Changed::Drain {
            vip,
            backend,
            drain: true,
        } => format!("backend {backend} of {vip}: draining (no new flows)"),
        Changed::Drain {
            vip,
            backend,
            drain: false,
        } => format!("backend {backend} of {vip}: taking new flows again"),
    };
    line + "\n"
}

/// What a `hola backend drain --wait` waits for, for its lines.
pub struct DrainWait {
    pub vip: VipRef,
    pub backend: IpAddr,
    pub quiet_for: Duration,
    pub timeout: Duration,
}

/// The first line of `drain --wait`, once the drain is made.
pub fn drain_waiting(w: &DrainWait) -> String {
    format!(
        "waiting until no packet reaches {} of {} for {} (at most {})\n",
        w.backend,
        w.vip,
        format_duration(w.quiet_for),
        format_duration(w.timeout)
    )
}

/// Every few seconds of `drain --wait`: what reached the backend over the
/// last `over`, and how long it has been quiet.
pub fn drain_progress(w: &DrainWait, over: Duration, seen: Seen, quiet: Duration) -> String {
    format!(
        "{}: {} and {} in the last {}; quiet for {} of {}\n",
        w.backend,
        count(seen.packets, "packet"),
        count(seen.new_flows, "new flow"),
        secs(over),
        secs(quiet),
        format_duration(w.quiet_for)
    )
}

/// The last line of a `drain --wait` that saw the backend empty.
pub fn drain_done(w: &DrainWait, waited: Duration, total: Seen) -> String {
    format!(
        "backend {} of {} is drained: no packet for {} (waited {}; {} and {} reached it \
         while waiting)\n",
        w.backend,
        w.vip,
        format_duration(w.quiet_for),
        secs(waited),
        count(total.packets, "packet"),
        count(total.new_flows, "new flow")
    )
}

/// Why a `drain --wait` gave up, and how to go on (an error: no newline).
pub fn drain_timed_out(w: &DrainWait, waited: Duration, total: Seen, quiet: Duration) -> String {
    format!(
        "backend {b} of {v} is still busy after waiting {}: {} and {} reached it while \
         waiting, the last one {} ago (it must see none for {}). It stays drained (no \
         new flows). To go on, wait longer (a longer --timeout), or remove it to re-balance \
         the flows it still has: hola backend del {v} {b}",
        secs(waited),
        count(total.packets, "packet"),
        count(total.new_flows, "new flow"),
        secs(quiet),
        format_duration(w.quiet_for),
        b = w.backend,
        v = w.vip,
    )
}

/// A measured duration in whole seconds, rounded: `"4s"`.
fn secs(d: Duration) -> String {
    format!("{}s", (d.as_millis() + 500) / 1000)
}

/// `"1 packet"`, `"3 packets"`.
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `hola check-config`: the file is valid, and what it holds.
pub fn config_ok(file: &Path, c: &Config) -> String {
    let backends: usize = c.vips.iter().map(|v| v.backends.len()).sum();
    format!(
        "{}: ok ({} VIPs, {backends} backends)\n",
        file.display(),
        c.vips.len()
    )
}

/// `hola vip list`: one line per VIP.
pub fn vips(vips: &[VipConfig], stats: Option<&StatsReport>) -> String {
    let mut out = String::new();
    for v in vips {
        let r = VipRef {
            address: v.address,
            port: v.port,
            protocol: v.protocol,
        };
        let _ = write!(
            out,
            "{r} mode={:?} hash={:?} backends={}",
            v.mode,
            v.hash,
            v.backends.len()
        );
        if v.quic {
            out.push_str(" quic");
        }
        let a = stats
            .and_then(|s| s.vips.iter().find(|x| x.vip == r.to_string()))
            .and_then(|x| x.announce.as_ref());
        match a {
            Some(a) => {
                let _ = writeln!(out, " bgp={}", announce(a));
            }
            None => out.push('\n'),
        }
    }
    out
}

/// `hola backend list`: one line per backend, of the VIP `only` or of all.
pub fn backends(s: &StatsReport, only: Option<&VipRef>) -> String {
    let mut out = String::new();
    for v in &s.vips {
        if let Some(f) = only
            && f.to_string() != v.vip
        {
            continue;
        }
        for b in &v.backends {
            out.push_str(&backend_line(&v.vip, b));
        }
    }
    out
}

/// One backend of `hola backend list`: its weights, state, health (the
/// last check and change), agent and next hop.
fn backend_line(vip: &str, b: &BackendReport) -> String {
    let last = b
        .last_check
        .as_ref()
        .map(|p| format!(" last_check=\"{}\" latency_ms={}", p.detail, p.latency_ms))
        .unwrap_or_default();
    let changed = b
        .last_change_ms
        .map(|ms| format!(" changed={}", format_ms(ms)))
        .unwrap_or_default();
    let agent = b
        .agent
        .as_ref()
        .map(|a| {
            let said = a
                .last_check
                .as_ref()
                .map(|p| format!(" agent_check=\"{}\"", p.detail))
                .unwrap_or_default();
            format!(" agent={}% agent_mode={}{said}", a.percent, a.mode)
        })
        .unwrap_or_default();
    let server_id = b
        .server_id
        .map(|id| format!(" server_id={id}"))
        .unwrap_or_default();
    format!(
        "{} {}{server_id} weight={} effective={} state={} health={}{last}{changed}{agent} nexthop={}\n",
        vip,
        b.address,
        b.weight,
        b.effective_weight,
        b.state,
        b.health,
        if b.nexthop_resolved {
            "resolved"
        } else {
            "unresolved"
        }
    )
}

/// `hola stats`: each VIP with its backends indented under it, then the
/// verdict reasons that counted packets.
pub fn stats(s: &StatsReport) -> String {
    let mut out = String::new();
    for v in &s.vips {
        let _ = writeln!(
            out,
            "{} {} packets={} bytes={} new_flows={} no_backend={} pps={:.1}",
            v.vip,
            v.mode,
            v.packets,
            v.bytes,
            v.new_flows,
            v.no_backend,
            v.rates.packets_per_second
        );
        if let Some(a) = &v.announce {
            let _ = writeln!(out, "  bgp: {}", announce(a));
        }
        for b in &v.backends {
            let _ = writeln!(
                out,
                "  {} {} weight={} effective={} packets={} bytes={} new_flows={}",
                b.address, b.state, b.weight, b.effective_weight, b.packets, b.bytes, b.new_flows
            );
        }
    }
    let reasons: Vec<String> = s
        .reasons
        .iter()
        .filter(|(_, c)| c.packets > 0)
        .map(|(r, c)| format!("{r}={}", c.packets))
        .collect();
    let _ = writeln!(out, "reasons: {}", reasons.join(" "));
    let _ = writeln!(out, "{}", s.flood.line());
    if let Some(b) = &s.bgp {
        let _ = writeln!(
            out,
            "bgp: {} (routes in table {}, protocol {})",
            if b.drained {
                "node drained: every VIP withdrawn"
            } else {
                "node not drained"
            },
            b.table,
            b.route_protocol
        );
    }
    out
}

/// A VIP's BGP announcement and why: "announced (serving)".
fn announce(a: &AnnounceReport) -> String {
    let why = match a.reason.as_str() {
        "serving" => "a backend takes new flows",
        "other_vip_serving" => {
            "this VIP has no backend for new flows, another VIP at its address has"
        }
        "no_backend" => "no backend takes new flows",
        "settling" => "serving for less than bgp.announce_delay; the route is left as it is",
        "checks_pending" => {
            "health checks have not answered yet, or a backend is coming back up; the route is left as it is"
        }
        "drained" => "the node is drained (hola node undrain announces it again)",
        other => other,
    };
    format!("{} ({}: {why})", a.state, a.reason)
}

/// `hola node drain` and `undrain`.
pub fn node_drained(drained: bool) -> &'static str {
    if drained {
        "node drained: every VIP is withdrawn from BGP; what still arrives is forwarded\n"
    } else {
        "node undrained: each VIP is announced as its backends allow\n"
    }
}

/// `hola flow`: where the flow from `src` goes, and why.
pub fn flow(src: SocketAddr, a: &FlowAnswer) -> String {
    match &a.backend {
        Some(b) => format!("{src} -> {} goes to {b}: {}\n", a.vip, a.reason),
        None => format!("{src} -> {}: no backend: {}\n", a.vip, a.reason),
    }
}

/// `hola events`: one line per state change, oldest first.
pub fn events(events: &[Event]) -> String {
    if events.is_empty() {
        return "no backend state changes since hola started\n".to_owned();
    }
    let mut out = String::new();
    for e in events {
        let _ = writeln!(
            out,
            "{} {} {} {} ({})",
            format_ms(e.timestamp_ms),
            e.vip,
            e.backend,
            e.state,
            e.detail
        );
    }
    out
}

/// A Unix time in milliseconds as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use lb_userspace::{
        config::Protocol,
        health::Probe,
        health::agent::{AgentMode, AgentStatus},
        stats::{PacketsBytes, Rates, VipReport},
    };

    use super::*;

    fn vip_ref(s: &str) -> VipRef {
        let sa: SocketAddr = s.parse().unwrap();
        VipRef {
            address: sa.ip(),
            port: sa.port(),
            protocol: Protocol::Tcp,
        }
    }

    fn probe(detail: &str, latency_ms: u64) -> Probe {
        Probe {
            ok: true,
            detail: detail.to_owned(),
            latency_ms,
        }
    }

    /// Two VIPs: the first with a checked backend behind an agent and an
    /// unchecked draining one, the second with one backend.
    fn report() -> StatsReport {
        StatsReport {
            reasons: [
                ("drop_no_backend", 0),
                ("pass_not_vip", 12),
                ("tx_new_flow", 3),
            ]
            .into_iter()
            .map(|(r, packets)| {
                let c = PacketsBytes { packets, bytes: 60 };
                (r.to_owned(), c)
            })
            .collect(),
            vips: vec![
                VipReport {
                    vip: "198.18.1.1:80/tcp".to_owned(),
                    mode: "dsr".to_owned(),
                    packets: 10,
                    bytes: 1500,
                    new_flows: 2,
                    no_backend: 1,
                    rates: Rates {
                        packets_per_second: 2.25,
                        ..Rates::default()
                    },
                    backends: vec![
                        BackendReport {
                            address: "198.18.0.11".to_owned(),
                            weight: 10,
                            effective_weight: 5,
                            state: "active".to_owned(),
                            health: "up".to_owned(),
                            last_check: Some(probe("HTTP 200", 3)),
                            last_change_ms: Some(951_782_400_000),
                            agent: Some(AgentStatus {
                                percent: 50,
                                mode: AgentMode::Up,
                                last_check: Some(probe("50%", 1)),
                            }),
                            nexthop_resolved: true,
                            packets: 7,
                            bytes: 1000,
                            new_flows: 2,
                            ..BackendReport::default()
                        },
                        BackendReport {
                            address: "198.18.0.12".to_owned(),
                            weight: 1,
                            state: "draining".to_owned(),
                            health: "unchecked".to_owned(),
                            packets: 3,
                            bytes: 500,
                            ..BackendReport::default()
                        },
                    ],
                    ..VipReport::default()
                },
                VipReport {
                    vip: "[2001:db8::1]:443/tcp".to_owned(),
                    mode: "tunnel".to_owned(),
                    backends: vec![BackendReport {
                        address: "2001:db8::11".to_owned(),
                        weight: 1,
                        effective_weight: 1,
                        state: "active".to_owned(),
                        health: "down".to_owned(),
                        last_check: Some(Probe {
                            ok: false,
                            detail: "timeout after 500ms".to_owned(),
                            latency_ms: 500,
                        }),
                        ..BackendReport::default()
                    }],
                    ..VipReport::default()
                },
            ],
            ..StatsReport::default()
        }
    }

    #[test]
    fn stats_lists_vips_backends_and_counted_reasons() {
        assert_eq!(
            stats(&report()),
            "198.18.1.1:80/tcp dsr packets=10 bytes=1500 new_flows=2 no_backend=1 pps=2.2\n\
             \x20 198.18.0.11 active weight=10 effective=5 packets=7 bytes=1000 new_flows=2\n\
             \x20 198.18.0.12 draining weight=1 effective=0 packets=3 bytes=500 new_flows=0\n\
             [2001:db8::1]:443/tcp tunnel packets=0 bytes=0 new_flows=0 no_backend=0 pps=0.0\n\
             \x20 2001:db8::11 active weight=1 effective=1 packets=0 bytes=0 new_flows=0\n\
             reasons: pass_not_vip=12 tx_new_flow=3\n\
             flood mode: off\n"
        );
        assert_eq!(
            stats(&StatsReport::default()),
            "reasons: \nflood mode: off\n"
        );
    }

    #[test]
    fn backends_lists_every_backend_with_its_checks() {
        let all = "198.18.1.1:80/tcp 198.18.0.11 weight=10 effective=5 state=active health=up \
                   last_check=\"HTTP 200\" latency_ms=3 changed=2000-02-29T00:00:00.000Z \
                   agent=50% agent_mode=up agent_check=\"50%\" nexthop=resolved\n\
                   198.18.1.1:80/tcp 198.18.0.12 weight=1 effective=0 state=draining \
                   health=unchecked nexthop=unresolved\n";
        let v6 = "[2001:db8::1]:443/tcp 2001:db8::11 weight=1 effective=1 state=active \
                  health=down last_check=\"timeout after 500ms\" latency_ms=500 \
                  nexthop=unresolved\n";
        assert_eq!(backends(&report(), None), format!("{all}{v6}"));
        assert_eq!(backends(&report(), Some(&vip_ref("198.18.1.1:80"))), all);
        assert_eq!(backends(&report(), Some(&vip_ref("198.18.1.2:80"))), "");
    }

    #[test]
    fn vips_lists_mode_hash_and_backend_count() {
        let vips: Vec<VipConfig> = serde_json::from_str(
            r#"[{"address":"198.18.1.1","port":80,"protocol":"tcp","mode":"dsr",
                 "backend":[{"address":"198.18.0.11"},{"address":"198.18.0.12"}]},
                {"address":"2001:db8::1","port":53,"protocol":"udp","mode":"fullnat",
                 "hash":"source"}]"#,
        )
        .unwrap();
        assert_eq!(
            super::vips(&vips, None),
            "198.18.1.1:80/tcp mode=Dsr hash=FiveTuple backends=2\n\
             [2001:db8::1]:53/udp mode=FullNat hash=Source backends=0\n"
        );
        assert_eq!(super::vips(&[], None), "");
    }

    #[test]
    fn changed_confirms_each_change() {
        let vip = vip_ref("198.18.1.1:80");
        let backend: IpAddr = "198.18.0.11".parse().unwrap();
        let lines: Vec<String> = [
            Changed::VipAdded(vip),
            Changed::VipRemoved(vip),
            Changed::BackendAdded { vip, backend },
            Changed::BackendRemoved { vip, backend },
            Changed::Weight {
                vip,
                backend,
                weight: 7,
            },
            Changed::Drain {
                vip,
                backend,
                drain: true,
            },
            Changed::Drain {
                vip,
                backend,
                drain: false,
            },
        ]
        .iter()
        .map(changed)
        .collect();
        assert_eq!(
            lines.concat(),
            "VIP 198.18.1.1:80/tcp added\n\
             VIP 198.18.1.1:80/tcp removed\n\
             backend 198.18.0.11 added to 198.18.1.1:80/tcp\n\
             backend 198.18.0.11 removed from 198.18.1.1:80/tcp\n\
             backend 198.18.0.11 of 198.18.1.1:80/tcp: weight 7\n\
             backend 198.18.0.11 of 198.18.1.1:80/tcp: draining (no new flows)\n\
             backend 198.18.0.11 of 198.18.1.1:80/tcp: taking new flows again\n"
        );
    }

    #[test]
    fn config_ok_counts_vips_and_backends() {
        let c = lb_userspace::config::parse(
            "[global]\ninterfaces = [\"eth0\"]\n\n\
             [[vip]]\naddress = \"198.18.1.1\"\nport = 80\nmode = \"dsr\"\n\
             backend = [{ address = \"198.18.0.11\" }, { address = \"198.18.0.12\" }]\n\n\
             [[vip]]\naddress = \"198.18.1.2\"\nport = 80\nmode = \"dsr\"\n",
            "hola.toml",
        )
        .unwrap();
        assert_eq!(
            config_ok(Path::new("/etc/hola/hola.toml"), &c),
            "/etc/hola/hola.toml: ok (2 VIPs, 2 backends)\n"
        );
    }

    #[test]
    fn flow_names_the_backend_or_why_none() {
        let src: SocketAddr = "198.18.0.1:1234".parse().unwrap();
        let mut a = FlowAnswer {
            vip: "198.18.1.1:80/tcp".to_owned(),
            backend: Some("198.18.0.11".to_owned()),
            reason: "Maglev slot 42".to_owned(),
        };
        assert_eq!(
            flow(src, &a),
            "198.18.0.1:1234 -> 198.18.1.1:80/tcp goes to 198.18.0.11: Maglev slot 42\n"
        );
        a.backend = None;
        a.reason = "every backend is down".to_owned();
        assert_eq!(
            flow(src, &a),
            "198.18.0.1:1234 -> 198.18.1.1:80/tcp: no backend: every backend is down\n"
        );
    }

    #[test]
    fn events_lists_changes_or_says_there_are_none() {
        assert_eq!(events(&[]), "no backend state changes since hola started\n");
        let e = |timestamp_ms, state: &str, detail: &str| Event {
            timestamp_ms,
            vip: "198.18.1.1:80/tcp".to_owned(),
            backend: "198.18.0.11".to_owned(),
            state: state.to_owned(),
            detail: detail.to_owned(),
        };
        assert_eq!(
            events(&[
                e(1_795_889_508_330, "down", "timeout after 500ms"),
                e(1_795_889_512_001, "up", "HTTP 200"),
            ]),
            "2026-11-28T18:11:48.330Z 198.18.1.1:80/tcp 198.18.0.11 down (timeout after 500ms)\n\
             2026-11-28T18:11:52.001Z 198.18.1.1:80/tcp 198.18.0.11 up (HTTP 200)\n"
        );
    }

    #[test]
    fn format_ms_is_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_795_889_508_330), "2026-11-28T18:11:48.330Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    fn drain_wait() -> DrainWait {
        DrainWait {
            vip: vip_ref("198.18.1.1:80"),
            backend: "198.18.0.11".parse().unwrap(),
            quiet_for: Duration::from_secs(10),
            timeout: Duration::from_millis(300_500),
        }
    }

    #[test]
    fn drain_wait_lines_say_what_the_backend_still_sees() {
        let w = drain_wait();
        assert_eq!(
            drain_waiting(&w),
            "waiting until no packet reaches 198.18.0.11 of 198.18.1.1:80/tcp for 10s \
             (at most 300500ms)\n"
        );
        let seen = |packets, new_flows| Seen { packets, new_flows };
        assert_eq!(
            drain_progress(
                &w,
                Duration::from_millis(5_002),
                seen(12, 1),
                Duration::from_millis(1_600)
            ),
            "198.18.0.11: 12 packets and 1 new flow in the last 5s; quiet for 2s of 10s\n"
        );
        assert_eq!(
            drain_progress(&w, Duration::from_secs(5), seen(1, 0), Duration::ZERO),
            "198.18.0.11: 1 packet and 0 new flows in the last 5s; quiet for 0s of 10s\n"
        );
        assert_eq!(
            drain_done(&w, Duration::from_millis(23_400), seen(1234, 3)),
            "backend 198.18.0.11 of 198.18.1.1:80/tcp is drained: no packet for 10s \
             (waited 23s; 1234 packets and 3 new flows reached it while waiting)\n"
        );
        assert_eq!(
            drain_timed_out(
                &w,
                Duration::from_millis(300_900),
                seen(37, 0),
                Duration::from_millis(400)
            ),
            "backend 198.18.0.11 of 198.18.1.1:80/tcp is still busy after waiting 301s: \
             37 packets and 0 new flows reached it while waiting, the last one 0s ago (it \
             must see none for 10s). It stays drained (no new flows). To go on, wait longer \
             (a longer --timeout), or remove it to re-balance the flows it still has: \
             hola backend del 198.18.1.1:80/tcp 198.18.0.11"
        );
    }
}
