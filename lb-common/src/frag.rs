//! Fragments: the `FRAGS` map, which remembers where each fragmented
//! datagram went so that its later fragments (which carry no ports) follow
//! it.

/// One fragmented datagram: (source, destination, protocol, fragment id),
/// as RFC 791 and RFC 8200 identify the fragments of one datagram.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// An IPv4 address in its first four bytes (the rest zero), or IPv6.
    pub src: [u8; 16],
    /// As `src`.
    pub dst: [u8; 16],
    /// The fragment identification as in the packet (IPv4: 16 bits in the
    /// low-addressed two bytes, the rest zero; IPv6: 32 bits), network
    /// byte order.
    pub id: [u8; 4],
    /// The transport protocol (IPv6: the Fragment header's next header).
    pub proto: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 40);

/// `FragValue::kind`: the datagram went to a `dsr` VIP's backend (MACs
/// rewritten).
pub const FRAG_DSR: u8 = 1;
/// A `tunnel` VIP's backend: encapsulated, with the datagram's flow hash.
pub const FRAG_TUNNEL: u8 = 2;
/// A `nat` or `fullnat` VIP's backend: the addresses rewritten to
/// `FragValue::src`/`dst` (as flagged), MACs to the backend's.
pub const FRAG_NAT: u8 = 3;
/// A backend's reply to a NAT flow: addresses rewritten to
/// `FragValue::src`/`dst`, sent back by `FragValue::macs`/`ifindex`.
pub const FRAG_REPLY: u8 = 4;

/// `FragValue::flags`: rewrite the source address to `FragValue::src`.
pub const FRAG_F_SRC: u8 = 1;
/// Rewrite the destination address to `FragValue::dst`.
pub const FRAG_F_DST: u8 = 2;
/// The entry was made by a later fragment that arrived before the first
/// (the datagram's backend decided by its datagram hash); the first
/// fragment follows it.
pub const FRAG_F_EARLY: u8 = 4;

/// How long a `FRAGS` entry is followed after it was made: a datagram's
/// fragments arrive within milliseconds of each other, and an entry past
/// this is not used (a new datagram with a reused id is placed afresh).
/// Shorter than the kernel's reassembly timeout (`ipfrag_time`, 30 s), so
/// that an id reused after the backend gave up on its datagram is not sent
/// the old way.
pub const FRAG_LIFETIME_NS: u64 = 5_000_000_000;

/// Entries of `FRAGS`: datagrams in flight at once (an LRU: the oldest go
/// first when it is full).
pub const FRAG_CAPACITY: u32 = 8192;

/// Where one fragmented datagram goes, for its later fragments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    /// `CLOCK_MONOTONIC` (coarse) when the entry was made.
    pub created_ns: u64,
    /// The backend (0 for `FRAG_REPLY`).
    pub backend_id: u32,
    /// The datagram's flow hash (tunnel mode's outer source).
    pub hash: u32,
    /// New source address (`FRAG_F_SRC`), as in `FragKey`.
    pub src: [u8; 16],
    /// New destination address (`FRAG_F_DST`).
    pub dst: [u8; 16],
    /// `FRAG_REPLY`: the interface to send back out of (0: the one it came
    /// in on).
    pub ifindex: u32,
    /// `FRAG_DSR`, `FRAG_TUNNEL`, `FRAG_NAT` or `FRAG_REPLY`.
    pub kind: u8,
    /// `FRAG_F_*`.
    pub flags: u8,
    /// `FRAG_REPLY`: destination then source MAC.
    pub macs: [u8; 12],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 72);

crate::pod!(FragKey, FragValue);
