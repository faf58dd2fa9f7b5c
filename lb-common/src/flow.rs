//! The flow table: which backend each established flow goes to.

/// Key of the `FLOWS` LRU hash: the 5-tuple as it arrived.
///
/// Addresses and ports in network byte order; IPv4 addresses fill the first
/// four bytes of each address, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Value of the `FLOWS` LRU hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub backend_id: u32,
    /// The flow hash computed on the miss; reused for the tunnel source
    /// address so an established flow does not rehash.
    pub hash: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 8);

crate::pod!(FlowKey, FlowValue);
