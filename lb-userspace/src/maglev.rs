//! Weighted Maglev consistent hashing (Eisenbud et al., NSDI 2016), with the
//! weight applied in every round of the table fill as Katran's MaglevV2 does.
//!
//! A pure function: backends in, a table of backend ids out. The data plane
//! writes only the slots that differ from the table it has (see
//! `dataplane.rs`), so a change moves only the flows that must move.

use std::net::IpAddr;

/// Default table size M (prime): 65,537 slots.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// A backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// The id written into the table (never 0: 0 means "no backend").
    pub id: u32,
    /// Stable identity, the same on every node with the same configuration
    /// (see [`backend_key`]); it decides the backend's preference order.
    pub key: u64,
    /// Relative weight; 0 gets no slot (draining).
    pub weight: u32,
}

/// Why a table could not be built; both are configuration mistakes.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// A composite size would let a skip share a factor with M, so some
    /// permutations would not visit every slot.
    #[error("table size {0} is not a prime number; pick a prime such as 65537 or 655373")]
    NotPrime(u32),
    /// Every backend with weight > 0 needs at least one slot.
    #[error(
        "table size {size} is too small for {backends} backends with weight > 0; use a prime at least 100 times the number of backends"
    )]
    TooFewSlots { size: u32, backends: usize },
}

/// Stable identity of a backend: FNV-1a over its address and port, so that
/// every node with the same configuration computes the same tables.
pub fn backend_key(addr: IpAddr, port: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match addr {
        IpAddr::V4(a) => a.octets().into_iter().for_each(&mut eat),
        IpAddr::V6(a) => a.octets().into_iter().for_each(&mut eat),
    }
    port.to_be_bytes().into_iter().for_each(&mut eat);
    h
}

