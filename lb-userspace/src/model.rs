//! Leaf types every part of hola uses: what a VIP and a backend are once
//! configured (identity, mode, weight, next hop), independent of how they
//! were written (configuration file, API) and of how they are stored (maps).
//! This module imports nothing else of the crate.

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Direct server return: MACs rewritten, the backend holds the VIP.
    Dsr,
    /// IP-in-IP / IPv6-in-IPv6 to the backend, which runs `hola-decap`.
    Tunnel,
    /// Destination NAT to the backend's address (and port); its replies
    /// come back through the balancer and are translated back.
    Nat,
    /// As `Nat`, and the source becomes the balancer's fullnat address and
    /// a port of its range.
    FullNat,
}

impl Mode {
    /// Whether replies come back through the balancer to be translated.
    pub const fn is_nat(self) -> bool {
        matches!(self, Mode::Nat | Mode::FullNat)
    }
}

/// Identity of a VIP: (address, port, protocol). Port 0 is all ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipAddr {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for VipAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}/{}", self.port, self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{}/{}", self.port, self.proto),
        }
    }
}

/// A VIP as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub vip: VipAddr,
    pub mode: Mode,
    /// Hash on the client address only (client affinity).
    pub src_hash: bool,
    /// Maglev table size M, a prime.
    pub table_size: u32,
    /// UDP VIP of QUIC servers: short headers go to the backend whose
    /// server ID their connection ID carries (`lb_common::quic`).
    pub quic: bool,
}

/// How frames reach a backend: resolved from the kernel's routing and
/// neighbour tables by `neigh`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nexthop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// Egress interface; 0 means "the interface the packet came in on".
    pub ifindex: u32,
}

/// A backend of a VIP as the data plane is to have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: IpAddr,
    /// Relative share of new flows; 0 drains (established flows stay).
    pub weight: u32,
    /// `None` until resolved: packets to it are dropped and counted.
    pub nexthop: Option<Nexthop>,
    /// False when health checks say it is down: its established flows are
    /// re-balanced and it has no slot in the Maglev table (as at weight 0).
    pub up: bool,
    /// NAT mode: the port the backend listens on; 0 keeps the VIP's port
    /// (the packet's, for an all-ports VIP). Ignored by other modes.
    pub port: u16,
    /// `quic` VIPs: the server ID this backend's QUIC connection IDs carry
    /// (0: none).
    pub server_id: u16,
}

/// An address as the program sees it: network order, IPv4 in the first four
/// bytes.
pub fn addr_bytes(a: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address `addr_bytes` made, back.
pub fn addr_from_bytes(addr: [u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(addr)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
