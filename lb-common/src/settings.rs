//! Load-time settings of the XDP program, written into its read-only data
//! before it is loaded.

/// The `SETTINGS` global of the `hola` program.
///
/// The outer source address of a tunnelled packet is
/// `(base & !mask) | (flow_hash & mask)`, so that the backend's NIC spreads
/// tunnelled flows over its receive queues. Addresses in network byte order;
/// masks in host byte order over the last 32 bits of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub tunnel_src_v4: [u8; 4],
    /// Host bits of the IPv4 tunnel source taken from the flow hash.
    pub tunnel_src_v4_mask: u32,
    pub tunnel_src_v6: [u8; 16],
    /// Host bits of the last 32 bits of the IPv6 tunnel source.
    pub tunnel_src_v6_mask: u32,
    /// New flows each CPU records per second at most (0: no limit); the
    /// ones above it are forwarded by the Maglev table unrecorded.
    pub new_flow_rate: u32,
    /// NAT mode: an entry of a TCP flow idle this long expires (ns).
    pub nat_tcp_idle_ns: u64,
    /// NAT mode: an entry of a UDP flow idle this long expires (ns).
    pub nat_udp_idle_ns: u64,
    /// NAT mode: a TCP flow that saw FIN or RST expires this long after (ns).
    pub nat_closed_linger_ns: u64,
    /// fullnat: the IPv4 source address requests get (network order).
    pub fullnat_src_v4: [u8; 4],
    /// fullnat: the first source port; CPU `c` hands out
    /// `[lo + c × span, lo + (c + 1) × span)`, so CPUs never share a port.
    pub fullnat_port_lo: u16,
    pub fullnat_port_span: u16,
    /// fullnat: the IPv6 source address requests get.
    pub fullnat_src_v6: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Settings>() == 80);

crate::pod!(Settings);
