//! Health that survives restarts: each checked backend's up/down state and
//! rise/fall streaks, its agent's report, the outlier rule's state and when
//! it came up (slow start), as a JSON file beside the state file
//! (`NAME.health`). Written atomically by the owner when a backend goes up
//! or down and at most once a second otherwise; read once at start.
//!
//! A file, not a pinned map: it needs no kernel layout (and so no migration
//! when a map's layout changes), it survives `hola down`, which removes the
//! pins but not what the operator wants to know about backends, and an
//! operator can read it. Times are wall-clock milliseconds, so that slow
//! start and an outlier's cool-down continue across a restart.

use std::{
    collections::HashMap,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    agent::AgentStatus,
    outlier::{Outliers, SavedOutlier},
    state::{Checks, Health, Key, Machine},
};
use crate::model::now_ms;

/// Where the health of the daemon whose state file is `state` is kept:
/// `NAME.health` beside it.
pub fn health_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".health");
    state.with_file_name(name)
}

/// The health-check state of one backend, as saved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedHealth {
    pub up: bool,
    pub ok_streak: u32,
    pub fail_streak: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_ms: Option<u64>,
    /// When it last came up, while that matters for slow start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_since_ms: Option<u64>,
}

/// Everything kept of one backend of one VIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedBackend {
    /// The VIP, as `hola` writes it: `198.18.1.1:80/tcp`.
    pub vip: String,
    pub backend: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<SavedHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<SavedOutlier>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedChecks {
    pub backends: Vec<SavedBackend>,
}

/// `Key` as the file names it.
fn name(key: &Key) -> (String, IpAddr) {
    (key.0.to_string(), key.1)
}

