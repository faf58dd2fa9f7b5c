//! The owner's side of cluster replication: the program's new entries sent
//! to the peers, snapshots for peers that connect, peers' entries installed.

use std::sync::Arc;

use super::Owner;
use crate::{
    cluster::{self, ClusterEvent},
    dataplane::{DataplaneError, monotonic_ns},
};

impl Owner {
    /// Replicates to and from the cluster's peers from now on: the program
    /// writes its new entries to the ring buffer, which the loop drains.
    pub fn with_cluster(
        &mut self,
        shared: Arc<cluster::Shared>,
        mac: [u8; 6],
    ) -> Result<(), DataplaneError> {
        self.dp.set_cluster(shared.settings.replicate)?;
        self.cluster = Some((shared, mac));
        Ok(())
    }

    /// Sends the program's new entries to the peers.
    pub(super) fn replicate(&mut self) {
        let Some((shared, _)) = &self.cluster else {
            return;
        };
        let shared = shared.clone();
        loop {
            let events = self.dp.next_events(4096);
            if events.is_empty() {
                return;
            }
            let now = monotonic_ns();
            let entries: Vec<_> = events
                .iter()
                .filter_map(|e| cluster::local::event_entry(&self.dp, e, now))
                .collect();
            shared.publish(&entries);
        }
    }

    pub(super) fn cluster_event(&mut self, e: ClusterEvent) {
        match e {
            ClusterEvent::Snapshot(reply) => {
                // Events already in the ring buffer are in the snapshot
                // too; sending them first keeps peers' queues in order.
                self.replicate();
                let _ = reply.send(cluster::local::snapshot(&self.dp));
            }
            ClusterEvent::PeerEntries { node, entries } => {
                let Some((shared, mac)) = &self.cluster else {
                    return;
                };
                if !shared.settings.replicate {
                    return;
                }
                let (shared, mac) = (shared.clone(), *mac);
                let r = cluster::local::install(&mut self.dp, &entries, mac, self.ingress_ifindex);
                if r.unknown > 0 {
                    tracing::debug!(peer = %node, unknown = r.unknown, "cluster: entries for VIPs or backends this node does not have");
                }
                shared.installed(r.installed, r.unknown);
            }
        }
    }
}
