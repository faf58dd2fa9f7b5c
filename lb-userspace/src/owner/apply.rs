//! `hola apply` and its preview: a file's VIPs as the whole desired state.
//! The preview plans the change against the kernel tables as they are
//! (nothing is written) and reads the flow table to say which flows would
//! move; the apply is then one `Command::Apply` through `change`: checked
//! in full, planned, written, saved, or refused with nothing changed.

use super::{ErrorKind, Owner, OwnerError, change::describe};
use crate::{
    command::{ApplyReport, Command},
    config::{VipConfig, diff::diff},
    health,
    preview::MAX_FLOWS_READ,
    reconcile::{self, moves::moves},
};

impl Owner {
    /// Previews, and unless `dry_run` makes, `vips` (from `file`) the
    /// desired state.
    pub(super) fn apply(
        &mut self,
        file: &str,
        vips: Vec<VipConfig>,
        dry_run: bool,
    ) -> Result<ApplyReport, OwnerError> {
        let mut report = self.preview(file, &vips)?;
        if dry_run {
            return Ok(report);
        }
        self.change(Command::Apply(vips))
            .map_err(|e| OwnerError::new(e.kind, format!("{file}: {e}; nothing was changed")))?;
        report.applied = true;
        for line in report.render().lines() {
            tracing::info!("{line}");
        }
        Ok(report)
    }

    /// What making `vips` the desired state would do, from the tables as
    /// the kernel holds them and the flow table (at most
    /// [`MAX_FLOWS_READ`] entries).
    fn preview(&self, file: &str, vips: &[VipConfig]) -> Result<ApplyReport, OwnerError> {
        let mut next = self.config.clone();
        next.vips = vips.to_vec();
        next.validate(file).map_err(|e| {
            OwnerError::new(
                ErrorKind::Invalid,
                format!(
                    "{file} cannot be applied, nothing was changed:\n{}",
                    describe(&next, &e)
                ),
            )
        })?;
        // The checks as the change would leave them: new backends as their
        // check's `initial` says, the others as they are.
        let mut checks = self.checks.clone();
        checks.track(&health::jobs(&next));
        let mut want = reconcile::desired(&next, &checks, &self.nexthops);
        let mut held = self.held();
        held.extend(
            next.vips
                .iter()
                .flat_map(|v| &v.backends)
                .map(|b| b.address)
                .filter(|a| !self.nexthops.contains_key(a)),
        );
        reconcile::hold_unresolved(&mut want, &held);
        let plan = reconcile::plan(self.dp.tables(), &want).map_err(|e| {
            OwnerError::new(
                ErrorKind::Invalid,
                format!("{file} cannot be applied, nothing was changed: {e}"),
            )
        })?;
        let mut after = self.dp.tables().clone();
        after.commit(plan);
        let (flows, sampled) = self.dp.flow_sample(MAX_FLOWS_READ).map_err(|e| {
            OwnerError::new(ErrorKind::Failed, format!("reading the flow table: {e}"))
        })?;
        Ok(ApplyReport {
            file: file.to_string(),
            applied: false,
            diff: diff(&self.config.vips, vips),
            moves: moves(self.dp.tables(), &after, &flows),
            flows_read: flows.len() as u64,
            flows_sampled: sampled,
        })
    }
}
