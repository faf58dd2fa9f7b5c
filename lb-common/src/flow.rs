//! The flow table: which backend each established flow goes to.

/// Key of the `FLOWS` LRU hash: the 5-tuple as it arrived.
///
/// Addresses and ports in network byte order; IPv4 addresses fill the first
/// four bytes of each address, the rest zero (see [`v4_addr`]).
///
/// Aligned to 8 bytes, so that the program writes (and the kernel hashes
/// and compares) it in five 8-byte words rather than byte by byte.
#[repr(C, align(8))]
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
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8);

/// An IPv4 address (network order) as a key's 16-byte address: its four
/// bytes first, the rest zero. Built as one 128-bit value so that the
/// program stores it in two words, with no byte loop or `memset` call.
#[inline(always)]
pub fn v4_addr(a: [u8; 4]) -> [u8; 16] {
    u128::from(u32::from_ne_bytes(a)).to_ne_bytes()
}

/// Key of the `FLOWS4` LRU hash (IPv4 flows): the 5-tuple as it arrived,
/// in 16 bytes, so that the kernel hashes four words and compares two
/// where `FlowKey` costs ten and five. `FLOWS` keeps the IPv6 flows.
///
/// Addresses and ports in network byte order. Aligned to 8 bytes: the
/// program builds it with two 8-byte stores (see [`FlowKey4::of`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Network byte order.
    pub sport: u16,
    /// Network byte order.
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);
const _: () = assert!(core::mem::align_of::<FlowKey4>() == 8);

impl FlowKey4 {
    /// The IPv4 key of an IPv4 `FlowKey` (its addresses' first four
    /// bytes), read and written as whole aligned words: the addresses at
    /// offsets 0 and 16 and the ports at 32 of the 8-aligned `FlowKey`.
    #[inline(always)]
    pub fn of(k: &FlowKey) -> Self {
        let p = (k as *const FlowKey).cast::<u32>();
        // SAFETY: `FlowKey` is 8-aligned and 40 bytes: the u32 words at
        // byte offsets 0 (the source's first four bytes), 16 (the
        // destination's) and 32 (both ports, as laid out) are inside it
        // and aligned.
        let (src, dst, ports) = unsafe { (p.read(), p.add(4).read(), p.add(8).read()) };
        let proto = u64::from(k.proto);
        // Two 8-byte words whose bytes are, in memory order, (src, dst)
        // and (sport, dport, proto, 0, 0, 0).
        #[cfg(target_endian = "little")]
        let words = [
            u64::from(src) | u64::from(dst) << 32,
            u64::from(ports) | proto << 32,
        ];
        #[cfg(target_endian = "big")]
        let words = [
            u64::from(src) << 32 | u64::from(dst),
            u64::from(ports) << 32 | proto << 24,
        ];
        // SAFETY: `Self` is 16 bytes of byte arrays and integers with no
        // invalid bit pattern, the size of two u64 words.
        unsafe { core::mem::transmute::<[u64; 2], Self>(words) }
    }

