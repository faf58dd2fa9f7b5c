//! `hola_probe`: a tc egress program (on `lo`, where hola's routing rule
//! sends marked probes) that carries a health probe addressed to a VIP to
//! one backend exactly as `hola_lb` carries a client's packet: dsr, a frame
//! to the backend's next-hop MAC with the VIP still the destination;
//! tunnel, wrapped in an outer IPv4 (or IPv6) header from the tunnel
//! source (host bits from the flow hash, as `forward::encap`) to the
//! backend. The
//! socket mark (`lb_common::probe`) names the backend's id in `BACKENDS`
//! and the way; a packet without a probe mark is not touched.
//!
//! Kept apart from the XDP programs: it runs only for the daemon's own
//! probes and shares nothing with the packet path but the maps it reads.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_redirect,
    programs::TcContext,
};
use lb_common::{
    FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP,
    backend::BACKEND_F_ACTIVE,
    flow::v4_addr,
    hash::flow_hash,
    probe::{PROBE_DSR, PROBE_TUNNEL, parse_probe_mark},
};

use crate::{
    csum,
    maps::{BACKENDS, PROBE_EGRESS},
    parse::{
        eth::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
        ipv4::IPV4_HLEN,
        ipv6::IPV6_HLEN,
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
    if b.flags & BACKEND_F_ACTIVE == 0 {
        return Err(());
    }
    let proto: u16 = ctx.load(12).map_err(|_| ())?;
    let v4 = b.family == FAMILY_V4;
    if u16::from_be(proto) != if v4 { ETH_P_IP } else { ETH_P_IPV6 } {
        return Err(());
    }
    if way == PROBE_TUNNEL {
        if v4 {
            encap(ctx, b.addr)?;
        } else {
            encap6(ctx, b.addr)?;
        }
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
    // The mark is spent: an IPv6 probe reaches this program on the
    // balancer's own interface (see `health::through`), and the packet
    // redirected there must not be carried a second time.
    // SAFETY: `skb` points at the context; tc programs may write `mark`.
    unsafe { (*ctx.skb.skb).mark = 0 };
    // SAFETY: a helper call with plain values.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Pushes an outer IPv6 header (IPv6-in-IPv6) addressed to `backend` in
/// front of the probe's IPv6 header, from the tunnel source with the flow
/// hash's low bits and the hash as flow label, as `forward::encap` does.
/// (The probe's own header is followed by its TCP or UDP header: the
/// daemon's sockets add no extension header.)
#[inline(always)]
fn encap6(ctx: &TcContext, backend: [u8; 16]) -> Result<(), ()> {
    // Version (4 bits), traffic class (8), then the flow label.
    let vtc = u16::from_be(ctx.load::<u16>(ETH_HLEN).map_err(|_| ())?);
    let payload_len = u16::from_be(ctx.load::<u16>(ETH_HLEN + 4).map_err(|_| ())?);
    let next: u8 = ctx.load(ETH_HLEN + 6).map_err(|_| ())?;
    // Loaded into 8-byte aligned places: the verifier refuses a wide
    // stack access that is not aligned, and the key is copied by words.
    let saddr: Aligned<16> = ctx.load(ETH_HLEN + 8).map_err(|_| ())?;
    let daddr: Aligned<16> = ctx.load(ETH_HLEN + 24).map_err(|_| ())?;
    let l4 = ETH_HLEN + IPV6_HLEN;
    let (sport, dport): (u16, u16) = if next == PROTO_TCP || next == PROTO_UDP {
        (
            ctx.load(l4).map_err(|_| ())?,
            ctx.load(l4 + 2).map_err(|_| ())?,
        )
    } else {
        (0, 0)
    };
    let key = FlowKey {
        src: saddr.0,
        dst: daddr.0,
        sport,
        dport,
        proto: next,
        family: FAMILY_V6,
        _pad: [0; 2],
    };
    let hash = flow_hash(&key, false);
    let tclass = (vtc >> 4) as u8;
    let mut src: [u8; 16] = setting!(tunnel_src_v6);
    let mask: u32 = setting!(tunnel_src_v6_mask);
    let low = (u32::from_be_bytes([src[12], src[13], src[14], src[15]]) & !mask) | (hash & mask);
    src[12..16].copy_from_slice(&low.to_be_bytes());
    let len = payload_len.wrapping_add(IPV6_HLEN as u16);
    let flow_label = hash & 0x000f_ffff;
    let mut h = Aligned([0u8; IPV6_HLEN]);
    h.0[0] = 0x60 | (tclass >> 4);
    h.0[1] = (tclass << 4) | (flow_label >> 16) as u8;
    h.0[2] = (flow_label >> 8) as u8;
    h.0[3] = flow_label as u8;
    h.0[4..6].copy_from_slice(&len.to_be_bytes());
    h.0[6] = 41; // IPPROTO_IPV6
    h.0[7] = 64;
    h.0[8..24].copy_from_slice(&src);
    h.0[24..40].copy_from_slice(&backend);
    ctx.adjust_room(
        IPV6_HLEN as i32,
        BPF_ADJ_ROOM_MAC,
        u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV6),
    )
    .map_err(|_| ())?;
    ctx.store(ETH_HLEN, &h.0, 0).map_err(|_| ())
}

/// `N` bytes at an 8-byte aligned place on the stack.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Aligned<const N: usize>([u8; N]);

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
