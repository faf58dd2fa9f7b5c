//! Which VIP addresses this node wants announced over BGP, and why: the
//! owner knows the backends' health, so it decides; the announcer
//! (`bgp/`) only writes the routes. The owner publishes its decision as an
//! [`Announce`] on a watch channel (bounded: it holds the latest decision
//! only, which is all the announcer needs, and the owner never waits).
//!
//! A VIP *serves* when at least one of its backends takes new flows: it
//! has weight, is not drained, is up by every check, its next hop is
//! known, and, when it has a health check, its latest probe succeeded. A
//! health-checked backend without a probe yet (the first seconds after a
//! start) is *pending*, and so is the whole VIP while a backend is coming
//! back up (its latest probe passed, fewer than `rise` in a row). An address is announced when one of its VIPs
//! serves; left as it is (announced or not, as the routing table holds
//! it) while none serves but one is pending, so that a restart withdraws
//! nothing before its checks answered; withdrawn otherwise, and always
//! while the node is drained.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use tokio::sync::watch;

use super::{ErrorKind, Owner, OwnerError};
use crate::config::{BgpConfig, VipConfig};
use crate::model::VipAddr;
use crate::stats::{AnnounceReport, BgpReport};

/// What the owner wants of one VIP address's route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Announce,
    /// Leave the route as it is (checks pending).
    Keep,
    Withdraw,
}

/// The owner's decision for every address it has VIPs at. A route of
/// hola's for an address not in `routes` is withdrawn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Announce {
    pub routes: BTreeMap<IpAddr, Want>,
}

/// The announcement's state in the owner: where decisions go, and the drain.
pub(super) struct Announcing {
    tx: watch::Sender<Option<Announce>>,
    config: BgpConfig,
    drained: bool,
    /// Exists while the node is drained, so that a restart stays drained.
    drain_file: PathBuf,
    /// Since when each serving VIP has served without a break.
    serving_since: HashMap<VipAddr, tokio::time::Instant>,
}

/// One VIP's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Serving {
    Yes,
    Pending,
    No,
}

impl Owner {
    /// Publishes the addresses to announce on `tx` from now on; a drain
    /// marker at `drain_file` (left by `hola node drain`) keeps the node
    /// drained.
    pub fn announce_with(
        &mut self,
        config: BgpConfig,
        tx: watch::Sender<Option<Announce>>,
        drain_file: PathBuf,
    ) {
        let drained = drain_file.exists();
        if drained {
            tracing::warn!(marker = %drain_file.display(), "bgp: this node is drained (hola node drain): no VIP is announced until hola node undrain");
        }
        self.announcing = Some(Announcing {
            tx,
            config,
            drained,
            drain_file,
            serving_since: HashMap::new(),
        });
        self.announce();
    }

    /// Drains (withdraws every VIP, keeps forwarding) or undrains the node.
    pub(super) fn set_drained(&mut self, drained: bool) -> Result<(), OwnerError> {
        let Some(a) = self.announcing.as_mut() else {
            return Err(OwnerError::new(
                ErrorKind::Invalid,
                "this node has no [bgp] table, so it announces nothing to withdraw: add [bgp] \
                 to the configuration (docs/cluster.md) and restart hola run",
            ));
        };
        let file = a.drain_file.clone();
        let result = if drained {
            std::fs::write(
                &file,
                "drained by hola node drain; hola node undrain removes it\n",
            )
        } else {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        };
        result.map_err(|e| {
            OwnerError::new(
                ErrorKind::Failed,
                format!("bgp: writing the drain marker {}: {e}", file.display()),
            )
        })?;
        if a.drained != drained {
            a.drained = drained;
            tracing::info!(
                drained,
                "bgp: node {}",
                if drained {
                    "drained: withdrawing every VIP"
                } else {
                    "undrained"
                }
            );
        }
        self.announce();
        Ok(())
    }

