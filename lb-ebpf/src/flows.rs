//! The flow table's reads and writes, and the rules for a new flow: the
//! previous Maglev table during a VIP's grace period, and the per-CPU
//! insert rate limit. Only the miss path comes here, except `lookup`.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    FAMILY_V4, FlowKey, FlowKey4, FlowValue, VipMeta,
    flow::{FLOOD_WINDOW_NS, FloodState},
};

use crate::maps::{FLOOD, FLOWS, FLOWS4, FULLNAT_FLOWS, GRACE_SYNS, PREV_RINGS, PREV_UNTIL};

/// The flow-table entry of `key`, copied out: IPv4 flows in `FLOWS4`,
/// IPv6 ones in `FLOWS`.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<FlowValue> {
    // SAFETY: the value is copied out at once, before this program inserts
    // into the map (an LRU element is reused as soon as it is evicted, not
    // freed: see `nat::nat_copy`).
    unsafe {
        if key.family == FAMILY_V4 {
            FLOWS4.get(&FlowKey4::of(key))
        } else {
            FLOWS.get(key)
        }
    }
    .copied()
}

/// The fullnat flow-table entry of `key`: backend id and source port.
#[inline(always)]
pub fn lookup_fullnat(key: &FlowKey) -> Option<FlowValue> {
    // SAFETY: copied out at once, as in `lookup`.
    unsafe { FULLNAT_FLOWS.get(key) }.copied()
}

/// Records a fullnat flow's backend and source port (network order).
#[inline(always)]
pub fn record_fullnat(key: &FlowKey, backend_id: u32, port: u16) {
    let _ = FULLNAT_FLOWS.insert(
        key,
        &FlowValue {
            backend_id,
            hash: u32::from(port),
        },
        0,
    );
}

/// A SYN in a slot its VIP's last table change moved, during the grace
/// period: remembered apart (`GRACE_SYNS`), not in the flow table.
#[inline(always)]
pub fn remember_syn(key: &FlowKey, backend_id: u32, hash: u32) {
    let _ = GRACE_SYNS.insert(key, &FlowValue { backend_id, hash }, 0);
}

/// The backend a SYN remembered by [`remember_syn`] was sent to.
#[inline(always)]
pub fn syn_seen(key: &FlowKey) -> Option<FlowValue> {
    // SAFETY: copied out at once, as in `lookup`.
    unsafe { GRACE_SYNS.get(key) }.copied()
}

/// Records `key`'s backend. A failed insert (LRU under heavy contention)
/// still forwards this packet; the next one finds the same backend again.
#[inline(always)]
pub fn record(key: &FlowKey, backend_id: u32, hash: u32) {
    let value = FlowValue { backend_id, hash };
    let _ = if key.family == FAMILY_V4 {
        FLOWS4.insert(&FlowKey4::of(key), &value, 0)
    } else {
        FLOWS.insert(key, &value, 0)
    };
}

/// The monotonic clock the grace period and the rate limit are kept in:
/// `CLOCK_MONOTONIC` at tick resolution (`bpf_ktime_get_coarse_ns` reads
/// the time of the last tick; `bpf_ktime_get_ns` reads the clock source,
/// which cost about 100 ns a call in the benchmark's VM, a sixth of a new
/// flow). A period of seconds ends at most a tick late.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Whether this CPU has recorded its `new_flow_rate` of new flows in the
/// current second already: then one more is not recorded. Counts the
/// flow either way. `now`: the clock if read already, else 0 (it is read
/// only when there is a limit).
#[inline(always)]
pub fn over_rate(now: u64) -> bool {
    let limit: u32 = setting!(new_flow_rate);
    if limit == 0 {
        return false;
    }
    let now = if now == 0 { self::now() } else { now };
    let s = match FLOOD.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU while it runs.
        Some(s) => unsafe { &mut *s },
        None => return false,
    };
    let s: &mut FloodState = s;
    next_window(s, now);
    s.inserts += 1;
    s.inserts > u64::from(limit)
}

/// Counts a SYN of a `dsr` or `tunnel` VIP; whether this CPU has seen more
/// than its `new_flow_rate` of them in the current second: a SYN flood.
/// Then the SYN is looked up in no flow table (see `lookup::try_lb`).
#[inline(always)]
pub fn syn_flood() -> bool {
    let limit: u32 = setting!(new_flow_rate);
    if limit == 0 {
        return false;
    }
    let s = match FLOOD.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU while it runs.
        Some(s) => unsafe { &mut *s },
        None => return false,
    };
    let s: &mut FloodState = s;
    next_window(s, now());
    s.syns += 1;
    s.syns > u64::from(limit)
}

/// Starts a new window when the current one is over.
#[inline(always)]
fn next_window(s: &mut FloodState, now: u64) {
    if now.wrapping_sub(s.window_ns) >= FLOOD_WINDOW_NS {
        s.window_ns = now;
        s.inserts = 0;
        s.syns = 0;
    }
}

/// The backend id the VIP's previous Maglev table gives `hash`, while its
/// grace period lasts (0: none, or the slot did not move in the last
/// change), and the clock if it was read for that (else 0).
#[inline(always)]
pub fn previous(vip: &VipMeta, hash: u32) -> (u32, u64) {
    let until = match PREV_UNTIL.get(vip.vip_id) {
        Some(u) => *u,
        None => return (0, 0),
    };
    if until == 0 || vip.ring_size == 0 {
        return (0, 0);
    }
    let now = now();
    if now >= until {
        return (0, now);
    }
    match PREV_RINGS.get(vip.ring_base + hash % vip.ring_size) {
        Some(id) => (*id, now),
        None => (0, now),
    }
}
