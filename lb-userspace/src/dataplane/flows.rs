//! The flow tables: `FLOWS4` (IPv4), `FLOWS` (IPv6) and `FULLNAT_FLOWS`
//! (read for `hola flow` and snapshots), `NAT_SYN`'s handshakes (read by tests),
//! `PEER_FLOWS` (written with cluster peers' flows), the `FLOW_EVENTS` ring
//! buffer and the cluster switch `CLUSTER_STATE` / `CLUSTER_LOST`.

use lb_common::{FAMILY_V4, FlowKey, FlowKey4, FlowValue, flow::FlowEvent, maps as names};

use super::{Dataplane, DataplaneError, map_err};

impl Dataplane {
    /// The flow-table entry for a 5-tuple, if any: in `FLOWS4` (IPv4) or
    /// `FLOWS` (IPv6), or for a fullnat flow in `FULLNAT_FLOWS` (its hash
    /// is the source port it was given, network order).
    pub fn flow_entry(&self, key: &FlowKey) -> Option<FlowValue> {
        let own = if key.family == FAMILY_V4 {
            self.flows4.get(&FlowKey4::of(key), 0)
        } else {
            self.flows.get(key, 0)
        };
        own.ok().or_else(|| self.fullnat_flows.get(key, 0).ok())
    }

    /// The `NAT_SYN` entry (a handshake in progress) of a key, if any.
    pub fn nat_syn_entry(&self, key: &FlowKey) -> Option<lb_common::NatValue> {
        self.nat_syn.get(key, 0).ok()
    }

    /// Switches cluster replication in the program on (events are written
    /// and `PEER_FLOWS` is consulted) or off.
    pub fn set_cluster(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.cluster_state
            .set(0, u32::from(on), 0)
            .map_err(map_err(names::CLUSTER_STATE))
    }

    /// Events the program could not write because `FLOW_EVENTS` was full,
    /// summed over CPUs, since the map was created.
    pub fn events_lost(&self) -> Result<u64, DataplaneError> {
        let per_cpu = self
            .cluster_lost
            .get(&0, 0)
            .map_err(map_err(names::CLUSTER_LOST))?;
        Ok(per_cpu.iter().sum())
    }

    /// Up to `max` records from the `FLOW_EVENTS` ring buffer.
    pub fn next_events(&mut self, max: usize) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.flow_events.next() else {
                break;
            };
            if item.len() >= std::mem::size_of::<FlowEvent>() {
                // SAFETY: the record holds at least a FlowEvent's bytes (a
                // plain-old-data type); read unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
            }
        }
        out
    }

    /// Writes a flow learned from a cluster peer into `PEER_FLOWS`.
    pub fn install_peer_flow(
        &mut self,
        key: &FlowKey,
        value: FlowValue,
    ) -> Result<(), DataplaneError> {
        self.peer_flows
            .insert(key, value, 0)
            .map_err(map_err(names::PEER_FLOWS))
    }

    /// The `PEER_FLOWS` entry of a 5-tuple, if any.
    pub fn peer_flow(&self, key: &FlowKey) -> Option<FlowValue> {
        self.peer_flows.get(key, 0).ok()
    }

    /// The two flow tables as they are: `FLOWS4`'s entries (IPv4, 16-byte
    /// keys) and `FLOWS`' (IPv6). For tests and tools that check which
    /// table a flow is in.
    pub fn flow_tables(&self) -> Result<FlowTables, DataplaneError> {
        Ok((
            walk(self.flows4.iter(), names::FLOWS4)?,
            walk(self.flows.iter(), names::FLOWS)?,
        ))
    }

    /// Every `FLOWS4` and `FLOWS` entry (whole-table walks: for a peer's
    /// snapshot), IPv4 keys widened to `FlowKey`s.
    pub fn flow_entries(&self) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
        let mut out = walk4(self.flows4.iter())?;
        out.extend(walk(self.flows.iter(), names::FLOWS)?);
        Ok(out)
    }
}

impl Dataplane {
    /// At most `max` flow-table entries (`FLOWS4`'s first, then `FLOWS`'),
    /// and whether the tables hold more (a walk stopped early: the entries
    /// come in hash order, a sample unrelated to their backends).
    pub fn flow_sample(
        &self,
        max: usize,
    ) -> Result<(Vec<(FlowKey, FlowValue)>, bool), DataplaneError> {
        let mut it4 = self.flows4.iter();
        let mut got = walk4(it4.by_ref().take(max))?;
        if got.len() == max {
            let more = it4.next().is_some() || self.flows.iter().next().is_some();
            return Ok((got, more));
        }
        let left = max - got.len();
        let mut it = self.flows.iter();
        let six = walk(it.by_ref().take(left), names::FLOWS)?;
        let more = six.len() == left && it.next().is_some();
        got.extend(six);
        Ok((got, more))
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `FLOWS4`'s entries and `FLOWS`', as [`Dataplane::flow_tables`] reads them.
pub type FlowTables = (Vec<(FlowKey4, FlowValue)>, Vec<(FlowKey, FlowValue)>);

/// The entries of a `FLOWS4` walk, keys widened to `FlowKey`s.
fn walk4(
    it: impl Iterator<Item = Result<(FlowKey4, FlowValue), aya::maps::MapError>>,
) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
    Ok(walk(it, names::FLOWS4)?
        .into_iter()
        .map(|(k, v)| (k.widen(), v))
        .collect())
}

/// The entries of a map walk; entries evicted while walking are skipped.
pub(super) fn walk<K, V>(
    it: impl Iterator<Item = Result<(K, V), aya::maps::MapError>>,
    name: &'static str,
) -> Result<Vec<(K, V)>, DataplaneError> {
    let mut out = Vec::new();
    for e in it {
        match e {
            Ok(kv) => out.push(kv),
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(out)
}
