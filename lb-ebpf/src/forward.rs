//! Rewriting a packet toward its backend and choosing how it leaves.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{Backend, Reason, Settings, flow::NatTimeouts};

use crate::{
    csum,
    maps::TX_PORTS,
    parse::{
        eth::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6},
        ipv4::IPV4_HLEN,
        ipv6::IPV6_HLEN,
        ptr_at,
    },
};

/// Load-time settings, filled in by userspace before the program is loaded.
#[unsafe(no_mangle)]
pub static SETTINGS: Settings = Settings {
    tunnel_src_v4: [0; 4],
    tunnel_src_v4_mask: 0,
    tunnel_src_v6: [0; 16],
    tunnel_src_v6_mask: 0,
    new_flow_rate: 0,
    nat_tcp_idle_ns: 0,
    nat_udp_idle_ns: 0,
    nat_closed_linger_ns: 0,
    fullnat_src_v4: [0; 4],
    fullnat_port_lo: 0,
    fullnat_port_span: 0,
    fullnat_src_v6: [0; 16],
};

/// NAT entry lifetimes.
#[inline(always)]
pub fn nat_timeouts() -> NatTimeouts {
    NatTimeouts {
        tcp_idle_ns: setting!(nat_tcp_idle_ns),
        udp_idle_ns: setting!(nat_udp_idle_ns),
        closed_linger_ns: setting!(nat_closed_linger_ns),
    }
}

/// What encapsulation needs to know about the packet being wrapped.
#[derive(Clone, Copy)]
pub enum Inner {
    V4 { tot_len: u16, tos: u8 },
    V6 { payload_len: u16, tclass: u8 },
}

/// Direct server return: the frame goes to the backend's MAC from ours.
#[inline(always)]
pub fn rewrite_macs(ctx: &XdpContext, b: &Backend) -> Result<(), Reason> {
    let h: *mut [u8; 12] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that 12 bytes are in the packet.
    unsafe { write_macs(h.cast(), b) };
    Ok(())
}

/// Writes the backend's next-hop MACs (destination, then source) as the
/// first 12 bytes at `p`.
///
/// # Safety
/// `p` must point at 12 writable bytes of the packet.
#[inline(always)]
unsafe fn write_macs(p: *mut u8, b: &Backend) {
    // SAFETY: `dmac` and `smac` are 12 adjacent bytes of `Backend` (asserted
    // in lb-common); the caller vouches for `p`.
    unsafe { copy_macs(p, core::ptr::addr_of!(b.dmac).cast()) }
}

/// Copies a destination and a source MAC (12 bytes at `macs`) to `p`: one
/// 8-byte and one 4-byte copy, not twelve byte copies through the stack.
///
/// # Safety
/// `p` must point at 12 writable bytes of the packet, `macs` at 12
/// readable bytes.
#[inline(always)]
pub unsafe fn copy_macs(p: *mut u8, macs: *const u8) {
    // SAFETY: the caller vouches for both pointers. Unaligned accesses: the
    // program is built for a CPU that allows them (lb-ebpf/build.rs).
    unsafe {
        p.cast::<u64>()
            .write_unaligned(macs.cast::<u64>().read_unaligned());
        p.add(8)
            .cast::<u32>()
            .write_unaligned(macs.add(8).cast::<u32>().read_unaligned());
    }
}

