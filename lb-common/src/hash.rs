//! The flow hash. The XDP program and userspace run this same code, so
//! userspace can tell which Maglev slot (and so which backend) any flow maps to.

use crate::FlowKey;

const SEED: u32 = 0x686f_6c61; // "hola"

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The key as ten 32-bit words, read little-endian: words 0..4 are the
/// source address, 4..8 the destination. Whole-word loads (the key is
/// 8-byte aligned) instead of four byte loads per word.
#[inline(always)]
fn words(key: &FlowKey) -> [u32; 10] {
    // SAFETY: `FlowKey` is 40 bytes of integers with no implicit padding
    // (every byte initialized) and 8-byte aligned, so it can be read as ten
    // `u32`s.
    let w = unsafe { *(key as *const FlowKey).cast::<[u32; 10]>() };
    w.map(u32::from_le)
}

/// Murmur3-style hash of a flow. With `src_only` only the source address is
/// hashed (client affinity). IPv4 keys hash one word per address, IPv6 four.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, src_only: bool) -> u32 {
    let w = words(key);
    let mut h = SEED;
    h = mix(h, w[0]);
    if key.family != crate::FAMILY_V4 {
        h = mix(h, w[1]);
        h = mix(h, w[2]);
        h = mix(h, w[3]);
    }
    if !src_only {
        h = mix(h, w[4]);
        if key.family != crate::FAMILY_V4 {
            h = mix(h, w[5]);
            h = mix(h, w[6]);
            h = mix(h, w[7]);
        }
        h = mix(h, (u32::from(key.sport) << 16) | u32::from(key.dport));
        h = mix(h, u32::from(key.proto));
    }
    finish(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_only_ignores_ports_and_destination() {
        let mut a = FlowKey {
            family: crate::FAMILY_V4,
            proto: 6,
            ..Default::default()
        };
        a.src[..4].copy_from_slice(&[198, 18, 0, 1]);
        let mut b = a;
        b.sport = 1234;
        b.dst[0] = 9;
        assert_eq!(flow_hash(&a, true), flow_hash(&b, true));
        assert_ne!(flow_hash(&a, false), flow_hash(&b, false));
    }

    #[test]
    fn words_are_the_addresses_read_little_endian() {
        let mut k = FlowKey {
            family: crate::FAMILY_V6,
            proto: 17,
            sport: 0x1234,
            dport: 0x5678,
            ..Default::default()
        };
        for i in 0..16 {
            k.src[i] = i as u8 + 1;
            k.dst[i] = 0xf0 - i as u8;
        }
        let w = words(&k);
        for i in 0..4 {
            let at = 4 * i;
            let src = [k.src[at], k.src[at + 1], k.src[at + 2], k.src[at + 3]];
            let dst = [k.dst[at], k.dst[at + 1], k.dst[at + 2], k.dst[at + 3]];
            assert_eq!(w[i], u32::from_le_bytes(src));
            assert_eq!(w[4 + i], u32::from_le_bytes(dst));
        }
    }
}
