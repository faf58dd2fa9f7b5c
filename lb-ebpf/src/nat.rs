//! NAT mode: the request's destination becomes the backend's address and
//! port, and the backend's reply (which comes back through us, its gateway)
//! has its source turned back into the VIP's. Checksums are updated
//! incrementally (RFC 1624). The `NAT` map, keyed by the reply's 5-tuple,
//! holds what the reply needs.

use aya_ebpf::{
    bindings::{BPF_EXIST, xdp_action},
    helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::XdpContext,
};
use lb_common::{
    Backend, FAMILY_V4, FAMILY_V6, FlowKey, NatValue, PROTO_TCP, PROTO_UDP, Reason,
    flow::{
        NAT_F_FORWARD, NAT_F_FULLNAT, NAT_F_SYN, NAT_TOUCH_NS, NEW_FLOW_FLOOD, NEW_FLOW_MAGLEV,
        NEW_FLOW_PEER, NEW_FLOW_SYN, NatScratch, NatTimeouts, handshake_bucket, nat_expired,
        v4_addr,
    },
};

use crate::{
    forward::{self, nat_timeouts},
    maps::{
        BACKENDS, FULLNAT_CURSOR, HANDSHAKES, NAT, NAT_CLOCK, NAT_SCRATCH, NAT_STATE, NAT_SYN,
        TX_PORTS,
    },
    nat_rewrite::{Change, Field, rewrite, rewrite_inline},
    parse::{
        eth::{self, ETH_P_IP, ETH_P_IPV6},
        ipv4, ipv6,
        l4::{self, Ports},
        ptr_at,
    },
    verdict::Verdict,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// In the scratch copy only (never in a map): the copy came from
/// `NAT_SYN`, a handshake in progress.
pub(crate) const NAT_F_PENDING: u16 = 1 << 15;

/// Where the headers of the packet being translated are.
pub struct Layout {
    pub l3_off: usize,
    pub l4_off: usize,
    pub family: u8,
    pub proto: u8,
}

/// A copy of the `NAT` entry of `key`, taken at once. `NAT` is an LRU
/// hash: an entry evicted by an insert (this program's or another CPU's) is
/// reused for another key at once, not after a grace period, so no pointer
/// into it is kept or written through: the copy is worked on, and a change
/// is written back with [`write_back`].
#[inline(always)]
pub fn nat_copy(key: &FlowKey) -> Option<NatValue> {
    let p = NAT.get_ptr(key)?;
    // SAFETY: the pointer is into the map's preallocated elements (an LRU
    // element is recycled, never freed, while the map exists, and this
    // program holds the map), so the read is in bounds and aligned; it is
    // read once, here, and not kept. A reuse racing the read can at worst
    // hand back another key's value: the request and ICMP paths check the
    // copy against the packet (`vip_addr`, `vip_port`); the reply path
    // cannot, and would translate that one packet with it.
    Some(unsafe { p.read() })
}

/// Copies the entry at `p` (in `NAT` or `NAT_SYN`) into `dst`, a map value
/// (the scratch's). Not `*dst = p.read()`: with nothing to tell the two
/// apart, LLVM merges that copy and the assignment into a `memmove`, which
/// the BPF target has only as a call to a byte-by-byte loop (96 rounds of
/// eight instructions, the largest part of the request path's cost). A
/// non-overlapping copy is a `memcpy` of known size and alignment, which
/// the backend expands inline into twelve 8-byte loads and stores.
///
/// # Safety
/// `p` must come from a lookup in `NAT` or `NAT_SYN` (see `nat_copy`);
/// `dst` is not in those maps, so the two never overlap.
#[inline(always)]
pub(crate) unsafe fn copy_entry(dst: &mut NatValue, p: *const NatValue) {
    // SAFETY: the caller vouches for `p` (in bounds, aligned, read once
    // here); `dst` is a distinct, writable, aligned `NatValue`.
    unsafe { core::ptr::copy_nonoverlapping(p, dst, 1) }
}

/// Writes a changed copy of the entry of `key` back, only if the entry
/// still exists (BPF_EXIST): an entry expired and deleted, or evicted,
/// since the copy was taken stays gone. The whole value is written: a
/// change another CPU made to the same entry in between is overwritten
/// (the next packet makes a lost touch or close again).
#[inline(always)]
fn write_back(key: &FlowKey, v: &NatValue) {
    let _ = NAT.insert(key, v, u64::from(BPF_EXIST));
}

/// The clock of NAT entries' idle, touch and close times:
/// `CLOCK_MONOTONIC_COARSE` (the same clock as userspace's
/// `CLOCK_MONOTONIC`, updated once a tick: behind it by at most a few ms,
/// which no timeout of seconds notices). The SYN → SYN-ACK latency, in
/// microseconds, takes the precise clock ([`precise_now`]), only on those
/// two packets.
///
/// The coarse clock moves only when a tick advances jiffies, so this CPU
/// reads it once per jiffy and keeps it in `NAT_CLOCK`: the verifier
/// inlines `bpf_jiffies64` (a load) and the per-CPU array lookup, where
/// the helper call of `bpf_ktime_get_coarse_ns` cost about 30 ns a packet.
/// A read that falls between a tick's jiffies update and its clock update
/// keeps the clock's previous value for that jiffy: one tick more behind.
#[inline(always)]
pub fn coarse_now() -> u64 {
    // SAFETY: a helper without arguments (inlined by the verifier).
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = NAT_CLOCK.get_ptr_mut(0) else {
        // SAFETY: a helper without arguments.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: per-CPU element, used only by this CPU while it runs.
    let c = unsafe { &mut *c };
    if c[0] != j || c[1] == 0 {
        // SAFETY: a helper without arguments.
        c[1] = unsafe { bpf_ktime_get_coarse_ns() };
        c[0] = j;
    }
    c[1]
}

/// `CLOCK_MONOTONIC`, precise: for the SYN and SYN-ACK (or RST) times of the
/// handshake latency.
#[inline(always)]
fn precise_now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Whether any VIP is in NAT mode (so that other traffic is looked up in
/// `NAT` at all).
#[inline(always)]
pub fn active() -> bool {
    matches!(NAT_STATE.get(0), Some(v) if *v != 0)
}

/// The entry of the NAT request program (`hola_nat_request`, tail-called
/// by `hola_lb` for a packet of a nat or fullnat VIP once its backend is
/// chosen, with what it knows in `NAT_SCRATCH`).
#[inline(always)]
pub fn request_entry(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let s = match NAT_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU while it runs.
        Some(s) => unsafe { &mut *s },
        None => return Err(Reason::Aborted),
    };
    if s.fullnat != 0 && s.new_flow != 0 {
        // A fullnat handshake in progress goes on with its SYN's backend.
        s.backend_id = crate::nat_syn::syn_backend(&s.key, s.backend_id);
    }
    let b = match BACKENDS.get(s.backend_id) {
        Some(b) => b,
        None => return Err(Reason::Aborted),
    };
    let at = Layout {
        l3_off: s.l3_off as usize,
        l4_off: s.l4_off as usize,
        family: s.key.family,
        proto: s.key.proto,
    };
    // A packet this program drops (or fails to send) reaches no backend:
    // its VIP counts it (a forwarded one is counted by its backend alone).
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let uncounted = |_: &Reason| crate::verdict::count_vip(b.vip_id, bytes);
    request(ctx, &at, s, b).inspect_err(uncounted)?;
    forward::rewrite_macs(ctx, b).inspect_err(uncounted)?;
    let action = forward::egress(ctx, b).inspect_err(uncounted)?;
    // Forwarded: now (not in `hola_lb`, before this program could still
    // drop it) the backend and the new flow are credited. The frame's size
    // is the one `hola_lb` saw: the rewrite changes no length. The VIP is
    // the backend's own: `hola_lb` checked a flow-table hit against it, and
    // a Maglev pick comes from that VIP's table (which holds only its own).
    crate::verdict::credit_forward(
        b.vip_id,
        s.backend_id,
        bytes,
        s.new_flow == NEW_FLOW_MAGLEV,
        s.new_flow != 0,
    );
    Ok(Verdict {
        reason: match s.new_flow {
            NEW_FLOW_MAGLEV => Reason::FwdNewFlow,
            NEW_FLOW_PEER => Reason::FwdPeerFlow,
            NEW_FLOW_FLOOD => Reason::FwdFlood,
            NEW_FLOW_SYN => Reason::FwdSyn,
            _ => Reason::FwdEstablished,
        },
        action,
    })
}

/// The request path: records (or refreshes) the flow's NAT entry, then
/// rewrites the destination to the backend (and for fullnat the source to
/// the balancer's address and the flow's port). Works in `s` (a map value)
/// rather than on the stack.
///
/// A SYN's translation waits in `NAT_SYN`, never in `NAT`: the client's
/// first non-SYN packet moves it there (a handshake completed), so that
/// SYNs evict only other unanswered SYNs, never an established
/// translation. A new flow over the insert rate limit is translated and
/// not recorded.
#[inline(always)]
fn request(ctx: &XdpContext, at: &Layout, s: &mut NatScratch, b: &Backend) -> Result<(), Reason> {
    let bport = if b.port != 0 { b.port } else { s.key.dport };
    let fullnat = s.fullnat != 0;
    let proto = s.key.proto;
    s.rev.src = b.addr;
    s.rev.sport = bport;
    s.rev.proto = proto;
    s.rev.family = s.key.family;
    s.rev._pad = [0; 2];
    if fullnat {
        s.rev.dst = snat_addr(s.key.family);
        s.rev.dport = s.port as u16;
    } else {
        s.rev.dst = s.key.src;
        s.rev.dport = s.key.sport;
    }
    let closing = proto == PROTO_TCP && s.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let syn = proto == PROTO_TCP && s.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // A SYN's time starts the handshake latency: the precise clock.
    let now = if syn { precise_now() } else { coarse_now() };
    let t = nat_timeouts();
    let unrecorded = s.new_flow == NEW_FLOW_FLOOD;
    // A fullnat flow-table miss knows no source port to look `NAT` up by.
    let port_known = !(fullnat && s.new_flow != 0);
    let mut fresh = !(port_known && established(s, now, closing, &t));
    if fresh {
        fresh = if port_known {
            !crate::nat_syn::pending(s, now, &t)
        } else {
            !crate::nat_syn::pending_port(s, now, &t)
        };
    }
    let pending_now = !fresh && s.value.flags & NAT_F_PENDING != 0;
    if pending_now && s.tcp_flags & TCP_RST != 0 {
        // The client refuses the handshake (a spoofed SYN's real owner
        // answering the SYN-ACK does): it ends, and is not promoted.
        let _ = NAT_SYN.remove(&s.rev);
        if fullnat {
            let _ = NAT_SYN.remove(&s.key);
        }
    } else if pending_now && !syn {
        // The handshake completed: the translation moves to `NAT`.
        s.value.flags &= !(NAT_F_PENDING | NAT_F_SYN);
        s.value.last_ns = now;
        if closing && s.value.closed_ns == 0 {
            s.value.closed_ns = now;
        }
        let _ = NAT.insert(&s.rev, &s.value, 0);
        let _ = NAT_SYN.remove(&s.rev);
        if fullnat {
            let _ = NAT_SYN.remove(&s.key);
            crate::flows::record_fullnat(&s.key, s.backend_id, s.rev.dport);
        } else if crate::cluster::active() {
            crate::cluster::nat_created(&s.rev, &s.value);
        }
    }
    if fresh && fullnat {
        // A new flow (or one whose entry is gone): a port of this CPU's
        // range that no live flow holds.
        let port = alloc_port(&mut s.rev, now, &t)?;
        s.rev.dport = port;
    }
    if fresh && !unrecorded {
        record(ctx, s, now, closing, syn)?;
    }
    let dst = Change {
        which: Field::Dst,
        old_addr: s.key.dst,
        new_addr: b.addr,
        old_port: s.key.dport,
        new_port: bport,
    };
    rewrite_inline(ctx, at, &dst)?;
    if fullnat {
        let src = Change {
            which: Field::Src,
            old_addr: s.key.src,
            new_addr: s.rev.dst,
            old_port: s.key.sport,
            new_port: s.rev.dport,
        };
        rewrite_inline(ctx, at, &src)?;
    }
    Ok(())
}

/// Whether `NAT` holds a live translation of this flow (`s.rev`): then it
/// is refreshed. `s.value` is left holding a copy of it.
#[inline(always)]
fn established(s: &mut NatScratch, now: u64, closing: bool, t: &NatTimeouts) -> bool {
    let Some(p) = NAT.get_ptr(&s.rev) else {
        return false;
    };
    // The entry is copied into the scratch value (the stack has no room
    // for it), worked on there and written back if touched: see
    // `nat_copy` for why no pointer into it is kept.
    // SAFETY: as in `nat_copy`; the scratch is no map element of `NAT`.
    unsafe { copy_entry(&mut s.value, p) };
    if !ours(s) || nat_expired(&s.value, s.key.proto, now, t) {
        return false;
    }
    if touch(&mut s.value, now, closing) {
        write_back(&s.rev, &s.value);
    }
    s.value.flags &= !NAT_F_PENDING;
    true
}

/// Whether the copy in `s.value` is this request's flow: its VIP (and for
/// fullnat its client).
#[inline(always)]
pub(crate) fn ours(s: &NatScratch) -> bool {
    let v = &s.value;
    v.vip_addr == s.key.dst
        && v.vip_port == s.key.dport
        && (s.fullnat == 0 || (v.client_addr == s.key.src && v.client_port == s.key.sport))
}

/// A new translation: a SYN's into `NAT_SYN` (for fullnat with its port
/// under the client's 5-tuple too), anything else's into `NAT` (for
/// fullnat with its port in `FULLNAT_FLOWS`).
#[inline(always)]
fn record(
    ctx: &XdpContext,
    s: &mut NatScratch,
    now: u64,
    closing: bool,
    syn: bool,
) -> Result<(), Reason> {
    let fullnat = s.fullnat != 0;
    let macs: *const [u8; 12] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    let macs = unsafe { macs.read_unaligned() };
    let v = &mut s.value;
    v.vip_addr = s.key.dst;
    v.vip_port = s.key.dport;
    v.flags = if fullnat { NAT_F_FULLNAT } else { 0 } | if syn { NAT_F_SYN } else { 0 };
    v.ifindex = ctx.ingress_ifindex() as u32;
    v.dmac.copy_from_slice(&macs[6..12]);
    v.smac.copy_from_slice(&macs[..6]);
    v.last_ns = now;
    v.closed_ns = if closing { now } else { 0 };
    v.backend_id = s.backend_id;
    v.fwd_port = 0;
    v.syn_ns = if syn { now } else { 0 };
    v.client_addr = if fullnat { s.key.src } else { [0; 16] };
    v.client_port = if fullnat { s.key.sport } else { 0 };
    v._pad2 = [0; 6];
    // A failed insert (LRU contention) is retried by the next packet.
    if syn {
        let _ = NAT_SYN.insert(&s.rev, &s.value, 0);
        if !fullnat && crate::cluster::active() {
            // Peers keep it in their `NAT_SYN` (`NAT_F_SYN`).
            crate::cluster::nat_created(&s.rev, &s.value);
        }
        if fullnat {
            s.value.flags |= NAT_F_FORWARD;
            s.value.fwd_port = u32::from(s.rev.dport);
            let _ = NAT_SYN.insert(&s.key, &s.value, 0);
        }
        return Ok(());
    }
    let _ = NAT.insert(&s.rev, &s.value, 0);
    if fullnat {
        crate::flows::record_fullnat(&s.key, s.backend_id, s.rev.dport);
    } else if crate::cluster::active() {
        crate::cluster::nat_created(&s.rev, &s.value);
    }
    Ok(())
}

/// fullnat: the balancer's source address for `family`.
#[inline(always)]
pub fn snat_addr(family: u8) -> [u8; 16] {
    if family == FAMILY_V4 {
        let a: [u8; 4] = setting!(fullnat_src_v4);
        [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    } else {
        setting!(fullnat_src_v6)
    }
}

/// Whether the entry at `p` (in `NAT` or `NAT_SYN`) is not expired,
/// reading only the two times it takes (copying the whole value for each
/// candidate port would cost the verifier too much).
#[inline(always)]
fn live(p: *const NatValue, proto: u8, now: u64, t: &NatTimeouts) -> bool {
    // SAFETY: as in `nat_copy`: the pointer is into the map's preallocated
    // elements; two aligned u64 fields are read once each, not kept.
    let (last_ns, closed_ns) = unsafe {
        (
            core::ptr::addr_of!((*p).last_ns).read(),
            core::ptr::addr_of!((*p).closed_ns).read(),
        )
    };
    !lb_common::flow::expired_at(last_ns, closed_ns, proto, now, t)
}

/// fullnat: the next port of this CPU's range whose reply key (`rev`, its
/// `dport` the candidate) holds no live flow. At most 16 candidates are
/// tried; then the flow is dropped and counted, never given a live port.
#[inline(always)]
fn alloc_port(rev: &mut FlowKey, now: u64, t: &NatTimeouts) -> Result<u16, Reason> {
    let lo: u16 = setting!(fullnat_port_lo);
    let span: u16 = setting!(fullnat_port_span);
    if span == 0 {
        return Err(Reason::DropNatNoPort);
    }
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let base = u32::from(lo) + cpu * u32::from(span);
    let cursor = match FULLNAT_CURSOR.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU.
        Some(c) => unsafe { &mut *c },
        None => return Err(Reason::Aborted),
    };
    let mut i = 0;
    while i < 16 {
        let port = (base + *cursor % u32::from(span)) as u16;
        *cursor = cursor.wrapping_add(1);
        rev.dport = port.to_be();
        // Free: neither an established flow nor a handshake holds it.
        let free = NAT
            .get_ptr(&*rev)
            .is_none_or(|p| !live(p, rev.proto, now, t))
            && NAT_SYN
                .get_ptr(&*rev)
                .is_none_or(|p| !live(p, rev.proto, now, t));
        if free {
            return Ok(port.to_be());
        }
        i += 1;
    }
    Err(Reason::DropNatNoPort)
}

/// The outer headers of a packet a tail-called program gets (a tail call
/// keeps only the packet): where they are, the source and destination
/// addresses, and the offset where the datagram ends (by its length
/// field). A fragment, or anything but IPv4 and IPv6, is not ours.
#[inline(always)]
pub fn outer(ctx: &XdpContext) -> Result<(Layout, [u8; 16], [u8; 16], usize), Reason> {
    let eth = eth::parse(ctx).map_err(|_| Reason::PassNotVip)?;
    if eth.proto == ETH_P_IP {
        let ip = ipv4::parse(ctx, eth.l3_off).map_err(|_| Reason::PassNotVip)?;
        if ip.is_fragment {
            return Err(Reason::PassNotVip);
        }
        let (src, dst) = (v4_addr(ip.saddr), v4_addr(ip.daddr));
        let at = Layout {
            l3_off: eth.l3_off,
            l4_off: ip.l4_off,
            family: FAMILY_V4,
            proto: ip.proto,
        };
        Ok((at, src, dst, eth.l3_off + ip.tot_len as usize))
    } else if eth.proto == ETH_P_IPV6 {
        let ip = ipv6::parse(ctx, eth.l3_off).map_err(|_| Reason::PassNotVip)?;
        let at = Layout {
            l3_off: eth.l3_off,
            l4_off: ip.l4_off,
            family: FAMILY_V6,
            proto: ip.nexthdr,
        };
        Ok((at, ip.saddr, ip.daddr, ip.l4_off + ip.payload_len as usize))
    } else {
        Err(Reason::PassNotIp)
    }
}

/// The entry of the NAT reply program (`hola_nat_reply`, tail-called by
/// `hola_lb` for a TCP or UDP packet not addressed to a VIP while a NAT VIP
/// exists): parses the headers again and translates the reply.
#[inline(always)]
pub fn reply_entry(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let (at, src, dst, end) = outer(ctx)?;
    if at.proto != PROTO_TCP && at.proto != PROTO_UDP {
        return Err(Reason::PassNotVip);
    }
    // Not ours to judge: a short header of someone else's packet passes.
    let ports = l4::parse(ctx, at.l4_off, at.proto, end).map_err(|_| Reason::PassNotVip)?;
    let key = FlowKey {
        src,
        dst,
        sport: ports.sport,
        dport: ports.dport,
        proto: at.proto,
        family: at.family,
        _pad: [0; 2],
    };
    reply(ctx, &at, &key, &ports)
}

/// The reply path: if the packet is a backend's reply to a NAT flow, its
/// source becomes the VIP again (and for fullnat its destination the
/// client) and it goes back where the request came from.
#[inline(always)]
pub(crate) fn reply(
    ctx: &XdpContext,
    at: &Layout,
    key: &FlowKey,
    ports: &Ports,
) -> Result<Verdict, Reason> {
    // An established flow's entry, else a handshake's in progress (its
    // SYN-ACK), copied once (see `nat_copy`).
    let (p, map) = match NAT.get_ptr(key) {
        Some(p) => (p, &NAT),
        None => match NAT_SYN.get_ptr(key) {
            Some(p) => (p, &NAT_SYN),
            None => return Err(Reason::PassNotVip),
        },
    };
    // SAFETY: as in `nat_copy`.
    let mut v = unsafe { p.read() };
    if v.flags & NAT_F_FORWARD != 0 {
        return Err(Reason::PassNotVip);
    }
    let v = &mut v;
    let now = coarse_now();
    if nat_expired(v, key.proto, now, &nat_timeouts()) {
        let _ = map.remove(key);
        return Err(Reason::DropNatExpired);
    }
    let closing = key.proto == PROTO_TCP && ports.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let mut changed = touch(v, now, closing);
    if v.syn_ns != 0 && key.proto == PROTO_TCP {
        changed |= handshake(v, ports.tcp_flags);
    }
    if changed {
        // Only if the entry still exists, as in `write_back`.
        let _ = map.insert(key, &*v, u64::from(BPF_EXIST));
    }
    let (vip_addr, vip_port) = (v.vip_addr, v.vip_port);
    let fullnat = v.flags & NAT_F_FULLNAT != 0;
    let (client_addr, client_port) = (v.client_addr, v.client_port);
    let src = Change {
        which: Field::Src,
        old_addr: key.src,
        new_addr: vip_addr,
        old_port: key.sport,
        new_port: vip_port,
    };
    rewrite(ctx, at, &src)?;
    if fullnat {
        let dst = Change {
            which: Field::Dst,
            old_addr: key.dst,
            new_addr: client_addr,
            old_port: key.dport,
            new_port: client_port,
        };
        rewrite(ctx, at, &dst)?;
    }
    Ok(Verdict {
        reason: Reason::FwdNatReply,
        action: send_back(ctx, v)?,
    })
}

/// Sends a packet of flow `v` back the way its request came: to the MAC
/// it came from, from the MAC it was sent to, out of the interface it came
/// in on (XDP_TX when that is this one, else a redirect).
#[inline(always)]
pub fn send_back(ctx: &XdpContext, v: &NatValue) -> Result<u32, Reason> {
    let h: *mut [u8; 12] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds; `dmac` and `smac` are 12 adjacent
    // bytes of `NatValue` (asserted in lb-common).
    unsafe { forward::copy_macs(h.cast(), core::ptr::addr_of!(v.dmac).cast()) };
    if v.ifindex == 0 || v.ifindex == ctx.ingress_ifindex() as u32 {
        Ok(xdp_action::XDP_TX)
    } else {
        TX_PORTS.redirect(v.ifindex, 0).map_err(|_| Reason::Aborted)
    }
}

/// The backend's answer to a flow's SYN: a SYN-ACK's latency goes into
/// the backend's histogram, a RST is counted. Returns whether `v` changed
/// (the SYN's time is cleared once answered).
#[inline(always)]
fn handshake(v: &mut NatValue, flags: u8) -> bool {
    let answered = if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        1
    } else if flags & TCP_RST != 0 {
        2
    } else {
        0
    };
    if answered == 0 {
        return false;
    }
    if let Some(h) = HANDSHAKES.get_ptr_mut(v.backend_id) {
        // SAFETY: per-CPU element, written only by this CPU.
        let h = unsafe { &mut *h };
        if answered == 1 {
            let us = precise_now().saturating_sub(v.syn_ns) / 1000;
            let b = handshake_bucket(us);
            if let Some(c) = h.buckets.get_mut(b) {
                *c += 1;
            }
            h.syn_acks += 1;
        } else {
            h.rsts += 1;
        }
    }
    v.syn_ns = 0;
    true
}

/// Refreshes the last-seen time (at most once per `NAT_TOUCH_NS`, so that
/// an entry is written back about once a second, not per packet) and
/// records the first FIN or RST. Returns whether `v` changed.
#[inline(always)]
fn touch(v: &mut NatValue, now: u64, closing: bool) -> bool {
    let mut changed = false;
    if now.saturating_sub(v.last_ns) >= NAT_TOUCH_NS {
        v.last_ns = now;
        changed = true;
    }
    if closing && v.closed_ns == 0 {
        v.closed_ns = now;
        changed = true;
    }
    changed
}
