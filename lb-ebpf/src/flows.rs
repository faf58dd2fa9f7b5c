//! The flow table's two operations, in one place: a change of its layout
//! (say an IPv4 map with a 16-byte key beside the IPv6 one) is made here.

use lb_common::{FlowKey, FlowValue};

use crate::maps::FLOWS;

/// The entry of `key`, copied out at once: an LRU element is reused as soon
/// as it is evicted, not freed (see `nat::nat_copy`), so no pointer into it
/// is kept.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<FlowValue> {
    // SAFETY: the value is copied out here, before anything inserts.
    unsafe { FLOWS.get(key) }.copied()
}

/// Records `key` → `value`. A failed insert (LRU under heavy contention) is
/// not an error: the packet is still forwarded, and the next one finds the
/// same backend again.
#[inline(always)]
pub fn insert(key: &FlowKey, value: &FlowValue) {
    let _ = FLOWS.insert(key, value, 0);
}
