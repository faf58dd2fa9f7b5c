//! Counters. All of them live in per-CPU arrays; userspace sums the CPUs.

/// One element of `VIP_STATS`, indexed by `VipMeta::vip_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    /// Every packet for the VIP, whatever its fate (drops included).
    pub packets: u64,
    pub bytes: u64,
    /// Flow-table misses placed by the Maglev table and forwarded (a
    /// packet the NAT program drops is not counted).
    pub new_flows: u64,
    /// Packets dropped because the VIP had no usable backend.
    pub no_backend: u64,
}
const _: () = assert!(core::mem::size_of::<VipStats>() == 32);

/// One element of `BACKEND_STATS`, indexed by backend id (layout version
/// 2). A forwarded packet writes only this (one counter write for an
/// established forward): the VIP's packets and bytes and the
/// `fwd_established` reason are derived from it in userspace
/// (`dataplane/counters.rs`, docs/maps.md):
///
/// - the VIP's = its own `VIP_STATS` (packets that reached no backend)
///   + the sum over its backends of `packets - legacy_packets`
///   + what its removed backends had (`RETIRED`);
/// - `fwd_established` = its own `REASONS` entry (what a build before
///   this one counted there) + the sum over backends of `packets -
///   legacy_packets - counted_packets` + `RETIRED`'s established part.
///
/// The same for bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Packets forwarded to the backend (credited once the packet's action
    /// is chosen: a packet dropped on the way is not counted).
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub _reserved: u64,
    /// Of `packets`: those forwarded under a reason other than
    /// `FwdEstablished` (new flows, SYNs, floods, QUIC, peer flows,
    /// fragments), which `REASONS` counts explicitly.
    pub counted_packets: u64,
    pub counted_bytes: u64,
    /// Of `packets`: those a build before layout version 2 counted (it
    /// wrote the VIP's counters and `REASONS` for every packet too), set
    /// by the upgrade's conversion and never written by the program.
    pub legacy_packets: u64,
    pub legacy_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<BackendStats>() == 64);

/// One element of `RETIRED`, indexed by VIP id: what removed backends
/// forwarded, kept when their ids are reused. Written only by userspace
/// (the owner), never by the program, so that folding a backend's
/// per-CPU counters in is not a read-modify-write racing the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetiredStats {
    /// Packets and bytes the VIP's removed backends forwarded (reset
    /// when the VIP id is given to a new VIP).
    pub vip_packets: u64,
    pub vip_bytes: u64,
    /// Of those, forwarded as `FwdEstablished` (never reset: the reason
    /// totals are global and outlive the VIP).
    pub established_packets: u64,
    pub established_bytes: u64,
    /// The backend id whose counters this element holds already while
    /// its fold completes (0: none): a fold interrupted by a crash is
    /// finished, not repeated, by the next daemon.
    pub folding: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<RetiredStats>() == 40);

/// One element of `REASONS`, indexed by [`Reason`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonStats {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<ReasonStats>() == 16);

