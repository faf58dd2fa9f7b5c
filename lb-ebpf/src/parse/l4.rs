//! TCP and UDP: only the ports are needed (and TCP's data offset and UDP's
//! length field are checked, so a forwarded segment is not obviously
//! broken). The header must lie within the IP datagram, not only within the
//! frame: bytes after the datagram's length (Ethernet padding, a trailer)
//! are not part of it.

use aya_ebpf::programs::XdpContext;
use lb_common::{PROTO_TCP, Reason};

use super::ptr_at;

const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;

/// Ports in network byte order, as they are in the packet, and TCP's flags.
pub struct Ports {
    pub sport: u16,
    pub dport: u16,
    /// The TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ...); 0 for UDP.
    pub tcp_flags: u8,
}

/// `end` is the offset where the IP datagram ends (by its length field).
#[inline(always)]
pub fn parse(ctx: &XdpContext, off: usize, proto: u8, end: usize) -> Result<Ports, Reason> {
    if proto == PROTO_TCP {
        let h: *const [u8; TCP_HLEN] = ptr_at(ctx, off)?;
        // SAFETY: ptr_at checked that the 20-byte TCP header is in the packet.
        let h = unsafe { &*h };
        let doff = ((h[12] >> 4) as usize) * 4;
        if doff < TCP_HLEN || off + doff > end {
            return Err(Reason::DropMalformed);
        }
        Ok(Ports {
            sport: u16::from_ne_bytes([h[0], h[1]]),
            dport: u16::from_ne_bytes([h[2], h[3]]),
            tcp_flags: h[13],
        })
    } else {
        if off + UDP_HLEN > end {
            return Err(Reason::DropMalformed);
        }
        let h: *const [u8; UDP_HLEN] = ptr_at(ctx, off)?;
        // SAFETY: ptr_at checked that the 8-byte UDP header is in the packet.
        let h = unsafe { &*h };
        // The length field covers header and data: under 8 it cannot hold
        // the header, past the IP payload it claims bytes the datagram does
        // not have (RFC 768). Shorter than the payload is allowed: the rest
        // is padding, as the kernel's own UDP stack treats it.
        let len = u16::from_be_bytes([h[4], h[5]]) as usize;
        if len < UDP_HLEN || off + len > end {
            return Err(Reason::DropMalformed);
        }
        Ok(Ports {
            sport: u16::from_ne_bytes([h[0], h[1]]),
            dport: u16::from_ne_bytes([h[2], h[3]]),
            tcp_flags: 0,
        })
    }
}
