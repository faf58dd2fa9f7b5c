//! Change detection, pure: what the owner was last told of each backend,
//! and whether a new look at its next hop changes that.

use std::net::IpAddr;

use tokio::time::Instant;

use super::{GRACE, NeighEvent, netlink::Egress};
use crate::model::Nexthop;

/// The result of one look at a backend's next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    Found(Nexthop),
    /// No usable entry yet: resolution was provoked; the owner hears of it
    /// after [`GRACE`].
    Missing(String),
    /// No route, or the kernel's entry FAILED: the owner hears at once.
    Failed(String),
}

/// What the owner was last told of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Told {
    #[default]
    Nothing,
    Resolved(Nexthop),
    Unresolved,
}

/// A wanted backend's state in the resolver.
#[derive(Debug, Clone, Default)]
pub(super) struct Track {
    pub(super) told: Told,
    /// Since when its neighbour entry has been missing, while it is.
    pub(super) missing_since: Option<Instant>,
    /// The way out, once a route was found (matched against notifications).
    pub(super) egress: Option<Egress>,
}

impl Track {
    /// Whether the next retry tick should look at it again.
    pub(super) fn unsettled(&self) -> bool {
        !matches!(self.told, Told::Resolved(_)) || self.missing_since.is_some()
    }

    /// Takes in one outcome; returns the event the owner must get, if the
    /// outcome changes what it was told. An Unresolved goes out once per
    /// change, never again while the backend stays unresolved.
    pub(super) fn step(
        &mut self,
        backend: IpAddr,
        outcome: Outcome,
        now: Instant,
    ) -> Option<NeighEvent> {
        match outcome {
            Outcome::Found(nexthop) => {
                self.missing_since = None;
                (self.told != Told::Resolved(nexthop)).then(|| {
                    self.told = Told::Resolved(nexthop);
                    NeighEvent::Resolved { backend, nexthop }
                })
            }
            Outcome::Failed(error) => {
                self.missing_since = None;
                self.unresolved(backend, error)
            }
            Outcome::Missing(error) => {
                let since = *self.missing_since.get_or_insert(now);
                if now.duration_since(since) >= GRACE {
                    self.unresolved(backend, error)
                } else {
                    None
                }
            }
        }
    }

    fn unresolved(&mut self, backend: IpAddr, error: String) -> Option<NeighEvent> {
        (self.told != Told::Unresolved).then(|| {
            self.told = Told::Unresolved;
            NeighEvent::Unresolved { backend, error }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr},
        time::Duration,
    };

    use tokio::time::Instant;

    use super::{Outcome, Told, Track};
    use crate::{
        dataplane::Nexthop,
        neigh::{GRACE, NeighEvent},
    };

    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));

    fn hop(last: u8) -> Nexthop {
        Nexthop {
            dmac: [2, 0, 0, 0, 0, last],
            smac: [2, 0, 0, 0, 0, 1],
            ifindex: 0,
        }
    }

    fn resolved(last: u8) -> Option<NeighEvent> {
        Some(NeighEvent::Resolved {
            backend: B,
            nexthop: hop(last),
        })
    }

    fn missing() -> Outcome {
        Outcome::Missing("no MAC".into())
    }

    fn unresolved(error: &str) -> Option<NeighEvent> {
        Some(NeighEvent::Unresolved {
            backend: B,
            error: error.into(),
        })
    }

    #[test]
    fn found_is_told_once_and_a_new_mac_again() {
        let (mut t, now) = (Track::default(), Instant::now());
        assert_eq!(t.step(B, Outcome::Found(hop(0xa)), now), resolved(0xa));
        assert_eq!(t.step(B, Outcome::Found(hop(0xa)), now), None);
        assert_eq!(t.step(B, Outcome::Found(hop(0xb)), now), resolved(0xb));
        assert_eq!(t.told, Told::Resolved(hop(0xb)));
        assert!(!t.unsettled());
    }

    #[test]
    fn another_interface_is_a_change_too() {
        let (mut t, now) = (Track::default(), Instant::now());
        t.step(B, Outcome::Found(hop(0xa)), now);
        let moved = Nexthop {
            ifindex: 4,
            ..hop(0xa)
        };
        assert_eq!(
            t.step(B, Outcome::Found(moved), now),
            Some(NeighEvent::Resolved {
                backend: B,
                nexthop: moved
            })
        );
    }

    #[test]
    fn missing_is_told_after_the_grace_and_only_once() {
        let (mut t, t0) = (Track::default(), Instant::now());
        assert_eq!(t.step(B, missing(), t0), None);
        assert!(t.unsettled());
        assert_eq!(
            t.step(B, missing(), t0 + GRACE - Duration::from_millis(1)),
            None
        );
        assert_eq!(t.step(B, missing(), t0 + GRACE), unresolved("no MAC"));
        assert_eq!(t.step(B, missing(), t0 + GRACE * 5), None);
        assert!(t.unsettled(), "unresolved backends are retried");
        assert_eq!(
            t.step(B, Outcome::Found(hop(0xa)), t0 + GRACE * 6),
            resolved(0xa)
        );
        assert_eq!(t.missing_since, None);
    }

    #[test]
    fn failed_is_told_at_once_and_only_once() {
        let (mut t, now) = (Track::default(), Instant::now());
        t.step(B, Outcome::Found(hop(0xa)), now);
        assert_eq!(
            t.step(B, Outcome::Failed("FAILED".into()), now),
            unresolved("FAILED")
        );
        assert_eq!(t.step(B, Outcome::Failed("FAILED".into()), now), None);
        assert_eq!(t.step(B, missing(), now + GRACE * 2), None, "already told");
        assert_eq!(t.step(B, Outcome::Found(hop(0xa)), now), resolved(0xa));
    }

    #[test]
    fn a_resolved_hop_missing_for_less_than_the_grace_keeps_its_mac() {
        let (mut t, t0) = (Track::default(), Instant::now());
        t.step(B, Outcome::Found(hop(0xa)), t0);
        // The entry was flushed or collected: provoked again, not told.
        assert_eq!(t.step(B, missing(), t0), None);
        assert!(t.unsettled());
        assert_eq!(t.step(B, Outcome::Found(hop(0xa)), t0 + GRACE / 2), None);
        assert!(!t.unsettled());
        // Missing again, long enough this time.
        assert_eq!(t.step(B, missing(), t0 + GRACE), None);
        assert_eq!(t.step(B, missing(), t0 + GRACE * 2), unresolved("no MAC"));
    }
}
