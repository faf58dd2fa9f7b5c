//! Counters of removed backends. A forwarded packet is counted by its
//! backend alone (`BACKEND_STATS`); its VIP's totals and the
//! `fwd_established` reason are derived from the backends' counters
//! (`counters.rs`). So that those totals never go down when a backend is
//! removed, a removed backend's counters are folded into `RETIRED` (a map
//! only this owner writes) before its id is given to another backend.
//!
//! The guarantee, and why it holds without a read-modify-write racing the
//! program's per-CPU increments:
//!
//! 1. A removed backend's `BACKENDS` entry becomes a *marker*: its VIP id
//!    kept, every flag clear. The program chooses only active backends
//!    (`usable`, the Maglev pick, QUIC, fragments, ICMP all test
//!    `BACKEND_F_ACTIVE`), and no ring slot names it any more (the plan
//!    clears the entry after its slots). The marker survives a restart
//!    (the map is pinned): until the fold, the derived totals include the
//!    marked backend's counters as if it were still there.
//! 2. The fold happens only when the id is handed out again (or its VIP
//!    id is), after an RCU grace period since the last marker was
//!    written (`synchronize_rcu` through an update of a map-in-map): a
//!    program run that read the entry before it became a marker has ended,
//!    so nothing increments the id's counters any more and reading them
//!    is exact.
//! 3. The fold is one write of `RETIRED[vip]` (the totals added, with
//!    `folding` = the id), then the id's counters zeroed, the marker
//!    cleared, and `folding` reset. A daemon killed in between leaves
//!    `folding` set with the marker still there: the next daemon finishes
//!    the fold (zero, clear) without adding the counters twice; killed
//!    before the first write, nothing changed and the marker is folded
//!    later.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use lb_common::{Backend, BackendStats, RetiredStats, backend::BACKEND_F_ACTIVE, maps as names};

use super::{Dataplane, DataplaneError, map_err};

/// Per-CPU counters summed: (VIP part, established part) of packets and
/// bytes, as `RETIRED` keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parts {
    pub vip_packets: u64,
    pub vip_bytes: u64,
    pub established_packets: u64,
    pub established_bytes: u64,
}

impl Parts {
    /// What one backend's counters (summed over CPUs) add to its VIP's
    /// totals and to `fwd_established`.
    pub fn of(s: &BackendStats) -> Self {
        let vip_packets = s.packets.wrapping_sub(s.legacy_packets);
        let vip_bytes = s.bytes.wrapping_sub(s.legacy_bytes);
        Self {
            vip_packets,
            vip_bytes,
            established_packets: vip_packets.wrapping_sub(s.counted_packets),
            established_bytes: vip_bytes.wrapping_sub(s.counted_bytes),
        }
    }

    pub fn add(&mut self, o: &Parts) {
        self.vip_packets += o.vip_packets;
        self.vip_bytes += o.vip_bytes;
        self.established_packets += o.established_packets;
        self.established_bytes += o.established_bytes;
    }
}

