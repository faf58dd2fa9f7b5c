//! `hola stats` and `/metrics`: the counters read now, rates over the last
//! one-second sample, and for each backend what the checks say of it.

use std::net::IpAddr;

use lb_common::BackendStats;

use super::{ErrorKind, Owner, OwnerError};
use crate::{
    cluster::ClusterReport,
    config::{HashKind, VipConfig, VipMode},
    dataplane::{Stats, VipCounters},
    health::outlier::Outliers,
    model::{Proto, now_ms},
    stats::{
        BackendReport, FloodReport, HandshakeReport, NatReport, PacketsBytes, Rates, STATS_VERSION,
        StatsReport, VipReport,
    },
};

/// How often flood mode is logged while it lasts.
const FLOOD_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

const FWD_FLOOD: &str = lb_common::Reason::FwdFlood.name();

/// Rates between two samples of a counter, per second.
struct Interval<'a> {
    seconds: f64,
    samples: Option<(&'a Stats, &'a Stats)>,
}

impl Interval<'_> {
    fn rate(&self, a: u64, b: u64) -> f64 {
        if self.seconds > 0.0 {
            b.saturating_sub(a) as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// New flows per second forwarded unrecorded over the insert rate
    /// limit (`fwd_flood`), all CPUs together.
    fn flood_rate(&self) -> f64 {
        let Some((s0, s1)) = self.samples else {
            return 0.0;
        };
        let n = |s: &Stats| s.reasons.get(FWD_FLOOD).map_or(0, |r| r.packets);
        self.rate(n(s0), n(s1))
    }

    /// A VIP's counters in the two samples.
    fn vip(&self, key: &crate::model::VipAddr) -> Option<(&VipCounters, &VipCounters)> {
        let (s0, s1) = self.samples?;
        Some((s0.vips.get(key)?, s1.vips.get(key)?))
    }
}

impl Owner {
    /// Once a minute at most, while flood mode is on, one log line says so.
    pub(super) fn log_flood(&mut self) {
        let interval = match (&self.prev, &self.last) {
            (Some((t0, s0)), Some((t1, s1))) => Interval {
                seconds: (*t1 - *t0).as_secs_f64(),
                samples: Some((s0, s1)),
            },
            _ => return,
        };
        let rate = interval.flood_rate();
        if rate <= 0.0
            || self
                .flood_logged
                .is_some_and(|t| t.elapsed() < FLOOD_LOG_EVERY)
        {
            return;
        }
        self.flood_logged = Some(std::time::Instant::now());
        let f = FloodReport {
            active: true,
            unrecorded_per_second: rate,
            new_flow_rate: self.dp.config().new_flow_rate,
        };
        tracing::warn!("{}", f.line());
    }

    pub(super) fn report(&mut self) -> Result<StatsReport, OwnerError> {
        let now = self
            .dp
            .stats()
            .map_err(|e| OwnerError::new(ErrorKind::Failed, e.to_string()))?;
        let interval = match (&self.prev, &self.last) {
            (Some((t0, s0)), Some((t1, s1))) => Interval {
                seconds: (*t1 - *t0).as_secs_f64(),
                samples: Some((s0, s1)),
            },
            _ => Interval {
                seconds: 0.0,
                samples: None,
            },
        };
        let mut report = StatsReport {
            version: STATS_VERSION,
            timestamp_ms: now_ms(),
            interval_seconds: interval.seconds,
            nat: NatReport {
                capacity: self.dp.config().nat_capacity,
                ..self.nat
            },
            cluster: self.cluster.as_ref().map(|(c, _)| ClusterReport {
                events_lost: self.dp.events_lost().unwrap_or(0),
                ..c.report()
            }),
            bgp: self.bgp_report(),
            ..Default::default()
        };
        for (name, r) in &now.reasons {
            report.reasons.insert(
                (*name).to_string(),
                PacketsBytes {
                    packets: r.packets,
                    bytes: r.bytes,
                },
            );
        }
        report.flood = FloodReport {
            unrecorded_per_second: interval.flood_rate(),
            active: interval.flood_rate() > 0.0,
            new_flow_rate: self.dp.config().new_flow_rate,
        };
        for v in &self.config.vips {
            if let Some(c) = now.vips.get(&v.key()) {
                report.vips.push(self.vip_report(v, c, &interval));
            }
        }
        Ok(report)
    }

    fn vip_report(&self, v: &VipConfig, c: &VipCounters, interval: &Interval<'_>) -> VipReport {
        let key = v.key();
        let samples = interval.vip(&key);
        let vr = |f: fn(&VipCounters) -> u64| match samples {
            Some((a, b)) => interval.rate(f(a), f(b)),
            None => 0.0,
        };
        let mut vip = VipReport {
            vip: key.to_string(),
            address: v.address.to_string(),
            port: v.port,
            protocol: Proto::from(v.protocol).to_string(),
            mode: match v.mode {
                VipMode::Dsr => "dsr",
                VipMode::Tunnel => "tunnel",
                VipMode::Nat => "nat",
                VipMode::FullNat => "fullnat",
            }
            .into(),
            hash: match v.hash {
                HashKind::FiveTuple => "5-tuple",
                HashKind::Source => "source",
            }
            .into(),
            table_size: self.config.table_size(v),
            packets: c.stats.packets,
            bytes: c.stats.bytes,
            new_flows: c.stats.new_flows,
            no_backend: c.stats.no_backend,
            rates: Rates {
                packets_per_second: vr(|c| c.stats.packets),
                bytes_per_second: vr(|c| c.stats.bytes),
                new_flows_per_second: vr(|c| c.stats.new_flows),
            },
            backends: Vec::new(),
            announce: self.announce_report(v),
        };
        let effective = self.checks.effective(v);
        for (i, b) in v.backends.iter().enumerate() {
            let bc = c.backends.get(&b.address).copied().unwrap_or_default();
            let pair = samples.and_then(|(p0, p1)| {
                Some((p0.backends.get(&b.address)?, p1.backends.get(&b.address)?))
            });
            let br = |f: fn(&BackendStats) -> u64| match pair {
                Some((a, b)) => interval.rate(f(a), f(b)),
                None => 0.0,
            };
            let rates = Rates {
                packets_per_second: br(|s| s.packets),
                bytes_per_second: br(|s| s.bytes),
                new_flows_per_second: br(|s| s.new_flows),
            };
            let mut r = self.backend_report(v, b.address, c, &self.outliers);
            r.weight = b.weight;
            r.effective_weight = effective[i].0;
            r.state = if b.backup {
                "backup"
            } else if b.weight == 0 || b.drain {
                "draining"
            } else {
                "active"
            }
            .into();
            (r.packets, r.bytes, r.new_flows, r.rates) =
                (bc.packets, bc.bytes, bc.new_flows, rates);
            vip.backends.push(r);
        }
        vip
    }

    /// What the checks and the data plane say of one backend (counters
    /// and weights are filled in by the caller).
    fn backend_report(
        &self,
        v: &VipConfig,
        addr: IpAddr,
        c: &VipCounters,
        outliers: &Outliers,
    ) -> BackendReport {
        let key = (v.key(), addr);
        let h = self.checks.health.get(&key);
        let ejected = self.checks.ejected.contains(&key);
        BackendReport {
            handshake: c
                .handshakes
                .get(&addr)
                .map(|hs| HandshakeReport::new(hs, outliers.timeouts(&key))),
            health: match h {
                _ if ejected => "down",
                None => "unchecked",
                Some(h) if h.machine.up => "up",
                Some(_) => "down",
            }
            .into(),
            last_check: h.and_then(|h| h.last.clone()),
            last_change_ms: h.and_then(|h| h.changed_ms),
            agent: self.checks.agents.get(&key).cloned(),
            address: addr.to_string(),
            server_id: v
                .backends
                .iter()
                .find(|b| b.address == addr)
                .and_then(|b| b.server_id),
            weight: 0,
            effective_weight: 0,
            state: String::new(),
            nexthop_resolved: self.nexthops.contains_key(&addr),
            packets: 0,
            bytes: 0,
            new_flows: 0,
            rates: Rates::default(),
        }
    }
}
