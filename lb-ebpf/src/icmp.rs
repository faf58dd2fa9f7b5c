//! ICMP errors about NAT flows, translated like the packets they quote, so
//! that path MTU discovery and port-unreachable signals work through hola:
//!
//! - toward the client: an error about a request on its way to a backend
//!   (quoting client → backend:port, e.g. the backend's port unreachable or
//!   a router's "fragmentation needed") is addressed to the client and
//!   comes back through us; the quoted destination becomes the VIP again.
//! - toward the backend: an error about a reply on its way to the client
//!   (quoting VIP → client, e.g. a router's "packet too big") is addressed
//!   to the VIP; it goes to the flow's backend, the quoted source its own.
//!
//! The outer and quoted IP headers' checksums and the ICMP checksum are
//! updated incrementally. The quoted TCP/UDP checksum is left as it was:
//! it covers data the error does not carry, and stacks do not check it.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_V4, FlowKey, PROTO_TCP, PROTO_UDP, Reason,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_DOWN, BACKEND_F_NEXTHOP},
    flow::{NAT_F_FULLNAT, nat_expired},
};

use crate::{
    csum, forward, icmp_flow,
    maps::BACKENDS,
    nat::{self, Layout},
    parse::ptr_at,
    verdict::Verdict,
};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// The packet an ICMP error quotes.
pub struct Quoted {
    /// Offset of its IP header (right after the 8-byte ICMP header).
    l3: usize,
    /// Offset of its TCP/UDP header.
    l4: usize,
    pub proto: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network order, as in the packet.
    pub sport: u16,
    pub dport: u16,
}

/// The quoted packet of an ICMP error that may concern a flow: IPv4
/// destination unreachable (3) or time exceeded (11); ICMPv6 destination
/// unreachable (1), packet too big (2) or time exceeded (3); quoting TCP
/// or UDP with its ports, all within the error's datagram (`end`: bytes
/// after its length are padding, not quoted). Anything else is not ours
/// (`PassNotVip`).
#[inline(always)]
fn quoted(ctx: &XdpContext, at: &Layout, end: usize) -> Result<Quoted, Reason> {
    let not_ours = |_| Reason::PassNotVip;
    let icmp: *const [u8; 8] = ptr_at(ctx, at.l4_off).map_err(not_ours)?;
    // SAFETY: ptr_at checked the bounds.
    let kind = unsafe { (*icmp)[0] };
    let l3 = at.l4_off + 8;
    let (proto, src, dst, l4) = if at.family == FAMILY_V4 {
        if kind != 3 && kind != 11 {
            return Err(Reason::PassNotVip);
        }
        let h: *const [u8; 20] = ptr_at(ctx, l3).map_err(not_ours)?;
        // SAFETY: ptr_at checked the bounds.
        let h = unsafe { &*h };
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        let frag = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
        if h[0] >> 4 != 4 || ihl < 20 || frag != 0 {
            return Err(Reason::PassNotVip);
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&h[12..16]);
        dst[..4].copy_from_slice(&h[16..20]);
        (h[9], src, dst, l3 + ihl)
    } else {
        if kind != 1 && kind != 2 && kind != 3 {
            return Err(Reason::PassNotVip);
        }
        let h: *const [u8; 40] = ptr_at(ctx, l3).map_err(not_ours)?;
        // SAFETY: ptr_at checked the bounds.
        let h = unsafe { &*h };
        if h[0] >> 4 != 6 {
            return Err(Reason::PassNotVip);
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
        (h[6], src, dst, l3 + 40)
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(Reason::PassNotVip);
    }
    // RFC 792 quotes the first 8 bytes of the datagram; the ports are the
    // first 4, and they are rewritten: they must be in the error itself.
    if l4 + 4 > end {
        return Err(Reason::PassNotVip);
    }
    let p: *const [u8; 4] = ptr_at(ctx, l4).map_err(not_ours)?;
    // SAFETY: ptr_at checked the bounds.
    let p = unsafe { &*p };
    Ok(Quoted {
        l3,
        l4,
        proto,
        src,
        dst,
        sport: u16::from_ne_bytes([p[0], p[1]]),
        dport: u16::from_ne_bytes([p[2], p[3]]),
    })
}

/// Offsets of the source and destination addresses in an IP header.
#[inline(always)]
fn addr_offsets(family: u8) -> (usize, usize) {
    if family == FAMILY_V4 {
        (12, 16)
    } else {
        (8, 24)
    }
}

/// One address to replace: at `off` (from the frame's start), `old` by
/// `new`.
struct AddrSet<'a> {
    family: u8,
    off: usize,
    old: &'a [u8; 16],
    new: &'a [u8; 16],
}