/// Waits for an RCU grace period: an update of an `ARRAY_OF_MAPS` returns
/// only after `synchronize_rcu()` (the kernel's `maybe_wait_bpf_programs`),
/// that is once every XDP program run that started before it has ended.
pub struct RcuWait {
    outer: OwnedFd,
    inner: OwnedFd,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const MAP_ARRAY: u32 = 2;
const MAP_ARRAY_OF_MAPS: u32 = 12;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: `attr` is 128 zero-padded bytes, a prefix of `union
    // bpf_attr` as the command reads it; its size is passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128 as libc::c_uint) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn create(map_type: u32, inner_fd: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    // map_type, key_size, value_size, max_entries, map_flags, inner_map_fd
    attr[0] = u64::from(map_type) | (4u64 << 32);
    attr[1] = 4 | (1u64 << 32);
    attr[2] = u64::from(inner_fd) << 32;
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl RcuWait {
    pub fn new() -> io::Result<Self> {
        let inner = create(MAP_ARRAY, 0)?;
        let outer = create(MAP_ARRAY_OF_MAPS, inner.as_raw_fd() as u32)?;
        Ok(Self { outer, inner })
    }

    /// Returns after an RCU grace period.
    pub fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        let mut attr = [0u64; 16];
        attr[0] = self.outer.as_raw_fd() as u64;
        attr[1] = &key as *const u32 as u64;
        attr[2] = &value as *const u32 as u64;
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

impl Dataplane {
    /// `BACKENDS[id]` emptied when the plan removes a backend: a marker of
    /// its VIP stays until its counters are folded (see the module doc).
    pub(super) fn retire_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        let old = self
            .backends_map
            .get(&id, 0)
            .map_err(map_err(names::BACKENDS))?;
        let marker = Backend {
            vip_id: old.vip_id,
            ..Backend::default()
        };
        self.backends_map
            .set(id, marker, 0)
            .map_err(map_err(names::BACKENDS))?;
        if old.vip_id != 0 {
            self.retired_ids.insert(id, old.vip_id);
            self.rcu_pending = true;
        }
        Ok(())
    }

    /// Before `id` is given to a new backend: folds a removed backend's
    /// counters into its VIP's `RETIRED` entry (with `keep_vip` false,
    /// only the established part: its VIP is gone).
    pub(super) fn fold_backend(&mut self, id: u32, keep_vip: bool) -> Result<(), DataplaneError> {
        let Some(&vip_id) = self.retired_ids.get(&id) else {
            return Ok(());
        };
        if self.rcu_pending {
            self.rcu
                .wait()
                .map_err(|e| DataplaneError::RcuWait(e.to_string()))?;
            self.rcu_pending = false;
        }
        let parts = Parts::of(&self.backend_sum(id)?);
        let mut r = self.retired_copy[vip_id as usize];
        if keep_vip {
            r.vip_packets += parts.vip_packets;
            r.vip_bytes += parts.vip_bytes;
        }
        r.established_packets += parts.established_packets;
        r.established_bytes += parts.established_bytes;
        r.folding = id;
        self.set_retired(vip_id, r)?;
        self.finish_fold(id, vip_id)
    }

    /// The rest of a fold once `RETIRED[vip_id]` holds the counters: the
    /// id's counters zeroed, its marker cleared, `folding` reset.
    fn finish_fold(&mut self, id: u32, vip_id: u32) -> Result<(), DataplaneError> {
        self.backend_stats
            .set(id, self.zeroed::<BackendStats>(), 0)
            .map_err(map_err(names::BACKEND_STATS))?;
        self.backends_map
            .set(id, Backend::default(), 0)
            .map_err(map_err(names::BACKENDS))?;
        self.retired_ids.remove(&id);
        let mut r = self.retired_copy[vip_id as usize];
        r.folding = 0;
        self.set_retired(vip_id, r)
    }

    /// Before VIP id `vip_id` is given to a new VIP: the old VIP's removed
    /// backends folded (their established part), and its totals reset.
    pub(super) fn fold_vip(&mut self, vip_id: u32) -> Result<(), DataplaneError> {
        let ids: Vec<u32> = self
            .retired_ids
            .iter()
            .filter(|&(_, &v)| v == vip_id)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.fold_backend(id, false)?;
        }
        let mut r = self.retired_copy[vip_id as usize];
        r.vip_packets = 0;
        r.vip_bytes = 0;
        self.set_retired(vip_id, r)
    }

    fn set_retired(&mut self, vip_id: u32, r: RetiredStats) -> Result<(), DataplaneError> {
        self.retired
            .set(vip_id, r, 0)
            .map_err(map_err(names::RETIRED))?;
        self.retired_copy[vip_id as usize] = r;
        Ok(())
    }

    /// `BACKEND_STATS[id]` summed over CPUs.
    pub(super) fn backend_sum(&self, id: u32) -> Result<BackendStats, DataplaneError> {
        let per_cpu = self
            .backend_stats
            .get(&id, 0)
            .map_err(map_err(names::BACKEND_STATS))?;
        let mut sum = BackendStats::default();
        for s in per_cpu.iter() {
            sum.packets += s.packets;
            sum.bytes += s.bytes;
            sum.new_flows += s.new_flows;
            sum.counted_packets += s.counted_packets;
            sum.counted_bytes += s.counted_bytes;
            sum.legacy_packets += s.legacy_packets;
            sum.legacy_bytes += s.legacy_bytes;
        }
        Ok(sum)
    }

    /// At start: reads `RETIRED`, takes the markers a previous daemon left
    /// in `BACKENDS` (`markers`: id → VIP id), and finishes a fold it was
    /// killed in the middle of.
    pub(super) fn adopt_retired(
        &mut self,
        markers: BTreeMap<u32, u32>,
    ) -> Result<(), DataplaneError> {
        self.retired_ids = markers;
        for v in 0..=self.cfg.max_vips {
            self.retired_copy[v as usize] =
                self.retired.get(&v, 0).map_err(map_err(names::RETIRED))?;
        }
        for v in 0..=self.cfg.max_vips {
            let id = self.retired_copy[v as usize].folding;
            if id == 0 {
                continue;
            }
            if self.retired_ids.get(&id) == Some(&v) {
                // Its counters are in `RETIRED[v]` already.
                tracing::info!(
                    backend_id = id,
                    vip_id = v,
                    "finishing the fold of a removed backend's counters"
                );
                self.finish_fold(id, v)?;
            } else {
                let mut r = self.retired_copy[v as usize];
                r.folding = 0;
                self.set_retired(v, r)?;
            }
        }
        Ok(())
    }

    /// A backend entry a previous daemon left: whether it is a marker of a
    /// removed backend, and of which VIP.
    pub(super) fn marker_of(b: &Backend) -> Option<u32> {
        (b.flags & BACKEND_F_ACTIVE == 0 && b.vip_id != 0).then_some(b.vip_id)
    }
}