/// Whether `n` is prime (trial division; table sizes are small).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// SplitMix64 finaliser: spreads the FNV key into two independent hashes.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds the lookup table of `size` slots. Each backend's share of slots
/// follows its weight; with equal weights shares differ by at most one slot.
pub fn build(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    let mut live: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    let mut table = vec![0u32; size as usize];
    if live.is_empty() {
        return Ok(table);
    }
    if live.len() >= size as usize {
        return Err(MaglevError::TooFewSlots {
            size,
            backends: live.len(),
        });
    }
    // The fill order must not depend on the order backends were given in.
    live.sort_by_key(|b| (b.key, b.id));

    let m = u64::from(size);
    // Position of each backend in its own permutation, and its step.
    let mut pos: Vec<u32> = Vec::with_capacity(live.len());
    let mut skip: Vec<u32> = Vec::with_capacity(live.len());
    for b in &live {
        pos.push((mix(b.key ^ 0x6f6c_615f_6f66_6673) % m) as u32);
        skip.push((mix(b.key ^ 0x6f6c_615f_736b_6970) % (m - 1) + 1) as u32);
    }
    let max_weight = u64::from(live.iter().map(|b| b.weight).max().unwrap_or(1));
    let mut credit = vec![0u64; live.len()];
    let mut filled = 0u32;
    loop {
        for (i, b) in live.iter().enumerate() {
            // Each round a backend earns its weight; a full max_weight buys
            // one slot. Weights are at most max_weight, so at most one slot a
            // round: heavier backends claim slots in more rounds.
            credit[i] += u64::from(b.weight);
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            // The backend's next preferred slot that is still free.
            let mut c = pos[i];
            while table[c as usize] != 0 {
                c += skip[i];
                if c >= size {
                    c -= size;
                }
            }
            table[c as usize] = b.id;
            c += skip[i];
            if c >= size {
                c -= size;
            }
            pos[i] = c;
            filled += 1;
            if filled == size {
                return Ok(table);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const M: u32 = DEFAULT_TABLE_SIZE;

    fn backends(n: u32, weight: impl Fn(u32) -> u32) -> Vec<MaglevBackend> {
        (1..=n)
            .map(|i| {
                let addr = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
                MaglevBackend {
                    id: i,
                    key: backend_key(addr, 80),
                    weight: weight(i),
                }
            })
            .collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, usize> {
        let mut c = HashMap::new();
        for &id in table {
            *c.entry(id).or_default() += 1;
        }
        c
    }

    /// Slots whose owner changed although both the old and the new owner
    /// are backends that did not change.
    fn moved_between_unchanged(old: &[u32], new: &[u32], changed: u32) -> usize {
        old.iter()
            .zip(new)
            .filter(|(o, n)| o != n && **o != changed && **n != changed)
            .count()
    }

    #[test]
    fn equal_weights_within_one_slot() {
        for n in [100u32, 1000] {
            let t = build(&backends(n, |_| 1), M).expect("build");
            let c = counts(&t);
            assert_eq!(c.len(), n as usize, "every backend owns slots");
            assert!(!c.contains_key(&0), "no empty slot");
            let ideal = f64::from(M) / f64::from(n);
            for (id, k) in c {
                assert!(
                    (k as f64 - ideal).abs() <= 1.0,
                    "N={n}: backend {id} owns {k}, ideal {ideal:.2}"
                );
            }
        }
    }

    #[test]
    fn unequal_weights_within_one_percent() {
        let cases: Vec<Vec<MaglevBackend>> = vec![
            backends(20, |i| i),
            backends(3, |i| if i == 3 { 2 } else { 1 }),
            backends(10, |i| if i % 2 == 0 { 100 } else { 7 }),
        ];
        for bs in cases {
            let t = build(&bs, M).expect("build");
            let c = counts(&t);
            let total: u64 = bs.iter().map(|b| u64::from(b.weight)).sum();
            for b in &bs {
                let want = f64::from(M) * f64::from(b.weight) / total as f64;
                let got = c[&b.id] as f64;
                assert!(
                    (got - want).abs() / want <= 0.01,
                    "backend {} weight {}: {got} slots, want {want:.1}",
                    b.id,
                    b.weight
                );
            }
        }
    }

    #[test]
    fn removing_or_adding_one_of_100_moves_under_one_percent() {
        let all = backends(101, |_| 1);
        let hundred = &all[..100];
        let base = build(hundred, M).expect("build");
        for removed in [1u32, 50, 100] {
            let fewer: Vec<_> = hundred
                .iter()
                .copied()
                .filter(|b| b.id != removed)
                .collect();
            let t = build(&fewer, M).expect("build");
            let moved = moved_between_unchanged(&base, &t, removed);
            let share = moved as f64 / f64::from(M);
            println!(
                "removing backend {removed}: {moved} slots ({:.3}%) moved between unchanged backends",
                share * 100.0
            );
            assert!(
                share <= 0.01,
                "removing {removed} moved {:.3}%",
                share * 100.0
            );
        }
        let t = build(&all, M).expect("build");
        let moved = moved_between_unchanged(&base, &t, 101);
        let share = moved as f64 / f64::from(M);
        println!(
            "adding backend 101: {moved} slots ({:.3}%) moved between unchanged backends",
            share * 100.0
        );
        assert!(share <= 0.01, "adding moved {:.3}%", share * 100.0);
    }

    #[test]
    fn deterministic_and_edge_cases() {
        let bs = backends(10, |i| i);
        let want = build(&bs, M).expect("build");
        let mut rev = bs.clone();
        rev.reverse();
        // A stride coprime to 10 visits every backend in a scrambled order.
        let shuffled: Vec<_> = (0..bs.len()).map(|i| bs[i * 7 % bs.len()]).collect();
        for other in [rev, shuffled] {
            assert_eq!(
                build(&other, M).as_ref(),
                Ok(&want),
                "order of input does not matter"
            );
        }
        assert_eq!(build(&backends(5, |_| 0), M), Ok(vec![0; M as usize]));
        assert_eq!(build(&[], 13), Ok(vec![0; 13]));
        assert_eq!(build(&bs, 1000), Err(MaglevError::NotPrime(1000)));
        assert_eq!(
            build(&backends(13, |_| 1), 13),
            Err(MaglevError::TooFewSlots {
                size: 13,
                backends: 13
            })
        );
        let drained = backends(4, |i| if i == 2 { 0 } else { 1 });
        let t = build(&drained, M).expect("build");
        assert!(!t.contains(&2), "weight 0 gets no slot");
        assert!(!t.contains(&0), "every slot owned");
        // Draining must move exactly the flows that removal would.
        let removed: Vec<_> = drained.iter().copied().filter(|b| b.id != 2).collect();
        assert_eq!(build(&removed, M), Ok(t), "draining equals removing");
        assert!(
            is_prime(65537) && is_prime(655373) && is_prime(2) && !is_prime(1) && !is_prime(65535)
        );
    }

    #[test]
    #[ignore = "timing print, not an assertion; cargo test --release -- --ignored"]
    fn build_time_n1000() {
        let bs = backends(1000, |_| 1);
        let start = std::time::Instant::now();
        for _ in 0..10 {
            build(&bs, M).expect("build");
        }
        println!("N=1000 M=65537: {:?} per build", start.elapsed() / 10);
    }
}
