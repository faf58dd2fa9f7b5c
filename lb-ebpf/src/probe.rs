//! `hola_probe`: a tc egress program (on `lo`, where hola's routing rule
//! sends marked probes) that carries a health probe addressed to a VIP to
//! one backend exactly as `hola_lb` carries a client's packet: dsr, a frame
//! to the backend's next-hop MAC with the VIP still the destination;
//! tunnel, wrapped in an outer IPv4 header from the tunnel source (host
//! bits from the flow hash, as `forward::encap`) to the backend. The
//! socket mark (`lb_common::probe`) names the backend's id in `BACKENDS`
//! and the way; a packet without a probe mark is not touched.
//!
//! Kept apart from the XDP programs: it runs only for the daemon's own
//! probes and shares nothing with the packet path but the maps it reads.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_redirect,
    programs::TcContext,
};
use lb_common::{
    FAMILY_V4, FlowKey, PROTO_TCP, PROTO_UDP,
    backend::BACKEND_F_ACTIVE,
    flow::v4_addr,
    hash::flow_hash,
    probe::{PROBE_DSR, PROBE_TUNNEL, parse_probe_mark},
};

use crate::{
    csum,
    maps::{BACKENDS, PROBE_EGRESS},
    parse::{
        eth::{ETH_HLEN, ETH_P_IP},
        ipv4::IPV4_HLEN,
    },
};

/// What the program decides; a probe that cannot be carried is dropped
/// (its check then fails by timeout, which is the truth: the data path
/// could not reach the backend).
pub fn run(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` points at the context the kernel passed in.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let Some((id, way)) = parse_probe_mark(mark) else {
        return TC_ACT_OK as i32;
    };
    carry(ctx, id, way).unwrap_or(TC_ACT_SHOT as i32)
}

#[inline(always)]
fn carry(ctx: &TcContext, id: u32, way: u32) -> Result<i32, ()> {
    let b = BACKENDS.get(id).ok_or(())?;
    if b.flags & BACKEND_F_ACTIVE == 0 || b.family != FAMILY_V4 {
        return Err(());
    }
    let proto: u16 = ctx.load(12).map_err(|_| ())?;
    if u16::from_be(proto) != ETH_P_IP {
        return Err(());
    }
    if way == PROBE_TUNNEL {
        encap(ctx, b.addr)?;
    } else if way != PROBE_DSR {
        return Err(());
    }
    // The backend's next-hop MACs, destination then source (adjacent in
    // `Backend`, as forward::write_macs relies on).
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&b.dmac);
    macs[6..].copy_from_slice(&b.smac);
    ctx.store(0, &macs, 0).map_err(|_| ())?;
    let ifindex = if b.ifindex != 0 {
        b.ifindex
    } else {
        // 0: the interface the balancer is attached to.
        *PROBE_EGRESS.get(0).ok_or(())?
    };
    // SAFETY: a helper call with plain values.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Pushes an outer IPv4 header (IP-in-IP) addressed to `backend` in front
/// of the probe's IPv4 header, from the tunnel source with the flow hash's
/// host bits, as `forward::encap` does for a client's packet.
#[inline(always)]
fn encap(ctx: &TcContext, backend: [u8; 16]) -> Result<(), ()> {
    let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| ())?;
    let tos: u8 = ctx.load(ETH_HLEN + 1).map_err(|_| ())?;
    let tot_len = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).map_err(|_| ())?);
    let ip_proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| ())?;
    let saddr: [u8; 4] = ctx.load(ETH_HLEN + 12).map_err(|_| ())?;
    let daddr: [u8; 4] = ctx.load(ETH_HLEN + 16).map_err(|_| ())?;
    let l4 = ETH_HLEN + usize::from(vihl & 0x0f) * 4;
    let (sport, dport): (u16, u16) = if ip_proto == PROTO_TCP || ip_proto == PROTO_UDP {
        (
            ctx.load(l4).map_err(|_| ())?,
            ctx.load(l4 + 2).map_err(|_| ())?,
        )
    } else {
        (0, 0)
    };
    let key = FlowKey {
        src: v4_addr(saddr),
        dst: v4_addr(daddr),
        sport,
        dport,
        proto: ip_proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    let hash = flow_hash(&key, false);
    let mask: u32 = setting!(tunnel_src_v4_mask);
    let base: [u8; 4] = setting!(tunnel_src_v4);
    let src = (u32::from_be_bytes(base) & !mask) | (hash & mask);
    let dst = u32::from_be_bytes([backend[0], backend[1], backend[2], backend[3]]);
    let len = tot_len.wrapping_add(IPV4_HLEN as u16);
    // version/IHL, TOS, length | id 0, no fragment | TTL 64, IPPROTO_IPIP,
    // checksum | source | destination: the header forward::encap writes.
    let w0 = (0x45u32 << 24) | (u32::from(tos) << 16) | u32::from(len);
    let w2_no_csum = (64u32 << 24) | (4 << 16);
    let sum = (w0 >> 16)
        + (w0 & 0xffff)
        + (w2_no_csum >> 16)
        + (src >> 16)
        + (src & 0xffff)
        + (dst >> 16)
        + (dst & 0xffff);
    let w2 = w2_no_csum | u32::from(csum::fold(sum));
    let mut h = [0u8; IPV4_HLEN];
    h[0..4].copy_from_slice(&w0.to_be_bytes());
    h[8..12].copy_from_slice(&w2.to_be_bytes());
    h[12..16].copy_from_slice(&src.to_be_bytes());
    h[16..20].copy_from_slice(&dst.to_be_bytes());
    ctx.adjust_room(
        IPV4_HLEN as i32,
        BPF_ADJ_ROOM_MAC,
        u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4),
    )
    .map_err(|_| ())?;
    ctx.store(ETH_HLEN, &h, 0).map_err(|_| ())
}
