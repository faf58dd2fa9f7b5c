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

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{
    FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_DOWN, BACKEND_F_NEXTHOP},
    flow::{NAT_F_FULLNAT, nat_expired},
};

use crate::{
    csum, forward,
    maps::{BACKENDS, FLOWS, NAT, TX_PORTS},
    nat::Layout,
    parse::{
        eth::{self, ETH_P_IP, ETH_P_IPV6},
        ipv4, ipv6, ptr_at,
    },
    verdict::Verdict,
};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// The packet an ICMP error quotes.
struct Quoted {
    /// Offset of its IP header (right after the 8-byte ICMP header).
    l3: usize,
    /// Offset of its TCP/UDP header.
    l4: usize,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    /// Network order, as in the packet.
    sport: u16,
    dport: u16,
}

/// The quoted packet of an ICMP error that may concern a flow: IPv4
/// destination unreachable (3) or time exceeded (11); ICMPv6 destination
/// unreachable (1), packet too big (2) or time exceeded (3); quoting TCP
/// or UDP with its ports. Anything else is not ours (`PassNotVip`).
#[inline(always)]
fn quoted(ctx: &XdpContext, at: &Layout) -> Result<Quoted, Reason> {
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
    // The first 8 bytes of the quoted datagram are always there (RFC 792).
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

/// An ICMP error addressed to someone else than a VIP (the client): if it
/// quotes a request of a NAT flow on its way to the backend, the quoted
/// destination becomes the VIP again (and the error's source too, when the
/// backend itself sent it), and it goes where the flow's replies go.
#[inline(always)]
fn to_client(ctx: &XdpContext, at: &Layout, outer_src: &[u8; 16]) -> Result<Verdict, Reason> {
    let q = quoted(ctx, at)?;
    // The quoted request is client → backend: its reply's key is the swap.
    let key = FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        family: at.family,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once.
    let v = match unsafe { NAT.get(&key) } {
        // fullnat flows' errors are not translated (yet): addressed to the
        // balancer's fullnat address, they go to its stack.
        Some(v) if v.flags & NAT_F_FULLNAT == 0 => *v,
        _ => return Err(Reason::PassNotVip),
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if nat_expired(&v, q.proto, now, &forward::nat_timeouts()) {
        return Err(Reason::DropNatExpired);
    }
    let from_backend = *outer_src == key.src;
    let mut icmp_delta = 0u32;
    if at.family == FAMILY_V4 {
        if from_backend {
            let mut d = 0u32;
            csum::add_change4(&mut d, outer_src, &v.vip_addr);
            write4(ctx, at.l3_off + 12, &v.vip_addr)?;
            update(ctx, at.l3_off + 10, d)?;
        }
        let mut d = 0u32;
        csum::add_change4(&mut d, &q.dst, &v.vip_addr);
        write4(ctx, q.l3 + 16, &v.vip_addr)?;
        let (old, new) = update(ctx, q.l3 + 10, d)?;
        icmp_delta = d;
        csum::add_word(&mut icmp_delta, old, new);
    } else {
        if from_backend {
            csum::add_change16(&mut icmp_delta, outer_src, &v.vip_addr);
            write16(ctx, at.l3_off + 8, &v.vip_addr)?;
        }
        csum::add_change16(&mut icmp_delta, &q.dst, &v.vip_addr);
        write16(ctx, q.l3 + 24, &v.vip_addr)?;
    }
    csum::add_word(&mut icmp_delta, be(q.dport), be(v.vip_port));
    write_port(ctx, q.l4 + 2, v.vip_port)?;
    update(ctx, at.l4_off + 2, icmp_delta)?;

    let h: *mut [u8; 12] = ptr_at(ctx, 0)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&v.dmac);
    macs[6..].copy_from_slice(&v.smac);
    // SAFETY: ptr_at checked the bounds.
    unsafe { h.write_unaligned(macs) };
    let action = if v.ifindex == 0 || v.ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        TX_PORTS
            .redirect(v.ifindex, 0)
            .map_err(|_| Reason::Aborted)?
    };
    Ok(Verdict {
        reason: Reason::FwdNatIcmp,
        action,
    })
}

