//! Passive health: the outlier rule. A backend of a NAT VIP whose TCP
//! handshakes failed (RST from the backend, or a SYN left unanswered, as
//! the data plane counts them) `failures` times within `window` is taken
//! out for `cooldown`. Pure state: the owner feeds it counters once a
//! second and applies the changes it returns.

use std::{
    collections::HashMap,
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::state::Key;
use crate::config::{Config, format_duration};

/// The outlier rule's state of one backend as saved across restarts, times
/// in wall-clock milliseconds (see `saved`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedOutlier {
    pub timeouts: u64,
    /// Failures counted at the last sample: the data plane's counters
    /// outlive the daemon, so a restart must not count them again.
    pub last_total: u64,
    /// Failures within the window: (when, how many).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<(u64, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_until_ms: Option<u64>,
}

/// Handshake failures of one backend of one VIP.
#[derive(Default)]
struct Passive {
    /// SYNs left unanswered (from the NAT sweeps), since hola started.
    timeouts: u64,
    /// Failures (RSTs + timeouts) seen at the last sample.
    last_total: u64,
    /// Failures within the outlier window: (when, how many).
    /// Failures within the window: (when, how many, when on the wall
    /// clock, fixed once so that the saved file does not change by itself).
    recent: VecDeque<(Instant, u64, u64)>,
    /// Taken out until then.
    ejected_until: Option<Instant>,
    ejected_until_ms: Option<u64>,
}

/// `t` on the wall clock, in milliseconds.
fn wall(t: Instant) -> u64 {
    let (now, now_ms) = (Instant::now(), crate::model::now_ms());
    if t >= now {
        now_ms + t.duration_since(now).as_millis() as u64
    } else {
        now_ms.saturating_sub(now.duration_since(t).as_millis() as u64)
    }
}

/// A backend taken out (`out`) or let back, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub key: Key,
    pub out: bool,
    pub detail: String,
}

/// The outlier rule's state for every backend.
#[derive(Default)]
pub struct Outliers {
    passive: HashMap<Key, Passive>,
}

impl Outliers {
    /// Counts SYNs a NAT sweep found unanswered.
    pub fn add_timeouts(&mut self, key: Key, n: u64) {
        self.passive.entry(key).or_default().timeouts += n;
    }

    /// SYNs left unanswered since hola started.
    pub fn timeouts(&self, key: &Key) -> u64 {
        self.passive.get(key).map_or(0, |p| p.timeouts)
    }

    /// Every backend's state, for the health file.
    pub fn saved(&self) -> Vec<(Key, SavedOutlier)> {
        self.passive
            .iter()
            .map(|(k, p)| {
                let saved = SavedOutlier {
                    timeouts: p.timeouts,
                    last_total: p.last_total,
                    recent: p.recent.iter().map(|(_, n, ms)| (*ms, *n)).collect(),
                    ejected_until_ms: p.ejected_until_ms,
                };
                (*k, saved)
            })
            .collect()
    }

    /// Takes back a backend's saved state; true when it is still taken out.
    pub fn restore(&mut self, key: Key, s: SavedOutlier, now_ms: u64) -> bool {
        let now = Instant::now();
        let instant = |ms: u64| {
            if ms >= now_ms {
                now + Duration::from_millis(ms - now_ms)
            } else {
                now.checked_sub(Duration::from_millis(now_ms - ms))
                    .unwrap_or(now)
            }
        };
        let p = Passive {
            timeouts: s.timeouts,
            last_total: s.last_total,
            recent: s
                .recent
                .iter()
                .map(|(ms, n)| (instant(*ms), *n, *ms))
                .collect(),
            ejected_until: s.ejected_until_ms.map(instant),
            ejected_until_ms: s.ejected_until_ms,
        };
        let out = p.ejected_until.is_some();
        self.passive.insert(key, p);
        out
    }

    /// Applies the rule at `now`, given each backend's RST count: the
    /// backends taken out and let back.
    pub fn evaluate(
        &mut self,
        config: &Config,
        rsts: impl Fn(&Key) -> u64,
        now: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for v in &config.vips {
            let Some(rule) = &v.outlier else { continue };
            for b in &v.backends {
                let key = (v.key(), b.address);
                let total = rsts(&key) + self.timeouts(&key);
                let p = self.passive.entry(key).or_default();
                if total > p.last_total {
                    p.recent.push_back((now, total - p.last_total, wall(now)));
                }
                p.last_total = total;
                while p
                    .recent
                    .front()
                    .is_some_and(|(t, _, _)| now.duration_since(*t) > rule.window)
                {
                    p.recent.pop_front();
                }
                match p.ejected_until {
                    Some(until) if now >= until => {
                        p.ejected_until = None;
                        p.ejected_until_ms = None;
                        p.recent.clear();
                        changes.push(Change {
                            key,
                            out: false,
                            detail: format!("cool-down of {} over", format_duration(rule.cooldown)),
                        });
                    }
                    None => {
                        let failures: u64 = p.recent.iter().map(|(_, n, _)| n).sum();
                        if failures >= u64::from(rule.failures) {
                            p.ejected_until = Some(now + rule.cooldown);
                            p.ejected_until_ms = Some(wall(now + rule.cooldown));
                            changes.push(Change {
                                key,
                                out: true,
                                detail: format!(
                                    "{failures} handshake failures (RST or no SYN-ACK) within {}",
                                    format_duration(rule.window)
                                ),
                            });
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        changes
    }
}
