//! Header parsers, one header each. Every parser bounds-checks what it reads
//! and returns the parsed header with the offset of the next one; a header
//! that does not fit is `Reason::DropMalformed`.

pub mod eth;
pub mod frag;
pub mod ipv4;
pub mod ipv6;
pub mod l4;

use aya_ebpf::programs::XdpContext;
use lb_common::Reason;

/// A pointer to a `T` at `off` bytes into the packet, if the packet is long
/// enough to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return Err(Reason::DropMalformed);
    }
    Ok((start + off) as *mut T)
}
