//! IPv4. Options are skipped by IHL; fragments are reported (the caller drops
//! those addressed to a VIP: without the first fragment's ports they cannot
//! be hashed to the right backend).

use aya_ebpf::programs::XdpContext;
use lb_common::Reason;

use super::ptr_at;

pub const IPV4_HLEN: usize = 20;

#[repr(C)]
struct Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

pub struct Ipv4 {
    /// Network order, as in the packet.
    pub saddr: [u8; 4],
    /// Network order, as in the packet.
    pub daddr: [u8; 4],
    pub proto: u8,
    pub tos: u8,
    /// Host order.
    pub tot_len: u16,
    /// More-fragments set or a non-zero offset.
    pub is_fragment: bool,
    /// Offset of the layer-4 header (after any options).
    pub l4_off: usize,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, off: usize) -> Result<Ipv4, Reason> {
    let h: *const Hdr = ptr_at(ctx, off)?;
    // SAFETY: ptr_at checked that the 20-byte fixed header is in the packet.
    let h = unsafe { &*h };
    let ihl = ((h.ver_ihl & 0x0f) as usize) * 4;
    if h.ver_ihl >> 4 != 4 || ihl < IPV4_HLEN {
        return Err(Reason::DropMalformed);
    }
    let tot_len = u16::from_be_bytes(h.tot_len);
    let avail = ctx.data_end() - ctx.data() - off;
    if (tot_len as usize) < ihl || tot_len as usize > avail {
        return Err(Reason::DropMalformed);
    }
    // The options, if any, are in the packet: tot_len >= ihl and tot_len fits.
    let frag = u16::from_be_bytes(h.frag_off);
    Ok(Ipv4 {
        saddr: h.saddr,
        daddr: h.daddr,
        proto: h.proto,
        tos: h.tos,
        tot_len,
        is_fragment: frag & 0x3fff != 0,
        l4_off: off + ihl,
    })
}
