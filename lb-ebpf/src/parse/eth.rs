//! Ethernet, with at most one 802.1Q/802.1ad tag. A second tag is passed to
//! the kernel untouched and counted (`PassVlanStack`).

use aya_ebpf::programs::XdpContext;
use lb_common::Reason;

use super::ptr_at;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub struct Eth {
    /// Ethertype of the payload (after the tag, if any), host order.
    pub proto: u16,
    /// Offset of the layer-3 header: 14, or 18 with a tag.
    pub l3_off: usize,
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Eth, Reason> {
    let h: *const [u8; ETH_HLEN] = ptr_at(ctx, 0)?;
    // SAFETY: ptr_at checked that 14 bytes are in the packet.
    let proto = unsafe { u16::from_be_bytes([(*h)[12], (*h)[13]]) };
    if !is_vlan(proto) {
        return Ok(Eth {
            proto,
            l3_off: ETH_HLEN,
        });
    }
    let tag: *const [u8; VLAN_HLEN] = ptr_at(ctx, ETH_HLEN)?;
    // SAFETY: ptr_at checked that the 4-byte tag is in the packet.
    let inner = unsafe { u16::from_be_bytes([(*tag)[2], (*tag)[3]]) };
    if is_vlan(inner) {
        return Err(Reason::PassVlanStack);
    }
    Ok(Eth {
        proto: inner,
        l3_off: ETH_HLEN + VLAN_HLEN,
    })
}
