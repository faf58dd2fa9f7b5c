//! `QUIC_SERVERS`: (VIP id, server ID) → backend id, for `quic` VIPs. Not
//! part of a plan: after every plan is applied, the map is made to hold
//! what the tables say (each `quic` VIP's backends with a server ID), by
//! writing only the entries that differ from userspace's copy of it.

use std::collections::BTreeMap;

use lb_common::{maps as names, quic::QuicServerKey};

use super::{Dataplane, DataplaneError, ignore_missing, map_err};
use crate::reconcile::Tables;

/// What `QUIC_SERVERS` should hold for `tables`.
pub(super) fn wanted(tables: &Tables) -> BTreeMap<QuicServerKey, u32> {
    tables
        .vips()
        .filter(|v| v.spec.quic)
        .flat_map(|v| {
            v.backends
                .iter()
                .filter(|b| b.spec.server_id != 0)
                .map(move |b| {
                    let key = QuicServerKey {
                        vip_id: v.id,
                        server_id: b.spec.server_id,
                        _pad: 0,
                    };
                    (key, b.id)
                })
        })
        .collect()
}

impl Dataplane {
    /// Makes `QUIC_SERVERS` hold what the tables say: stale entries are
    /// deleted first (a removed backend's id may be reused at once), then
    /// new and changed ones written.
    pub(super) fn sync_quic(&mut self) -> Result<(), DataplaneError> {
        let want = wanted(&self.tables);
        let stale: Vec<QuicServerKey> = self
            .quic_copy
            .iter()
            .filter(|(k, id)| want.get(k) != Some(id))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            ignore_missing(self.quic_servers.remove(&k)).map_err(map_err(names::QUIC_SERVERS))?;
            self.quic_copy.remove(&k);
        }
        for (k, id) in want {
            if self.quic_copy.get(&k) != Some(&id) {
                self.quic_servers
                    .insert(k, id, 0)
                    .map_err(map_err(names::QUIC_SERVERS))?;
                self.quic_copy.insert(k, id);
            }
        }
        Ok(())
    }

    /// What `QUIC_SERVERS` holds: (VIP id, server ID) → backend id.
    pub fn quic_servers(&self) -> &BTreeMap<QuicServerKey, u32> {
        &self.quic_copy
    }
}