    /// The `FlowKey` this key is the IPv4 form of (for userspace: one
    /// listing of both tables).
    pub fn widen(&self) -> FlowKey {
        FlowKey {
            src: v4_addr(self.src),
            dst: v4_addr(self.dst),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: crate::FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

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

/// Value of the `NAT` LRU hash, whose key is the [`FlowKey`] of the
/// backend's reply as it arrives (source the backend's address and port,
/// destination the client's): how to translate it back and where to send
/// it. Written by the program on the request path, read on the reply path;
/// userspace counts and sweeps expired entries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    /// The VIP the client addressed (network order; IPv4 in the first four
    /// bytes): the reply's new source.
    pub vip_addr: [u8; 16],
    /// The port the client addressed, network order.
    pub vip_port: u16,
    /// `NAT_F_*` bits.
    pub flags: u16,
    /// Interface the request came in on: the reply leaves through it.
    pub ifindex: u32,
    /// Where the request came from (the client's or the router's MAC): the
    /// reply's destination MAC.
    pub dmac: [u8; 6],
    /// The MAC the request was sent to (ours): the reply's source MAC.
    pub smac: [u8; 6],
    /// `CLOCK_MONOTONIC` (coarse: `bpf_ktime_get_coarse_ns`) of the last
    /// packet either way (updated at most every `NAT_TOUCH_NS`).
    pub last_ns: u64,
    /// When a FIN or RST was first seen (0: not yet), coarse as `last_ns`.
    pub closed_ns: u64,
    /// The backend (id) the flow went to, for its handshake counters.
    pub backend_id: u32,
    /// A fullnat SYN's forward entry ([`NAT_F_FORWARD`]): the source port
    /// (network order) its request was given. 0 otherwise.
    pub fwd_port: u32,
    /// When the client's SYN went to the backend (`bpf_ktime_get_ns`,
    /// precise), until the backend answered it (SYN-ACK or RST); 0
    /// otherwise. Userspace counts entries
    /// whose SYN stays unanswered.
    pub syn_ns: u64,
    /// fullnat: the client's address and port (network order), the reply's
    /// new destination. Unused (zero) in nat mode, where the reply is
    /// addressed to the client already.
    pub client_addr: [u8; 16],
    pub client_port: u16,
    pub _pad2: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<NatValue>() == 96);
// The program copies the two MACs as one 12-byte run.
const _: () =
    assert!(core::mem::offset_of!(NatValue, smac) == core::mem::offset_of!(NatValue, dmac) + 6);

/// One record of the `FLOW_EVENTS` ring buffer: an entry the program
/// created, which userspace replicates to the cluster's peers
/// (docs/cluster.md). Written only while `CLUSTER_STATE` is on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// [`FLOW_EVENT_FLOW`] or [`FLOW_EVENT_NAT`].
    pub kind: u32,
    pub backend_id: u32,
    /// The flow hash (flow events).
    pub hash: u32,
    pub _pad: u32,
    /// A flow event: the client's 5-tuple (as a `FlowKey` for either family; `FLOWS4` holds IPv4 ones narrowed); a NAT event:
    /// the reply's (the `NAT` key).
    pub key: FlowKey,
    /// A NAT event: the entry as written.
    pub nat: NatValue,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 152);

/// [`NatScratch::new_flow`]: the backend came from the Maglev table.
pub const NEW_FLOW_MAGLEV: u8 = 1;
/// [`NatScratch::new_flow`]: the backend came from `PEER_FLOWS`.
pub const NEW_FLOW_PEER: u8 = 2;

/// [`NatScratch::new_flow`]: a new flow over the CPU's insert rate limit:
/// translated and forwarded, not recorded.
pub const NEW_FLOW_FLOOD: u8 = 3;

/// One per-CPU element of `FLOOD`: the program's count of the flows it
/// recorded in the current one-second window, for the insert rate limit,
/// and of the SYNs it saw (a SYN flood: see `syns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodState {
    /// `bpf_ktime_get_coarse_ns` when the window began.
    pub window_ns: u64,
    /// Flows recorded (or refused) since then.
    pub inserts: u64,
    /// SYNs of `dsr` and `tunnel` VIPs since then (layout version 2). Over
    /// `new_flow_rate`, the window's further SYNs skip the flow-table
    /// lookups (a SYN flood's are all misses in cold buckets).
    pub syns: u64,
}
const _: () = assert!(core::mem::size_of::<FloodState>() == 24);

/// The length of the insert rate limit's window.
pub const FLOOD_WINDOW_NS: u64 = 1_000_000_000;

/// TCP flag bits the data plane looks at.
pub const TCP_FIN: u8 = 0x01;
/// See [`TCP_FIN`].
pub const TCP_SYN: u8 = 0x02;
/// See [`TCP_FIN`].
pub const TCP_RST: u8 = 0x04;
/// See [`TCP_FIN`].
pub const TCP_ACK: u8 = 0x10;

/// Whether TCP flags `f` open a connection: SYN set, ACK clear.
#[inline(always)]
pub fn is_syn(f: u8) -> bool {
    f & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// [`FlowEvent::kind`]: a new `FLOWS4` or `FLOWS` entry (a flow-table miss given a
/// backend by Maglev).
pub const FLOW_EVENT_FLOW: u32 = 1;
/// [`FlowEvent::kind`]: a new `NAT` entry.
pub const FLOW_EVENT_NAT: u32 = 2;

/// [`NatValue::flags`]: the entry is a fullnat flow's (source rewritten).
pub const NAT_F_FULLNAT: u16 = 1 << 0;
/// [`NatValue::flags`]: in `NAT_SYN`, a fullnat SYN's entry keyed by the
/// client's 5-tuple (not the reply's): where its ACK finds the source port
/// ([`NatValue::fwd_port`]) and backend its SYN was given.
pub const NAT_F_FORWARD: u16 = 1 << 1;

/// [`NatValue::flags`]: a `NAT_SYN` entry (a handshake in progress), in
/// that table and in the `FLOW_EVENTS` record that hands it to cluster
/// peers, which install it in their `NAT_SYN` (the SYN-ACK may come back
/// through another node).
pub const NAT_F_SYN: u16 = 1 << 2;

/// [`NatScratch::new_flow`]: a TCP SYN that missed the flow table: its
/// translation goes to `NAT_SYN` until the handshake completes.
pub const NEW_FLOW_SYN: u8 = 4;

/// What `hola_lb` hands the NAT request program it tail-calls, in the
/// per-CPU `NAT_SCRATCH` array (a tail call keeps only the packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatScratch {
    /// The request's 5-tuple as it arrived.
    pub key: FlowKey,
    pub backend_id: u32,
    /// fullnat, established flow: the source port given at its start.
    pub port: u32,
    pub l3_off: u16,
    pub l4_off: u16,
    pub tcp_flags: u8,
    /// 0: a flow-table hit; [`NEW_FLOW_MAGLEV`] or [`NEW_FLOW_PEER`].
    pub new_flow: u8,
    /// 1 for a fullnat VIP.
    pub fullnat: u8,
    pub _pad: u8,
    /// Work space of the NAT request program (its stack is too small for
    /// it): the reply's key and the entry it may insert.
    pub rev: FlowKey,
    pub value: NatValue,
}
const _: () = assert!(core::mem::size_of::<NatScratch>() == 56 + 40 + 96);

