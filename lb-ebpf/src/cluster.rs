//! Cluster replication in the data plane (docs/cluster.md): the entries
//! this node creates go out through the `FLOW_EVENTS` ring buffer, and
//! flows learned from peers (`PEER_FLOWS`) are consulted on a flow-table
//! miss. Both only while userspace has switched `CLUSTER_STATE` on.

use lb_common::{
    FlowKey, NatValue,
    flow::{FLOW_EVENT_FLOW, FLOW_EVENT_NAT, FlowEvent},
};

use crate::maps::{CLUSTER_LOST, CLUSTER_STATE, FLOW_EVENTS};

/// Whether this node replicates.
#[inline(always)]
pub fn active() -> bool {
    matches!(CLUSTER_STATE.get(0), Some(v) if *v != 0)
}

/// An event the full ring buffer could not take.
#[inline(always)]
fn lost() {
    if let Some(c) = CLUSTER_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU element, written only by this CPU.
        unsafe { *c += 1 };
    }
}

/// A new flow-table entry (`FLOWS4` or `FLOWS`). A full ring buffer loses the event, counted (the
/// flow is still forwarded; peers learn it from the next snapshot).
#[inline(always)]
pub fn flow_created(key: &FlowKey, backend_id: u32, hash: u32) {
    let Some(mut e) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        lost();
        return;
    };
    let p = e.as_mut_ptr();
    // SAFETY: `p` points at a reserved record of the ring buffer, ours
    // until submitted; every field is written before the submit.
    unsafe {
        (*p).kind = FLOW_EVENT_FLOW;
        (*p).backend_id = backend_id;
        (*p).hash = hash;
        (*p)._pad = 0;
        (*p).key = *key;
        (*p).nat = core::mem::zeroed();
    }
    e.submit(0);
}

/// A new `NAT` entry, keyed by the reply's 5-tuple.
#[inline(always)]
pub fn nat_created(reply: &FlowKey, v: &NatValue) {
    let Some(mut e) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        lost();
        return;
    };
    let p = e.as_mut_ptr();
    // SAFETY: as in `flow_created`.
    unsafe {
        (*p).kind = FLOW_EVENT_NAT;
        (*p).backend_id = v.backend_id;
        (*p).hash = 0;
        (*p)._pad = 0;
        (*p).key = *reply;
        (*p).nat = *v;
    }
    e.submit(0);
}