/// An ICMP error addressed to a VIP address: if it quotes a reply of a NAT
/// flow (VIP → client), it goes to the flow's backend, addressed to it and
/// quoting the reply as the backend sent it.
#[inline(always)]
fn to_backend(ctx: &XdpContext, at: &Layout, outer_dst: &[u8; 16]) -> Result<Verdict, Reason> {
    let q = quoted(ctx, at)?;
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
    // SAFETY: the value is copied out at once.
    let backend_id = match unsafe { FLOWS.get(&req) } {
        Some(f) => f.backend_id,
        None => return Err(Reason::PassNotVip),
    };
    let b = match BACKENDS.get(backend_id) {
        Some(b) => *b,
        None => return Err(Reason::PassNotVip),
    };
    if b.flags & (BACKEND_F_ACTIVE | BACKEND_F_DOWN | BACKEND_F_NEXTHOP)
        != BACKEND_F_ACTIVE | BACKEND_F_NEXTHOP
    {
        return Err(Reason::PassNotVip);
    }
    let bport = if b.port != 0 { b.port } else { q.sport };
    // Only a live NAT flow of this VIP (not a dsr or tunnel one).
    let rev = FlowKey {
        src: b.addr,
        dst: q.dst,
        sport: bport,
        dport: q.dport,
        proto: q.proto,
        family: at.family,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once.
    match unsafe { NAT.get(&rev) } {
        Some(v) if v.vip_addr == q.src && v.vip_port == q.sport => {}
        _ => return Err(Reason::PassNotVip),
    }
    let mut icmp_delta = 0u32;
    if at.family == FAMILY_V4 {
        let mut d = 0u32;
        csum::add_change4(&mut d, outer_dst, &b.addr);
        write4(ctx, at.l3_off + 16, &b.addr)?;
        update(ctx, at.l3_off + 10, d)?;
        let mut d = 0u32;
        csum::add_change4(&mut d, &q.src, &b.addr);
        write4(ctx, q.l3 + 12, &b.addr)?;
        let (old, new) = update(ctx, q.l3 + 10, d)?;
        icmp_delta = d;
        csum::add_word(&mut icmp_delta, old, new);
    } else {
        csum::add_change16(&mut icmp_delta, outer_dst, &b.addr);
        write16(ctx, at.l3_off + 24, &b.addr)?;
        csum::add_change16(&mut icmp_delta, &q.src, &b.addr);
        write16(ctx, q.l3 + 8, &b.addr)?;
    }
    csum::add_word(&mut icmp_delta, be(q.sport), be(bport));
    write_port(ctx, q.l4, bport)?;
    update(ctx, at.l4_off + 2, icmp_delta)?;
    forward::rewrite_macs(ctx, &b)?;
    let action = forward::egress(ctx, &b)?;
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
    let eth = eth::parse(ctx)?;
    let (at, src, dst) = if eth.proto == ETH_P_IP {
        let ip = ipv4::parse(ctx, eth.l3_off)?;
        if ip.is_fragment || ip.proto != PROTO_ICMP {
            return Err(Reason::PassNotVip);
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&ip.saddr);
        dst[..4].copy_from_slice(&ip.daddr);
        let at = Layout {
            l3_off: eth.l3_off,
            l4_off: ip.l4_off,
            family: FAMILY_V4,
            proto: ip.proto,
        };
        (at, src, dst)
    } else if eth.proto == ETH_P_IPV6 {
        let ip = ipv6::parse(ctx, eth.l3_off)?;
        if ip.nexthdr != PROTO_ICMPV6 {
            return Err(Reason::PassNotVip);
        }
        let at = Layout {
            l3_off: eth.l3_off,
            l4_off: ip.l4_off,
            family: FAMILY_V6,
            proto: ip.nexthdr,
        };
        (at, ip.saddr, ip.daddr)
    } else {
        return Err(Reason::PassNotIp);
    };
    if to_vip {
        to_backend(ctx, &at, &dst)
    } else {
        to_client(ctx, &at, &src)
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
