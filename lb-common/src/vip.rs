//! Virtual services: the key the program looks a packet up by, and what it
//! finds there.

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
/// Hash on the source address only, so a client keeps its backend across
/// connections (client affinity).
pub const VIP_F_SRC_HASH: u32 = 1 << 8;

/// Values of the `VIP_ADDRS4`/`VIP_ADDRS6` maps: which VIP kinds exist at an
/// address, so that traffic to a non-VIP address costs one lookup and an
/// address with only port VIPs never tries the all-ports key.
pub const ADDR_F_TCP_PORT: u32 = 1 << 0;
/// An all-ports TCP VIP exists at the address.
pub const ADDR_F_TCP_ANY: u32 = 1 << 1;
/// A UDP VIP with a port exists at the address.
pub const ADDR_F_UDP_PORT: u32 = 1 << 2;
/// An all-ports UDP VIP exists at the address.
pub const ADDR_F_UDP_ANY: u32 = 1 << 3;

/// The `VIP_ADDRS*` bits for a VIP of protocol `proto` on port `port`.
pub const fn addr_flag(proto: u8, port: u16) -> u32 {
    match (proto, port) {
        (crate::PROTO_TCP, 0) => ADDR_F_TCP_ANY,
        (crate::PROTO_TCP, _) => ADDR_F_TCP_PORT,
        (crate::PROTO_UDP, 0) => ADDR_F_UDP_ANY,
        (_, _) => ADDR_F_UDP_PORT,
    }
}

crate::pod!(VipKey, VipMeta);
