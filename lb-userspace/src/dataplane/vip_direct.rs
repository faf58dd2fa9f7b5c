//! `VIP_DIRECT4` and `VIP_DIRECT6`: direct-mapped copies of `VIP_ADDRS*`
//! that the program reads with an inlined array access instead of a hash
//! lookup (one hash lookup less on every VIP packet).
//!
//! Each slot (`lb_common::vip::vip_direct_slot` of an address) is either
//! owned by the one VIP address that has it, with a copy of its entry, or
//! tells the program to ask `VIP_ADDRS*`: shared by two or more addresses,
//! or empty. The arrays are memory-mapped and each slot written in place
//! as a sequence lock (`DirectVips4`), because an array update through the
//! `bpf` system call copies over the element a reader may be reading.
//!
//! Order against `VIP_ADDRS*`: a slot is written after its address's entry
//! is written, and recomputed after one is deleted, so that what a slot
//! says was at some moment what the hash map said.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU32, Ordering, fence},
};

use lb_common::{
    AddrVips, maps as names,
    vip::{
        DIRECT_OWNED, DIRECT_SHARED, DirectVips4, DirectVips6, VIP_DIRECT_SLOTS, fold_v6,
        vip_direct_slot,
    },
};

use super::{Dataplane, DataplaneError, map_err};

/// A slot type of `VIP_DIRECT*`: `#[repr(C)]`, its first field the
/// `u32` sequence.
pub(super) trait Slot: Copy + Default + PartialEq {}

impl Slot for DirectVips4 {}
impl Slot for DirectVips6 {}

/// One `VIP_DIRECT*` array, mapped into this process.
pub(super) struct DirectSlots<T: Slot> {
    base: *mut T,
    bytes: usize,
}

// SAFETY: the mapping is owned by this value and only written through
// `&mut self` (the dataplane owner thread); the kernel side reads it.
unsafe impl<T: Slot> Send for DirectSlots<T> {}

impl<T: Slot> DirectSlots<T> {
    /// Maps the array `name` of `ebpf` (created `BPF_F_MMAPABLE`).
    pub(super) fn map(ebpf: &aya::Ebpf, name: &'static str) -> Result<Self, DataplaneError> {
        let fd = super::batch::array_fd(ebpf, name)?;
        // Elements are 8-byte aligned in the kernel's array; both types'
        // sizes are multiples of 8 (asserted in lb-common), so the stride
        // is the size.
        const { assert!(size_of::<T>().is_multiple_of(8)) };
        let page = 4096;
        let bytes = (size_of::<T>() * VIP_DIRECT_SLOTS as usize).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's values, of the size the
        // kernel gives them (`array_map_mmap` allows the rounded-up length).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap {
                name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            base: p.cast(),
            bytes,
        })
    }

    /// Slot `i` as it is now (only this owner writes it).
    pub(super) fn get(&self, i: u32) -> T {
        assert!(i < VIP_DIRECT_SLOTS);
        // SAFETY: `i` is within the mapping; a volatile read, the memory
        // being the kernel's.
        unsafe { self.base.add(i as usize).read_volatile() }
    }

    /// Writes slot `i` as `want` (its `seq` ignored), as a sequence lock:
    /// `seq` odd, the rest, `seq` even and two more than before.
    pub(super) fn set(&mut self, i: u32, want: &T) {
        self.begin(i);
        // SAFETY: `i` is within the mapping (`begin` asserted it); the bytes
        // after `seq` are plain data.
        unsafe {
            let from = (want as *const T).cast::<u8>().add(4);
            let to = self.base.add(i as usize).cast::<u8>().add(4);
            for k in 0..size_of::<T>() - 4 {
                to.add(k).write_volatile(from.add(k).read());
            }
        }
        self.end(i);
    }

    /// Slot `i`'s `seq`, as an atomic.
    fn seq(&self, i: u32) -> &AtomicU32 {
        assert!(i < VIP_DIRECT_SLOTS);
        // SAFETY: `i` is within the mapping; `seq` is the first field, 4
        // bytes, aligned (elements are 8-byte aligned), and only accessed
        // as an atomic.
        unsafe { &*self.base.add(i as usize).cast::<AtomicU32>() }
    }

    /// Makes slot `i`'s `seq` odd: readers ask the hash map until [`end`].
    ///
    /// [`end`]: Self::end
    pub(super) fn begin(&mut self, i: u32) {
        let seq = self.seq(i);
        let was = seq.load(Ordering::Relaxed);
        // (Odd only if a writer died halfway: the next odd number.)
        seq.store(
            was.wrapping_add(if was & 1 == 0 { 1 } else { 2 }),
            Ordering::Relaxed,
        );
        // The odd `seq` is visible before any byte written after it.
        fence(Ordering::Release);
    }

    /// Makes slot `i`'s `seq` even again: the write is over.
    pub(super) fn end(&mut self, i: u32) {
        let seq = self.seq(i);
        let was = seq.load(Ordering::Relaxed);
        if was & 1 == 0 {
            return;
        }
        // Every byte written since `begin` is visible before the even `seq`.
        seq.store(was.wrapping_add(1), Ordering::Release);
    }

    /// Writes slot `i` if it differs from `want` (`seq` aside), or was
    /// left mid-write (its `seq` odd: a writer that died).
    pub(super) fn put(&mut self, i: u32, mut want: T) {
        let mut have = self.get(i);
        let torn = self.seq(i).load(Ordering::Relaxed) & 1 != 0;
        set_seq(&mut have, 0);
        set_seq(&mut want, 0);
        if have != want || torn {
            self.set(i, &want);
        }
    }
}