/// Why the program returned the verdict it did. Every packet is counted under
/// exactly one reason. The enum is only an index: the map stores plain
/// [`ReasonStats`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// XDP_PASS: not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = 0,
    /// XDP_PASS: more than one VLAN tag.
    PassVlanStack = 1,
    /// XDP_PASS: IP, but not addressed to a VIP (address, port or protocol).
    PassNotVip = 2,
    /// XDP_PASS: IPv6 to a VIP address with extension headers (not balanced yet).
    PassIpv6ExtHdr = 3,
    /// XDP_DROP: a header is truncated or impossible.
    DropMalformed = 4,
    /// XDP_DROP: a fragment to a VIP address that cannot be placed: a later
    /// fragment whose datagram is unknown (its first fragment not seen, or
    /// seen longer ago than the fragment lifetime) when the address has
    /// more than one VIP of its protocol (so which VIP is not known), or
    /// the fragment program is not loaded.
    DropFragment = 5,
    /// XDP_DROP: the VIP has no backend to send a new flow to.
    DropNoBackend = 6,
    /// XDP_DROP: the chosen backend's next-hop MAC is not resolved yet.
    DropNoNexthop = 7,
    /// XDP_TX/XDP_REDIRECT: flow-table hit.
    FwdEstablished = 8,
    /// XDP_TX/XDP_REDIRECT: flow-table miss; the backend came from Maglev.
    FwdNewFlow = 9,
    /// XDP_ABORTED: a helper failed (head adjustment, redirect).
    Aborted = 10,
    /// XDP_TX/XDP_REDIRECT: a backend's reply in NAT mode, translated back
    /// to the VIP and sent to where the request came from.
    FwdNatReply = 11,
    /// XDP_DROP: a backend's reply whose NAT entry has expired (idle, or
    /// closed by FIN/RST longer ago than the linger): not let out
    /// untranslated.
    DropNatExpired = 12,
    /// XDP_TX/XDP_REDIRECT: an ICMP error about a NAT flow (port
    /// unreachable, fragmentation needed, packet too big, ...), translated
    /// with the packet it quotes and sent on (to the client or the backend).
    FwdNatIcmp = 13,
    /// XDP_DROP: a new fullnat flow found no free source port in this CPU's
    /// range (every candidate tried holds a live flow); no port is reused.
    DropNatNoPort = 14,
    /// XDP_TX/XDP_REDIRECT: flow-table miss, found in the table of flows
    /// learned from cluster peers (`PEER_FLOWS`): sent to the backend the
    /// peer chose, and now in the flow table.
    FwdPeerFlow = 15,
    /// XDP_TX/XDP_REDIRECT: a TCP SYN (SYN set, ACK clear) of a `dsr` or
    /// `tunnel` VIP that missed the flow table: sent where the VIP's Maglev
    /// table says and not recorded (the flow is recorded at its first
    /// non-SYN packet), so a SYN flood leaves no state.
    FwdSyn = 16,
    /// XDP_TX/XDP_REDIRECT: a new flow (a non-SYN miss, UDP, a nat SYN)
    /// over this CPU's insert rate limit (`new_flow_rate`): sent where the
    /// VIP's current Maglev table says and not recorded. A rate of these
    /// is what `hola stats` calls flood mode.
    FwdFlood = 17,
    /// XDP_TX/XDP_REDIRECT: a QUIC short-header packet of a `quic` VIP
    /// whose destination connection ID names a server ID of an up backend
    /// of the VIP: sent there whatever its 5-tuple (a client that moved
    /// keeps its server), not looked up in nor recorded in the flow table.
    FwdQuicServerId = 18,
    /// XDP_TX/XDP_REDIRECT: a QUIC short-header packet of a `quic` VIP
    /// whose connection ID is ours but whose server ID names no backend of
    /// the VIP (unknown, or its backend removed): balanced as any packet
    /// (flow table, then Maglev).
    FwdQuicUnknownId = 19,
    /// XDP_TX/XDP_REDIRECT: as `FwdQuicUnknownId`, but the server ID's
    /// backend is down (failed its health checks): balanced as any packet.
    FwdQuicIdDown = 20,
    /// XDP_TX/XDP_REDIRECT: a short-header packet of a `quic` VIP whose
    /// connection ID cannot be ours: a datagram too short to hold a header
    /// byte and an ID (9 bytes, whatever its first byte), the fixed bit
    /// clear, another config rotation codepoint or length in the ID's
    /// first octet. Balanced as any packet.
    FwdQuicBadId = 21,
    /// XDP_TX/XDP_REDIRECT: an ICMP error addressed to a `dsr` or `tunnel`
    /// VIP, quoting a packet the VIP sent (its address and port to a
    /// client): sent to the backend the flow's flow-table entry names, as
    /// the flow's data is (MACs rewritten, or encapsulated).
    FwdIcmpFlow = 22,
    /// XDP_TX/XDP_REDIRECT: as `FwdIcmpFlow`, the flow not in the flow
    /// table: sent to the backend the VIP's Maglev table gives the flow
    /// (for TCP during a grace period, the one its packets would go to).
    /// Records no flow.
    FwdIcmpMaglev = 23,
    /// XDP_TX: a `tunnel` VIP's packet that would not fit its egress
    /// interface's MTU once encapsulated, answered to the client with ICMP
    /// "fragmentation needed" (IPv4 with DF) or ICMPv6 "packet too big"
    /// from the VIP, in place of the packet.
    TxTooBig = 24,
    /// XDP_DROP: as `TxTooBig`, but this CPU has sent its allowance of
    /// such answers in the current second: dropped unanswered.
    DropTooBig = 25,
    /// XDP_TX/XDP_REDIRECT: a later fragment (no transport header), sent
    /// the way its datagram went (`FRAGS`): to a VIP's backend, or a NAT
    /// reply's back to its client.
    FwdFragment = 26,
    /// XDP_TX/XDP_REDIRECT: a later fragment that arrived before its
    /// datagram's first: its VIP (the address's only VIP of its protocol)
    /// placed it by the datagram's hash (addresses, protocol, id), and the
    /// datagram's other fragments, the first too, follow it.
    FwdFragmentEarly = 27,
}

