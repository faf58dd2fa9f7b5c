//! `hola trace`'s maps: the filter the program checks at entry
//! (`TRACE_FILTER`), the per-CPU state that counts lost records
//! (`TRACE_STATE`) and the ring of records (`TRACE_RING`). Not pinned: a
//! trace lives and dies with the daemon serving it.

use lb_common::{
    maps as names,
    trace::{TraceFilter, TraceRecord},
};

use super::{Dataplane, DataplaneError, map_err};

impl Dataplane {
    /// Writes the filter (`enabled` set: the program starts matching).
    pub fn set_trace_filter(&mut self, f: &TraceFilter) -> Result<(), DataplaneError> {
        self.trace_filter
            .set(0, *f, 0)
            .map_err(map_err(names::TRACE_FILTER))
    }

    /// The filter as the program sees it.
    pub fn trace_filter(&self) -> Result<TraceFilter, DataplaneError> {
        self.trace_filter
            .get(&0, 0)
            .map_err(map_err(names::TRACE_FILTER))
    }

    /// Records the program could not write (the ring was full), summed
    /// over CPUs, since the data plane was loaded.
    pub fn trace_lost(&self) -> Result<u64, DataplaneError> {
        let per_cpu = self
            .trace_state
            .get(&0, 0)
            .map_err(map_err(names::TRACE_STATE))?;
        Ok(per_cpu.iter().map(|s| s.lost).sum())
    }

    /// Up to `max` records from `TRACE_RING`.
    pub fn next_trace_records(&mut self, max: usize) -> Vec<TraceRecord> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.trace_ring.next() else {
                break;
            };
            if item.len() >= std::mem::size_of::<TraceRecord>() {
                // SAFETY: the record holds at least a TraceRecord's bytes
                // (plain old data: integers and bytes); read unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TraceRecord>()) });
            }
        }
        out
    }
}
