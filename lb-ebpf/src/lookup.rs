//! The balancing decision: is the packet for a VIP, which backend does its
//! flow go to, and the counters that say so.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    AddrVips, Backend, FAMILY_V4, FAMILY_V6, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP, Reason,
    VipKey, VipMeta,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_DOWN, BACKEND_F_NEXTHOP},
    flow::{NEW_FLOW_FLOOD, NEW_FLOW_MAGLEV, NEW_FLOW_PEER, NEW_FLOW_SYN, is_syn, v4_addr},
    hash::flow_hash,
    maps::{
        FRAG as FRAG_SLOT, FRAG_REPLY, ICMP_TO_BACKEND, ICMP_TO_CLIENT, NAT_REPLY, NAT_REQUEST,
    },
    vip::{
        ADDR_F_OVERFLOW, ADDR_SLOTS, VIP_F_QUIC, VIP_F_SRC_HASH, VIP_MODE_FULLNAT, VIP_MODE_MASK,
        VIP_MODE_NAT, VIP_MODE_TUNNEL, fold_v6, vip_filter_bit,
    },
};

use crate::{
    cluster, flows,
    forward::{self, Inner},
    frag, icmp,
    maps::{
        BACKENDS, ICMP_PROGS, NAT_SCRATCH, NAT_SOURCES4, NAT_SOURCES6, PEER_FLOWS, RINGS,
        VIP_ADDRS4, VIP_ADDRS6, VIP_FILTER, VIP_STATS, VIPS,
    },
    nat::{self, Layout},
    parse::{
        eth::{self, ETH_P_IP, ETH_P_IPV6},
        frag::{self as pfrag, NEXTHDR_FRAGMENT},
        ipv4, ipv6, l4,
    },
    quic, too_big, trace,
    verdict::{self, Verdict},
    vip_direct::{self, Direct},
};

