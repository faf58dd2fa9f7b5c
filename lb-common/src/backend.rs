//! Backends: where a flow is sent and how to reach it.

/// Value of the `BACKENDS` array, indexed by backend id (id 0 means "none"
/// and is never written).
///
/// The next-hop MACs are resolved by userspace from the kernel's neighbour
/// table (the program never guesses a MAC); until they are known the backend
/// lacks [`BACKEND_F_NEXTHOP`] and its packets are dropped and counted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// Egress interface; 0 or the ingress interface means XDP_TX, anything
    /// else XDP_REDIRECT through `TX_PORTS`.
    pub ifindex: u32,
    /// The VIP this backend belongs to. A flow-table entry is honoured only
    /// if its backend still belongs to the flow's VIP (ids are reused).
    pub vip_id: u32,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
    /// Destination MAC of the next hop toward the backend.
    pub dmac: [u8; 6],
    /// Source MAC: the egress interface's own.
    pub smac: [u8; 6],
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: u8,
    /// NAT mode: the destination port the backend listens on, network
    /// order; 0 keeps the packet's port.
    pub port: u16,
}
const _: () = assert!(core::mem::size_of::<Backend>() == 44);
// The program copies the two MACs as one 12-byte run.
const _: () =
    assert!(core::mem::offset_of!(Backend, smac) == core::mem::offset_of!(Backend, dmac) + 6);

/// The slot holds a live backend. Cleared when the backend is removed, so
/// established flows to it are re-balanced.
pub const BACKEND_F_ACTIVE: u32 = 1 << 0;
/// `dmac`/`smac` are resolved.
pub const BACKEND_F_NEXTHOP: u32 = 1 << 1;
/// Failed its health checks: established flows to it are re-balanced (the
/// program treats their flow-table entries as misses). Its Maglev slots are
/// taken away separately, by userspace.
pub const BACKEND_F_DOWN: u32 = 1 << 2;

crate::pod!(Backend);
