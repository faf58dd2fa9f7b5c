//! Tunnel "too big": a `tunnel` VIP's packet that would not fit its egress
//! interface's MTU once encapsulated is answered, from the VIP to the
//! client, with ICMP "fragmentation needed" (IPv4 with DF; the MTU minus
//! the 20-byte outer IPv4 header) or ICMPv6 "packet too big" (the MTU
//! minus the 40-byte outer IPv6 header: an IPv6 packet is encapsulated in
//! IPv6), so that the client lowers its path MTU instead of losing the
//! packet silently further on. An IPv4 packet without DF is encapsulated
//! and sent as any other (XDP cannot fragment it; a frame over the egress
//! MTU is then dropped by the driver, as before).
//!
//! `hola_lb` only compares the packet's size with the smallest egress MTU
//! (`check`); the answer is built in a program of its own (`entry`).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{Backend, Reason, flow::FLOOD_WINDOW_NS, maps::TOO_BIG};

use crate::{
    csum, flows,
    forward::Inner,
    maps::{EGRESS_MTU, EGRESS_MTU_MIN, ICMP_PROGS, TOO_BIG_MTU, TOO_BIG_RATE},
    parse::{
        eth::{self, ETH_P_IP},
        ptr_at,
    },
    verdict::Verdict,
};

/// Answers each CPU sends per second at most; the packets over it are
/// dropped unanswered (`drop_too_big`).
pub const ANSWERS_PER_SEC: u64 = 100;

/// Bytes of the packet an answer quotes, from its IP header on: within
/// RFC 1812's 576 bytes for an ICMP error (20 + 8 + 512), and within the
/// 512 bytes `bpf_csum_diff` sums. Every packet answered is longer: the
/// MTUs userspace writes are at least 576 (IPv4) and 1280 (IPv6).
pub const QUOTE: usize = 512;

/// In `hola_lb`, before a `tunnel` VIP's packet is encapsulated: if it
/// would not fit its egress interface's MTU (IPv4 with DF, or IPv6),
/// tail-calls `hola_too_big` (which does not return).
#[inline(always)]
pub fn check(ctx: &XdpContext, l3_off: usize, b: &Backend, inner: Inner) -> Result<(), Reason> {
    let min = match EGRESS_MTU_MIN.get(0) {
        Some(m) => *m,
        None => return Ok(()),
    };
    // The encapsulated packet's size: the inner one plus the outer header.
    let size = match inner {
        Inner::V4 { tot_len, .. } => u32::from(tot_len) + 20,
        Inner::V6 { payload_len, .. } => u32::from(payload_len) + 80,
    };
    if min == 0 || size <= min {
        return Ok(());
    }
    oversize(ctx, l3_off, b, size, matches!(inner, Inner::V4 { .. }))
}

/// The rare part of [`check`]: the exact MTU of the backend's egress.
#[inline(always)]
fn oversize(
    ctx: &XdpContext,
    l3_off: usize,
    b: &Backend,
    size: u32,
    v4: bool,
) -> Result<(), Reason> {
    let ifindex = if b.ifindex == 0 {
        ctx.ingress_ifindex() as u32
    } else {
        b.ifindex
    };
    // SAFETY: the value is copied out at once.
    let mtu = match unsafe { EGRESS_MTU.get(&ifindex) } {
        Some(m) => *m,
        None => return Ok(()),
    };
    if size <= mtu {
        return Ok(());
    }
    if v4 {
        let f: *const [u8; 2] = ptr_at(ctx, l3_off + 6)?;
        // SAFETY: ptr_at checked the bounds.
        let f = unsafe { f.read_unaligned() };
        if f[0] & 0x40 == 0 {
            return Ok(());
        }
    }
    // The packet reaches no backend: its VIP counts it (a forwarded one is
    // counted by its backend alone).
    crate::verdict::count_vip(b.vip_id, (ctx.data_end() - ctx.data()) as u64);
    if let Some(m) = TOO_BIG_MTU.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU, and the
        // tail-called program runs on this CPU right after.
        unsafe { *m = mtu };
    }
    // SAFETY: the index is a slot of ICMP_PROGS.
    unsafe { ICMP_PROGS.tail_call(ctx, TOO_BIG) };
    Err(Reason::Aborted)
}

/// Whether this CPU may send one more answer in the current second.
#[inline(always)]
fn allowed() -> bool {
    let s = match TOO_BIG_RATE.get_ptr_mut(0) {
        // SAFETY: per-CPU element, used only by this CPU while it runs.
        Some(s) => unsafe { &mut *s },
        None => return false,
    };
    let now = flows::now();
    if now.wrapping_sub(s.window_ns) >= FLOOD_WINDOW_NS {
        s.window_ns = now;
        s.inserts = 0;
    }
    s.inserts += 1;
    s.inserts <= ANSWERS_PER_SEC
}

