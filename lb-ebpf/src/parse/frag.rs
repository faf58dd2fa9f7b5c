//! Fragments: the IPv4 header's fragment fields, and the IPv6 Fragment
//! extension header (RFC 8200 §4.5) when it follows the fixed header
//! directly (a Fragment header behind other extension headers is not
//! parsed: such a packet passes as other extension headers do).

use aya_ebpf::programs::XdpContext;
use lb_common::Reason;

use super::{ipv6::IPV6_HLEN, ptr_at};

/// Next header value of the IPv6 Fragment header.
pub const NEXTHDR_FRAGMENT: u8 = 44;
const FRAG_HLEN: usize = 8;

/// One fragment's place in its datagram. Fields are word-sized: the
/// verifier rejects the misaligned stack accesses that packed byte and
/// half-word fields of a struct held on the stack can compile to.
pub struct Frag {
    /// The identification as its bytes in the packet, loaded in native
    /// order (IPv4: two bytes, then zeros): `to_ne_bytes` gives them back.
    pub id: u32,
    /// Offset of this fragment's data in the datagram, in 8-byte units.
    pub offset: u32,
    /// More fragments follow.
    pub more: bool,
    /// The transport protocol of the datagram.
    pub proto: u8,
    /// Where this fragment's data starts (the transport header, in the
    /// first fragment).
    pub l4_off: usize,
}

/// The fragment fields of the IPv4 header at `l3_off` (already checked by
/// `ipv4::parse`: `l4_off` is its end).
#[inline(always)]
pub fn v4(ctx: &XdpContext, l3_off: usize, l4_off: usize) -> Result<Frag, Reason> {
    let h: *const [u8; 10] = ptr_at(ctx, l3_off)?;
    // SAFETY: ptr_at checked that 10 bytes are in the packet.
    let h = unsafe { &*h };
    let f = u16::from_be_bytes([h[6], h[7]]);
    Ok(Frag {
        id: u32::from_ne_bytes([h[4], h[5], 0, 0]),
        offset: u32::from(f & 0x1fff),
        more: f & 0x2000 != 0,
        proto: h[9],
        l4_off,
    })
}

/// The Fragment header right after the IPv6 fixed header at `l3_off`
/// (whose next header the caller found to be 44). `end` is where the
/// datagram ends by its payload length.
#[inline(always)]
pub fn v6(ctx: &XdpContext, l3_off: usize, end: usize) -> Result<Frag, Reason> {
    let off = l3_off + IPV6_HLEN;
    if off + FRAG_HLEN > end {
        return Err(Reason::DropMalformed);
    }
    let h: *const [u8; FRAG_HLEN] = ptr_at(ctx, off)?;
    // SAFETY: ptr_at checked that the 8-byte header is in the packet.
    let h = unsafe { &*h };
    let f = u16::from_be_bytes([h[2], h[3]]);
    Ok(Frag {
        id: u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
        offset: u32::from(f >> 3),
        more: f & 1 != 0,
        proto: h[0],
        l4_off: off + FRAG_HLEN,
    })
}
