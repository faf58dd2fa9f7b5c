//! Fragments (`hola_frag`, tail-called by `hola_lb` for every fragment to
//! a VIP address, and for a NAT backend's fragmented replies). A first
//! fragment (offset 0, more to come: it carries the ports) is balanced as
//! any packet (`lookup::try_lb::<true>`), and its datagram (addresses,
//! protocol, id) remembered in `FRAGS` with where it went; the later
//! fragments (no transport header) follow that entry. A later fragment
//! that arrives first decides for the whole datagram (see [`early`]).
//! Everything here is off `hola_lb`'s path: a fragment costs it one branch.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    AddrVips, Backend, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, Reason,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_NEXTHOP},
    flow::{FlowValue, v4_addr},
    frag::{
        FRAG_DSR, FRAG_F_DST, FRAG_F_EARLY, FRAG_F_SRC, FRAG_LIFETIME_NS, FRAG_NAT, FRAG_REPLY,
        FRAG_TUNNEL, FragKey, FragValue,
    },
    hash::flow_hash,
    vip::{
        ADDR_F_OVERFLOW, ADDR_SLOTS, VIP_F_SRC_HASH, VIP_MODE_FULLNAT, VIP_MODE_MASK, VIP_MODE_NAT,
        VIP_MODE_TUNNEL, VipMeta,
    },
};

use crate::{
    csum,
    forward::{self, Inner},
    lookup,
    maps::{
        BACKENDS, FRAG_SCRATCH, FRAGS, NAT, NAT_SYN, TX_PORTS, VIP_ADDRS4, VIP_ADDRS6, VIP_STATS,
    },
    nat::{self, Layout},
    parse::{
        eth::{self, ETH_P_IP, ETH_P_IPV6},
        frag::{self as pfrag, Frag, NEXTHDR_FRAGMENT},
        ipv4, ipv6, l4, ptr_at,
    },
    verdict::{self, Verdict},
};