/// The entry of `hola_too_big`: turns the packet into the answer, in
/// place. The frame keeps its VLAN tag; its MACs are swapped; after them
/// come the new IP and ICMP headers and the first [`QUOTE`] bytes of the
/// packet as it came (its IP header on). Sent back by XDP_TX.
#[inline(always)]
pub fn entry(ctx: &XdpContext) -> Result<Verdict, Reason> {
    let mtu = match TOO_BIG_MTU.get(0) {
        Some(m) => *m,
        None => return Err(Reason::Aborted),
    };
    if !allowed() {
        return Err(Reason::DropTooBig);
    }
    let e = eth::parse(ctx)?;
    let l3 = e.l3_off;
    let v4 = e.proto == ETH_P_IP;
    // The packet's addresses, and the sum of the quoted bytes.
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    if v4 {
        let h: *const [u8; 20] = ptr_at(ctx, l3)?;
        // SAFETY: ptr_at checked the bounds.
        let h = unsafe { h.read_unaligned() };
        src[..4].copy_from_slice(&h[12..16]);
        dst[..4].copy_from_slice(&h[16..20]);
    } else {
        let h: *const [u8; 40] = ptr_at(ctx, l3)?;
        // SAFETY: ptr_at checked the bounds.
        let h = unsafe { h.read_unaligned() };
        src.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
    }
    let q: *mut [u8; QUOTE] = ptr_at(ctx, l3).map_err(|_| Reason::DropTooBig)?;
    // SAFETY: the helper reads QUOTE bytes at `q`, which ptr_at checked are
    // in the packet; a null "from" of size 0 adds nothing.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, q.cast(), QUOTE as u32, 0) };
    if sum < 0 {
        return Err(Reason::Aborted);
    }
    // The helper sums the 16-bit words as the CPU loads them (little
    // endian here); a one's-complement sum of byte-swapped words is the
    // byte-swapped sum (RFC 1071), so fold, then swap.
    let s = sum as u64;
    let s = (s & 0xffff) + ((s >> 16) & 0xffff) + (s >> 32);
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    let quoted_sum = u32::from((s as u16).swap_bytes());
    let macs: *const [u8; 12] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked the bounds.
    let macs = unsafe { macs.read_unaligned() };
    let tag: *const [u8; 6] = ptr_at(ctx, 12)?;
    // SAFETY: ptr_at checked the bounds (the EtherType, or a tag and the
    // EtherType after it).
    let tag = unsafe { tag.read_unaligned() };

    // Cut the packet after the quote, then make room for the new headers.
    let len = (ctx.data_end() - ctx.data()) as i32;
    let hdr: usize = if v4 { 28 } else { 48 };
    // SAFETY: the helper only moves data_end; every later access is
    // bounds-checked again.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, (l3 + QUOTE) as i32 - len) } != 0 {
        return Err(Reason::Aborted);
    }
    // SAFETY: as above, for data.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(hdr as i32)) } != 0 {
        return Err(Reason::Aborted);
    }
    let p: *mut [u8; 12] = ptr_at(ctx, 0)?;
    let mut m = [0u8; 12];
    m[..6].copy_from_slice(&macs[6..12]);
    m[6..].copy_from_slice(&macs[..6]);
    // SAFETY: ptr_at checked the bounds.
    unsafe { p.write_unaligned(m) };
    if l3 != eth::ETH_HLEN {
        let t: *mut [u8; 6] = ptr_at(ctx, 12)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { t.write_unaligned(tag) };
    } else {
        let t: *mut [u8; 2] = ptr_at(ctx, 12)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { t.write_unaligned([tag[0], tag[1]]) };
    }
    if v4 {
        let mut h = [0u8; 28];
        h[0] = 0x45;
        // Internetwork control precedence, as the kernel's ICMP errors.
        h[1] = 0xc0;
        h[2..4].copy_from_slice(&((28 + QUOTE) as u16).to_be_bytes());
        h[8] = 64;
        h[9] = 1;
        // From the VIP (the packet's destination) to the client.
        h[12..16].copy_from_slice(&dst[..4]);
        h[16..20].copy_from_slice(&src[..4]);
        let ip_sum = csum::fold(sum_words(&h[..20]));
        h[10..12].copy_from_slice(&ip_sum.to_be_bytes());
        h[20] = 3;
        h[21] = 4;
        h[26..28].copy_from_slice(&((mtu - 20) as u16).to_be_bytes());
        let c = csum::fold(sum_words(&h[20..28]) + quoted_sum);
        h[22..24].copy_from_slice(&c.to_be_bytes());
        let p: *mut [u8; 28] = ptr_at(ctx, l3)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { p.write_unaligned(h) };
    } else {
        let mut h = [0u8; 48];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&((8 + QUOTE) as u16).to_be_bytes());
        h[6] = 58;
        h[7] = 64;
        h[8..24].copy_from_slice(&dst);
        h[24..40].copy_from_slice(&src);
        h[40] = 2;
        h[44..48].copy_from_slice(&(mtu - 40).to_be_bytes());
        // The pseudo-header: addresses, upper-layer length, next header.
        let pseudo = sum_words(&h[8..40]) + (8 + QUOTE) as u32 + 58;
        let c = csum::fold(pseudo + sum_words(&h[40..48]) + quoted_sum);
        h[42..44].copy_from_slice(&c.to_be_bytes());
        let p: *mut [u8; 48] = ptr_at(ctx, l3)?;
        // SAFETY: ptr_at checked the bounds.
        unsafe { p.write_unaligned(h) };
    }
    Ok(Verdict {
        reason: Reason::TxTooBig,
        action: xdp_action::XDP_TX,
    })
}

/// The one's-complement sum of big-endian 16-bit words (unfolded).
#[inline(always)]
fn sum_words(b: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i + 1 < b.len() {
        s += u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    s
}
