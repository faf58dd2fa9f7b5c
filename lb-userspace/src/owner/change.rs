//! A change to the desired configuration as one transaction: checked in
//! full, planned (refused before any write if the tables cannot take it),
//! written, saved to the state file, and only then acknowledged; undone in
//! the kernel when it cannot be saved. And reconcile: the kernel made to
//! follow the configuration and the checks.

use std::path::Path;

use super::{ErrorKind, Owner, OwnerError};
use crate::command::Command;
use crate::{
    config::{Config, ConfigErrors, Subject},
    dataplane::DataplaneError,
    reconcile,
    state::{persist, prev_path},
};

impl Owner {
    pub(super) fn change(&mut self, command: Command) -> Result<(), OwnerError> {
        let mut next = self.config.clone();
        command.apply(&mut next)?;
        next.validate("request")
            .map_err(|e| OwnerError::new(ErrorKind::Invalid, describe(&next, &e)))?;
        if next == self.config {
            return Ok(());
        }
        let old = self.config.clone();
        self.hold_new(&next);
        if let Err(e) = self.reconcile(&next) {
            if e.kind == ErrorKind::Failed {
                // Part of it may be written: put the kernel back the way
                // the saved state says.
                if let Err(e2) = self.reconcile(&old) {
                    tracing::error!(error = %e2, "restoring the previous configuration failed");
                }
            }
            return Err(e);
        }
        if let Err(e) = persist(&self.state_file, &next) {
            // Unsaved, the change would be undone by the next restart:
            // refuse it, and put the kernel back as the saved state says.
            if let Err(e2) = self.reconcile(&old) {
                tracing::error!(error = %e2, "restoring the previous configuration failed");
            }
            return Err(OwnerError::new(
                ErrorKind::Failed,
                format!(
                    "saving the state file {} failed: {e}; the change is not made (check the \
                     space and permissions of {}, and that {} is a file or absent)",
                    self.state_file.display(),
                    self.state_file.parent().unwrap_or(Path::new(".")).display(),
                    prev_path(&self.state_file).display()
                ),
            ));
        }
        self.config = next;
        self.publish_targets();
        self.want_nexthops();
        tracing::info!(
            "configuration changed and saved to {}",
            self.state_file.display()
        );
        Ok(())
    }

    /// Makes the kernel hold `config` as the checks and the next hops known
    /// say. A plan the tables refuse writes nothing; a write the kernel
    /// refuses stops the plan, and `old` is planned again in full.
    pub(super) fn reconcile(&mut self, config: &Config) -> Result<(), OwnerError> {
        let started = std::time::Instant::now();
        let mut want = reconcile::desired(config, &self.checks, &self.nexthops);
        reconcile::hold_unresolved(&mut want, &self.held());
        let plan = reconcile::plan(self.dp.tables(), &want)
            .map_err(|e| OwnerError::new(ErrorKind::Invalid, e.to_string()))?;
        if plan.writes.is_empty() {
            return Ok(());
        }
        let (writes, planned) = (plan.writes.len(), started.elapsed());
        let applied = self.dp.apply(plan);
        tracing::debug!(
            writes,
            plan_ms = planned.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "map writes made"
        );
        applied.map_err(|e| {
            let kind = match e {
                DataplaneError::Plan(_) => ErrorKind::Invalid,
                _ => ErrorKind::Failed,
            };
            OwnerError::new(kind, e.to_string())
        })
    }

    /// Makes the data plane follow the checks' (or the next hops') state.
    pub(super) fn apply_checks(&mut self, why: &str) {
        let config = self.config.clone();
        if let Err(e) = self.reconcile(&config) {
            tracing::error!(error = %e, "applying {why}");
        }
    }
}

/// A refused configuration change, in the terms of the request: each error
/// says which VIP and backend it is about (the field paths count VIPs and
/// backends by position, which a caller of the API does not see).
pub(super) fn describe(config: &Config, errors: &ConfigErrors) -> String {
    let lines: Vec<String> = errors
        .0
        .iter()
        .map(|e| match e.subject().and_then(|s| subject(config, s)) {
            Some(s) => format!("{s}: {}", e.message()),
            None => e.message().to_string(),
        })
        .collect();
    lines.join("\n")
}

/// "VIP 198.18.1.1:80/tcp" or "VIP 198.18.1.1:80/tcp, backend 198.18.0.11".
fn subject(config: &Config, s: Subject) -> Option<String> {
    let vip = config.vips.get(s.vip)?;
    let mut out = format!("VIP {}", vip.key());
    if let Some(b) = s.backend.and_then(|j| vip.backends.get(j)) {
        out += &format!(", backend {}", b.address);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{config_with, vip};

    #[test]
    fn a_refused_change_names_the_vip_and_the_backend() {
        let mut c = config_with(vec![vip(&[
            ("198.18.0.11", 1, false),
            ("198.18.0.12", 1, false),
        ])]);
        c.vips[0].backends[1].weight = 70_000;
        c.vips[0].table_size = Some(1000);
        let e = c.validate("request").expect_err("invalid");
        let msg = describe(&c, &e);
        assert!(
            msg.contains(
                "VIP 198.18.1.1:80/tcp, backend 198.18.0.12: vip[0].backend[1].weight = 70000: \
                 must be 0..=10000"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("VIP 198.18.1.1:80/tcp: vip[0].table_size = 1000: not prime"),
            "{msg}"
        );
    }
}
