//! NAT mode's address rewrite: a packet's source or destination address
//! and port replaced, its IPv4 header checksum and TCP or UDP checksum
//! updated incrementally (RFC 1624), for the request and reply paths
//! (`nat.rs`) and the fragmented replies (`frag.rs`, through `nat::reply`).

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, PROTO_UDP, Reason};

use crate::{csum, nat::Layout, parse::ptr_at};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Src,
    Dst,
}

/// One address-and-port change for `rewrite` (a BPF function takes at most
/// five arguments).
pub(crate) struct Change {
    pub which: Field,
    pub old_addr: [u8; 16],
    pub new_addr: [u8; 16],
    pub old_port: u16,
    pub new_port: u16,
}

/// Replaces the source or destination address and port, updating the IPv4
/// header checksum and the TCP or UDP checksum (which covers the addresses
/// through the pseudo-header). Not inlined: a BPF-to-BPF call with a stack
/// frame of its own (`hola_frag_reply`, which translates a reply too, has
/// no room on its stack for it). The request path, whose program has,
/// inlines it ([`rewrite_inline`]) and spares the call.
#[inline(never)]
pub(crate) fn rewrite(ctx: &XdpContext, at: &Layout, c: &Change) -> Result<(), Reason> {
    rewrite_inline(ctx, at, c)
}

/// [`rewrite`], inlined into its caller.
#[inline(always)]
pub(crate) fn rewrite_inline(ctx: &XdpContext, at: &Layout, c: &Change) -> Result<(), Reason> {
    let (which, old_addr, new_addr, old_port, new_port) =
        (c.which, &c.old_addr, &c.new_addr, c.old_port, c.new_port);
    // Offsets arrive through memory (in a function of its own, or from
    // the scratch): bound them for the verifier (L3 starts at 14 or 18,
    // L4 at most 60 bytes later).
    let at = &Layout {
        l3_off: at.l3_off & 0x3f,
        l4_off: at.l4_off & 0x7f,
        family: at.family,
        proto: at.proto,
    };
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