/// `FRAG`: false in `hola_lb`, which hands every fragment to `hola_frag`
/// (one branch, on a path the fragment bits already take); true in
/// `hola_frag` for a first fragment, which is balanced as any packet and
/// its datagram remembered (`frag::remember`). The constant compiles the
/// fragment work out of `hola_lb`. `traced` (`hola_lb` only): a trace runs
/// (`trace::entry` read the filter). `hola_frag` reads the filter where it
/// needs it instead: a flag carried through the whole function doubles the
/// states the verifier explores, more than `hola_frag` may.
#[inline(always)]
pub fn try_lb<const FRAG: bool>(
    ctx: &XdpContext,
    bytes: u64,
    traced: bool,
) -> Result<Verdict, Reason> {
    let eth = eth::parse(ctx)?;
    // `FRAG` only: the datagram's id, and whether this is the first of
    // several fragments (then its datagram is remembered).
    let (mut frag_id, mut first_of_many) = ([0u8; 4], false);
    // The key is built field by field once the packet is known to be for a
    // VIP address: `FlowKey::default()` would cost a byte-wise memset (the
    // BPF backend emits a libcall) on every packet, VIP or not.
    let (src, dst, family, proto, addr_vips, l4_off, end, inner);
    if eth.proto == ETH_P_IP {
        let ip = ipv4::parse(ctx, eth.l3_off)?;
        let daddr = u32::from_ne_bytes(ip.daddr);
        addr_vips = match at_address(maybe_vip(daddr).then(|| vip_direct::v4(daddr)), || {
            VIP_ADDRS4.get_ptr(daddr)
        }) {
            Some(v) => v,
            None => {
                let at = Layout {
                    l3_off: eth.l3_off,
                    l4_off: ip.l4_off,
                    family: FAMILY_V4,
                    proto: ip.proto,
                };
                if !nat::active() {
                    return Err(Reason::PassNotVip);
                }
                let from_backend = NAT_SOURCES4.get_ptr(u32::from_ne_bytes(ip.saddr)).is_some();
                return not_vip::<FRAG>(ctx, &at, ip.is_fragment, from_backend);
            }
        };
        end = if ip.is_fragment {
            if !FRAG {
                // SAFETY: the index is a slot of ICMP_PROGS.
                unsafe { ICMP_PROGS.tail_call(ctx, FRAG_SLOT) };
                return Err(Reason::DropFragment);
            }
            let f = pfrag::v4(ctx, eth.l3_off, ip.l4_off)?;
            (frag_id, first_of_many) = (f.id.to_ne_bytes(), f.more);
            first_end(f.more, ip.l4_off, eth.l3_off + ip.tot_len as usize)
        } else {
            eth.l3_off + ip.tot_len as usize
        };
        (src, dst) = (v4_addr(ip.saddr), v4_addr(ip.daddr));
        (family, proto, l4_off) = (FAMILY_V4, ip.proto, ip.l4_off);
        inner = Inner::V4 {
            tot_len: ip.tot_len,
            tos: ip.tos,
        };
    } else if eth.proto == ETH_P_IPV6 {
        let ip = ipv6::parse(ctx, eth.l3_off)?;
        let folded = fold_v6(&ip.daddr);
        addr_vips = match at_address(
            maybe_vip(folded).then(|| vip_direct::v6(&ip.daddr, folded)),
            || VIP_ADDRS6.get_ptr(ip.daddr),
        ) {
            Some(v) => v,
            None => {
                let at = Layout {
                    l3_off: eth.l3_off,
                    l4_off: ip.l4_off,
                    family: FAMILY_V6,
                    proto: ip.nexthdr,
                };
                if !nat::active() {
                    return Err(Reason::PassNotVip);
                }
                let from_backend = NAT_SOURCES6.get_ptr(ip.saddr).is_some();
                let fragment = ip.nexthdr == NEXTHDR_FRAGMENT;
                return not_vip::<FRAG>(ctx, &at, fragment, from_backend);
            }
        };
        let (mut next, mut at) = (ip.nexthdr, ip.l4_off);
        end = ip.l4_off + ip.payload_len as usize;
        if ipv6::is_extension(ip.nexthdr) {
            if ip.nexthdr != NEXTHDR_FRAGMENT {
                return Err(Reason::PassIpv6ExtHdr);
            }
            if !FRAG {
                // SAFETY: the index is a slot of ICMP_PROGS.
                unsafe { ICMP_PROGS.tail_call(ctx, FRAG_SLOT) };
                return Err(Reason::DropFragment);
            }
            let f = pfrag::v6(ctx, eth.l3_off, end)?;
            if ipv6::is_extension(f.proto) {
                return Err(Reason::PassIpv6ExtHdr);
            }
            (frag_id, first_of_many) = (f.id.to_ne_bytes(), f.more);
            (next, at) = (f.proto, f.l4_off);
        }
        (src, dst) = (ip.saddr, ip.daddr);
        (family, proto, l4_off) = (FAMILY_V6, next, at);
        inner = Inner::V6 {
            payload_len: ip.payload_len,
            tclass: ip.tclass,
        };
    } else {
        return Err(Reason::PassNotIp);
    }

    if proto != PROTO_TCP && proto != PROTO_UDP {
        // Errors about any VIP's flows (dsr and tunnel too) go on to the
        // flow's backend: the ICMP program decides.
        if is_icmp(family, proto) {
            // SAFETY: the index is a slot of ICMP_PROGS.
            unsafe { ICMP_PROGS.tail_call(ctx, ICMP_TO_BACKEND) };
        }
        return Err(Reason::PassNotVip);
    }
    let l4_end = if FRAG {
        first_end(first_of_many, l4_off, end)
    } else {
        end
    };
    let ports = l4::parse(ctx, l4_off, proto, l4_end)?;
    let key = FlowKey {
        src,
        dst,
        sport: ports.sport,
        dport: ports.dport,
        proto,
        family,
        _pad: [0; 2],
    };
    let vip = match addr_vips {
        // SAFETY: as `vip_direct::v4`/`v6` returned them.
        AddrAt::Direct { vips, seq_at, seq } => {
            match unsafe { vip_direct::find(&key, vips, seq_at, seq) } {
                Some(found) => found,
                // The slot was written meanwhile: the hash map is whole.
                None => hashed_vip(&key),
            }
        }
        AddrAt::Hash(p) => find_vip(&key, p),
    }
    .ok_or(Reason::PassNotVip)?;
    // The VIP's packets and bytes: only those that reach no backend are
    // counted in `VIP_STATS` (each error return below); a forwarded one
    // is counted by its backend alone (`verdict::credit_forward`).
    let uncounted = |_: &Reason| verdict::count_vip(vip.vip_id, bytes);

    // Established flow: its backend, as long as that backend still exists,
    // still belongs to this VIP and is not down (weight 0, draining, still
    // counts). Else, while a cluster is on, a flow a peer created (it moved
    // here), under the same conditions.
    let mut reason = Reason::FwdEstablished;
    let mode = vip.flags & VIP_MODE_MASK;
    // A QUIC short header goes to the server its connection ID names; one
    // that names none usable is balanced as below, and counted as such.
    let (mut chosen, quic_fallback) = if vip.flags & VIP_F_QUIC != 0 && proto == PROTO_UDP {
        quic::choose(ctx, l4_off, end, &vip, &key)
    } else {
        (None, None)
    };
    if chosen.is_some() {
        reason = Reason::FwdQuicServerId;
    }
    // During a SYN flood (this CPU saw more than `new_flow_rate` SYNs of
    // dsr and tunnel VIPs this second), a dsr or tunnel SYN is looked up
    // in no flow table: a flood's SYNs are all misses in cold buckets,
    // which cost three times what the rest of a SYN does. Maglev decides.
    // Outside a flood a SYN looks: one that reuses the 5-tuple of a
    // recorded flow (a client reusing its port) must go where the entry
    // says, because its ACK will (a SYN records nothing), even after a
    // table change moved the slot. nat and fullnat SYNs always look: their
    // translation is found by the backend the flow table gives.
    let unlooked = proto == PROTO_TCP
        && is_syn(ports.tcp_flags)
        && mode != VIP_MODE_NAT
        && mode != VIP_MODE_FULLNAT
        && flows::syn_flood();
    // fullnat keeps its flows apart (with the source port they were given).
    if chosen.is_none() && !unlooked {
        chosen = if mode == VIP_MODE_FULLNAT {
            flows::lookup_fullnat(&key)
        } else {
            flows::lookup(&key)
        }
        .and_then(|f| usable(f, vip.vip_id));
    }
    if FRAG
        && first_of_many
        && let Some(c) = frag::early_choice(&key, frag_id).and_then(|f| usable(f, vip.vip_id))
    {
        // A later fragment came first and chose the datagram's backend.
        (chosen, reason) = (Some(c), Reason::FwdFragment);
    }
    if chosen.is_none() && !unlooked && cluster::active() {
        // SAFETY: the value is copied out at once (see `flows::lookup`).
        chosen = unsafe { PEER_FLOWS.get(&key) }.and_then(|f| usable(*f, vip.vip_id));
        if chosen.is_some() {
            reason = Reason::FwdPeerFlow;
        }
    }
    let (backend_id, hash, backend) = match chosen {
        Some(c) => c,
        None => {
            let hash = flow_hash(&key, vip.flags & VIP_F_SRC_HASH != 0);
            let id;
            (reason, id) = place(&vip, hash, &key, ports.tcp_flags);
            match BACKENDS.get(id) {
                Some(b) if id != 0 && b.flags & BACKEND_F_ACTIVE != 0 => (id, hash, b),
                _ => {
                    if let Some(s) = VIP_STATS.get_ptr_mut(vip.vip_id) {
                        // SAFETY: per-CPU element, written only by this CPU.
                        unsafe {
                            (*s).packets += 1;
                            (*s).bytes += bytes;
                            (*s).no_backend += 1;
                        }
                    }
                    return Err(Reason::DropNoBackend);
                }
            }
        }
    };
    trace::note(
        if FRAG { trace::on() } else { traced },
        &vip,
        backend_id,
        hash,
    );
    // Checked before the flow is recorded: a flow whose first packet could
    // not be sent is not a flow yet.
    if backend.flags & BACKEND_F_NEXTHOP == 0 {
        verdict::count_vip(vip.vip_id, bytes);
        return Err(Reason::DropNoNexthop);
    }
    if FRAG && first_of_many {
        frag::remember(&key, frag_id, backend_id, hash, mode, backend);
    }
    // (A fullnat flow is recorded by the NAT program, with its port.)
    if (reason == Reason::FwdNewFlow || reason == Reason::FwdPeerFlow) && mode != VIP_MODE_FULLNAT {
        flows::record(&key, backend_id, hash);
    }
    // Peers learn the flows made here (they know their own already).
    if reason == Reason::FwdNewFlow && cluster::active() {
        cluster::flow_created(&key, backend_id, hash);
    }

    if mode == VIP_MODE_TUNNEL {
        // (`check` counts the VIP's packet it answers.)
        too_big::check(ctx, eth.l3_off, backend, inner)?;
        forward::encap(ctx, eth.l3_off, backend, inner, hash).inspect_err(uncounted)?;
    } else {
        if mode == VIP_MODE_NAT || mode == VIP_MODE_FULLNAT {
            // The NAT work runs in a program of its own (its stack would
            // not fit beside this one's), told what we know. It credits the
            // backend's counters (and the new flow) once it has decided to
            // forward, or the VIP's if it drops the packet.
            if let Some(s) = NAT_SCRATCH.get_ptr_mut(0) {
                // SAFETY: per-CPU element, used only by this CPU, and the
                // tail-called program runs on this CPU right after.
                unsafe {
                    (*s).key = key;
                    (*s).backend_id = backend_id;
                    (*s).port = hash;
                    (*s).l3_off = eth.l3_off as u16;
                    (*s).l4_off = l4_off as u16;
                    (*s).tcp_flags = ports.tcp_flags;
                    (*s).new_flow = match reason {
                        Reason::FwdNewFlow => NEW_FLOW_MAGLEV,
                        Reason::FwdPeerFlow => NEW_FLOW_PEER,
                        Reason::FwdFlood => NEW_FLOW_FLOOD,
                        Reason::FwdSyn => NEW_FLOW_SYN,
                        _ => 0,
                    };
                    (*s).fullnat = u8::from(mode == VIP_MODE_FULLNAT);
                }
            }
            // SAFETY: the index is a slot of ICMP_PROGS.
            unsafe { ICMP_PROGS.tail_call(ctx, NAT_REQUEST) };
            verdict::count_vip(vip.vip_id, bytes);
            return Err(Reason::Aborted);
        }
        forward::rewrite_macs(ctx, backend).inspect_err(uncounted)?;
    }
    let action = forward::egress(ctx, backend).inspect_err(uncounted)?;
    // (Only dsr and tunnel VIPs can be `quic`: the NAT programs count their
    // own verdicts.)
    let counted = quic_fallback.unwrap_or(reason);
    verdict::credit_forward(
        vip.vip_id,
        backend_id,
        bytes,
        reason == Reason::FwdNewFlow,
        counted as u32 != Reason::FwdEstablished as u32,
    );
    Ok(Verdict {
        reason: counted,
        action,
    })
}

