//! The health of every checked backend, as the owner keeps it: the rise/fall
//! machine of each health check, each agent's report, who the outlier rule
//! took out; and from them, what each backend gets in its VIP's Maglev table
//! (its effective weight, and whether it is up). Pure state: probes feed
//! it, nothing here does I/O.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use tokio::time::Instant;

use super::{
    Job,
    agent::{AgentMode, AgentStatus, Report, clamp_percent, scaled_weight},
    probe::Probe,
    saved::SavedHealth,
};
use crate::{
    config::{Config, VipConfig},
    model::VipAddr,
};

/// A checked backend of a VIP.
pub type Key = (VipAddr, IpAddr);

/// Rise/fall hysteresis: `fall` consecutive failures take a backend down,
/// `rise` consecutive successes bring it back. [`Machine::new`] starts up;
/// a backend without saved health starts as its check's `initial` says,
/// one with saved health as it was (see `saved`).
#[derive(Clone, Debug)]
pub struct Machine {
    rise: u32,
    fall: u32,
    pub up: bool,
    pub(super) ok_streak: u32,
    pub(super) fail_streak: u32,
}

impl Machine {
    pub fn new(rise: u32, fall: u32) -> Self {
        Machine {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            ok_streak: 0,
            fail_streak: 0,
        }
    }

    /// Feeds one probe result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.ok_streak += 1;
            self.fail_streak = 0;
            if !self.up && self.ok_streak >= self.rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.fail_streak += 1;
            self.ok_streak = 0;
            if self.up && self.fail_streak >= self.fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

/// The effective weight of a backend `since` after it came up, with slow
/// start over `ramp`: from a tenth of `weight` (at least 1) to `weight`.
pub fn slow_start_weight(weight: u32, since: Duration, ramp: Option<Duration>) -> u32 {
    let Some(ramp) = ramp.filter(|r| !r.is_zero()) else {
        return weight;
    };
    if weight == 0 || since >= ramp {
        return weight;
    }
    let start = (weight / 10).max(1);
    let frac = since.as_secs_f64() / ramp.as_secs_f64();
    let w = f64::from(start) + f64::from(weight - start) * frac;
    (w as u32).clamp(start, weight)
}

/// The health of one checked backend of one VIP.
#[derive(Clone, Debug)]
pub struct Health {
    pub machine: Machine,
    pub last: Option<Probe>,
    pub changed_ms: Option<u64>,
    /// When it last came up (for slow start); `None` when it has been up
    /// since hola started, so a restart does not ramp healthy backends.
    pub up_since: Option<Instant>,
    /// `up_since` on the wall clock, for the health file.
    pub up_since_ms: Option<u64>,
}

impl Health {
    pub fn new(rise: u32, fall: u32) -> Self {
        Health {
            machine: Machine::new(rise, fall),
            last: None,
            changed_ms: None,
            up_since: None,
            up_since_ms: None,
        }
    }
}

/// What an agent's answer changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentChange {
    pub mode_before: AgentMode,
    pub mode: AgentMode,
    pub percent: u32,
}

/// What the checks say about every backend: health and agent state.
#[derive(Clone, Default)]
pub struct Checks {
    pub health: HashMap<Key, Health>,
    pub agents: HashMap<Key, AgentStatus>,
    /// Taken out by the outlier rule (passive health), until the cool-down.
    pub ejected: HashSet<Key>,
    /// Health and agent states saved by the previous daemon, until the
    /// first [`Checks::track`] takes them (a backend added later starts as
    /// its check's `initial` says, whatever an earlier daemon saw).
    pub(super) restored: HashMap<Key, SavedHealth>,
    pub(super) restored_agents: HashMap<Key, AgentStatus>,
}

