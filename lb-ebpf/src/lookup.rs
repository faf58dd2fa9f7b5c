//! The balancing decision: is the packet for a VIP, which backend does its
//! flow go to, and the counters that say so.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    FAMILY_V4, FAMILY_V6, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP, Reason, VipKey, VipMeta,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_NEXTHOP},
    hash::flow_hash,
    vip::{VIP_F_SRC_HASH, VIP_MODE_MASK, VIP_MODE_TUNNEL, addr_flag},
};

use crate::{
    forward::{self, Inner},
    maps::{BACKEND_STATS, BACKENDS, FLOWS, RINGS, VIP_ADDRS4, VIP_ADDRS6, VIP_STATS, VIPS},
    parse::{
        eth::{self, ETH_P_IP, ETH_P_IPV6},
        ipv4, ipv6, l4,
    },
    verdict::Verdict,
};

pub fn try_lb(ctx: &XdpContext, bytes: u64) -> Result<Verdict, Reason> {
    let eth = eth::parse(ctx)?;
    let mut key = FlowKey::default();
    let addr_flags;
    let l4_off;
    let inner;
    if eth.proto == ETH_P_IP {
        let ip = ipv4::parse(ctx, eth.l3_off)?;
        // SAFETY: the value is a plain u32 copied out at once.
        addr_flags = match unsafe { VIP_ADDRS4.get(u32::from_ne_bytes(ip.daddr)) } {
            Some(f) => *f,
            None => return Err(Reason::PassNotVip),
        };
        if ip.is_fragment {
            return Err(Reason::DropFragment);
        }
        key.family = FAMILY_V4;
        key.proto = ip.proto;
        key.src[..4].copy_from_slice(&ip.saddr);
        key.dst[..4].copy_from_slice(&ip.daddr);
        l4_off = ip.l4_off;
        inner = Inner::V4 {
            tot_len: ip.tot_len,
            tos: ip.tos,
        };
    } else if eth.proto == ETH_P_IPV6 {
        let ip = ipv6::parse(ctx, eth.l3_off)?;
        // SAFETY: the value is a plain u32 copied out at once.
        addr_flags = match unsafe { VIP_ADDRS6.get(ip.daddr) } {
            Some(f) => *f,
            None => return Err(Reason::PassNotVip),
        };
        if ipv6::is_extension(ip.nexthdr) {
            return Err(Reason::PassIpv6ExtHdr);
        }
        key.family = FAMILY_V6;
        key.proto = ip.nexthdr;
        key.src = ip.saddr;
        key.dst = ip.daddr;
        l4_off = ip.l4_off;
        inner = Inner::V6 {
            payload_len: ip.payload_len,
            tclass: ip.tclass,
        };
    } else {
        return Err(Reason::PassNotIp);
    }

    if key.proto != PROTO_TCP && key.proto != PROTO_UDP {
        return Err(Reason::PassNotVip);
    }
    let ports = l4::parse(ctx, l4_off, key.proto)?;
    key.sport = ports.sport;
    key.dport = ports.dport;
    let vip = find_vip(&key, addr_flags).ok_or(Reason::PassNotVip)?;
    let vip_stats = VIP_STATS.get_ptr_mut(vip.vip_id);
    if let Some(s) = vip_stats {
        // SAFETY: per-CPU element, written only by this CPU.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
        }
    }

    // Established flow: its backend, as long as that backend still exists and
    // still belongs to this VIP (weight 0, draining, still counts).
    let mut reason = Reason::FwdEstablished;
    let mut chosen = None;
    // SAFETY: the value is copied out at once.
    if let Some(flow) = unsafe { FLOWS.get(&key) } {
        let flow = *flow;
        if let Some(b) = BACKENDS.get(flow.backend_id) {
            if b.flags & BACKEND_F_ACTIVE != 0 && b.vip_id == vip.vip_id {
                chosen = Some((flow.backend_id, flow.hash, *b));
            }
        }
    }
    let (backend_id, hash, backend) = match chosen {
        Some(c) => c,
        None => {
            reason = Reason::FwdNewFlow;
            let hash = flow_hash(&key, vip.flags & VIP_F_SRC_HASH != 0);
            let id = pick(&vip, hash);
            let backend = match BACKENDS.get(id) {
                Some(b) if id != 0 && b.flags & BACKEND_F_ACTIVE != 0 => *b,
                _ => {
                    if let Some(s) = vip_stats {
                        // SAFETY: per-CPU element, written only by this CPU.
                        unsafe { (*s).no_backend += 1 };
                    }
                    return Err(Reason::DropNoBackend);
                }
            };
            // A failed insert (LRU under heavy contention) still forwards this
            // packet; the next one takes the same Maglev slot.
            let _ = FLOWS.insert(
                &key,
                &FlowValue {
                    backend_id: id,
                    hash,
                },
                0,
            );
            if let Some(s) = vip_stats {
                // SAFETY: per-CPU element, written only by this CPU.
                unsafe { (*s).new_flows += 1 };
            }
            (id, hash, backend)
        }
    };

    if backend.flags & BACKEND_F_NEXTHOP == 0 {
        return Err(Reason::DropNoNexthop);
    }
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU element, written only by this CPU.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            if reason == Reason::FwdNewFlow {
                (*s).new_flows += 1;
            }
        }
    }

    if vip.flags & VIP_MODE_MASK == VIP_MODE_TUNNEL {
        forward::encap(ctx, eth.l3_off, &backend, inner, hash)?;
    } else {
        forward::rewrite_macs(ctx, &backend)?;
    }
    let action = forward::egress(ctx, &backend)?;
    Ok(Verdict { reason, action })
}

/// The VIP for the packet's (address, port, protocol), trying the exact port
/// first and then the all-ports VIP, each only if the address has one.
#[inline(always)]
fn find_vip(key: &FlowKey, addr_flags: u32) -> Option<VipMeta> {
    let mut vk = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    if addr_flags & addr_flag(key.proto, 1) != 0 {
        // SAFETY: the value is copied out at once.
        if let Some(v) = unsafe { VIPS.get(&vk) } {
            return Some(*v);
        }
    }
    if addr_flags & addr_flag(key.proto, 0) != 0 {
        vk.port = 0;
        // SAFETY: the value is copied out at once.
        if let Some(v) = unsafe { VIPS.get(&vk) } {
            return Some(*v);
        }
    }
    None
}

/// The backend id in the VIP's Maglev slot for `hash` (0 when none).
#[inline(always)]
fn pick(vip: &VipMeta, hash: u32) -> u32 {
    if vip.ring_size == 0 {
        return 0;
    }
    match RINGS.get(vip.ring_base + hash % vip.ring_size) {
        Some(id) => *id,
        None => 0,
    }
}