/// A flow-table miss (not found among peers' flows either), or a dsr or
/// tunnel SYN during a SYN flood (looked up in neither): why it goes where
/// it goes, and the backend id (0: none).
///
/// - `FwdSyn`: a SYN, sent where the table says and not recorded in the
///   flow table (the flow is recorded at its first non-SYN packet), so
///   that a SYN flood leaves no state there (a nat or fullnat SYN's
///   translation waits in `NAT_SYN`);
/// - `FwdFlood`: a flow over this CPU's insert rate limit, sent where the
///   current table says and not recorded;
/// - `FwdNewFlow`, recorded: during the VIP's grace period after a table
///   change, for a slot that change moved, a non-SYN TCP packet is no
///   connection's start: it goes to the backend its SYN went to if that SYN
///   came after the change (`GRACE_SYNS`), else to the backend the previous
///   table gave (a handshake across the change, a flow evicted just before
///   it) when that backend can still take it; anything else, and after the
///   period, the current table.
#[inline(always)]
fn place(vip: &VipMeta, hash: u32, key: &FlowKey, tcp_flags: u8) -> (Reason, u32) {
    let tcp = key.proto == PROTO_TCP;
    let syn = tcp && is_syn(tcp_flags);
    let (prev, now) = if tcp {
        flows::previous(vip, hash)
    } else {
        (0, 0)
    };
    if syn {
        let id = pick(vip, hash);
        if prev != 0 {
            flows::remember_syn(key, id, hash);
        }
        return (Reason::FwdSyn, id);
    }
    if flows::over_rate(now) {
        return (Reason::FwdFlood, pick(vip, hash));
    }
    if prev != 0 {
        let seen = flows::syn_seen(key).and_then(|f| usable(f, vip.vip_id));
        if let Some((id, _, _)) = seen {
            return (Reason::FwdNewFlow, id);
        }
        if usable(
            FlowValue {
                backend_id: prev,
                hash,
            },
            vip.vip_id,
        )
        .is_some()
        {
            return (Reason::FwdNewFlow, prev);
        }
    }
    (Reason::FwdNewFlow, pick(vip, hash))
}

