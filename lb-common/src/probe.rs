//! Health probes through the VIP: the socket mark a probe carries, which
//! says to the `hola_probe` tc program (lb-ebpf/src/probe.rs) which backend
//! to carry it to and how. Both sides encode and decode it here.
//!
//! A mark is `PROBE_MARK_TAG` in its top 8 bits, the way in bits 22..24
//! (`PROBE_DSR`, `PROBE_TUNNEL`) and the backend's id in `BACKENDS` in the
//! low 22 bits. Packets without the tag are not the program's.

/// The top byte of every probe mark (0xb0: "hola probe"); the routing rule
/// that sends marked probes to `lo` matches it under [`PROBE_MARK_MASK`].
pub const PROBE_MARK_TAG: u32 = 0xb000_0000;
/// The bits of a mark the tag is in.
pub const PROBE_MARK_MASK: u32 = 0xff00_0000;
/// The backend id's bits.
pub const PROBE_ID_MASK: u32 = (1 << 22) - 1;
/// Carried as a dsr client's packet: to the backend's MAC, the VIP as
/// destination.
pub const PROBE_DSR: u32 = 1;
/// Carried as a tunnel client's packet: IP-in-IP to the backend, from the
/// tunnel source.
pub const PROBE_TUNNEL: u32 = 2;
const WAY_SHIFT: u32 = 22;

/// The mark of a probe to backend `id` carried the way `way`
/// (`PROBE_DSR` or `PROBE_TUNNEL`); `None` when the id does not fit.
pub const fn probe_mark(id: u32, way: u32) -> Option<u32> {
    if id > PROBE_ID_MASK || way > 3 {
        return None;
    }
    Some(PROBE_MARK_TAG | (way << WAY_SHIFT) | id)
}

/// The backend id and way of a probe mark; `None` for any other mark.
#[inline(always)]
pub const fn parse_probe_mark(mark: u32) -> Option<(u32, u32)> {
    if mark & PROBE_MARK_MASK != PROBE_MARK_TAG {
        return None;
    }
    Some((mark & PROBE_ID_MASK, (mark >> WAY_SHIFT) & 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_others_are_not_probes() {
        assert_eq!(probe_mark(5, PROBE_DSR), Some(0xb040_0005));
        assert_eq!(probe_mark(5, PROBE_TUNNEL), Some(0xb080_0005));
        assert_eq!(parse_probe_mark(0xb040_0005), Some((5, PROBE_DSR)));
        assert_eq!(parse_probe_mark(0xb080_0005), Some((5, PROBE_TUNNEL)));
        assert_eq!(
            parse_probe_mark(probe_mark(PROBE_ID_MASK, PROBE_TUNNEL).unwrap()),
            Some((PROBE_ID_MASK, PROBE_TUNNEL))
        );
        assert_eq!(probe_mark(PROBE_ID_MASK + 1, PROBE_DSR), None);
        assert_eq!(parse_probe_mark(0), None);
        assert_eq!(parse_probe_mark(0x0040_0005), None);
        assert_eq!(parse_probe_mark(0xa040_0005), None);
    }
}
