//! `hola trace`: three hooks, which cost `hola_lb` one array load and
//! branch per packet while no trace runs (`TRACE_FILTER`'s `enabled` is 0:
//! `entry` reads it and hands the answer to the other two; the programs
//! `hola_lb` tail-calls read it once, in `after`), and the work behind them
//! while one does (the `no-trace` feature compiles them out: `bench-dataplane`
//! measures the balancer with and without them):
//!
//! - [`entry`], first thing in `hola_lb`: a packet that matches the filter
//!   is marked in this CPU's `TRACE_STATE` and its bytes as they arrived
//!   go to `TRACE_RING`;
//! - [`note`], where `hola_lb` has chosen the packet's backend: the VIP,
//!   the backend and the Maglev slot, kept in `TRACE_STATE`;
//! - [`after`], at the verdict of `hola_lb` and of every program it
//!   tail-calls (the NAT and ICMP programs run on the same CPU right after,
//!   so they find the mark): the bytes as they leave, with the reason, the
//!   action and what was noted.
//!
//! Records go through a BPF ring buffer, not a perf event array: one ring
//! for all CPUs keeps the records in order (a packet's "before" is read
//! before its "after"), userspace reads it from one descriptor, and aya
//! reserves fixed-size records whose bytes `bpf_xdp_load_bytes` fills up to
//! a snap length the verifier can bound.

use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use lb_common::{
    FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, VipMeta,
    trace::{
        TRACE_AFTER, TRACE_BEFORE, TRACE_M_DPORT, TRACE_M_DST, TRACE_M_PROTO, TRACE_M_SPORT,
        TRACE_M_SRC, TRACE_NO_SLOT, TRACE_SNAP, TraceFilter, TraceRecord, TraceState,
    },
};

use crate::{
    maps::{TRACE_FILTER, TRACE_RING, TRACE_STATE},
    parse::{
        eth::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
        ipv4::IPV4_HLEN,
        ipv6::IPV6_HLEN,
        ptr_at,
    },
    verdict::Verdict,
};

/// The filter while a trace runs; `None` (one load and a branch) otherwise.
/// Built with the `no-trace` feature (the benchmark's second object), it is
/// always `None` and every hook compiles to nothing.
#[inline(always)]
fn filter() -> Option<&'static TraceFilter> {
    if cfg!(feature = "no-trace") {
        return None;
    }
    TRACE_FILTER.get(0).filter(|f| f.enabled != 0)
}

/// Whether a trace runs (for `hola_frag`, which has no [`entry`]).
#[inline(always)]
pub fn on() -> bool {
    filter().is_some()
}

/// At `hola_lb`'s entry: marks (or unmarks) this CPU's packet, and writes
/// the "before" record of a packet that matches. Returns the filter while
/// a trace runs, for `hola_lb` to hand to [`note`] and [`after_with`]: the
/// filter is read once per packet, not at each hook.
#[inline(always)]
pub fn entry(ctx: &XdpContext) -> Option<&'static TraceFilter> {
    let f = filter()?;
    entry_traced(ctx, f);
    Some(f)
}

#[inline(always)]
fn entry_traced(ctx: &XdpContext, f: &TraceFilter) {
    let Some(st) = TRACE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU element, used only by this CPU while the program (and
    // the programs it tail-calls) run, not preempted.
    let st = unsafe { &mut *st };
    st.active = 0;
    st.generation = f.generation;
    st.vip_id = 0;
    st.backend_id = 0;
    st.slot = TRACE_NO_SLOT;
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() } > f.expires_ns || !matches(ctx, f) {
        return;
    }
    st.active = 1;
    st.seq = st.seq.wrapping_add(1);
    emit(ctx, st, TRACE_BEFORE, 0, 0);
}

/// Where `hola_lb` has chosen `backend_id` for a packet of `vip` whose
/// flow hash is `hash`: kept for the packet's "after" record.
#[inline(always)]
pub fn note(on: bool, vip: &VipMeta, backend_id: u32, hash: u32) {
    if !on {
        return;
    }
    if let Some(st) = TRACE_STATE.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU (see `entry`).
        let st = unsafe { &mut *st };
        if st.active != 0 {
            st.vip_id = vip.vip_id;
            st.backend_id = backend_id;
            st.slot = if vip.ring_size != 0 {
                hash % vip.ring_size
            } else {
                TRACE_NO_SLOT
            };
        }
    }
}

/// At a program's verdict: the "after" record of a marked packet.
#[inline(always)]
pub fn after(ctx: &XdpContext, v: &Verdict) {
    after_with(ctx, filter(), v);
}

/// [`after`] with the filter [`entry`] read (`hola_lb`).
#[inline(always)]
pub fn after_with(ctx: &XdpContext, f: Option<&TraceFilter>, v: &Verdict) {
    if let Some(f) = f {
        after_traced(ctx, f, v);
    }
}