/// A packet not addressed to a VIP while a NAT VIP exists: a backend's
/// reply to a NAT flow (or an ICMP error about one) is translated back;
/// everything else passes untouched.
#[inline(always)]
fn not_vip<const FRAG: bool>(
    ctx: &XdpContext,
    at: &Layout,
    fragment: bool,
    from_backend: bool,
) -> Result<Verdict, Reason> {
    if fragment {
        // A backend's fragmented reply is translated back; any other
        // fragment passes
        // (`hola_lb` hands it to `hola_frag`, which follows a later
        // fragment and hands a first one to `hola_frag_reply`.)
        if from_backend {
            let slot = if FRAG { FRAG_REPLY } else { FRAG_SLOT };
            // SAFETY: the index is a slot of ICMP_PROGS.
            unsafe { ICMP_PROGS.tail_call(ctx, slot) };
        }
        return Err(Reason::PassNotVip);
    }
    if is_icmp(at.family, at.proto) {
        // The ICMP programs have a stack of their own (a tail call does
        // not return; if it fails, the packet passes).
        // SAFETY: the index is a slot of ICMP_PROGS.
        unsafe { ICMP_PROGS.tail_call(ctx, ICMP_TO_CLIENT) };
        return Err(Reason::PassNotVip);
    }
    // Replies come from a NAT VIP's backend: a cheap lookup by source
    // address spares everything else the 5-tuple lookup in `NAT`. (ICMP
    // errors may come from any router, so they are not filtered.)
    if from_backend && (at.proto == PROTO_TCP || at.proto == PROTO_UDP) {
        // SAFETY: the index is a slot of ICMP_PROGS.
        unsafe { ICMP_PROGS.tail_call(ctx, NAT_REPLY) };
    }
    Err(Reason::PassNotVip)
}