impl Reason {
    /// Number of reasons: the size of the `REASONS` array.
    pub const COUNT: u32 = 28;

    /// Every reason, in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassVlanStack,
        Reason::PassNotVip,
        Reason::PassIpv6ExtHdr,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropNoBackend,
        Reason::DropNoNexthop,
        Reason::FwdEstablished,
        Reason::FwdNewFlow,
        Reason::Aborted,
        Reason::FwdNatReply,
        Reason::DropNatExpired,
        Reason::FwdNatIcmp,
        Reason::DropNatNoPort,
        Reason::FwdPeerFlow,
        Reason::FwdSyn,
        Reason::FwdFlood,
        Reason::FwdQuicServerId,
        Reason::FwdQuicUnknownId,
        Reason::FwdQuicIdDown,
        Reason::FwdQuicBadId,
        Reason::FwdIcmpFlow,
        Reason::FwdIcmpMaglev,
        Reason::TxTooBig,
        Reason::DropTooBig,
        Reason::FwdFragment,
        Reason::FwdFragmentEarly,
    ];

    /// Stable snake_case name used in stats output.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassVlanStack => "pass_vlan_stack",
            Reason::PassNotVip => "pass_not_vip",
            Reason::PassIpv6ExtHdr => "pass_ipv6_ext_hdr",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropFragment => "drop_fragment",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::DropNoNexthop => "drop_no_nexthop",
            Reason::FwdEstablished => "fwd_established",
            Reason::FwdNewFlow => "fwd_new_flow",
            Reason::Aborted => "aborted",
            Reason::FwdNatReply => "fwd_nat_reply",
            Reason::DropNatExpired => "drop_nat_expired",
            Reason::FwdNatIcmp => "fwd_nat_icmp",
            Reason::DropNatNoPort => "drop_nat_no_port",
            Reason::FwdPeerFlow => "fwd_peer_flow",
            Reason::FwdSyn => "fwd_syn",
            Reason::FwdFlood => "fwd_flood",
            Reason::FwdQuicServerId => "fwd_quic_server_id",
            Reason::FwdQuicUnknownId => "fwd_quic_unknown_id",
            Reason::FwdQuicIdDown => "fwd_quic_id_down",
            Reason::FwdQuicBadId => "fwd_quic_bad_id",
            Reason::FwdIcmpFlow => "fwd_icmp_flow",
            Reason::FwdIcmpMaglev => "fwd_icmp_maglev",
            Reason::TxTooBig => "tx_too_big",
            Reason::DropTooBig => "drop_too_big",
            Reason::FwdFragment => "fwd_fragment",
            Reason::FwdFragmentEarly => "fwd_fragment_early",
        }
    }
}

crate::pod!(VipStats, BackendStats, ReasonStats, RetiredStats);
