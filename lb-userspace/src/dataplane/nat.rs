//! The `NAT` table: sweeps of expired translations, and the translations
//! cluster peers hand over.

use std::time::Duration;

use lb_common::{FlowKey, NatValue, flow::NatTimeouts, maps as names};

use super::{Dataplane, DataplaneError, NatSweep, flows::walk, map_err, monotonic_ns};

impl Dataplane {
    /// The idle and linger timeouts the program applies.
    fn nat_timeouts(&self) -> NatTimeouts {
        NatTimeouts {
            tcp_idle_ns: self.cfg.nat_tcp_idle.as_nanos() as u64,
            udp_idle_ns: self.cfg.nat_udp_idle.as_nanos() as u64,
            closed_linger_ns: self.cfg.nat_closed_linger.as_nanos() as u64,
        }
    }

    /// Deletes the NAT entries that have expired and counts the others, and
    /// finds SYNs the backend left unanswered for `syn_timeout` (each is
    /// counted once: its SYN time is cleared), in `NAT` and among the
    /// handshakes in progress (`NAT_SYN`). Reads both tables whole.
    pub fn sweep_nat(&mut self, syn_timeout: Duration) -> Result<NatSweep, DataplaneError> {
        let t = self.nat_timeouts();
        let syn_timeout = syn_timeout.as_nanos() as u64;
        let nat = scan(&self.nat, names::NAT, &t, syn_timeout)?;
        let syn = scan(&self.nat_syn, names::NAT_SYN, &t, syn_timeout)?;
        let mut out = NatSweep {
            live: nat.live,
            ..NatSweep::default()
        };
        for (map, unanswered) in [
            (&mut self.nat, nat.unanswered),
            (&mut self.nat_syn, syn.unanswered),
        ] {
            for (k, mut v) in unanswered {
                let id = v.backend_id;
                v.syn_ns = 0;
                // Only if the entry is still there (BPF_EXIST): a flow that
                // ended meanwhile is not brought back.
                if map.insert(k, v, 2).is_ok()
                    && let Some(addr) = self.tables.backend_by_id(id)
                {
                    *out.unanswered.entry(addr).or_default() += 1;
                }
            }
        }
        for k in &nat.expired {
            match self.nat.remove(k) {
                Ok(()) => {
                    out.removed += 1;
                    out.gone.push(*k);
                }
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::NAT)(e)),
            }
        }
        for k in &syn.expired {
            match self.nat_syn.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::NAT_SYN)(e)),
            }
        }
        Ok(out)
    }

    /// Writes a NAT translation (learned from a cluster peer).
    pub fn install_nat(&mut self, reply: &FlowKey, value: &NatValue) -> Result<(), DataplaneError> {
        self.nat
            .insert(reply, value, 0)
            .map_err(map_err(names::NAT))
    }

    /// Writes a handshake in progress (learned from a cluster peer) into
    /// `NAT_SYN`.
    pub fn install_nat_syn(
        &mut self,
        reply: &FlowKey,
        value: &NatValue,
    ) -> Result<(), DataplaneError> {
        self.nat_syn
            .insert(reply, value, 0)
            .map_err(map_err(names::NAT_SYN))
    }

    /// Removes a NAT translation a peer removed, if it has expired here
    /// too; `false` when it is kept (live here: a flow this node carries,
    /// or refreshed by its replies) or absent. A peer's copy can expire
    /// while the flow lives on another node: its removal must not end it.
    pub fn remove_nat_if_expired(&mut self, reply: &FlowKey) -> Result<bool, DataplaneError> {
        let Ok(v) = self.nat.get(reply, 0) else {
            return Ok(false);
        };
        let t = self.nat_timeouts();
        if !lb_common::flow::nat_expired(&v, reply.proto, monotonic_ns(), &t) {
            return Ok(false);
        }
        self.remove_nat(reply)
    }

    /// Removes a NAT translation; `false` when there was none.
    pub fn remove_nat(&mut self, reply: &FlowKey) -> Result<bool, DataplaneError> {
        match self.nat.remove(reply) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(map_err(names::NAT)(e)),
        }
    }

    /// Every `NAT` entry (a whole-table walk: for a peer's snapshot).
    pub fn nat_entries(&self) -> Result<Vec<(FlowKey, NatValue)>, DataplaneError> {
        walk(self.nat.iter(), names::NAT)
    }

    /// The NAT entry of a reply 5-tuple, if any.
    pub fn nat_entry(&self, reply: &FlowKey) -> Option<NatValue> {
        self.nat.get(reply, 0).ok()
    }
}

/// What a walk of a NAT table found.
struct Scan {
    live: u64,
    expired: Vec<FlowKey>,
    /// Entries whose SYN has waited longer than the timeout.
    unanswered: Vec<(FlowKey, NatValue)>,
}

fn scan(
    map: &aya::maps::HashMap<aya::maps::MapData, FlowKey, NatValue>,
    name: &'static str,
    t: &NatTimeouts,
    syn_timeout_ns: u64,
) -> Result<Scan, DataplaneError> {
    let now = monotonic_ns();
    let mut out = Scan {
        live: 0,
        expired: Vec::new(),
        unanswered: Vec::new(),
    };
    for entry in map.iter() {
        let (k, v) = match entry {
            Ok(kv) => kv,
            // An entry evicted while we walk: skip it.
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        };
        if lb_common::flow::nat_expired(&v, k.proto, now, t) {
            out.expired.push(k);
        } else {
            out.live += 1;
            // A fullnat SYN's entry by the client's 5-tuple is not its own
            // SYN: its twin by the reply's is counted.
            if v.syn_ns != 0
                && v.flags & lb_common::flow::NAT_F_FORWARD == 0
                && now.saturating_sub(v.syn_ns) > syn_timeout_ns
            {
                out.unanswered.push((k, v));
            }
        }
    }
    Ok(out)
}