impl SavedChecks {
    /// What `checks` and `outliers` hold now.
    pub fn of(checks: &Checks, outliers: &Outliers) -> Self {
        let mut by_key: HashMap<Key, SavedBackend> = HashMap::new();
        fn entry<'a>(m: &'a mut HashMap<Key, SavedBackend>, k: &Key) -> &'a mut SavedBackend {
            m.entry(*k).or_insert_with(|| {
                let (vip, backend) = name(k);
                SavedBackend {
                    vip,
                    backend,
                    health: None,
                    agent: None,
                    outlier: None,
                }
            })
        }
        for (k, h) in &checks.health {
            entry(&mut by_key, k).health = Some(SavedHealth {
                up: h.machine.up,
                ok_streak: h.machine.ok_streak,
                fail_streak: h.machine.fail_streak,
                changed_ms: h.changed_ms,
                up_since_ms: h.up_since_ms,
            });
        }
        for (k, a) in &checks.agents {
            entry(&mut by_key, k).agent = Some(a.clone());
        }
        for (k, o) in outliers.saved() {
            entry(&mut by_key, &k).outlier = Some(o);
        }
        let mut backends: Vec<SavedBackend> = by_key.into_values().collect();
        backends.sort_by(|a, b| (&a.vip, a.backend).cmp(&(&b.vip, b.backend)));
        SavedChecks { backends }
    }

    /// Gives `checks` and `outliers` what was saved: health and agent
    /// states wait in `checks` for the first `track`, which knows each
    /// check's rise and fall.
    pub fn restore(self, checks: &mut Checks, outliers: &mut Outliers, keys: &[Key]) {
        let now = now_ms();
        let by_name: HashMap<(String, IpAddr), Key> = keys.iter().map(|k| (name(k), *k)).collect();
        for b in self.backends {
            let Some(key) = by_name.get(&(b.vip, b.backend)).copied() else {
                continue;
            };
            if let Some(h) = b.health {
                checks.restored.insert(key, h);
            }
            if let Some(a) = b.agent {
                checks.restored_agents.insert(key, a);
            }
            if let Some(o) = b.outlier
                && outliers.restore(key, o, now)
            {
                checks.ejected.insert(key);
            }
        }
    }

    /// The file at `path`; `None` when there is none. A file that cannot
    /// be read is an error the caller logs: hola then starts every backend
    /// as its check's `initial` says.
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: cannot read it: {e}", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the file atomically: a temporary file beside it, fsync,
    /// rename, fsync of the directory (a SIGKILL or a crash leaves the old
    /// file or the new one, never a torn one).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)?;
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("health");
        let tmp = dir.join(format!(".{file}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

impl Health {
    /// A backend's health as saved, under the current check's rise and
    /// fall.
    pub fn restored(rise: u32, fall: u32, s: &SavedHealth) -> Self {
        let mut machine = Machine::new(rise, fall);
        machine.up = s.up;
        machine.ok_streak = s.ok_streak;
        machine.fail_streak = s.fail_streak;
        let now = now_ms();
        let up_since = s.up_since_ms.and_then(|ms| {
            tokio::time::Instant::now().checked_sub(Duration::from_millis(now.saturating_sub(ms)))
        });
        Health {
            machine,
            last: None,
            changed_ms: s.changed_ms,
            up_since,
            up_since_ms: s.up_since_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::testing::vip, health::probe::Probe};

    fn probe(ok: bool) -> Probe {
        Probe {
            ok,
            detail: String::new(),
            latency_ms: 1,
        }
    }

    #[test]
    fn a_backend_down_before_a_restart_is_down_after_until_rise_passes() {
        let v = vip(&[("198.18.0.11", 1, false), ("198.18.0.12", 1, false)]);
        let config = crate::config::testing::config_with(vec![v.clone()]);
        let jobs = crate::health::jobs(&config);
        let keys: Vec<Key> = v.backends.iter().map(|b| (v.key(), b.address)).collect();
        let mut before = Checks::default();
        before.track(&jobs);
        // testing::vip's check: tcp, rise 2, fall 3.
        for _ in 0..3 {
            before.health_result(keys[0], probe(false));
        }
        before.health_result(keys[0], probe(true));
        before.health_result(keys[1], probe(false));
        assert!(!before.health[&keys[0]].machine.up);
        let saved = SavedChecks::of(&before, &Outliers::default());
        let dir = std::env::temp_dir().join(format!("hola-unit-health-{}", std::process::id()));
        let path = health_path(&dir.join("state.toml"));
        assert_eq!(path, dir.join("state.toml.health"));
        saved.write(&path).expect("write");
        let read = SavedChecks::read(&path).expect("read").expect("there");
        assert_eq!(read, saved);

        let mut after = Checks::default();
        let mut outliers = Outliers::default();
        read.restore(&mut after, &mut outliers, &keys);
        after.track(&jobs);
        let (m0, m1) = (
            &after.health[&keys[0]].machine,
            &after.health[&keys[1]].machine,
        );
        assert_eq!((m0.up, m0.ok_streak, m0.fail_streak), (false, 1, 0));
        assert_eq!((m1.up, m1.ok_streak, m1.fail_streak), (true, 0, 1));
        assert_eq!(
            after.health_result(keys[0], probe(true)),
            Some(true),
            "the second success of rise = 2, one of them before the restart"
        );
        assert_eq!(after.health_result(keys[1], probe(false)), None);
        assert_eq!(after.health_result(keys[1], probe(false)), Some(false));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_backend_without_saved_health_starts_as_its_initial_setting_says() {
        let mut v = vip(&[("198.18.0.11", 1, false), ("198.18.0.12", 1, false)]);
        let mut down = v.health.clone().expect("check");
        down.initial = crate::config::Initial::Down;
        v.backends[1].health = Some(down);
        let config = crate::config::testing::config_with(vec![v.clone()]);
        let mut c = Checks::default();
        c.track(&crate::health::jobs(&config));
        assert_eq!(c.effective(&v), [(1, true), (0, false)]);
        let key = (v.key(), v.backends[1].address);
        assert_eq!(c.health_result(key, probe(true)), None);
        assert_eq!(c.health_result(key, probe(true)), Some(true), "rise = 2");
        assert_eq!(c.effective(&v), [(1, true), (1, true)]);
    }

    #[test]
    fn an_outlier_taken_out_stays_out_across_a_restart_and_its_failures_count_once() {
        let mut v = vip(&[("198.18.0.11", 1, false)]);
        v.outlier = Some(crate::config::OutlierConfig {
            failures: 3,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            ..Default::default()
        });
        let config = crate::config::testing::config_with(vec![v.clone()]);
        let key = (v.key(), v.backends[0].address);
        let now = std::time::Instant::now();
        let mut before = Outliers::default();
        let changes = before.evaluate(&config, |_| 5, now);
        assert_eq!(changes.len(), 1);
        assert!(changes[0].out);
        let mut checks = Checks::default();
        checks.ejected.insert(key);
        let saved = SavedChecks::of(&checks, &before);
        assert_eq!(
            saved,
            SavedChecks::of(&checks, &before),
            "stable while nothing changes"
        );
        let o = saved.backends[0].outlier.clone().expect("outlier state");
        assert_eq!((o.last_total, o.recent.len()), (5, 1));

        let (mut after, mut restored) = (Outliers::default(), Checks::default());
        saved.restore(&mut restored, &mut after, &[key]);
        assert!(restored.ejected.contains(&key), "still taken out");
        let now = std::time::Instant::now();
        assert_eq!(
            after.evaluate(&config, |_| 5, now),
            [],
            "the same 5 RSTs count once"
        );
        let back = after.evaluate(&config, |_| 5, now + Duration::from_secs(31));
        assert_eq!(back.len(), 1);
        assert!(!back[0].out, "let back after the cool-down: {back:?}");
    }
}
