//! NAT mode's handshakes in progress (`NAT_SYN`): finding a SYN's
//! translation again when the client's next packet comes, and a fullnat
//! SYN's backend and port. The request path (`nat::request`) decides what
//! to do with them.

use lb_common::{
    FlowKey,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_DOWN, BACKEND_F_NEXTHOP},
    flow::{NAT_F_FORWARD, NatScratch, NatTimeouts, nat_expired},
};

use crate::{
    maps::{BACKENDS, NAT_SYN},
    nat::{NAT_F_PENDING, copy_entry, ours},
};

/// fullnat: the backend a SYN's forward entry in `NAT_SYN` (by the
/// client's 5-tuple `key`) names, if it can still take the flow (active,
/// not down, its next hop known); else `chosen`.
#[inline(always)]
pub fn syn_backend(key: &FlowKey, chosen: u32) -> u32 {
    let Some(p) = NAT_SYN.get_ptr(key) else {
        return chosen;
    };
    // SAFETY: as in `nat_copy`: two aligned fields read once, not kept.
    let (flags, id) = unsafe {
        (
            core::ptr::addr_of!((*p).flags).read(),
            core::ptr::addr_of!((*p).backend_id).read(),
        )
    };
    let ok = BACKEND_F_ACTIVE | BACKEND_F_NEXTHOP;
    match BACKENDS.get(id) {
        Some(b) if flags & NAT_F_FORWARD != 0 && b.flags & (ok | BACKEND_F_DOWN) == ok => id,
        _ => chosen,
    }
}

/// Whether `NAT_SYN` holds this flow's handshake (`s.rev`): then
/// `s.value` is a copy of it, flagged [`NAT_F_PENDING`].
#[inline(always)]
pub fn pending(s: &mut NatScratch, now: u64, t: &NatTimeouts) -> bool {
    let Some(p) = NAT_SYN.get_ptr(&s.rev) else {
        return false;
    };
    // SAFETY: as in `nat_copy`; the scratch is no map element of `NAT_SYN`.
    unsafe { copy_entry(&mut s.value, p) };
    if s.value.flags & NAT_F_FORWARD != 0 || !ours(s) || nat_expired(&s.value, s.key.proto, now, t)
    {
        return false;
    }
    s.value.flags |= NAT_F_PENDING;
    true
}

/// fullnat, a flow-table miss: whether its SYN's entry in `NAT_SYN`
/// (by the client's 5-tuple) gives it a port, to the same backend, with
/// the handshake's translation still there (`pending`).
#[inline(always)]
pub fn pending_port(s: &mut NatScratch, now: u64, t: &NatTimeouts) -> bool {
    let Some(p) = NAT_SYN.get_ptr(&s.key) else {
        return false;
    };
    // SAFETY: as in `nat_copy`; the scratch is no map element of `NAT_SYN`.
    unsafe { copy_entry(&mut s.value, p) };
    if s.value.flags & NAT_F_FORWARD == 0
        || s.value.backend_id != s.backend_id
        || nat_expired(&s.value, s.key.proto, now, t)
    {
        return false;
    }
    s.rev.dport = s.value.fwd_port as u16;
    pending(s, now, t)
}
