//! Virtual services: the key the program looks a packet up by, and what it
//! finds there.

/// Words (64 bits each) of the `VIP_FILTER` array: 65,536 bits.
pub const VIP_FILTER_WORDS: u32 = 1024;

/// The `VIP_FILTER` bit of a destination address, from its 32-bit words as
/// loaded from the packet (native order): an IPv4 address is its one word,
/// an IPv6 address the xor of its four. A multiplicative hash, so that the
/// VIPs of one subnet spread over the bits. Every VIP address's bit is set;
/// a packet whose bit is clear is not for a VIP, and is told so without a
/// hash-map lookup.
#[inline(always)]
pub fn vip_filter_bit(folded: u32) -> u32 {
    folded.wrapping_mul(0x9e37_79b1) >> 16
}

/// [`vip_filter_bit`]'s input for an IPv6 address.
#[inline(always)]
pub fn fold_v6(a: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    w(0) ^ w(4) ^ w(8) ^ w(12)
}

/// Key of the `VIPS` map: (address, port, protocol).
///
/// `addr` is in network byte order; an IPv4 address fills the first four bytes
/// and the other twelve are zero. `port` is in network byte order; port 0 is
/// an all-ports VIP, tried when no VIP matches the exact port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// Value of the `VIPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `VIP_STATS`; unique among live VIPs, never 0.
    pub vip_id: u32,
    /// `VIP_F_*` bits and the mode in `VIP_MODE_MASK`.
    pub flags: u32,
    /// First slot of this VIP's Maglev table in the `RINGS` array.
    pub ring_base: u32,
    /// Number of slots (a prime, `M`).
    pub ring_size: u32,
}
const _: () = assert!(core::mem::size_of::<VipMeta>() == 16);

/// Bits of [`VipMeta::flags`] that hold the forwarding mode.
pub const VIP_MODE_MASK: u32 = 0xff;
/// Direct server return: only the MAC addresses are rewritten.
pub const VIP_MODE_DSR: u32 = 0;
/// IP-in-IP (IPv4) or IPv6-in-IPv6 encapsulation to the backend.
pub const VIP_MODE_TUNNEL: u32 = 1;
/// Destination NAT to the backend's address and port; replies are
/// translated back (`NAT` map).
pub const VIP_MODE_NAT: u32 = 2;
/// NAT mode that also rewrites the source to a balancer address and port
/// (`SETTINGS.fullnat_*`), so that backends need no route through hola.
pub const VIP_MODE_FULLNAT: u32 = 3;
/// Hash on the source address only, so a client keeps its backend across
/// connections (client affinity).
pub const VIP_F_SRC_HASH: u32 = 1 << 8;
/// A UDP VIP of QUIC servers: a short-header packet whose destination
/// connection ID carries a known server ID goes to that server's backend
/// (`QUIC_SERVERS`, `lb_common::quic`), whatever its addresses and ports.
pub const VIP_F_QUIC: u32 = 1 << 9;

/// How many VIPs an address carries inline in its `VIP_ADDRS*` entry.
pub const ADDR_SLOTS: usize = 8;

/// One VIP at an address, inside [`AddrVips`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    /// Network byte order; 0 is the all-ports VIP.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub meta: VipMeta,
}
const _: () = assert!(core::mem::size_of::<VipSlot>() == 20);

/// Value of the `VIP_ADDRS4`/`VIP_ADDRS6` maps: every VIP at one address,
/// so that one hash lookup both rejects traffic to other addresses and finds
/// the VIP. An address with more than [`ADDR_SLOTS`] VIPs sets
/// [`ADDR_F_OVERFLOW`] and the program falls back to the `VIPS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrVips {
    /// Slots in use, from the first.
    pub count: u32,
    /// `ADDR_F_*` bits.
    pub flags: u32,
    pub slots: [VipSlot; ADDR_SLOTS],
}
const _: () = assert!(core::mem::size_of::<AddrVips>() == 8 + 20 * ADDR_SLOTS);

/// More VIPs at this address than fit in the slots: look in `VIPS`.
pub const ADDR_F_OVERFLOW: u32 = 1 << 0;

/// Slots of each of the `VIP_DIRECT4` and `VIP_DIRECT6` arrays.
pub const VIP_DIRECT_SLOTS: u32 = 4096;

/// The `VIP_DIRECT*` slot of a destination address (folded as for
/// [`vip_filter_bit`]): the low bits of its filter bit.
#[inline(always)]
pub fn vip_direct_slot(folded: u32) -> u32 {
    vip_filter_bit(folded) & (VIP_DIRECT_SLOTS - 1)
}

/// [`DirectVips4::state`]: the slot holds the one VIP address whose slot
/// it is, and its VIPs. A destination with this slot and another address
/// is not a VIP address. Any other state (0: no VIP address has this slot,
/// or not yet written; [`DIRECT_SHARED`]) sends the program to the
/// `VIP_ADDRS*` hash map.
pub const DIRECT_OWNED: u32 = 1;
/// [`DirectVips4::state`]: two or more VIP addresses have this slot.
pub const DIRECT_SHARED: u32 = 2;

/// A slot of `VIP_DIRECT4`: a copy of one address's `VIP_ADDRS4` entry,
/// found by an inlined array read instead of a hash lookup.
///
/// The array is memory-mapped and written in place by userspace as a
/// sequence lock: `seq` is made odd, the rest written, then `seq` made even
/// again (one greater). The program reads `seq`, what it needs, and `seq`
/// again, and trusts what it read only when both reads are the same even
/// number; otherwise it looks in the hash map, which is always whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectVips4 {
    pub seq: u32,
    /// [`DIRECT_OWNED`], [`DIRECT_SHARED`] or 0.
    pub state: u32,
    /// The address (as loaded from the packet) when `state` is
    /// [`DIRECT_OWNED`].
    pub addr: u32,
    pub _pad: u32,
    pub vips: AddrVips,
}
const _: () = assert!(core::mem::size_of::<DirectVips4>() == 16 + 168);

/// A slot of `VIP_DIRECT6`; as [`DirectVips4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectVips6 {
    pub seq: u32,
    pub state: u32,
    pub addr: [u8; 16],
    pub vips: AddrVips,
}
const _: () = assert!(core::mem::size_of::<DirectVips6>() == 24 + 168);

crate::pod!(VipKey, VipMeta, VipSlot, AddrVips, DirectVips4, DirectVips6);
