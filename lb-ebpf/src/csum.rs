//! Internet checksums: of the outer IPv4 header hola writes, and the
//! incremental updates of NAT mode.

/// Folds a 32-bit one's-complement sum into 16 bits and complements it.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

// Incremental updates (RFC 1624): a checksum C over data in which word m
// becomes m' is updated to ~(~C + ~m + m'). The changes are summed first
// (`add_*`), then applied once (`apply`).

/// Adds the change of one 16-bit word from `old` to `new`.
#[inline(always)]
pub fn add_word(delta: &mut u32, old: u16, new: u16) {
    *delta += u32::from(!old) + u32::from(new);
}

/// Adds the change of an IPv4 address (the first four bytes).
#[inline(always)]
pub fn add_change4(delta: &mut u32, old: &[u8; 16], new: &[u8; 16]) {
    add_word(
        delta,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    add_word(
        delta,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    );
}

/// Adds the change of an IPv6 address.
#[inline(always)]
pub fn add_change16(delta: &mut u32, old: &[u8; 16], new: &[u8; 16]) {
    let mut i = 0;
    while i < 16 {
        add_word(
            delta,
            u16::from_be_bytes([old[i], old[i + 1]]),
            u16::from_be_bytes([new[i], new[i + 1]]),
        );
        i += 2;
    }
}

/// The checksum `old` updated by the summed changes `delta`.
#[inline(always)]
pub fn apply(old: u16, delta: u32) -> u16 {
    fold(u32::from(!old) + (delta & 0xffff) + (delta >> 16))
}