/// Where the transport header of a first fragment may reach: the whole
/// datagram's length is in it (UDP's length field), not this fragment's,
/// so the check against the datagram's end is left to the backend.
#[inline(always)]
fn first_end(more: bool, l4_off: usize, end: usize) -> usize {
    if more { l4_off + 0xffff } else { end }
}

/// A flow-table entry's backend, if it can still take the flow: it exists,
/// belongs to the VIP and is not down.
#[inline(always)]
pub fn usable(flow: FlowValue, vip_id: u32) -> Option<(u32, u32, &'static Backend)> {
    let b = BACKENDS.get(flow.backend_id)?;
    (b.flags & (BACKEND_F_ACTIVE | BACKEND_F_DOWN) == BACKEND_F_ACTIVE && b.vip_id == vip_id)
        .then_some((flow.backend_id, flow.hash, b))
}

/// Where the VIPs of a packet's destination address are.
enum AddrAt {
    /// In its `VIP_DIRECT*` slot (see `vip_direct::Direct::Vips`).
    Direct {
        vips: *const AddrVips,
        seq_at: *const u32,
        seq: u32,
    },
    /// In its `VIP_ADDRS*` entry.
    Hash(*const AddrVips),
}

/// The VIPs at the destination address, from its direct slot (`None`
/// when the filter already said it is no VIP address) or, when the slot
/// cannot tell, from `hashed`; `None`: not a VIP address.
#[inline(always)]
fn at_address(
    direct: Option<Direct>,
    hashed: impl FnOnce() -> Option<*const AddrVips>,
) -> Option<AddrAt> {
    match direct? {
        Direct::Vips { vips, seq_at, seq } => Some(AddrAt::Direct { vips, seq_at, seq }),
        Direct::NotVip => None,
        Direct::Unknown => hashed().map(AddrAt::Hash),
    }
}