/// A fragment's headers: where L3 starts, its datagram's key, its place.
/// (What encapsulation needs is read again where it is needed: an
/// `Inner` kept in this struct on the stack compiles to stores the
/// verifier finds misaligned.)
struct Parsed {
    l3_off: usize,
    key: FragKey,
    f: Frag,
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Parsed, Reason> {
    let eth = eth::parse(ctx)?;
    let (key, f) = if eth.proto == ETH_P_IP {
        let ip = ipv4::parse(ctx, eth.l3_off)?;
        let f = pfrag::v4(ctx, eth.l3_off, ip.l4_off)?;
        let (src, dst) = (v4_addr(ip.saddr), v4_addr(ip.daddr));
        (datagram(src, dst, &f, FAMILY_V4), f)
    } else if eth.proto == ETH_P_IPV6 {
        let ip = ipv6::parse(ctx, eth.l3_off)?;
        if ip.nexthdr != NEXTHDR_FRAGMENT {
            return Err(Reason::PassIpv6ExtHdr);
        }
        let f = pfrag::v6(ctx, eth.l3_off, ip.l4_off + ip.payload_len as usize)?;
        (datagram(ip.saddr, ip.daddr, &f, FAMILY_V6), f)
    } else {
        return Err(Reason::PassNotIp);
    };
    Ok(Parsed {
        l3_off: eth.l3_off,
        key,
        f,
    })
}

/// The entry of `hola_frag` (a fragment to a VIP address): a first
/// fragment is balanced, a later one follows its datagram.
#[inline(always)]
pub fn entry(ctx: &XdpContext, bytes: u64) -> Result<Verdict, Reason> {
    let p = parse(ctx)?;
    if p.f.offset == 0 {
        return lookup::try_lb::<true>(ctx, bytes, false);
    }
    follow(ctx, p.l3_off, &p.key, bytes)
}

/// The entry of `hola_frag_reply` (tail-called by `hola_frag` for a first
/// fragment from a NAT VIP's backend, not to a VIP address): translated
/// as any reply (`nat::reply`), and its datagram remembered with the
/// translation; the later fragments follow it in `hola_frag`. Anything
/// else (the backend's own traffic through its gateway) passes, as it did
/// before fragments were known. A program of its own: the reply
/// translation's stack would not fit beside `try_lb`'s; for the same
/// reason the datagram's key is built only once the reply is translated.
#[inline(always)]
pub fn reply_entry(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let eth = eth::parse(ctx).map_err(|_| Reason::PassNotVip)?;
    let l3_off = eth.l3_off;
    let (src, dst, family, f) = if eth.proto == ETH_P_IP {
        let ip = ipv4::parse(ctx, l3_off).map_err(|_| Reason::PassNotVip)?;
        let f = pfrag::v4(ctx, l3_off, ip.l4_off)?;
        (v4_addr(ip.saddr), v4_addr(ip.daddr), FAMILY_V4, f)
    } else if eth.proto == ETH_P_IPV6 {
        let ip = ipv6::parse(ctx, l3_off).map_err(|_| Reason::PassNotVip)?;
        if ip.nexthdr != NEXTHDR_FRAGMENT {
            return Err(Reason::PassNotVip);
        }
        let end = ip.l4_off + ip.payload_len as usize;
        let f = pfrag::v6(ctx, l3_off, end).map_err(|_| Reason::PassNotVip)?;
        (ip.saddr, ip.daddr, FAMILY_V6, f)
    } else {
        return Err(Reason::PassNotVip);
    };
    if f.offset != 0 || (f.proto != PROTO_TCP && f.proto != PROTO_UDP) {
        return Err(Reason::PassNotVip);
    }
    // Bounded for the verifier: L3 starts at 14 or 18, L4 at most 68
    // bytes after it.
    let (l3_off, l4_off) = (l3_off & 0x3f, f.l4_off & 0xff);
    // The datagram's length is in the first fragment's header (UDP's
    // length field), not its own: the whole datagram is the client's to
    // check.
    let ports = l4::parse(ctx, l4_off, f.proto, l4_off + 0xffff).map_err(|_| Reason::PassNotVip)?;
    let key = FlowKey {
        src,
        dst,
        sport: ports.sport,
        dport: ports.dport,
        proto: f.proto,
        family,
        _pad: [0; 2],
    };
    let layout = Layout {
        l3_off,
        l4_off,
        family,
        proto: f.proto,
    };
    let verdict = nat::reply(ctx, &layout, &key, &ports)?;
    if f.more {
        remember_reply(ctx, l3_off, &key, f.id)?;
    }
    Ok(verdict)
}

/// The `FRAGS` key of the datagram a fragment belongs to.
#[inline(always)]
fn datagram(src: [u8; 16], dst: [u8; 16], f: &Frag, family: u8) -> FragKey {
    FragKey {
        src,
        dst,
        id: f.id.to_ne_bytes(),
        proto: f.proto,
        family,
        _pad: [0; 2],
    }
}

/// The entry of `key`, copied out, if it is younger than the lifetime.
#[inline(always)]
fn live(key: &FragKey, now: u64) -> Option<FragValue> {
    // SAFETY: copied out at once: an LRU element is reused as soon as it
    // is evicted (see `nat::nat_copy`), so no reference is kept.
    let v = unsafe { FRAGS.get(key) }.copied()?;
    (now.wrapping_sub(v.created_ns) < FRAG_LIFETIME_NS).then_some(v)
}

/// A later fragment: sent the way its datagram's first went, or, when no
/// fragment of it has been seen, placed by [`early`] if it is for a VIP
/// address; anything else (a fragment from a NAT backend that is no reply
/// hola knows) passes as before.
#[inline(always)]
fn follow(ctx: &XdpContext, l3_off: usize, key: &FragKey, bytes: u64) -> Result<Verdict, Reason> {
    let now = nat::coarse_now();
    if let Some(v) = live(key, now) {
        return send(ctx, l3_off, key.family, &v, bytes, Reason::FwdFragment);
    }
    let addr_vips = if key.family == FAMILY_V4 {
        let d = u32::from_ne_bytes([key.dst[0], key.dst[1], key.dst[2], key.dst[3]]);
        VIP_ADDRS4.get_ptr(d)
    } else {
        VIP_ADDRS6.get_ptr(key.dst)
    };
    match addr_vips {
        Some(a) => early(ctx, l3_off, key, a, bytes, now),
        None => Err(Reason::PassNotVip),
    }
}

/// A later fragment of a datagram not seen yet (its first fragment was
/// reordered behind it, or the entry is gone): without ports its VIP is
/// known only if its address has one VIP of its protocol (else it is
/// dropped, `DropFragment`). The datagram's backend is then chosen by
/// the VIP's Maglev table for the datagram's hash (addresses, protocol,
/// id; the source alone for a `src_hash` VIP), remembered
/// (`FRAG_F_EARLY`), and the first fragment, when it comes, follows it, so
/// that the datagram reaches one backend whole.
#[inline(always)]
fn early(
    ctx: &XdpContext,
    l3_off: usize,
    key: &FragKey,
    addr: *const AddrVips,
    bytes: u64,
    now: u64,
) -> Result<Verdict, Reason> {
    let vip = only_vip(addr, key.proto).ok_or(Reason::DropFragment)?;
    let fk = FlowKey {
        src: key.src,
        dst: key.dst,
        sport: u16::from_ne_bytes([key.id[0], key.id[1]]),
        dport: u16::from_ne_bytes([key.id[2], key.id[3]]),
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let hash = flow_hash(&fk, vip.flags & VIP_F_SRC_HASH != 0);
    let id = lookup::pick(&vip, hash);
    let b = match BACKENDS.get(id) {
        Some(b) if id != 0 && b.flags & BACKEND_F_ACTIVE != 0 => b,
        _ => {
            if let Some(s) = VIP_STATS.get_ptr_mut(vip.vip_id) {
                // SAFETY: per-CPU element, written only by this CPU.
                unsafe {
                    (*s).packets += 1;
                    (*s).bytes += bytes;
                    (*s).no_backend += 1;
                }
            }
            return Err(Reason::DropNoBackend);
        }
    };
    if b.flags & BACKEND_F_NEXTHOP == 0 {
        verdict::count_vip(vip.vip_id, bytes);
        return Err(Reason::DropNoNexthop);
    }
    let mut v = toward(id, hash, vip.flags & VIP_MODE_MASK, b, key.family);
    v.created_ns = now;
    v.flags |= FRAG_F_EARLY;
    let _ = FRAGS.insert(key, &v, 0);
    send(ctx, l3_off, key.family, &v, bytes, Reason::FwdFragmentEarly)
}

/// The one VIP of `proto` at the address (an exact port or all ports),
/// if there is exactly one; none when the address's VIPs overflow its
/// slots (then there are many).
#[inline(always)]
fn only_vip(addr: *const AddrVips, proto: u8) -> Option<VipMeta> {
    // SAFETY: a pointer into a map value returned by the lookup; entries
    // are replaced whole (not preallocated, freed after an RCU grace
    // period), so it stays valid while the program runs.
    let addr = unsafe { &*addr };
    if addr.flags & ADDR_F_OVERFLOW != 0 {
        return None;
    }
    let mut found = None;
    let mut i = 0;
    while i < ADDR_SLOTS {
        if i as u32 >= addr.count {
            break;
        }
        let slot = &addr.slots[i];
        if slot.proto == proto {
            if found.is_some() {
                return None;
            }
            found = Some(slot.meta);
        }
        i += 1;
    }
    found
}

/// The entry for a datagram sent to backend `id` of a VIP in `mode`
/// (its time and flags beyond the rewrite left to the caller).
#[inline(always)]
fn toward(id: u32, hash: u32, mode: u32, b: &Backend, family: u8) -> FragValue {
    let mut v = FragValue {
        backend_id: id,
        hash,
        ..FragValue::default()
    };
    if mode == VIP_MODE_TUNNEL {
        v.kind = FRAG_TUNNEL;
    } else if mode == VIP_MODE_NAT || mode == VIP_MODE_FULLNAT {
        v.kind = FRAG_NAT;
        v.flags = FRAG_F_DST;
        v.dst = b.addr;
        if mode == VIP_MODE_FULLNAT {
            v.flags |= FRAG_F_SRC;
            v.src = nat::snat_addr(family);
        }
    } else {
        v.kind = FRAG_DSR;
    }
    v
}

/// A first fragment balanced by `try_lb::<true>` to `backend_id`: its
/// datagram is remembered, for the fragments after it.
#[inline(always)]
pub fn remember(key: &FlowKey, id: [u8; 4], backend_id: u32, hash: u32, mode: u32, b: &Backend) {
    let fk = FragKey {
        src: key.src,
        dst: key.dst,
        id,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let mut v = toward(backend_id, hash, mode, b, key.family);
    v.created_ns = nat::coarse_now();
    let _ = FRAGS.insert(&fk, &v, 0);
}

/// The backend a later fragment that came first chose for the datagram of
/// this first fragment, if one did (within the lifetime).
#[inline(always)]
pub fn early_choice(key: &FlowKey, id: [u8; 4]) -> Option<FlowValue> {
    let fk = FragKey {
        src: key.src,
        dst: key.dst,
        id,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let v = live(&fk, nat::coarse_now())?;
    (v.flags & FRAG_F_EARLY != 0 && v.kind != FRAG_REPLY).then_some(FlowValue {
        backend_id: v.backend_id,
        hash: v.hash,
    })
}

/// Sends a later fragment the way `v` says.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    l3_off: usize,
    family: u8,
    v: &FragValue,
    bytes: u64,
    reason: Reason,
) -> Result<Verdict, Reason> {
    if v.kind == FRAG_REPLY {
        rewrite_addrs(ctx, l3_off, family, v)?;
        let h: *mut [u8; 12] = ptr_at(ctx, 0)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { h.write_unaligned(v.macs) };
        let action = if v.ifindex == 0 || v.ifindex == ctx.ingress_ifindex() as u32 {
            xdp_action::XDP_TX
        } else {
            TX_PORTS
                .redirect(v.ifindex, 0)
                .map_err(|_| Reason::Aborted)?
        };
        return Ok(Verdict { reason, action });
    }
    // The backend must still be one (removed: its id may be another's).
    let b = match BACKENDS.get(v.backend_id) {
        Some(b)
            if b.flags & (BACKEND_F_ACTIVE | BACKEND_F_NEXTHOP)
                == BACKEND_F_ACTIVE | BACKEND_F_NEXTHOP =>
        {
            b
        }
        _ => return Err(Reason::DropFragment),
    };
    // From here the packet is its VIP's: counted by its backend once
    // forwarded, by the VIP itself if it fails on the way.
    let uncounted = |_: &Reason| verdict::count_vip(b.vip_id, bytes);
    let action = to_backend(ctx, l3_off, family, v, b).inspect_err(uncounted)?;
    verdict::credit_forward(b.vip_id, v.backend_id, bytes, false, true);
    Ok(Verdict { reason, action })
}

/// The rewrite of a later fragment for backend `b` (`v` says how), and
/// its action.
#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    l3_off: usize,
    family: u8,
    v: &FragValue,
    b: &Backend,
) -> Result<u32, Reason> {
    if v.kind == FRAG_TUNNEL {
        let inner = if family == FAMILY_V4 {
            let ip = ipv4::parse(ctx, l3_off)?;
            Inner::V4 {
                tot_len: ip.tot_len,
                tos: ip.tos,
            }
        } else {
            let ip = ipv6::parse(ctx, l3_off)?;
            Inner::V6 {
                payload_len: ip.payload_len,
                tclass: ip.tclass,
            }
        };
        forward::encap(ctx, l3_off, b, inner, v.hash)?;
    } else {
        if v.kind == FRAG_NAT {
            rewrite_addrs(ctx, l3_off, family, v)?;
        }
        forward::rewrite_macs(ctx, b)?;
    }
    forward::egress(ctx, b)
}

/// Rewrites the addresses `v` flags, and for IPv4 the header checksum (a
/// later fragment has no transport header: the first carried its
/// checksum, already updated).
#[inline(always)]
fn rewrite_addrs(ctx: &XdpContext, l3_off: usize, family: u8, v: &FragValue) -> Result<(), Reason> {
    if family == FAMILY_V4 {
        let h: *mut [u8; 20] = ptr_at(ctx, l3_off)?;
        // SAFETY: ptr_at checked the 20 bytes of the fixed header.
        let h = unsafe { &mut *h };
        let mut delta = 0u32;
        if v.flags & FRAG_F_SRC != 0 {
            let old = v4_addr([h[12], h[13], h[14], h[15]]);
            csum::add_change4(&mut delta, &old, &v.src);
            h[12..16].copy_from_slice(&v.src[..4]);
        }
        if v.flags & FRAG_F_DST != 0 {
            let old = v4_addr([h[16], h[17], h[18], h[19]]);
            csum::add_change4(&mut delta, &old, &v.dst);
            h[16..20].copy_from_slice(&v.dst[..4]);
        }
        let old = u16::from_be_bytes([h[10], h[11]]);
        h[10..12].copy_from_slice(&csum::apply(old, delta).to_be_bytes());
    } else {
        let h: *mut [u8; 40] = ptr_at(ctx, l3_off)?;
        // SAFETY: ptr_at checked the 40 bytes of the fixed header.
        let h = unsafe { &mut *h };
        if v.flags & FRAG_F_SRC != 0 {
            h[8..24].copy_from_slice(&v.src);
        }
        if v.flags & FRAG_F_DST != 0 {
            h[24..40].copy_from_slice(&v.dst);
        }
    }
    Ok(())
}

/// Remembers a translated first reply fragment's datagram: its new
/// addresses and MACs as they now are in the packet (so that no copy of
/// the NAT entry is held beside the reply path's), and the interface the
/// entry sends it out of.
#[inline(always)]
fn remember_reply(ctx: &XdpContext, l3_off: usize, key: &FlowKey, id: u32) -> Result<(), Reason> {
    let p = match NAT.get_ptr(key) {
        Some(p) => p,
        None => NAT_SYN.get_ptr(key).ok_or(Reason::Aborted)?,
    };
    // SAFETY: as in `nat::nat_copy`: a pointer into the map's preallocated
    // elements; one aligned u32 field read once, not kept.
    let ifindex = unsafe { core::ptr::addr_of!((*p).ifindex).read() };
    // Built in a per-CPU map value, not on the stack: beside the reply
    // path's frame and its checksum function's, 72 more bytes would pass
    // the 512-byte limit.
    let v = match FRAG_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU while it runs.
        Some(v) => unsafe { &mut *v },
        None => return Err(Reason::Aborted),
    };
    v.created_ns = nat::coarse_now();
    v.backend_id = 0;
    v.hash = 0;
    v.ifindex = ifindex;
    v.kind = FRAG_REPLY;
    v.flags = FRAG_F_SRC | FRAG_F_DST;
    v._pad = [0; 2];
    let macs: *const [u8; 12] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    v.macs = unsafe { macs.read_unaligned() };
    if key.family == FAMILY_V4 {
        let a: *const [u8; 8] = ptr_at(ctx, l3_off + 12)?;
        // SAFETY: ptr_at checked the bounds.
        let a = unsafe { a.read_unaligned() };
        v.src = v4_addr([a[0], a[1], a[2], a[3]]);
        v.dst = v4_addr([a[4], a[5], a[6], a[7]]);
    } else {
        let a: *const [u8; 32] = ptr_at(ctx, l3_off + 8)?;
        let a = a.cast::<u8>();
        // SAFETY: ptr_at checked the 32 bytes; the destinations are two
        // 16-byte fields of the map value.
        unsafe {
            core::ptr::copy_nonoverlapping(a, v.src.as_mut_ptr(), 16);
            core::ptr::copy_nonoverlapping(a.add(16), v.dst.as_mut_ptr(), 16);
        }
    }
    let dk = FragKey {
        src: key.src,
        dst: key.dst,
        id: id.to_ne_bytes(),
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    let _ = FRAGS.insert(&dk, v, 0);
    Ok(())
}