/// Wraps the packet in an outer IPv4 (IP-in-IP) or IPv6 (IPv6-in-IPv6)
/// header addressed to the backend. A VLAN tag stays on the outer frame.
#[inline(always)]
pub fn encap(
    ctx: &XdpContext,
    l3_off: usize,
    b: &Backend,
    inner: Inner,
    hash: u32,
) -> Result<(), Reason> {
    let vlan = l3_off != ETH_HLEN;
    // The tag (if any) is copied from its old place before it is overwritten;
    // the old and new places never overlap (the header grows by 20 or 40).
    let tag = if vlan {
        let t: *const [u8; 4] = ptr_at(ctx, ETH_HLEN - 2)?;
        // SAFETY: ptr_at checked the bounds.
        Some(unsafe { t.read_unaligned() })
    } else {
        None
    };
    match inner {
        Inner::V4 { tot_len, tos } => {
            grow(ctx, IPV4_HLEN)?;
            write_l2(ctx, b, tag, ETH_P_IP)?;
            let mask: u32 = setting!(tunnel_src_v4_mask);
            let base: [u8; 4] = setting!(tunnel_src_v4);
            let src = (u32::from_be_bytes(base) & !mask) | (hash & mask);
            let dst = u32::from_be_bytes([b.addr[0], b.addr[1], b.addr[2], b.addr[3]]);
            let len = (tot_len as usize + IPV4_HLEN) as u16;
            // The header as its five 32-bit words (host order values of
            // network-order fields), written to the packet word by word:
            // version/IHL, TOS, length | id 0, no fragment | TTL 64,
            // IPPROTO_IPIP (4), checksum | source | destination.
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
            let p: *mut [u8; IPV4_HLEN] = if vlan {
                ptr_at(ctx, ETH_HLEN + 4)?
            } else {
                ptr_at(ctx, ETH_HLEN)?
            };
            let p = p.cast::<u8>();
            // SAFETY: ptr_at checked the bounds (20 bytes); unaligned
            // stores are allowed (lb-ebpf/build.rs).
            unsafe {
                p.cast::<u64>().write_unaligned(u64::from(w0.to_be()));
                p.add(8)
                    .cast::<u64>()
                    .write_unaligned(u64::from(w2.to_be()) | (u64::from(src.to_be()) << 32));
                p.add(16).cast::<u32>().write_unaligned(dst.to_be());
            }
        }
        Inner::V6 {
            payload_len,
            tclass,
        } => {
            grow(ctx, IPV6_HLEN)?;
            write_l2(ctx, b, tag, ETH_P_IPV6)?;
            let mut src: [u8; 16] = setting!(tunnel_src_v6);
            let mask: u32 = setting!(tunnel_src_v6_mask);
            let low =
                (u32::from_be_bytes([src[12], src[13], src[14], src[15]]) & !mask) | (hash & mask);
            src[12..16].copy_from_slice(&low.to_be_bytes());
            let len = (payload_len as usize + IPV6_HLEN) as u16;
            let flow_label = hash & 0x000f_ffff;
            let mut h = [0u8; IPV6_HLEN];
            h[0] = 0x60 | (tclass >> 4);
            h[1] = (tclass << 4) | (flow_label >> 16) as u8;
            h[2] = (flow_label >> 8) as u8;
            h[3] = flow_label as u8;
            h[4..6].copy_from_slice(&len.to_be_bytes());
            h[6] = 41; // IPPROTO_IPV6
            h[7] = 64;
            h[8..24].copy_from_slice(&src);
            h[24..40].copy_from_slice(&b.addr);
            let p: *mut [u8; IPV6_HLEN] = if vlan {
                ptr_at(ctx, ETH_HLEN + 4)?
            } else {
                ptr_at(ctx, ETH_HLEN)?
            };
            // SAFETY: ptr_at checked the bounds.
            unsafe { p.write_unaligned(h) };
        }
    }
    Ok(())
}

/// Makes `len` bytes of room in front of the packet.
#[inline(always)]
fn grow(ctx: &XdpContext, len: usize) -> Result<(), Reason> {
    // SAFETY: the helper only moves ctx->data; every later access is
    // bounds-checked against the new data/data_end.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(len as i32)) } != 0 {
        return Err(Reason::Aborted);
    }
    Ok(())
}

/// Writes the Ethernet header (and tag) at the new start of the packet.
#[inline(always)]
fn write_l2(ctx: &XdpContext, b: &Backend, tag: Option<[u8; 4]>, proto: u16) -> Result<(), Reason> {
    let p = proto.to_be();
    match tag {
        Some(t) => {
            let h: *mut [u8; ETH_HLEN + 4] = ptr_at(ctx, 0).map_err(|_| Reason::Aborted)?;
            let h = h.cast::<u8>();
            // SAFETY: ptr_at checked the bounds (18 bytes); unaligned stores
            // are allowed (lb-ebpf/build.rs).
            unsafe {
                write_macs(h, b);
                h.add(12).cast::<[u8; 4]>().write_unaligned(t);
                h.add(16).cast::<u16>().write_unaligned(p);
            }
        }
        None => {
            let h: *mut [u8; ETH_HLEN] = ptr_at(ctx, 0).map_err(|_| Reason::Aborted)?;
            let h = h.cast::<u8>();
            // SAFETY: ptr_at checked the bounds (14 bytes); unaligned stores
            // are allowed (lb-ebpf/build.rs).
            unsafe {
                write_macs(h, b);
                h.add(12).cast::<u16>().write_unaligned(p);
            }
        }
    }
    Ok(())
}

/// XDP_TX when the backend is reached through the interface the packet came
/// in on, XDP_REDIRECT through `TX_PORTS` otherwise.
#[inline(always)]
pub fn egress(ctx: &XdpContext, b: &Backend) -> Result<u32, Reason> {
    if b.ifindex == 0 || b.ifindex == ctx.ingress_ifindex() as u32 {
        return Ok(xdp_action::XDP_TX);
    }
    TX_PORTS.redirect(b.ifindex, 0).map_err(|_| Reason::Aborted)
}