impl Checks {
    /// Keeps one state per checked backend of `jobs`: a backend whose check
    /// changes keeps its state, one no longer checked loses it; a new one
    /// gets what the previous daemon saved of it, else its check's
    /// `initial`.
    pub fn track(&mut self, jobs: &[Job]) {
        let health: HashSet<Key> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Health(t) => Some((t.vip, t.backend)),
                Job::Agent(_) => None,
            })
            .collect();
        self.health.retain(|k, _| health.contains(k));
        let agents: HashSet<Key> = jobs
            .iter()
            .filter_map(|j| match j {
                Job::Agent(t) => Some((t.vip, t.backend)),
                Job::Health(_) => None,
            })
            .collect();
        self.agents.retain(|k, _| agents.contains(k));
        for j in jobs {
            match j {
                Job::Health(t) => {
                    let key = (t.vip, t.backend);
                    let saved = self.restored.remove(&key);
                    self.health.entry(key).or_insert_with(|| match saved {
                        Some(s) => Health::restored(t.check.rise, t.check.fall, &s),
                        None => {
                            let mut h = Health::new(t.check.rise, t.check.fall);
                            h.machine.up = t.check.initial.is_up();
                            h
                        }
                    });
                }
                Job::Agent(t) => {
                    let key = (t.vip, t.backend);
                    let saved = self.restored_agents.remove(&key);
                    let status = self
                        .agents
                        .entry(key)
                        .or_insert_with(|| saved.unwrap_or_else(|| AgentStatus::new(&t.agent)));
                    // Bounds that changed apply to the current percentage.
                    status.percent = clamp_percent(status.percent, &t.agent);
                }
            }
        }
        self.restored.clear();
        self.restored_agents.clear();
    }

    /// A health probe's result: the new state when the backend went up or
    /// down (`None` for a result of a check that was just removed, or no
    /// change).
    pub fn health_result(&mut self, key: Key, probe: Probe) -> Option<bool> {
        let h = self.health.get_mut(&key)?;
        let changed = h.machine.observe(probe.ok);
        h.last = Some(probe);
        let up = changed?;
        h.up_since = up.then(Instant::now);
        h.up_since_ms = up.then(crate::model::now_ms);
        Some(up)
    }

    /// Records when a change reached the data plane.
    pub fn changed_at(&mut self, key: &Key, at_ms: u64) {
        if let Some(h) = self.health.get_mut(key) {
            h.changed_ms = Some(at_ms);
        }
    }

    /// An agent's answer (or none): what changed, if the weight or mode did.
    pub fn agent_result(
        &mut self,
        config: &Config,
        key: Key,
        probe: Probe,
        report: Option<Report>,
    ) -> Option<AgentChange> {
        let agent = config
            .vips
            .iter()
            .find(|v| v.key() == key.0)
            .and_then(|v| {
                v.backends
                    .iter()
                    .find(|b| b.address == key.1)
                    .and_then(|b| v.agent_for(b))
            })?;
        let status = self.agents.get_mut(&key)?;
        if !probe.ok {
            tracing::debug!(vip = %key.0, backend = %key.1, detail = %probe.detail, "agent check failed; its last report stays in force");
        }
        let mode_before = status.mode;
        if !status.apply(probe, report, agent) {
            return None;
        }
        Some(AgentChange {
            mode_before,
            mode: status.mode,
            percent: status.percent,
        })
    }

    /// Whether backend `i` of `vip` is up: not failed by its health check,
    /// not declared down by its agent, not taken out by the outlier rule.
    pub fn is_up(&self, vip: &VipConfig, i: usize) -> bool {
        let key = (vip.key(), vip.backends[i].address);
        !self.ejected.contains(&key)
            && self.health.get(&key).is_none_or(|h| h.machine.up)
            && self
                .agents
                .get(&key)
                .is_none_or(|a| a.mode != AgentMode::Down)
    }

    /// Whether backend `i` of `vip` can take new flows at all.
    pub fn takes_new_flows(&self, vip: &VipConfig, i: usize) -> bool {
        let b = &vip.backends[i];
        let key = (vip.key(), b.address);
        !b.drain
            && b.weight > 0
            && self.is_up(vip, i)
            && self
                .agents
                .get(&key)
                .is_none_or(|a| a.mode != AgentMode::Drain)
    }

    /// The weight every backend of `vip` gets in its Maglev table, and
    /// whether it is up (a down backend's flow-table entries are treated
    /// as misses). Draining (by config or agent) or down: 0. A backup: 0
    /// while a primary takes new flows. Otherwise the configured weight,
    /// scaled by the agent's percentage, ramping after coming up when
    /// slow start is configured.
    pub fn effective(&self, vip: &VipConfig) -> Vec<(u32, bool)> {
        let primary_takes = (0..vip.backends.len())
            .any(|j| !vip.backends[j].backup && self.takes_new_flows(vip, j));
        (0..vip.backends.len())
            .map(|i| self.effective_one(vip, i, primary_takes))
            .collect()
    }

    /// `effective` for backend `i`, knowing whether a primary takes flows.
    fn effective_one(&self, vip: &VipConfig, i: usize, primary_takes: bool) -> (u32, bool) {
        let b = &vip.backends[i];
        let up = self.is_up(vip, i);
        if !self.takes_new_flows(vip, i) || (b.backup && primary_takes) {
            return (0, up);
        }
        let key = (vip.key(), b.address);
        let weight = match self.agents.get(&key) {
            Some(a) => scaled_weight(b.weight, a.percent),
            None => b.weight,
        };
        let ramp = vip.health_for(b).and_then(|h| h.slow_start);
        match self.health.get(&key).and_then(|h| h.up_since) {
            Some(t) => (slow_start_weight(weight, t.elapsed(), ramp), up),
            None => (weight, up),
        }
    }

    /// Whether a backend is ramping up (slow start): its weight changes
    /// every second until it reaches the configured one.
    pub fn ramping(&self, config: &Config) -> bool {
        config.vips.iter().any(|v| {
            v.backends.iter().any(|b| {
                let ramp = v.health_for(b).and_then(|h| h.slow_start);
                let since = self
                    .health
                    .get(&(v.key(), b.address))
                    .and_then(|h| h.up_since);
                matches!((ramp, since), (Some(r), Some(t)) if t.elapsed() < r + Duration::from_secs(1))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, CheckKind, HealthConfig, testing::vip};

    #[test]
    fn exactly_fall_failures_take_down_and_rise_successes_bring_back() {
        let mut m = Machine::new(2, 3);
        assert!(m.up);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(true), None, "a success resets the failure streak");
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(
            m.observe(false),
            Some(false),
            "the third consecutive failure"
        );
        assert_eq!(m.observe(false), None, "already down");
        assert_eq!(m.observe(true), None);
        assert_eq!(
            m.observe(false),
            None,
            "a failure resets the success streak"
        );
        assert_eq!(m.observe(true), None);
        assert_eq!(
            m.observe(true),
            Some(true),
            "the second consecutive success"
        );
    }

    #[test]
    fn slow_start_ramps_to_full_weight_at_the_configured_time() {
        let ramp = Some(Duration::from_secs(30));
        assert_eq!(slow_start_weight(100, Duration::ZERO, ramp), 10);
        assert_eq!(slow_start_weight(100, Duration::from_secs(15), ramp), 55);
        assert_eq!(slow_start_weight(100, Duration::from_secs(30), ramp), 100);
        assert_eq!(slow_start_weight(100, Duration::from_secs(31), ramp), 100);
        assert_eq!(slow_start_weight(3, Duration::ZERO, ramp), 1, "at least 1");
        assert_eq!(slow_start_weight(100, Duration::ZERO, None), 100);
    }

    fn checks(v: &VipConfig) -> Checks {
        let mut c = Checks::default();
        for b in &v.backends {
            let key = (v.key(), b.address);
            c.health.insert(key, Health::new(1, 1));
            c.agents
                .insert(key, AgentStatus::new(&AgentConfig::new(9999)));
        }
        c
    }

    fn all(c: &Checks, v: &VipConfig) -> Vec<(u32, bool)> {
        c.effective(v)
    }

    #[test]
    fn backups_take_over_only_when_no_primary_can() {
        let v = vip(&[
            ("198.18.0.11", 10, false),
            ("198.18.0.12", 20, false),
            ("198.18.0.13", 5, true),
        ]);
        let mut c = checks(&v);
        let key = |i: usize| (v.key(), v.backends[i].address);
        assert_eq!(all(&c, &v), [(10, true), (20, true), (0, true)]);
        c.health.get_mut(&key(0)).unwrap().machine.observe(false);
        assert_eq!(all(&c, &v), [(0, false), (20, true), (0, true)]);
        // The last primary drained by its agent: the backup takes new flows.
        c.agents.get_mut(&key(1)).unwrap().mode = AgentMode::Drain;
        assert_eq!(all(&c, &v), [(0, false), (0, true), (5, true)]);
        // Declared down by its agent instead: down, flows re-balanced.
        c.agents.get_mut(&key(1)).unwrap().mode = AgentMode::Down;
        assert_eq!(all(&c, &v), [(0, false), (0, false), (5, true)]);
        // The backup fails too: nothing takes flows.
        c.health.get_mut(&key(2)).unwrap().machine.observe(false);
        assert_eq!(all(&c, &v), [(0, false), (0, false), (0, false)]);
        // A primary back: the backup (up again too) gives new flows back.
        c.health.get_mut(&key(2)).unwrap().machine.observe(true);
        c.health.get_mut(&key(0)).unwrap().machine.observe(true);
        assert_eq!(all(&c, &v), [(10, true), (0, false), (0, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn agent_percent_scales_and_slow_start_ramps() {
        let v = vip(&[("198.18.0.11", 100, false), ("198.18.0.12", 100, false)]);
        let mut c = checks(&v);
        let key = (v.key(), v.backends[0].address);
        c.agents.get_mut(&key).unwrap().percent = 50;
        assert_eq!(all(&c, &v), [(50, true), (100, true)]);
        // Just came up with a 30 s slow start: a tenth of the scaled weight.
        let mut v2 = v.clone();
        v2.backends[0].health = Some(HealthConfig {
            slow_start: Some(Duration::from_secs(30)),
            ..HealthConfig::new(CheckKind::Tcp)
        });
        c.health.get_mut(&key).unwrap().up_since = Some(tokio::time::Instant::now());
        assert_eq!(c.effective(&v2)[0], (5, true));
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(c.effective(&v2)[0], (27, true), "5 + 45 × 15/30");
        tokio::time::advance(Duration::from_millis(14_999)).await;
        assert_eq!(c.effective(&v2)[0], (49, true), "not yet full");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(c.effective(&v2)[0], (50, true), "full weight at 30 s");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(c.effective(&v2)[0], (50, true));
    }
}
