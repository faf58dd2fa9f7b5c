//! Map keys and values shared by the XDP program (`lb-ebpf`) and userspace
//! (`lb-userspace`).
//!
//! Every type here is `#[repr(C)]`, `Copy`, has explicit padding and no `bool`,
//! enum or `Option` inside, so that both sides agree on every byte. Sizes are
//! asserted at compile time. With the `user` feature the types implement
//! `aya::Pod`.
#![no_std]

pub mod backend;
pub mod flow;
pub mod frag;
pub mod hash;
pub mod maps;
pub mod probe;
pub mod quic;
pub mod settings;
pub mod stats;
pub mod trace;
pub mod vip;

pub use backend::Backend;
pub use flow::{FlowKey, FlowKey4, FlowValue, HandshakeStats, NatValue};
pub use settings::Settings;
pub use stats::{BackendStats, Reason, ReasonStats, RetiredStats, VipStats};
pub use vip::{AddrVips, VipKey, VipMeta, VipSlot};

/// Address family codes used inside map keys (not the kernel's AF_* values,
/// so that the byte means the same thing everywhere).
pub const FAMILY_V4: u8 = 4;
/// See [`FAMILY_V4`].
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers hola balances.
pub const PROTO_TCP: u8 = 6;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 17;

/// Implements `aya::Pod` for the listed types when the `user` feature is on.
macro_rules! pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is #[repr(C)], Copy, has no implicit padding (the
            // size assertions next to its definition prove it) and every bit
            // pattern is a valid value.
            unsafe impl aya::Pod for $t {}
        )+
    };
}
pub(crate) use pod;
