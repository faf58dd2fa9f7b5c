//! Many slots of a `u32` array map (`RINGS`, `PREV_RINGS`) in one system
//! call: `BPF_MAP_UPDATE_BATCH`, which aya does not wrap. A backend that
//! goes down moves about half of its VIP's 65,537 slots, and its previous
//! table names their old owners: some 65,000 writes, which took about
//! 200 ms one `bpf_map_update_elem` at a time and delayed the moment the
//! data plane stopped sending new flows to the failed backend.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, BorrowedFd, OwnedFd},
};

use super::DataplaneError;

/// `BPF_MAP_LOOKUP_BATCH` and `BPF_MAP_UPDATE_BATCH`
/// (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`, as the kernel lays it out.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries per call: bounds the kernel's time in one call (it copies and
/// writes element by element, rescheduling between them) without costing
/// more calls for any table of the default size.
const CHUNK: usize = 1 << 16;

/// Sets `map[keys[i]] = values[i]` for every `i`, in order, in as few
/// calls as the chunking allows. On an error, the entries before the one
/// that failed are written and the rest are not, as with one write at a
/// time.
pub(super) fn update_u32_array(
    map: BorrowedFd<'_>,
    keys: &[u32],
    values: &[u32],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the kernel's `batch` layout; `keys` and `values`
        // point at `count` u32s each, alive for the call; the kernel writes
        // only `attr.count` back.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The values of slots `first .. first + count` of a `u32` array map, in as
/// few calls as the chunking allows (`BPF_MAP_LOOKUP_BATCH`: the kernel
/// walks the array from the key after `in_batch`, or from 0 without it).
/// Adopting a previous daemon's tables reads every VIP's Maglev table this
/// way: 65,537 slots per large VIP, one system call each before.
pub(super) fn lookup_u32_array(
    map: BorrowedFd<'_>,
    first: u32,
    count: u32,
) -> io::Result<Vec<u32>> {
    let mut values = vec![0u32; count as usize];
    let mut keys = vec![0u32; (count as usize).min(CHUNK)];
    let mut done = 0usize;
    while done < count as usize {
        let want = (count as usize - done).min(CHUNK);
        // The key before the first wanted one; none for slot 0.
        let prev: u32 = (first + done as u32).wrapping_sub(1);
        let mut out_batch = 0u32;
        let mut attr = BatchAttr {
            in_batch: if first as usize + done == 0 {
                0
            } else {
                &prev as *const u32 as u64
            },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values[done..].as_mut_ptr() as u64,
            count: want as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: `attr` is the kernel's `batch` layout; `in_batch` and
        // `out_batch` point at a u32 key each, `keys` and `values` at room
        // for `count` u32s, all alive for the call; the kernel writes only
        // those and `attr.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        let got = attr.count as usize;
        // ENOENT: the walk reached the array's end (with `got` entries).
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
            return Err(io::Error::last_os_error());
        }
        if got < want
            || keys[..got]
                .iter()
                .enumerate()
                .any(|(i, k)| *k as usize != first as usize + done + i)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "batch lookup returned {got} of {want} slots from {}",
                    first as usize + done
                ),
            ));
        }
        done += got;
    }
    Ok(values)
}

/// Whether `e` says the kernel has no batch update for this map (then each
/// entry is written on its own).
pub(super) fn unsupported(e: &io::Error) -> bool {
    // ENOTSUPP (524) is what the kernel returns for a map type without the
    // operation; EINVAL from a kernel older than the command.
    matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(524))
}

/// A descriptor of its own for the array map `name` of `ebpf`, taken before
/// the map is handed to aya's typed wrapper.
pub(super) fn array_fd(ebpf: &aya::Ebpf, name: &'static str) -> Result<OwnedFd, DataplaneError> {
    match ebpf.map(name) {
        Some(aya::maps::Map::Array(m)) => {
            m.fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|io_error| DataplaneError::Map {
                    name,
                    source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "dup",
                        io_error,
                    }),
                })
        }
        Some(_) => Err(DataplaneError::Map {
            name,
            source: aya::maps::MapError::InvalidMapType { map_type: 0 },
        }),
        None => Err(DataplaneError::MissingMap(name)),
    }
}
