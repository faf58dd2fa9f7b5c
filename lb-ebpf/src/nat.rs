//! NAT mode: the request's destination becomes the backend's address and
//! port, and the backend's reply (which comes back through us, its gateway)
//! has its source turned back into the VIP's. Checksums are updated
//! incrementally (RFC 1624). The `NAT` map, keyed by the reply's 5-tuple,
//! holds what the reply needs.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{
    Backend, FAMILY_V4, FlowKey, NatValue, PROTO_TCP, PROTO_UDP, Reason,
    flow::{NAT_TOUCH_NS, handshake_bucket, nat_expired},
};

use crate::{
    csum,
    forward::nat_timeouts,
    maps::{HANDSHAKES, NAT, NAT_STATE, TX_PORTS},
    parse::{l4::Ports, ptr_at},
    verdict::Verdict,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Where the headers of the packet being translated are.
pub struct Layout {
    pub l3_off: usize,
    pub l4_off: usize,
    pub family: u8,
    pub proto: u8,
}

/// Whether any VIP is in NAT mode (so that other traffic is looked up in
/// `NAT` at all).
#[inline(always)]
pub fn active() -> bool {
    matches!(NAT_STATE.get(0), Some(v) if *v != 0)
}

/// The request path: records (or refreshes) the flow's NAT entry, then
/// rewrites the destination to the backend. `key` is the request's 5-tuple.
#[inline(always)]
pub fn request(
    ctx: &XdpContext,
    at: &Layout,
    key: &FlowKey,
    b: &Backend,
    backend_id: u32,
    tcp_flags: u8,
) -> Result<(), Reason> {
    let bport = if b.port != 0 { b.port } else { key.dport };
    let rev = FlowKey {
        src: b.addr,
        dst: key.src,
        sport: bport,
        dport: key.sport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let closing = key.proto == PROTO_TCP && tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let syn = key.proto == PROTO_TCP && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let fresh = match NAT.get_ptr_mut(&rev) {
        Some(v) => {
            // SAFETY: a pointer into the map value; LRU entries stay valid
            // while the program runs (freed after an RCU grace period).
            let v = unsafe { &mut *v };
            if v.vip_addr != key.dst
                || v.vip_port != key.dport
                || nat_expired(v, key.proto, now, &nat_timeouts())
            {
                true // the tuple is reused by a new flow
            } else {
                touch(v, now, closing);
                false
            }
        }
        None => true,
    };
    if fresh {
        let macs: *const [u8; 12] = ptr_at(ctx, 0)?;
        // SAFETY: ptr_at checked the bounds.
        let macs = unsafe { macs.read_unaligned() };
        let mut v = NatValue {
            vip_addr: key.dst,
            vip_port: key.dport,
            flags: 0,
            ifindex: ctx.ingress_ifindex() as u32,
            dmac: [0; 6],
            smac: [0; 6],
            last_ns: now,
            closed_ns: if closing { now } else { 0 },
            backend_id,
            _pad: 0,
            // A retransmitted SYN keeps the first one's time (the entry
            // exists then): the latency includes the retransmission.
            syn_ns: if syn { now } else { 0 },
        };
        v.dmac.copy_from_slice(&macs[6..12]);
        v.smac.copy_from_slice(&macs[..6]);
        // A failed insert (LRU contention) is retried by the next packet.
        let _ = NAT.insert(&rev, &v, 0);
    }
    rewrite(ctx, at, Field::Dst, &key.dst, &b.addr, key.dport, bport)
}

/// The reply path, for a packet whose destination is not a VIP: if it is a
/// backend's reply to a NAT flow, its source becomes the VIP again and it
/// goes back where the request came from.
#[inline(always)]
pub fn reply(
    ctx: &XdpContext,
    at: &Layout,
    key: &FlowKey,
    ports: &Ports,
) -> Result<Verdict, Reason> {
    let v = match NAT.get_ptr_mut(key) {
        // SAFETY: as in `request`.
        Some(v) => unsafe { &mut *v },
        None => return Err(Reason::PassNotVip),
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if nat_expired(v, key.proto, now, &nat_timeouts()) {
        let _ = NAT.remove(key);
        return Err(Reason::DropNatExpired);
    }
    let closing = key.proto == PROTO_TCP && ports.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    touch(v, now, closing);
    if v.syn_ns != 0 && key.proto == PROTO_TCP {
        handshake(v, now, ports.tcp_flags);
    }
    let (vip_addr, vip_port, ifindex) = (v.vip_addr, v.vip_port, v.ifindex);
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&v.dmac);
    macs[6..].copy_from_slice(&v.smac);
    rewrite(
        ctx,
        at,
        Field::Src,
        &key.src,
        &vip_addr,
        key.sport,
        vip_port,
    )?;
    let h: *mut [u8; 12] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { h.write_unaligned(macs) };
    let action = if ifindex == 0 || ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        TX_PORTS.redirect(ifindex, 0).map_err(|_| Reason::Aborted)?
    };
    Ok(Verdict {
        reason: Reason::FwdNatReply,
        action,
    })
}

/// The backend's answer to a flow's SYN: a SYN-ACK's latency goes into
/// the backend's histogram, a RST is counted.
#[inline(always)]
fn handshake(v: &mut NatValue, now: u64, flags: u8) {
    let answered = if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        1
    } else if flags & TCP_RST != 0 {
        2
    } else {
        0
    };
    if answered == 0 {
        return;
    }
    if let Some(h) = HANDSHAKES.get_ptr_mut(v.backend_id) {
        // SAFETY: per-CPU element, written only by this CPU.
        let h = unsafe { &mut *h };
        if answered == 1 {
            let us = now.saturating_sub(v.syn_ns) / 1000;
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
}

#[inline(always)]
fn touch(v: &mut NatValue, now: u64, closing: bool) {
    if now.saturating_sub(v.last_ns) >= NAT_TOUCH_NS {
        v.last_ns = now;
    }
    if closing && v.closed_ns == 0 {
        v.closed_ns = now;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Src,
    Dst,
}

/// Replaces the source or destination address and port, updating the IPv4
/// header checksum and the TCP or UDP checksum (which covers the addresses
/// through the pseudo-header).
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    at: &Layout,
    which: Field,
    old_addr: &[u8; 16],
    new_addr: &[u8; 16],
    old_port: u16,
    new_port: u16,
) -> Result<(), Reason> {
    // The L4 checksum: the sum of the changes to addresses and port.
    let mut delta = 0u32;
    if at.family == FAMILY_V4 {
        let off = at.l3_off + if which == Field::Src { 12 } else { 16 };
        let mut ip_delta = 0u32;
        csum::add_change4(&mut ip_delta, old_addr, new_addr);
        delta = ip_delta;
        let a: *mut [u8; 4] = ptr_at(ctx, off)?;
        let c: *mut [u8; 2] = ptr_at(ctx, at.l3_off + 10)?;
        // SAFETY: ptr_at checked the bounds of both.
        unsafe {
            a.write_unaligned([new_addr[0], new_addr[1], new_addr[2], new_addr[3]]);
            let old = u16::from_be_bytes(c.read_unaligned());
            c.write_unaligned(csum::apply(old, ip_delta).to_be_bytes());
        }
    } else {
        let off = at.l3_off + if which == Field::Src { 8 } else { 24 };
        csum::add_change16(&mut delta, old_addr, new_addr);
        let a: *mut [u8; 16] = ptr_at(ctx, off)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { a.write_unaligned(*new_addr) };
    }
    // Ports are in network order in memory, so their bytes are the words.
    let (op, np) = (old_port.to_ne_bytes(), new_port.to_ne_bytes());
    csum::add_word(&mut delta, u16::from_be_bytes(op), u16::from_be_bytes(np));
    let port: *mut [u8; 2] = ptr_at(ctx, at.l4_off + if which == Field::Src { 0 } else { 2 })?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { port.write_unaligned(np) };
    let check_off = if at.proto == PROTO_UDP { 6 } else { 16 };
    let c: *mut [u8; 2] = ptr_at(ctx, at.l4_off + check_off)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe {
        let old = u16::from_be_bytes(c.read_unaligned());
        if at.proto == PROTO_UDP && old == 0 {
            // UDP without a checksum (IPv4 only): stays without.
            return Ok(());
        }
        let mut new = csum::apply(old, delta);
        if at.proto == PROTO_UDP && new == 0 {
            new = 0xffff; // 0 would mean "no checksum"
        }
        c.write_unaligned(new.to_be_bytes());
    }
    Ok(())
}