/// Buckets of the handshake latency histogram: bucket `i` counts SYN →
/// SYN-ACK latencies in `[2^i, 2^(i+1))` microseconds (bucket 0 also the
/// faster ones, the last also the slower ones).
pub const HANDSHAKE_BUCKETS: usize = 24;

/// One element of the per-CPU `HANDSHAKES` array, indexed by backend id:
/// what the program saw of the TCP handshakes of NAT flows to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeStats {
    pub buckets: [u64; HANDSHAKE_BUCKETS],
    /// SYNs answered by a SYN-ACK (the sum of the buckets).
    pub syn_acks: u64,
    /// SYNs answered by a RST (the port is closed, the server refuses).
    pub rsts: u64,
}
const _: () = assert!(core::mem::size_of::<HandshakeStats>() == 8 * (HANDSHAKE_BUCKETS + 2));

/// The histogram bucket of a latency of `us` microseconds.
#[inline(always)]
pub fn handshake_bucket(us: u64) -> usize {
    // A branchy log2: no count-leading-zeros instruction in BPF.
    let mut v = us;
    let mut b = 0usize;
    if v >= 1 << 16 {
        v >>= 16;
        b += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        b += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        b += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        b += 2;
    }
    if v >= 1 << 1 {
        b += 1;
    }
    if b >= HANDSHAKE_BUCKETS {
        HANDSHAKE_BUCKETS - 1
    } else {
        b
    }
}

/// Last-seen times are refreshed at most this often, so that a busy flow
/// does not write its entry on every packet.
pub const NAT_TOUCH_NS: u64 = 1_000_000_000;

/// NAT entry lifetimes, from [`crate::Settings`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatTimeouts {
    pub tcp_idle_ns: u64,
    pub udp_idle_ns: u64,
    pub closed_linger_ns: u64,
}

/// Whether a NAT entry of protocol `proto` is expired at `now_ns`: closed
/// at least the linger ago, or idle longer than its protocol's timeout.
/// (At least: with the coarse clock a packet in the same tick as the FIN
/// sees no time passed, and a linger of 0 must still end the entry.)
#[inline(always)]
pub fn nat_expired(v: &NatValue, proto: u8, now_ns: u64, t: &NatTimeouts) -> bool {
    expired_at(v.last_ns, v.closed_ns, proto, now_ns, t)
}

/// [`nat_expired`] from the entry's two times alone.
#[inline(always)]
pub fn expired_at(last_ns: u64, closed_ns: u64, proto: u8, now_ns: u64, t: &NatTimeouts) -> bool {
    if closed_ns != 0 && now_ns.saturating_sub(closed_ns) >= t.closed_linger_ns {
        return true;
    }
    let idle = if proto == crate::PROTO_TCP {
        t.tcp_idle_ns
    } else {
        t.udp_idle_ns
    };
    now_ns.saturating_sub(last_ns) > idle
}

crate::pod!(
    FlowKey,
    FlowKey4,
    FlowValue,
    NatValue,
    HandshakeStats,
    NatScratch,
    FlowEvent,
    FloodState
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_key_holds_the_5_tuple_and_widens_back() {
        let k = FlowKey {
            src: v4_addr([198, 18, 0, 1]),
            dst: v4_addr([198, 18, 1, 1]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
            _pad: [0; 2],
        };
        let k4 = FlowKey4::of(&k);
        assert_eq!(
            k4,
            FlowKey4 {
                src: [198, 18, 0, 1],
                dst: [198, 18, 1, 1],
                sport: 40000u16.to_be(),
                dport: 80u16.to_be(),
                proto: crate::PROTO_TCP,
                _pad: [0; 3],
            }
        );
        assert_eq!(k4.widen(), k);
    }
}