/// Replaces an address, adding the change to `delta`. Not inlined: a
/// BPF-to-BPF call with a stack frame of its own.
#[inline(never)]
fn set_addr(ctx: &XdpContext, a: &AddrSet, delta: &mut u32) -> Result<(), Reason> {
    // The offset arrives through memory: bound it for the verifier (the
    // quoted header ends within the first 256 bytes).
    let off = a.off & 0xff;
    if a.family == FAMILY_V4 {
        csum::add_change4(delta, a.old, a.new);
        write4(ctx, off, a.new)
    } else {
        csum::add_change16(delta, a.old, a.new);
        write16(ctx, off, a.new)
    }
}

/// Shorthand for a `set_addr` call.
macro_rules! set {
    ($ctx:expr, $family:expr, $off:expr, $old:expr, $new:expr, $delta:expr) => {
        set_addr(
            $ctx,
            &AddrSet {
                family: $family,
                off: $off,
                old: $old,
                new: $new,
            },
            $delta,
        )
    };
}

/// Applies the changes: `outer` to the outer IPv4 header checksum (IPv6:
/// already in `icmp`), `inner` (the quoted addresses) to the quoted IPv4
/// header checksum and, with that checksum's own change, to the ICMP one.
#[inline(always)]
fn finish(
    ctx: &XdpContext,
    at: &Layout,
    q: &Quoted,
    outer: u32,
    inner: u32,
    mut icmp: u32,
) -> Result<(), Reason> {
    if at.family == FAMILY_V4 {
        update(ctx, at.l3_off + 10, outer)?;
        let (old, new) = update(ctx, q.l3 + 10, inner)?;
        icmp += (inner & 0xffff) + (inner >> 16);
        csum::add_word(&mut icmp, old, new);
    } else {
        icmp += (inner & 0xffff) + (inner >> 16);
    }
    update(ctx, at.l4_off + 2, icmp)?;
    Ok(())
}

/// An ICMP error addressed to someone else than a VIP (the client, or for
/// fullnat the balancer's fullnat address): if it quotes a request of a
/// NAT flow on its way to the backend, the quoted packet becomes the
/// request as the client sent it (destination the VIP; for fullnat, source
/// the client), the error is addressed to the client (and comes from the
/// VIP when the backend itself sent it), and it goes where the flow's
/// replies go.
#[inline(always)]
fn to_client(
    ctx: &XdpContext,
    at: &Layout,
    end: usize,
    outer_src: &[u8; 16],
    outer_dst: &[u8; 16],
) -> Result<Verdict, Reason> {
    let q = quoted(ctx, at, end)?;
    // The quoted request is (client or balancer) → backend: its reply's key
    // is the swap.
    let key = FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        family: at.family,
        _pad: [0; 2],
    };
    // A copy, not a pointer into the LRU entry (see `nat::nat_copy`).
    let v = match nat::nat_copy(&key) {
        Some(v) => v,
        None => return Err(Reason::PassNotVip),
    };
    let v = &v;
    let now = nat::coarse_now();
    if nat_expired(v, q.proto, now, &forward::nat_timeouts()) {
        return Err(Reason::DropNatExpired);
    }
    let fullnat = v.flags & NAT_F_FULLNAT != 0;
    let (src_off, dst_off) = addr_offsets(at.family);
    let (mut outer, mut inner, mut icmp) = (0u32, 0u32, 0u32);
    // Outer addresses are in ICMPv6's pseudo-header, not ICMPv4's.
    let outer_sum = if at.family == FAMILY_V4 {
        &mut outer
    } else {
        &mut icmp
    };
    if *outer_src == key.src {
        set!(
            ctx,
            at.family,
            at.l3_off + src_off,
            outer_src,
            &v.vip_addr,
            outer_sum
        )?;
    }
    if fullnat {
        set!(
            ctx,
            at.family,
            at.l3_off + dst_off,
            outer_dst,
            &v.client_addr,
            outer_sum
        )?;
    }
    set!(
        ctx,
        at.family,
        q.l3 + dst_off,
        &q.dst,
        &v.vip_addr,
        &mut inner
    )?;
    csum::add_word(&mut icmp, be(q.dport), be(v.vip_port));
    write_port(ctx, q.l4 + 2, v.vip_port)?;
    if fullnat {
        set!(
            ctx,
            at.family,
            q.l3 + src_off,
            &q.src,
            &v.client_addr,
            &mut inner
        )?;
        csum::add_word(&mut icmp, be(q.sport), be(v.client_port));
        write_port(ctx, q.l4, v.client_port)?;
    }
    finish(ctx, at, &q, outer, inner, icmp)?;

    let action = nat::send_back(ctx, v)?;
    Ok(Verdict {
        reason: Reason::FwdNatIcmp,
        action,
    })
}

