//! Internet checksum of the outer IPv4 header hola writes.

/// Folds a 32-bit one's-complement sum into 16 bits and complements it.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    fold(sum)
}
