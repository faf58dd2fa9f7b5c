//! IPv6, fixed header only. Whether the next header is an extension header is
//! the caller's concern (a VIP packet with one is passed and counted).

use aya_ebpf::programs::XdpContext;
use lb_common::Reason;

use super::ptr_at;

pub const IPV6_HLEN: usize = 40;

#[repr(C)]
struct Hdr {
    vtc_flow: [u8; 4],
    payload_len: [u8; 2],
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

pub struct Ipv6 {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub nexthdr: u8,
    /// Traffic class.
    pub tclass: u8,
    /// Host order.
    pub payload_len: u16,
    pub l4_off: usize,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, off: usize) -> Result<Ipv6, Reason> {
    let h: *const Hdr = ptr_at(ctx, off)?;
    // SAFETY: ptr_at checked that the 40-byte header is in the packet.
    let h = unsafe { &*h };
    if h.vtc_flow[0] >> 4 != 6 {
        return Err(Reason::DropMalformed);
    }
    let payload_len = u16::from_be_bytes(h.payload_len);
    let avail = ctx.data_end() - ctx.data() - off - IPV6_HLEN;
    if payload_len as usize > avail {
        return Err(Reason::DropMalformed);
    }
    Ok(Ipv6 {
        saddr: h.saddr,
        daddr: h.daddr,
        nexthdr: h.nexthdr,
        tclass: (h.vtc_flow[0] << 4) | (h.vtc_flow[1] >> 4),
        payload_len,
        l4_off: off + IPV6_HLEN,
    })
}

/// Next-header values that are extension headers (RFC 8200 and the IANA
/// registry), not a transport protocol.
#[inline(always)]
pub fn is_extension(nexthdr: u8) -> bool {
    matches!(
        nexthdr,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}
