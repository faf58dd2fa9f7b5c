//! `VIP_FILTER`: the bitmap of VIP addresses the program reads before any
//! hash lookup, kept a superset of the `VIP_ADDRS*` keys at every moment
//! (a clear bit makes the program pass a packet as not for a VIP): a bit is
//! set before its address's entry is written, and recomputed from the
//! entries left after one is deleted.

use std::net::IpAddr;

use lb_common::{
    maps as names,
    vip::{VIP_FILTER_WORDS, fold_v6, vip_filter_bit},
};

use super::{Dataplane, DataplaneError, map_err};

/// The filter bit of a VIP address.
fn bit_of(addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(a) => vip_filter_bit(u32::from_ne_bytes(a.octets())),
        IpAddr::V6(a) => vip_filter_bit(fold_v6(&a.octets())),
    }
}

impl Dataplane {
    /// Sets `addr`'s bit (before its `VIP_ADDRS*` entry is written).
    pub(super) fn vip_filter_add(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let bit = bit_of(addr);
        let w = self
            .vip_filter
            .get(&(bit >> 6), 0)
            .map_err(map_err(names::VIP_FILTER))?;
        let set = w | (1u64 << (bit & 63));
        if set != w {
            self.vip_filter
                .set(bit >> 6, set, 0)
                .map_err(map_err(names::VIP_FILTER))?;
        }
        Ok(())
    }

    /// Recomputes the word holding `addr`'s bit from the VIP addresses still
    /// in `VIP_ADDRS*` (after its entry was deleted: another address may
    /// share the bit).
    pub(super) fn vip_filter_remove(&mut self, addr: IpAddr) -> Result<(), DataplaneError> {
        let index = bit_of(addr) >> 6;
        let want = self.vip_filter_words()?[index as usize];
        self.vip_filter
            .set(index, want, 0)
            .map_err(map_err(names::VIP_FILTER))
    }

    /// Writes every word of the filter from the `VIP_ADDRS*` keys (at load:
    /// the maps may be a previous daemon's, the filter new).
    pub(super) fn vip_filter_rebuild(&mut self) -> Result<(), DataplaneError> {
        let want = self.vip_filter_words()?;
        for (i, w) in want.into_iter().enumerate() {
            let have = self
                .vip_filter
                .get(&(i as u32), 0)
                .map_err(map_err(names::VIP_FILTER))?;
            if have != w {
                self.vip_filter
                    .set(i as u32, w, 0)
                    .map_err(map_err(names::VIP_FILTER))?;
            }
        }
        Ok(())
    }

    /// The filter's words for the addresses in `VIP_ADDRS*` now.
    fn vip_filter_words(&self) -> Result<Vec<u64>, DataplaneError> {
        let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
        let mut bits = Vec::new();
        for k in self.addrs4.keys() {
            let k = k.map_err(map_err(names::VIP_ADDRS4))?;
            bits.push(vip_filter_bit(k));
        }
        for k in self.addrs6.keys() {
            let k = k.map_err(map_err(names::VIP_ADDRS6))?;
            bits.push(vip_filter_bit(fold_v6(&k)));
        }
        for b in bits {
            words[(b >> 6) as usize] |= 1u64 << (b & 63);
        }
        Ok(words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearby_addresses_take_different_bits() {
        let bits: std::collections::BTreeSet<u32> = (1..=200u8)
            .map(|i| bit_of(IpAddr::from([198, 18, 1, i])))
            .collect();
        assert!(bits.len() >= 195, "{} distinct bits of 200", bits.len());
        assert!(bits.iter().all(|b| *b < VIP_FILTER_WORDS * 64));
    }
}
