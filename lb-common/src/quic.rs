//! QUIC connection-ID routing: the layout of the connection IDs a `quic`
//! VIP's backends issue, and the key of the map that names each server ID's
//! backend.
//!
//! The IDs follow the plaintext algorithm of the QUIC-LB draft
//! (draft-ietf-quic-load-balancers): a first octet whose top three bits are
//! the config rotation codepoint and whose low five bits self-encode the
//! length of the rest of the ID, then the server ID, then a nonce the server
//! picks. hola uses one fixed configuration for every `quic` VIP:
//!
//! ```text
//! byte 0      1   2      3 .. 7
//!      first  server ID  nonce (5 bytes)
//! first = config rotation 0 (0b000) << 5 | 7 (the 7 bytes that follow)
//! ```
//!
//! so an ID is [`QUIC_CID_LEN`] (8) bytes, the length QUIC implementations
//! commonly use, and a server ID is [`QUIC_SERVER_ID_LEN`] (2) bytes, big
//! endian: 65,535 backends per VIP (0 is never issued). The codepoint 0b111
//! is the draft's "unroutable" one; any codepoint but 0 is not ours.

/// Bytes of a server ID in a connection ID.
pub const QUIC_SERVER_ID_LEN: usize = 2;
/// Bytes of a whole connection ID (first octet, server ID, nonce).
pub const QUIC_CID_LEN: usize = 8;
/// Bytes of the nonce after the server ID (the draft asks for at least 4).
pub const QUIC_NONCE_LEN: usize = QUIC_CID_LEN - 1 - QUIC_SERVER_ID_LEN;
/// The config rotation codepoint (top three bits of the first octet).
pub const QUIC_CONFIG_ROTATION: u8 = 0;
/// The first octet of every ID: the codepoint, and the length of the rest.
pub const QUIC_FIRST_OCTET: u8 = (QUIC_CONFIG_ROTATION << 5) | (QUIC_CID_LEN as u8 - 1);

/// Bit of a QUIC packet's first byte set in long headers (Initial, 0-RTT,
/// Handshake, Retry, version negotiation).
pub const QUIC_LONG_HEADER: u8 = 0x80;
/// The "fixed bit", set in every QUIC v1 packet (RFC 9000, 17.2 and 17.3).
pub const QUIC_FIXED_BIT: u8 = 0x40;
/// UDP payload bytes a short-header packet needs for hola to read its
/// server ID: the first byte and the whole destination connection ID.
pub const QUIC_SHORT_MIN: usize = 1 + QUIC_CID_LEN;

/// A connection ID for `server_id` with `nonce` after it.
pub const fn encode_cid(server_id: u16, nonce: [u8; QUIC_NONCE_LEN]) -> [u8; QUIC_CID_LEN] {
    let s = server_id.to_be_bytes();
    [
        QUIC_FIRST_OCTET,
        s[0],
        s[1],
        nonce[0],
        nonce[1],
        nonce[2],
        nonce[3],
        nonce[4],
    ]
}

/// The server ID a connection ID's first three bytes carry, if its first
/// octet is ours (config rotation and length).
#[inline(always)]
pub fn decode_server_id(first: u8, id: [u8; QUIC_SERVER_ID_LEN]) -> Option<u16> {
    (first == QUIC_FIRST_OCTET).then_some(u16::from_be_bytes(id))
}

/// Key of the `QUIC_SERVERS` map: (VIP id, server ID) → backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuicServerKey {
    /// `VipMeta::vip_id`.
    pub vip_id: u32,
    /// Host order (the program decodes it from the ID's big-endian bytes).
    pub server_id: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<QuicServerKey>() == 8);
const _: () = assert!(QUIC_NONCE_LEN >= 4);

crate::pod!(QuicServerKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_ids_decode_to_their_server_id() {
        let cid = encode_cid(0x0102, [9, 8, 7, 6, 5]);
        assert_eq!(cid, [0x07, 0x01, 0x02, 9, 8, 7, 6, 5]);
        assert_eq!(decode_server_id(cid[0], [cid[1], cid[2]]), Some(0x0102));
        // Another config rotation codepoint (0b111: unroutable), or another
        // length, is not ours.
        assert_eq!(decode_server_id(0xe7, [1, 2]), None);
        assert_eq!(decode_server_id(0x08, [1, 2]), None);
    }
}