/// The VIP for `key` from `VIP_ADDRS*` (when its direct slot was written
/// while the program read it).
#[inline(always)]
fn hashed_vip(key: &FlowKey) -> Option<VipMeta> {
    let at = if key.family == FAMILY_V4 {
        VIP_ADDRS4.get_ptr(u32::from_ne_bytes([
            key.dst[0], key.dst[1], key.dst[2], key.dst[3],
        ]))
    } else {
        VIP_ADDRS6.get_ptr(key.dst)
    };
    find_vip(key, at?)
}

/// Whether the destination whose folded address is `folded` may be a VIP
/// address: its `VIP_FILTER` bit is set (clear: certainly not).
#[inline(always)]
fn maybe_vip(folded: u32) -> bool {
    let bit = vip_filter_bit(folded);
    match VIP_FILTER.get(bit >> 6) {
        Some(w) => *w & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}

/// ICMP for IPv4, ICMPv6 for IPv6.
#[inline(always)]
fn is_icmp(family: u8, proto: u8) -> bool {
    if family == FAMILY_V4 {
        proto == icmp::PROTO_ICMP
    } else {
        proto == icmp::PROTO_ICMPV6
    }
}

/// The VIP for the packet's (address, port, protocol): the exact port
/// first, then the all-ports VIP, from the address's inline slots, or from
/// `VIPS` when the address has more VIPs than slots.
#[inline(always)]
pub fn find_vip(key: &FlowKey, addr: *const AddrVips) -> Option<VipMeta> {
    // SAFETY: a pointer into a map value returned by the lookup; entries are
    // replaced whole (not preallocated, freed after an RCU grace period), so
    // it stays valid while the program runs.
    let addr = unsafe { &*addr };
    let mut any = None;
    let mut i = 0;
    while i < ADDR_SLOTS {
        if i as u32 >= addr.count {
            break;
        }
        let slot = &addr.slots[i];
        if slot.proto == key.proto {
            if slot.port == key.dport {
                return Some(slot.meta);
            }
            if slot.port == 0 {
                any = Some(slot.meta);
            }
        }
        i += 1;
    }
    if addr.flags & ADDR_F_OVERFLOW == 0 {
        return any;
    }
    find_overflow(key, any)
}

/// The VIP for `key` at an address with more VIPs than its inline slots
/// hold: the exact port in `VIPS`, else `any` (the all-ports VIP among the
/// slots, if one), else the all-ports VIP in `VIPS`.
#[inline(always)]
pub fn find_overflow(key: &FlowKey, any: Option<VipMeta>) -> Option<VipMeta> {
    let mut vk = VipKey {
        addr: key.dst,
        port: key.dport,
        proto: key.proto,
        family: key.family,
    };
    // SAFETY: the value is copied out at once.
    if let Some(v) = unsafe { VIPS.get(&vk) } {
        return Some(*v);
    }
    if any.is_some() {
        return any;
    }
    vk.port = 0;
    // SAFETY: the value is copied out at once.
    unsafe { VIPS.get(&vk) }.copied()
}

/// The backend id in the VIP's Maglev slot for `hash` (0 when none).
#[inline(always)]
pub fn pick(vip: &VipMeta, hash: u32) -> u32 {
    if vip.ring_size == 0 {
        return 0;
    }
    match RINGS.get(vip.ring_base + hash % vip.ring_size) {
        Some(id) => *id,
        None => 0,
    }
}
