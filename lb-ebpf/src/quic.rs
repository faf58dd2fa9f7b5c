//! QUIC connection-ID routing for `quic` VIPs (`VIP_F_QUIC`): a
//! short-header packet carries its server's ID in its destination
//! connection ID (`lb_common::quic`), so it goes to that server whatever
//! its addresses and ports (a client behind a NAT that rebinds, a phone
//! that changes networks). Long headers (Initial, 0-RTT, Handshake) carry
//! IDs the client chose and are balanced as any packet.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    Backend, FlowKey, Reason, VipMeta,
    backend::{BACKEND_F_ACTIVE, BACKEND_F_DOWN},
    hash::flow_hash,
    quic::{QUIC_FIXED_BIT, QUIC_LONG_HEADER, QUIC_SHORT_MIN, QuicServerKey, decode_server_id},
    vip::VIP_F_SRC_HASH,
};

use crate::{
    maps::{BACKENDS, QUIC_SERVERS},
    parse::ptr_at,
};

/// For a UDP packet of a `quic` VIP whose UDP header is at `l4_off`: the
/// backend its connection ID names (id, flow hash, entry), or else the
/// reason its ID could not route it (`None` for a long header).
#[inline(always)]
pub fn choose(
    ctx: &XdpContext,
    l4_off: usize,
    end: usize,
    vip: &VipMeta,
    key: &FlowKey,
) -> (Option<(u32, u32, &'static Backend)>, Option<Reason>) {
    match route(ctx, l4_off + 8, end, vip.vip_id) {
        Ok(Some(id)) => {
            // The hash still picks a tunnel's outer source address.
            let hash = flow_hash(key, vip.flags & VIP_F_SRC_HASH != 0);
            (BACKENDS.get(id).map(|b| (id, hash, b)), None)
        }
        Ok(None) => (None, None),
        Err(r) => (None, Some(r)),
    }
}

/// Where the UDP payload at `off` (the datagram ending at `end`) of VIP
/// `vip_id` goes:
/// - `Ok(None)`: a long header: balance it as usual;
/// - `Ok(Some(id))`: a short header whose server ID names backend `id` of
///   the VIP, which is up;
/// - `Err(reason)`: a datagram too short to hold a header byte and an ID,
///   or a short header that cannot be routed by its ID, and why
///   (`FwdQuic*`): balance it as usual, counted under `reason`.
#[inline(always)]
fn route(ctx: &XdpContext, off: usize, end: usize, vip_id: u32) -> Result<Option<u32>, Reason> {
    // Every QUIC packet is longer than this (a long header alone is at
    // least 7 bytes before its IDs), so a shorter datagram is not one of
    // ours whatever its first byte. One read of the header byte and the ID
    // (a separate 1-byte read is compiled to a bounds check the verifier
    // does not follow).
    if off + QUIC_SHORT_MIN > end {
        return Err(Reason::FwdQuicBadId);
    }
    let h: *const [u8; QUIC_SHORT_MIN] = ptr_at(ctx, off).map_err(|_| Reason::FwdQuicBadId)?;
    // SAFETY: ptr_at checked that the header byte and the 8-byte ID are in
    // the packet.
    let h = unsafe { &*h };
    if h[0] & QUIC_LONG_HEADER != 0 {
        return Ok(None);
    }
    if h[0] & QUIC_FIXED_BIT == 0 {
        return Err(Reason::FwdQuicBadId);
    }
    let server_id = decode_server_id(h[1], [h[2], h[3]]).ok_or(Reason::FwdQuicBadId)?;
    let key = QuicServerKey {
        vip_id,
        server_id,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let id = unsafe { QUIC_SERVERS.get(&key) }
        .copied()
        .ok_or(Reason::FwdQuicUnknownId)?;
    let b = BACKENDS.get(id).ok_or(Reason::FwdQuicUnknownId)?;
    if b.flags & BACKEND_F_ACTIVE == 0 || b.vip_id != vip_id {
        return Err(Reason::FwdQuicUnknownId);
    }
    if b.flags & BACKEND_F_DOWN != 0 {
        return Err(Reason::FwdQuicIdDown);
    }
    Ok(Some(id))
}
