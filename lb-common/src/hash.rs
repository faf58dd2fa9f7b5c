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

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
}

/// Murmur3-style hash of a flow. With `src_only` only the source address is
/// hashed (client affinity). IPv4 keys hash one word per address, IPv6 four.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, src_only: bool) -> u32 {
    let mut h = SEED;
    h = mix(h, word(&key.src, 0));
    if key.family != crate::FAMILY_V4 {
        h = mix(h, word(&key.src, 4));
        h = mix(h, word(&key.src, 8));
        h = mix(h, word(&key.src, 12));
    }
    if !src_only {
        h = mix(h, word(&key.dst, 0));
        if key.family != crate::FAMILY_V4 {
            h = mix(h, word(&key.dst, 4));
            h = mix(h, word(&key.dst, 8));
            h = mix(h, word(&key.dst, 12));
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
}
