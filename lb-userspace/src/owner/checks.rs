//! The owner's side of health: which checks run, what their results change,
//! the NAT sweeps that feed passive health, the outlier rule, and the
//! events `hola events` lists.

use std::{net::IpAddr, time::Duration, time::Instant};

use lb_common::probe::{PROBE_DSR, PROBE_TUNNEL, probe_mark};

use super::{MAX_EVENTS, Owner};
use crate::{
    cluster::wire::Entry,
    config::{OutlierConfig, VipMode},
    health::{self, CheckEvent, saved::SavedChecks, through::Via},
    model::{VipAddr, now_ms},
    stats::Event,
};

impl Owner {
    /// Tells the checker what to probe, and keeps one state per checked
    /// backend (a backend whose check changes keeps its state).
    pub(super) fn publish_targets(&mut self) {
        let mut jobs = health::jobs(&self.config);
        if self.probe_through {
            for j in &mut jobs {
                if let health::Job::Health(t) = j {
                    t.via = self.via(t);
                }
            }
        }
        self.checks.track(&jobs);
        if let Some(tx) = &self.targets {
            let _ = tx.send(jobs);
        }
    }

    /// How `t`'s probe goes through the VIP, if its check says so (and its
    /// backend has an id in the tables to name in the mark).
    fn via(&self, t: &health::Target) -> Option<Via> {
        let v = self.config.vips.iter().find(|v| v.key() == t.vip)?;
        if !t.check.through_vip(v.mode) || (t.vip.addr.is_ipv6() && !self.probe_through_v6) {
            return None;
        }
        let tunnel = v.mode == VipMode::Tunnel;
        let id = self.dp.backend_id(&t.vip, t.backend)?;
        let mark = probe_mark(id, if tunnel { PROBE_TUNNEL } else { PROBE_DSR })?;
        Some(Via { mark, tunnel })
    }

    pub(super) fn check_event(&mut self, e: CheckEvent) {
        match e {
            CheckEvent::Health {
                vip,
                backend,
                probe,
            } => {
                let detail = probe.detail.clone();
                let Some(up) = self.checks.health_result((vip, backend), probe) else {
                    return;
                };
                self.apply_checks("a health change");
                // The change time is when the data plane has it, not before.
                let at = now_ms();
                self.checks.changed_at(&(vip, backend), at);
                self.save_health();
                let state = if up { "up" } else { "down" };
                self.event(at, vip, backend, state, detail);
            }
            CheckEvent::Agent {
                vip,
                backend,
                probe,
                report,
            } => {
                let detail = probe.detail.clone();
                let Some(change) =
                    self.checks
                        .agent_result(&self.config, (vip, backend), probe, report)
                else {
                    return;
                };
                // An agent's answer: the weight follows at once (one table
                // rebuild per change).
                self.apply_checks("an agent's report");
                self.save_health();
                if change.mode != change.mode_before {
                    let state = format!("agent {}", change.mode);
                    self.event(now_ms(), vip, backend, &state, detail);
                } else {
                    let percent = change.percent;
                    tracing::info!(vip = %vip, backend = %backend, percent, "agent weight {percent}%");
                }
            }
        }
    }

    /// Every few seconds while a NAT VIP exists: deletes expired NAT
    /// entries and counts the live ones; SYNs left unanswered feed the
    /// outlier rule; cluster peers delete what was deleted here.
    pub(super) fn sweep_nat(&mut self) {
        const EVERY: Duration = Duration::from_secs(5);
        if !self.config.vips.iter().any(|v| v.mode.is_nat())
            || self.nat_swept.is_some_and(|t| t.elapsed() < EVERY)
        {
            return;
        }
        self.nat_swept = Some(Instant::now());
        let syn_timeout = self
            .config
            .vips
            .iter()
            .filter_map(|v| v.outlier.as_ref().map(|o| o.syn_timeout))
            .min()
            .unwrap_or(OutlierConfig::default().syn_timeout);
        match self.dp.sweep_nat(syn_timeout) {
            Ok(s) => {
                self.nat.entries = s.live;
                self.nat.expired_removed += s.removed;
                self.nat.swept_ms = now_ms();
                for (key, n) in s.unanswered {
                    self.outliers.add_timeouts(key, n);
                }
                if let Some((shared, _)) = &self.cluster {
                    let gone: Vec<_> = s
                        .gone
                        .iter()
                        .map(|k| Entry::NatGone { reply: k.into() })
                        .collect();
                    shared.publish(&gone);
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweeping the NAT table"),
        }
    }

    /// The outlier rule, on the last counters sampled.
    pub(super) fn outliers(&mut self) {
        let Some((_, stats)) = &self.last else { return };
        let rsts = |(vip, backend): &(VipAddr, IpAddr)| {
            stats
                .vips
                .get(vip)
                .and_then(|c| c.handshakes.get(backend))
                .map_or(0, |h| h.rsts)
        };
        let changes = self.outliers.evaluate(&self.config, rsts, Instant::now());
        if changes.is_empty() {
            return;
        }
        for c in &changes {
            if c.out {
                self.checks.ejected.insert(c.key);
            } else {
                self.checks.ejected.remove(&c.key);
            }
        }
        self.apply_checks("the outlier rule");
        self.save_health();
        let at = now_ms();
        for c in changes {
            let state = if c.out { "outlier down" } else { "outlier up" };
            self.event(at, c.key.0, c.key.1, state, c.detail);
        }
    }

    /// Writes the checks' state to the health file when it differs from
    /// what was last written: at once when a backend goes up or down, and
    /// once a second for the streaks in between (so a restart, even after
    /// SIGKILL, finds every up/down state and streaks at most a second
    /// old). A write that fails is logged and tried again next second.
    pub(super) fn save_health(&mut self) {
        let now = SavedChecks::of(&self.checks, &self.outliers);
        if self.health_written.as_ref() == Some(&now) {
            return;
        }
        match now.write(&self.health_file) {
            Ok(()) => self.health_written = Some(now),
            Err(e) => tracing::warn!(
                "saving backend health to {} failed: {e} (check the space and permissions of \
                 its directory); a restart now would start from older health",
                self.health_file.display()
            ),
        }
    }

    /// Logs a state change as one line and keeps it for `hola events`.
    pub(super) fn event(
        &mut self,
        at: u64,
        vip: VipAddr,
        backend: IpAddr,
        state: &str,
        detail: String,
    ) {
        tracing::warn!(vip = %vip, backend = %backend, state, detail = %detail, "backend {state}");
        self.events.push_back(Event {
            timestamp_ms: at,
            vip: vip.to_string(),
            backend: backend.to_string(),
            state: state.into(),
            detail,
        });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }
}