/// See [`Dataplane::vip_direct_writer4`]: writes a slot as the owner does
/// (a sequence lock), with any content.
#[doc(hidden)]
pub struct VipDirectWriter4(DirectSlots<DirectVips4>);

impl VipDirectWriter4 {
    /// The VIPs `addr`'s slot holds now (the slot must be `addr`'s).
    pub fn read(&self, addr: std::net::Ipv4Addr) -> Option<AddrVips> {
        let k = u32::from_ne_bytes(addr.octets());
        let s = self.0.get(slot4(&k));
        (s.state == DIRECT_OWNED && s.addr == k).then_some(s.vips)
    }

    /// Makes `addr`'s slot owned by `addr` with `vips`.
    pub fn write(&mut self, addr: std::net::Ipv4Addr, vips: &AddrVips) {
        let k = u32::from_ne_bytes(addr.octets());
        self.0.set(
            slot4(&k),
            &DirectVips4 {
                state: DIRECT_OWNED,
                addr: k,
                vips: *vips,
                ..Default::default()
            },
        );
    }
}

/// Overwrites the first four bytes (`seq`) of a slot value.
fn set_seq<T: Slot>(v: &mut T, seq: u32) {
    // SAFETY: `seq` is the first field of both slot types, a u32.
    unsafe { (v as *mut T).cast::<u32>().write(seq) }
}

impl<T: Slot> Drop for DirectSlots<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.bytes) };
    }
}

/// What each slot should hold for these addresses and entries: owned by
/// the one address that has it, shared, or empty (absent).
fn want_slots<A: Copy>(
    entries: &[(A, AddrVips)],
    slot_of: impl Fn(&A) -> u32,
) -> BTreeMap<u32, Option<(A, AddrVips)>> {
    let mut out: BTreeMap<u32, Option<(A, AddrVips)>> = BTreeMap::new();
    for (a, e) in entries {
        out.entry(slot_of(a))
            .and_modify(|s| *s = None)
            .or_insert(Some((*a, *e)));
    }
    out
}

fn slot4(a: &u32) -> u32 {
    vip_direct_slot(*a)
}

fn slot6(a: &[u8; 16]) -> u32 {
    vip_direct_slot(fold_v6(a))
}

fn value4(w: Option<&Option<(u32, AddrVips)>>) -> DirectVips4 {
    match w {
        None => DirectVips4::default(),
        Some(None) => DirectVips4 {
            state: DIRECT_SHARED,
            ..Default::default()
        },
        Some(Some((addr, vips))) => DirectVips4 {
            state: DIRECT_OWNED,
            addr: *addr,
            vips: *vips,
            ..Default::default()
        },
    }
}

fn value6(w: Option<&Option<([u8; 16], AddrVips)>>) -> DirectVips6 {
    match w {
        None => DirectVips6::default(),
        Some(None) => DirectVips6 {
            state: DIRECT_SHARED,
            ..Default::default()
        },
        Some(Some((addr, vips))) => DirectVips6 {
            state: DIRECT_OWNED,
            addr: *addr,
            vips: *vips,
            ..Default::default()
        },
    }
}

impl Dataplane {
    /// Makes `addr`'s slot agree with `VIP_ADDRS*` after `addr`'s entry
    /// there was written (`entry`) or deleted (`None`). The slots are exact
    /// from the load on, so only a deletion from a shared slot reads the
    /// hash map back.
    pub(super) fn vip_direct_update(
        &mut self,
        addr: IpAddr,
        entry: Option<&AddrVips>,
    ) -> Result<(), DataplaneError> {
        match addr {
            IpAddr::V4(a) => {
                let k = u32::from_ne_bytes(a.octets());
                let slot = slot4(&k);
                let have = self.direct4.get(slot);
                let mine = have.state == DIRECT_OWNED && have.addr == k;
                let want = match entry {
                    Some(e) => match have.state {
                        DIRECT_OWNED if !mine => value4(Some(&None)),
                        DIRECT_SHARED => return Ok(()),
                        _ => value4(Some(&Some((k, *e)))),
                    },
                    None if mine => value4(None),
                    None if have.state == DIRECT_SHARED => {
                        let here: Vec<(u32, AddrVips)> = self
                            .addrs4_entries()?
                            .into_iter()
                            .filter(|(a, _)| slot4(a) == slot)
                            .collect();
                        value4(want_slots(&here, slot4).get(&slot))
                    }
                    None => return Ok(()),
                };
                self.direct4.put(slot, want);
            }
            IpAddr::V6(a) => {
                let k = a.octets();
                let slot = slot6(&k);
                let have = self.direct6.get(slot);
                let mine = have.state == DIRECT_OWNED && have.addr == k;
                let want = match entry {
                    Some(e) => match have.state {
                        DIRECT_OWNED if !mine => value6(Some(&None)),
                        DIRECT_SHARED => return Ok(()),
                        _ => value6(Some(&Some((k, *e)))),
                    },
                    None if mine => value6(None),
                    None if have.state == DIRECT_SHARED => {
                        let here: Vec<([u8; 16], AddrVips)> = self
                            .addrs6_entries()?
                            .into_iter()
                            .filter(|(a, _)| slot6(a) == slot)
                            .collect();
                        value6(want_slots(&here, slot6).get(&slot))
                    }
                    None => return Ok(()),
                };
                self.direct6.put(slot, want);
            }
        }
        Ok(())
    }