    /// Sends the current decision when it changed, logging each address
    /// that changes.
    pub(super) fn announce(&mut self) {
        if self.announcing.is_none() {
            return;
        }
        let now = tokio::time::Instant::now();
        let serving: Vec<(VipAddr, Serving)> = self
            .config
            .vips
            .iter()
            .map(|v| (v.key(), self.serving(v)))
            .collect();
        let Some(a) = self.announcing.as_mut() else {
            return;
        };
        a.serving_since.retain(|k, _| {
            serving
                .iter()
                .any(|(s, how)| s == k && *how == Serving::Yes)
        });
        for (k, how) in &serving {
            if *how == Serving::Yes {
                a.serving_since.entry(*k).or_insert(now);
            }
        }
        let a = self.announcing.as_ref().expect("checked above");
        let mut routes = BTreeMap::new();
        for (v, (_, how)) in self.config.vips.iter().zip(&serving) {
            let settled = a
                .serving_since
                .get(&v.key())
                .is_some_and(|t| now.duration_since(*t) >= a.config.announce_delay);
            let want = match (a.drained, how) {
                (true, _) => Want::Withdraw,
                (false, Serving::Yes) if settled => Want::Announce,
                (false, Serving::Yes | Serving::Pending) => Want::Keep,
                (false, Serving::No) => Want::Withdraw,
            };
            let e = routes.entry(v.address).or_insert(want);
            *e = match (*e, want) {
                (Want::Announce, _) | (_, Want::Announce) => Want::Announce,
                (Want::Keep, _) | (_, Want::Keep) => Want::Keep,
                _ => Want::Withdraw,
            };
        }
        let next = Announce { routes };
        let before = a.tx.borrow().clone().unwrap_or_default();
        for (addr, want) in &next.routes {
            if before.routes.get(addr) != Some(want) {
                tracing::info!(vip = %addr, want = ?want, drained = a.drained, "bgp: announcement");
            }
        }
        a.tx.send_if_modified(|cur| {
            let changed = cur.as_ref() != Some(&next);
            *cur = Some(next);
            changed
        });
    }

    /// When a serving VIP's delay ends (the owner's loop wakes then).
    pub(super) fn announce_deadline(&self) -> Option<tokio::time::Instant> {
        let a = self.announcing.as_ref()?;
        let now = tokio::time::Instant::now();
        a.serving_since
            .values()
            .map(|t| *t + a.config.announce_delay)
            .filter(|d| *d > now)
            .min()
    }

    /// Whether `v` has a backend that takes new flows.
    fn serving(&self, v: &VipConfig) -> Serving {
        // A backend coming back (its latest probe passed, not yet `rise`
        // of them) would take its flows back a moment later; until then,
        // a node that announces would send them elsewhere (its flow-table
        // entries to a down backend are misses). So the route waits.
        let rising = v.backends.iter().any(|b| {
            b.weight > 0
                && !b.drain
                && self
                    .checks
                    .health
                    .get(&(v.key(), b.address))
                    .is_some_and(|h| !h.machine.up && h.last.as_ref().is_some_and(|p| p.ok))
        });
        if rising {
            return Serving::Pending;
        }
        let mut pending = false;
        for (i, b) in v.backends.iter().enumerate() {
            if !self.checks.takes_new_flows(v, i)
                || !self.nexthops.contains_key(&b.address)
                || self.held.contains_key(&b.address)
            {
                continue;
            }
            if v.health_for(b).is_none() {
                return Serving::Yes;
            }
            match self.checks.health.get(&(v.key(), b.address)) {
                Some(h) => match &h.last {
                    Some(p) if p.ok => return Serving::Yes,
                    Some(_) => {}
                    None => pending = true,
                },
                None => pending = true,
            }
        }
        if pending {
            Serving::Pending
        } else {
            Serving::No
        }
    }

    /// What `hola stats` says of `v`'s announcement.
    pub(super) fn announce_report(&self, v: &VipConfig) -> Option<AnnounceReport> {
        let a = self.announcing.as_ref()?;
        let own = self.serving(v);
        let other = || {
            self.config.vips.iter().any(|o| {
                o.address == v.address && o.key() != v.key() && self.serving(o) == Serving::Yes
            })
        };
        let settled = a.serving_since.get(&v.key()).is_some_and(|t| {
            tokio::time::Instant::now().duration_since(*t) >= a.config.announce_delay
        });
        let (state, reason) = match own {
            _ if a.drained => ("withdrawn", "drained"),
            Serving::Yes if settled => ("announced", "serving"),
            Serving::Yes => ("pending", "settling"),
            _ if other() => ("announced", "other_vip_serving"),
            Serving::Pending => ("pending", "checks_pending"),
            Serving::No => ("withdrawn", "no_backend"),
        };
        Some(AnnounceReport {
            state: state.into(),
            reason: reason.into(),
        })
    }

    /// The node's BGP figures for `hola stats`.
    pub(super) fn bgp_report(&self) -> Option<BgpReport> {
        let a = self.announcing.as_ref()?;
        Some(BgpReport {
            drained: a.drained,
            table: a.config.table,
            route_protocol: a.config.route_protocol,
        })
    }
}
