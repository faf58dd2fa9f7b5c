//! `VIP_DIRECT4` and `VIP_DIRECT6`: the VIPs of a destination address from
//! an inlined array read, instead of a hash lookup in `VIP_ADDRS*`.
//!
//! Userspace writes a slot in place as a sequence lock (see
//! `lb_common::vip::DirectVips4`): `seq` odd while it writes, one more and
//! even when done. Every read here is volatile, so the compiler keeps them
//! in program order, and the JIT emits them in that order; on x86-64 loads
//! are not reordered with other loads, so a reader that sees the same even
//! `seq` before and after its reads has read one whole version. Anything
//! else (a slot being written, shared by two addresses, or empty) is
//! answered by the hash map, which is replaced whole.

use core::ptr::{addr_of, read_unaligned, read_volatile};

use lb_common::{
    AddrVips, FlowKey, VipMeta,
    vip::{ADDR_F_OVERFLOW, ADDR_SLOTS, DIRECT_OWNED, vip_direct_slot},
};

use crate::maps::{VIP_DIRECT4, VIP_DIRECT6};

/// What a destination address's slot says.
pub enum Direct {
    /// Not a VIP address: the slot holds another, the only one with it.
    NotVip,
    /// The address's VIPs, in a slot whose sequence read `seq`.
    Vips {
        vips: *const AddrVips,
        seq_at: *const u32,
        seq: u32,
    },
    /// Ask `VIP_ADDRS*`: the slot is shared, empty or being written.
    Unknown,
}

/// The slot of IPv4 destination `daddr` (as loaded from the packet).
#[inline(always)]
pub fn v4(daddr: u32) -> Direct {
    let Some(e) = VIP_DIRECT4.get_ptr(vip_direct_slot(daddr)) else {
        return Direct::Unknown;
    };
    // SAFETY: `e` points at an element of the array (the lookup checked the
    // index); array elements are never freed while the program runs.
    unsafe {
        let seq_at = addr_of!((*e).seq);
        let seq = read_volatile(seq_at);
        let state = read_volatile(addr_of!((*e).state));
        let addr = read_volatile(addr_of!((*e).addr));
        decide(seq, state, addr == daddr, seq_at, addr_of!((*e).vips))
    }
}

/// The slot of IPv6 destination `daddr`, whose words xor to `folded`.
#[inline(always)]
pub fn v6(daddr: &[u8; 16], folded: u32) -> Direct {
    let Some(e) = VIP_DIRECT6.get_ptr(vip_direct_slot(folded)) else {
        return Direct::Unknown;
    };
    // SAFETY: as in `v4`; `addr` is at offset 8 of an 8-byte aligned
    // element, and `daddr` is read unaligned (the program is built for a CPU
    // that allows it, lb-ebpf/build.rs).
    unsafe {
        let seq_at = addr_of!((*e).seq);
        let seq = read_volatile(seq_at);
        let state = read_volatile(addr_of!((*e).state));
        let a = addr_of!((*e).addr).cast::<u64>();
        let (hi, lo) = (read_volatile(a), read_volatile(a.add(1)));
        let d = daddr.as_ptr().cast::<u64>();
        let same = hi == read_unaligned(d) && lo == read_unaligned(d.add(1));
        decide(seq, state, same, seq_at, addr_of!((*e).vips))
    }
}

/// The answer from a slot's `seq`, `state` and whether its address is the
/// destination.
///
/// # Safety
/// `seq_at` and `vips` point into one element of a `VIP_DIRECT*` array.
#[inline(always)]
unsafe fn decide(
    seq: u32,
    state: u32,
    same: bool,
    seq_at: *const u32,
    vips: *const AddrVips,
) -> Direct {
    if seq & 1 != 0 || state != DIRECT_OWNED {
        return Direct::Unknown;
    }
    if same {
        return Direct::Vips { vips, seq_at, seq };
    }
    // Another address owns the slot: not a VIP, if that was one version.
    // SAFETY: the caller vouches for `seq_at`.
    if unsafe { read_volatile(seq_at) } == seq {
        Direct::NotVip
    } else {
        Direct::Unknown
    }
}

/// The VIP for `key` among the VIPs of a slot [`v4`] or [`v6`] returned:
/// `Some` when the slot was not written meanwhile (holding the VIP, or
/// `None` when the address has none for this port and protocol), `None`
/// when it was (torn: ask the hash map). The exact port first, then the
/// all-ports VIP, as [`crate::lookup::find_vip`].
///
/// # Safety
/// `vips`, `seq_at` and `seq` are as [`Direct::Vips`] gave them.
#[inline(always)]
pub unsafe fn find(
    key: &FlowKey,
    vips: *const AddrVips,
    seq_at: *const u32,
    seq: u32,
) -> Option<Option<VipMeta>> {
    // SAFETY: the caller vouches for the pointers; every index is below
    // ADDR_SLOTS.
    unsafe {
        let count = read_volatile(addr_of!((*vips).count));
        let flags = read_volatile(addr_of!((*vips).flags));
        let (mut exact, mut any) = (ADDR_SLOTS, ADDR_SLOTS);
        let mut i = 0;
        while i < ADDR_SLOTS {
            if i as u32 >= count {
                break;
            }
            let slot = addr_of!((*vips).slots[i]);
            if read_volatile(addr_of!((*slot).proto)) == key.proto {
                let port = read_volatile(addr_of!((*slot).port));
                if port == key.dport {
                    exact = i;
                    break;
                }
                if port == 0 {
                    any = i;
                }
            }
            i += 1;
        }
        let pick = if exact < ADDR_SLOTS { exact } else { any };
        let meta = if pick < ADDR_SLOTS {
            let m = addr_of!((*vips).slots[pick].meta);
            Some(VipMeta {
                vip_id: read_volatile(addr_of!((*m).vip_id)),
                flags: read_volatile(addr_of!((*m).flags)),
                ring_base: read_volatile(addr_of!((*m).ring_base)),
                ring_size: read_volatile(addr_of!((*m).ring_size)),
            })
        } else {
            None
        };
        if read_volatile(seq_at) != seq {
            return None;
        }
        if exact < ADDR_SLOTS || flags & ADDR_F_OVERFLOW == 0 {
            return Some(meta);
        }
        Some(crate::lookup::find_overflow(key, meta))
    }
}