/// An ICMP error addressed to a VIP address: if it quotes a packet a
/// `dsr` or `tunnel` VIP sent (from that very address), it goes to the
/// flow's backend untouched (`icmp_flow`); if it quotes a reply of a NAT
/// flow (VIP → client), it goes to the flow's backend, addressed to it and
/// quoting the reply as the backend sent it (for fullnat, to the
/// balancer's fullnat address and port).
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    at: &Layout,
    end: usize,
    outer_dst: &[u8; 16],
) -> Result<Verdict, Reason> {
    let q = quoted(ctx, at, end)?;
    if q.src == *outer_dst
        && let Some(vip) = icmp_flow::vip_of(&q, at.family)
    {
        return icmp_flow::to_flow_backend(ctx, at, &q, &vip);
    }
    to_nat_backend(ctx, at, &q, outer_dst)
}

/// The NAT half of [`to_backend`]. Not inlined: its stack frame and the
/// `dsr`/`tunnel` path's are never live together (the verifier bounds the
/// sum of a call chain's frames).
#[inline(never)]
fn to_nat_backend(
    ctx: &XdpContext,
    at: &Layout,
    q: &Quoted,
    outer_dst: &[u8; 16],
) -> Result<Verdict, Reason> {
    // The quoted reply is VIP → client: the request's key is the swap.
    let req = FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        family: at.family,
        _pad: [0; 2],
    };
    // A nat flow's entry, or a fullnat flow's (with its port).
    let (backend_id, port) =
        match crate::flows::lookup(&req).or_else(|| crate::flows::lookup_fullnat(&req)) {
            Some(f) => (f.backend_id, f.hash as u16),
            None => return Err(Reason::PassNotVip),
        };
    let b = match BACKENDS.get(backend_id) {
        Some(b) => b,
        None => return Err(Reason::PassNotVip),
    };
    if b.flags & (BACKEND_F_ACTIVE | BACKEND_F_DOWN | BACKEND_F_NEXTHOP)
        != BACKEND_F_ACTIVE | BACKEND_F_NEXTHOP
    {
        return Err(Reason::PassNotVip);
    }
    let bport = if b.port != 0 { b.port } else { q.sport };
    // Only a live NAT flow of this VIP (not a dsr or tunnel one): a nat
    // flow's entry has the client as destination, a fullnat flow's the
    // balancer's fullnat address and the flow's port.
    let mut rev = FlowKey {
        src: b.addr,
        dst: q.dst,
        sport: bport,
        dport: q.dport,
        proto: q.proto,
        family: at.family,
        _pad: [0; 2],
    };
    let ours = |v: &lb_common::NatValue| v.vip_addr == q.src && v.vip_port == q.sport;
    let mut fullnat = false;
    // Copies, not pointers into the LRU entries (see `nat::nat_copy`).
    let nat = matches!(nat::nat_copy(&rev), Some(v) if ours(&v) && v.flags & NAT_F_FULLNAT == 0);
    if !nat {
        rev.dst = nat::snat_addr(at.family);
        rev.dport = port;
        match nat::nat_copy(&rev) {
            Some(v)
                if ours(&v)
                    && v.flags & NAT_F_FULLNAT != 0
                    && v.client_addr == q.dst
                    && v.client_port == q.dport =>
            {
                fullnat = true;
            }
            _ => return Err(Reason::PassNotVip),
        }
    }
    let (src_off, dst_off) = addr_offsets(at.family);
    let (mut outer, mut inner, mut icmp) = (0u32, 0u32, 0u32);
    let outer_sum = if at.family == FAMILY_V4 {
        &mut outer
    } else {
        &mut icmp
    };
    set!(
        ctx,
        at.family,
        at.l3_off + dst_off,
        outer_dst,
        &b.addr,
        outer_sum
    )?;
    set!(ctx, at.family, q.l3 + src_off, &q.src, &b.addr, &mut inner)?;
    csum::add_word(&mut icmp, be(q.sport), be(bport));
    write_port(ctx, q.l4, bport)?;
    if fullnat {
        set!(ctx, at.family, q.l3 + dst_off, &q.dst, &rev.dst, &mut inner)?;
        csum::add_word(&mut icmp, be(q.dport), be(rev.dport));
        write_port(ctx, q.l4 + 2, rev.dport)?;
    }
    finish(ctx, at, &q, outer, inner, icmp)?;
    forward::rewrite_macs(ctx, b)?;
    let action = forward::egress(ctx, b)?;
    Ok(Verdict {
        reason: Reason::FwdNatIcmp,
        action,
    })
}