#[inline(always)]
fn after_traced(ctx: &XdpContext, f: &TraceFilter, v: &Verdict) {
    let Some(st) = TRACE_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU element, used only by this CPU (see `entry`).
    let st = unsafe { &mut *st };
    if st.active == 0 || st.generation != f.generation {
        return;
    }
    st.active = 0;
    emit(ctx, st, TRACE_AFTER, v.reason as u32, v.action);
}

/// Whether the packet's addresses, ports and protocol are those the filter
/// asks for (ports only for TCP and UDP; an unparsable packet matches
/// only a filter that asks for nothing).
#[inline(always)]
fn matches(ctx: &XdpContext, f: &TraceFilter) -> bool {
    let want = f.fields;
    if want == 0 {
        return true;
    }
    let Ok(ethertype) = ptr_at::<[u8; 2]>(ctx, ETH_HLEN - 2) else {
        return false;
    };
    // SAFETY: ptr_at checked the bounds.
    let ethertype = u16::from_be_bytes(unsafe { *ethertype });
    let (proto, l4_off) = if ethertype == ETH_P_IP {
        let Ok(h) = ptr_at::<[u8; IPV4_HLEN]>(ctx, ETH_HLEN) else {
            return false;
        };
        // SAFETY: ptr_at checked the bounds.
        let h = unsafe { &*h };
        if f.family != 0 && f.family != FAMILY_V4 {
            return false;
        }
        if want & TRACE_M_SRC != 0 && h[12..16] != f.src[..4] {
            return false;
        }
        if want & TRACE_M_DST != 0 && h[16..20] != f.dst[..4] {
            return false;
        }
        (h[9], ETH_HLEN + ((h[0] & 0x0f) as usize) * 4)
    } else if ethertype == ETH_P_IPV6 {
        let Ok(h) = ptr_at::<[u8; IPV6_HLEN]>(ctx, ETH_HLEN) else {
            return false;
        };
        // SAFETY: ptr_at checked the bounds.
        let h = unsafe { &*h };
        if f.family != 0 && f.family != FAMILY_V6 {
            return false;
        }
        if want & TRACE_M_SRC != 0 && h[8..24] != f.src {
            return false;
        }
        if want & TRACE_M_DST != 0 && h[24..40] != f.dst {
            return false;
        }
        (h[6], ETH_HLEN + IPV6_HLEN)
    } else {
        return false;
    };
    if want & TRACE_M_PROTO != 0 && proto != f.proto {
        return false;
    }
    if want & (TRACE_M_SPORT | TRACE_M_DPORT) == 0 {
        return true;
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return false;
    }
    let Ok(p) = ptr_at::<[u8; 4]>(ctx, l4_off) else {
        return false;
    };
    // SAFETY: ptr_at checked the bounds.
    let p = unsafe { *p };
    (want & TRACE_M_SPORT == 0 || u16::from_ne_bytes([p[0], p[1]]) == f.sport)
        && (want & TRACE_M_DPORT == 0 || u16::from_ne_bytes([p[2], p[3]]) == f.dport)
}

/// Writes one record: the packet's first `TRACE_SNAP` bytes (or all of a
/// shorter one) and what `st` holds. A full ring loses the record, counted.
#[inline(always)]
fn emit(ctx: &XdpContext, st: &mut TraceState, kind: u8, reason: u32, action: u32) {
    let Some(mut e) = TRACE_RING.reserve::<TraceRecord>(0) else {
        st.lost += 1;
        return;
    };
    let len = ctx.data_end() - ctx.data();
    let cap = if len > TRACE_SNAP { TRACE_SNAP } else { len } as u32;
    // 1..=TRACE_SNAP in a form the verifier bounds (a plain minimum can
    // be compiled into one it reads as possibly 0); TRACE_SNAP is a power
    // of two, and a packet is never empty (an empty one would read as
    // TRACE_SNAP bytes, which the helper refuses: no bytes then).
    let cap = (cap.wrapping_sub(1) & (TRACE_SNAP as u32 - 1)) + 1;
    let r = e.as_mut_ptr();
    // SAFETY: `r` points at the reserved record (its size is TraceRecord's);
    // every header field is written before it is submitted.
    unsafe {
        (*r).time_ns = bpf_ktime_get_ns();
        (*r).cpu = bpf_get_smp_processor_id();
        (*r).seq = st.seq;
        (*r).kind = kind;
        (*r)._pad = [0; 3];
        (*r).reason = reason;
        (*r).action = action;
        (*r).vip_id = st.vip_id;
        (*r).backend_id = st.backend_id;
        (*r).slot = st.slot;
        (*r).len = len as u32;
        (*r).caplen = 0;
    }
    // SAFETY: the helper copies `cap` (1..=TRACE_SNAP, the size of `data`)
    // bytes from the packet's start into the record.
    let copied =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, core::ptr::addr_of_mut!((*r).data).cast(), cap) };
    if copied == 0 {
        // SAFETY: as above.
        unsafe { (*r).caplen = cap };
    }
    e.submit(0);
}