    /// Writes every slot from `VIP_ADDRS*` (at load: the maps may be a
    /// previous daemon's, the arrays new).
    pub(super) fn vip_direct_rebuild(&mut self) -> Result<(), DataplaneError> {
        let want4 = want_slots(&self.addrs4_entries()?, slot4);
        let want6 = want_slots(&self.addrs6_entries()?, slot6);
        for i in 0..VIP_DIRECT_SLOTS {
            self.direct4.put(i, value4(want4.get(&i)));
            self.direct6.put(i, value6(want6.get(&i)));
        }
        Ok(())
    }

    /// The state of `addr`'s direct slot (`DIRECT_OWNED`, `DIRECT_SHARED`
    /// or 0) and, when owned, the address that owns it.
    pub fn vip_direct_state(&self, addr: IpAddr) -> (u32, Option<IpAddr>) {
        match addr {
            IpAddr::V4(a) => {
                let s = self.direct4.get(slot4(&u32::from_ne_bytes(a.octets())));
                let owner = (s.state == DIRECT_OWNED).then(|| IpAddr::from(s.addr.to_ne_bytes()));
                (s.state, owner)
            }
            IpAddr::V6(a) => {
                let s = self.direct6.get(slot6(&a.octets()));
                (
                    s.state,
                    (s.state == DIRECT_OWNED).then(|| IpAddr::from(s.addr)),
                )
            }
        }
    }

    /// Holds `addr`'s direct slot as if a write were under way (its `seq`
    /// odd), or ends that (`false`): for tests of the program's fallback
    /// to the hash map.
    #[doc(hidden)]
    pub fn vip_direct_hold(&mut self, addr: IpAddr, held: bool) {
        let (v4, i) = match addr {
            IpAddr::V4(a) => (true, slot4(&u32::from_ne_bytes(a.octets()))),
            IpAddr::V6(a) => (false, slot6(&a.octets())),
        };
        match (v4, held) {
            (true, true) => self.direct4.begin(i),
            (true, false) => self.direct4.end(i),
            (false, true) => self.direct6.begin(i),
            (false, false) => self.direct6.end(i),
        }
    }

    /// A second writer of `VIP_DIRECT4` (its own mapping), for tests that
    /// race the program's reads against slot writes from another thread.
    #[doc(hidden)]
    pub fn vip_direct_writer4(&self) -> Result<VipDirectWriter4, DataplaneError> {
        Ok(VipDirectWriter4(DirectSlots::map(
            &self.ebpf,
            names::VIP_DIRECT4,
        )?))
    }

    fn addrs4_entries(&self) -> Result<Vec<(u32, AddrVips)>, DataplaneError> {
        self.addrs4
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VIP_ADDRS4))
    }

    fn addrs6_entries(&self) -> Result<Vec<([u8; 16], AddrVips)>, DataplaneError> {
        self.addrs6
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(names::VIP_ADDRS6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_owned_by_its_one_address_and_shared_by_two() {
        let e = AddrVips {
            count: 1,
            ..Default::default()
        };
        // Find two addresses with one slot, and one with another.
        let a = u32::from_ne_bytes([198, 18, 1, 1]);
        let same = (2..=u32::MAX)
            .map(|i| a.wrapping_add(i))
            .find(|b| slot4(b) == slot4(&a))
            .expect("the slots repeat");
        let other = (1..)
            .map(|i| a.wrapping_add(i))
            .find(|b| slot4(b) != slot4(&a))
            .expect("another slot");
        let w = want_slots(&[(a, e), (other, e)], slot4);
        assert_eq!(value4(w.get(&slot4(&a))).state, DIRECT_OWNED);
        assert_eq!(value4(w.get(&slot4(&a))).addr, a);
        assert_eq!(value4(w.get(&slot4(&other))).addr, other);
        let w = want_slots(&[(a, e), (same, e)], slot4);
        assert_eq!(value4(w.get(&slot4(&a))).state, DIRECT_SHARED);
        assert_eq!(value4(w.get(&(slot4(&a) ^ 1))), DirectVips4::default());
    }
}