/// The entry of the two ICMP programs: parses the outer headers again (a
/// tail call keeps only the packet) and translates toward the backend
/// (`to_backend`: the error is addressed to a VIP) or the client.
#[inline(always)]
pub fn entry(ctx: &XdpContext, to_vip: bool) -> Result<Verdict, Reason> {
    let (at, src, dst, end) = nat::outer(ctx)?;
    let icmp = if at.family == FAMILY_V4 {
        PROTO_ICMP
    } else {
        PROTO_ICMPV6
    };
    if at.proto != icmp {
        return Err(Reason::PassNotVip);
    }
    if to_vip {
        to_backend(ctx, &at, end, &dst)
    } else {
        to_client(ctx, &at, end, &src, &dst)
    }
}

/// A port as stored (network order in memory) read as the checksum word.
#[inline(always)]
fn be(port: u16) -> u16 {
    u16::from_be_bytes(port.to_ne_bytes())
}

#[inline(always)]
fn write4(ctx: &XdpContext, off: usize, a: &[u8; 16]) -> Result<(), Reason> {
    let p: *mut [u8; 4] = ptr_at(ctx, off)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { p.write_unaligned([a[0], a[1], a[2], a[3]]) };
    Ok(())
}

#[inline(always)]
fn write16(ctx: &XdpContext, off: usize, a: &[u8; 16]) -> Result<(), Reason> {
    let p: *mut [u8; 16] = ptr_at(ctx, off)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { p.write_unaligned(*a) };
    Ok(())
}

#[inline(always)]
fn write_port(ctx: &XdpContext, off: usize, port: u16) -> Result<(), Reason> {
    let p: *mut [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe { p.write_unaligned(port.to_ne_bytes()) };
    Ok(())
}

/// Applies `delta` to the checksum at `off`; returns (old, new).
#[inline(always)]
fn update(ctx: &XdpContext, off: usize, delta: u32) -> Result<(u16, u16), Reason> {
    let c: *mut [u8; 2] = ptr_at(ctx, off)?;
    // SAFETY: ptr_at checked the bounds.
    unsafe {
        let old = u16::from_be_bytes(c.read_unaligned());
        let new = csum::apply(old, delta);
        c.write_unaligned(new.to_be_bytes());
        Ok((old, new))
    }
}
