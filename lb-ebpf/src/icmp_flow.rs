//! ICMP errors about `dsr` and `tunnel` flows: a router that cannot
//! forward a backend's reply (VIP:port → client) sends "fragmentation
//! needed" / "packet too big" (or unreachable, time exceeded) to the
//! reply's source, the VIP, which routes to the balancer. The backend that
//! holds the flow must receive it, or its path MTU discovery black-holes.
//! The error goes there as the flow's data does: the flow is the quoted
//! packet's tuple reversed (client → VIP), its backend the one its
//! flow-table entry names, else the one the VIP's Maglev table gives
//! (during a grace period, for TCP, the one a non-SYN packet would go to).
//! `dsr` rewrites the MACs; `tunnel` encapsulates the error. Nothing is
//! recorded: an error is no flow of its own.
//!
//! Runs in the ICMP program (`hola_icmp_to_backend`), never in `hola_lb`.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrVips, FAMILY_V4, FlowKey, FlowValue, PROTO_TCP, Reason, VipMeta,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_NEXTHOP},
    hash::flow_hash,
    vip::{VIP_F_SRC_HASH, VIP_MODE_DSR, VIP_MODE_MASK, VIP_MODE_TUNNEL},
};

use crate::{
    cluster, flows,
    forward::{self, Inner},
    icmp::Quoted,
    lookup,
    maps::{BACKENDS, PEER_FLOWS, VIP_ADDRS4, VIP_ADDRS6},
    nat::Layout,
    parse::ptr_at,
    verdict::Verdict,
};

/// A VIP's metadata on an 8-byte aligned stack slot: the program is built
/// to allow misaligned accesses (lb-ebpf/build.rs), so a copy may be made
/// of 8-byte moves, and the verifier refuses a misaligned stack access.
#[repr(C, align(8))]
pub struct Vip(pub VipMeta);

/// The `dsr` or `tunnel` VIP that sent the quoted packet (its source
/// address, port and protocol), if any.
#[inline(always)]
pub fn vip_of(q: &Quoted, family: u8) -> Option<Vip> {
    let addr: *const AddrVips = if family == FAMILY_V4 {
        VIP_ADDRS4.get_ptr(u32::from_ne_bytes([q.src[0], q.src[1], q.src[2], q.src[3]]))?
    } else {
        VIP_ADDRS6.get_ptr(q.src)?
    };
    // The VIP is found as a packet to it would find it: the quoted packet's
    // source is the VIP's address and port.
    let key = FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        family,
        _pad: [0; 2],
    };
    let vip = Vip(lookup::find_vip(&key, addr)?);
    let mode = vip.0.flags & VIP_MODE_MASK;
    (mode == VIP_MODE_DSR || mode == VIP_MODE_TUNNEL).then_some(vip)
}

/// Sends the error to the flow's backend (see the module's comment).
/// A VIP without a usable backend drops it (`DropNoBackend`, or
/// `DropNoNexthop` while the backend's MACs are unknown), as its data
/// would be.
#[inline(never)]
pub fn to_flow_backend(
    ctx: &XdpContext,
    at: &Layout,
    q: &Quoted,
    vip: &Vip,
) -> Result<Verdict, Reason> {
    let vip = &vip.0;
    let key = FlowKey {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        family: at.family,
        _pad: [0; 2],
    };
    let mut entry = flows::lookup(&key).and_then(|f| lookup::usable(f, vip.vip_id));
    if entry.is_none() && cluster::active() {
        // SAFETY: the value is copied out at once (see `flows::lookup`).
        entry = unsafe { PEER_FLOWS.get(&key) }.and_then(|f| lookup::usable(*f, vip.vip_id));
    }
    let (reason, hash, b) = match entry {
        Some((_, hash, b)) => (Reason::FwdIcmpFlow, hash, b),
        None => {
            let hash = flow_hash(&key, vip.flags & VIP_F_SRC_HASH != 0);
            let id = placed(vip, hash, &key);
            match BACKENDS.get(id) {
                Some(b) if id != 0 && b.flags & BACKEND_F_ACTIVE != 0 => {
                    (Reason::FwdIcmpMaglev, hash, b)
                }
                _ => return Err(Reason::DropNoBackend),
            }
        }
    };
    if b.flags & BACKEND_F_NEXTHOP == 0 {
        return Err(Reason::DropNoNexthop);
    }
    if vip.flags & VIP_MODE_MASK == VIP_MODE_TUNNEL {
        forward::encap(ctx, at.l3_off, b, inner(ctx, at)?, hash)?;
    } else {
        forward::rewrite_macs(ctx, b)?;
    }
    let action = forward::egress(ctx, b)?;
    Ok(Verdict { reason, action })
}

/// The backend a packet of the flow that missed the flow table would go
/// to, without recording anything: for a TCP flow during its VIP's grace
/// period, the backend its SYN went to after the table change, else the
/// previous table's (as `lookup::place` does for a non-SYN packet); else
/// the current table's.
#[inline(always)]
fn placed(vip: &VipMeta, hash: u32, key: &FlowKey) -> u32 {
    if key.proto == PROTO_TCP {
        let (prev, _) = flows::previous(vip, hash);
        if prev != 0 {
            if let Some((id, _, _)) =
                flows::syn_seen(key).and_then(|f| lookup::usable(f, vip.vip_id))
            {
                return id;
            }
            let f = FlowValue {
                backend_id: prev,
                hash,
            };
            if lookup::usable(f, vip.vip_id).is_some() {
                return prev;
            }
        }
    }
    lookup::pick(vip, hash)
}

/// The error's own IP header, as encapsulation needs it.
#[inline(always)]
fn inner(ctx: &XdpContext, at: &Layout) -> Result<Inner, Reason> {
    let h: *const [u8; 4] = ptr_at(ctx, at.l3_off)?;
    // SAFETY: ptr_at checked the bounds.
    let h = unsafe { h.read_unaligned() };
    if at.family == FAMILY_V4 {
        Ok(Inner::V4 {
            tot_len: u16::from_be_bytes([h[2], h[3]]),
            tos: h[1],
        })
    } else {
        let l: *const [u8; 2] = ptr_at(ctx, at.l3_off + 4)?;
        // SAFETY: ptr_at checked the bounds.
        let l = unsafe { l.read_unaligned() };
        Ok(Inner::V6 {
            payload_len: u16::from_be_bytes(l),
            tclass: (h[0] << 4) | (h[1] >> 4),
        })
    }
}
