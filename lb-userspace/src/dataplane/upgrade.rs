//! Upgrades across map layouts, in the kernel: the layout pinned beside the
//! maps (the `LAYOUT` map), this build's, and the copy of a pinned map
//! into the new one that replaces it (per entry, per CPU, through the
//! converters of `layout.rs`).
//!
//! The order keeps every flow: the new maps are created and pinned apart
//! (`maps-next/`) and filled while the old program still runs on the old
//! ones; the new program then replaces the old in each pinned link
//! (`bpf_link_update`, atomic per packet); what the old program added
//! between the copy and the swap is copied after it (new entries, counter
//! increments); the new pins then take the old ones' names, which frees
//! the old maps.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, MapInfo};

use super::{
    DataplaneConfig,
    layout::{self, Action, Convert, Layout, MapLayout, SCRATCH, kind},
    load::map_sizes,
};
use crate::programs;

/// The pinned map holding the layout of the maps beside it (JSON, in
/// [`LAYOUT_CHUNK`]-byte values, NUL-padded). Its own layout never
/// changes.
pub const LAYOUT: &str = "LAYOUT";
/// Where a new `LAYOUT` is pinned before it is renamed over the old one
/// (bpffs refuses names with a dot).
const LAYOUT_NEXT: &str = "LAYOUT_NEXT";
const LAYOUT_CHUNK: usize = 4096;
const LAYOUT_CHUNKS: u32 = 16;

/// Where the maps that replace pinned ones wait, under the pin directory,
/// until the new program is attached (bpffs refuses names with a dot).
pub const STAGE: &str = "maps-next";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    #[error("reading the pinned map {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("copying map {name} to the new layout: {op}: {source}")]
    Copy {
        name: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("the pinned LAYOUT map does not hold a layout ({0}); remove {1} only with `hola down`")]
    Manifest(String, PathBuf),
    #[error("the hola eBPF object: {0}")]
    Object(String),
    #[error("writing the LAYOUT map: {0}")]
    Write(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UpgradeError {
    let path = path.to_path_buf();
    move |source| UpgradeError::Io { what, path, source }
}

/// A hash (FNV-1a, 64 bits) of this build's eBPF object, which names the
/// build in the layout it pins.
pub fn build_id() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in programs::HOLA {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// This build's layout with `cfg`'s capacities: kinds and sizes from the
/// eBPF object, capacities as `hola run` loads it, versions from
/// [`layout::VERSIONS`].
pub fn current_layout(cfg: &DataplaneConfig, ncpus: u32) -> Result<Layout, UpgradeError> {
    let obj =
        aya_obj::Object::parse(programs::HOLA).map_err(|e| UpgradeError::Object(e.to_string()))?;
    let mut maps = Vec::new();
    for (name, max_entries) in map_sizes(cfg, ncpus) {
        let m = obj
            .maps
            .get(name)
            .ok_or_else(|| UpgradeError::Object(format!("no map {name}")))?;
        maps.push(MapLayout {
            name: name.to_string(),
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries,
            version: layout::version_of(name),
        });
    }
    Ok(Layout {
        build: build_id(),
        maps,
    })
}

/// The layout of the maps pinned under `pin_dir/maps`: kinds, sizes and
/// capacities from the kernel, versions and build from the `LAYOUT` map
/// (without it: pins of a build before layout versions, all version 1).
/// `None` when nothing is pinned.
pub fn pinned_layout(pin_dir: &Path) -> Result<Option<Layout>, UpgradeError> {
    let dir = pin_dir.join("maps");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let recorded = read_manifest(&dir.join(LAYOUT))?;
    let mut maps = Vec::new();
    for e in entries {
        let path = e.map_err(io("reading", &dir))?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        // Only hola_lb's maps: those the record lists, or (pins older
        // than records) every pin there. A pin the record does not list
        // is not this program's: left alone, never removed.
        let unrecorded = recorded
            .as_ref()
            .is_some_and(|l| !l.maps.iter().any(|m| m.name == name));
        if name == LAYOUT || name == LAYOUT_NEXT || unrecorded {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| UpgradeError::Pin {
            path: path.clone(),
            source,
        })?;
        let version = recorded
            .as_ref()
            .and_then(|l| l.maps.iter().find(|m| m.name == name))
            .map_or(1, |m| m.version);
        maps.push(MapLayout {
            name,
            map_type: map_type(&info),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            version,
        });
    }
    if maps.is_empty() {
        return Ok(None);
    }
    maps.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(Layout {
        build: recorded.map_or_else(|| layout::LEGACY_BUILD.to_string(), |l| l.build),
        maps,
    }))
}

fn map_type(info: &MapInfo) -> u32 {
    info.map_type().map_or(0, |t| t as u32)
}

fn read_manifest(path: &Path) -> Result<Option<Layout>, UpgradeError> {
    if !path.exists() {
        return Ok(None);
    }
    let m = RawMap::open(path, LAYOUT)?;
    let mut bytes = Vec::new();
    for i in 0..m.layout.max_entries {
        let v = m.lookup(&i.to_ne_bytes(), 1).map_err(m.err("lookup"))?;
        bytes.extend(v.unwrap_or_default());
    }
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    serde_json::from_slice(&bytes[..end])
        .map(Some)
        .map_err(|e| UpgradeError::Manifest(e.to_string(), path.to_path_buf()))
}

/// Pins `layout` as `pin_dir/maps/LAYOUT` (a new map renamed over the old
/// one: a reader sees the old layout or the new, whole).
pub fn write_layout(pin_dir: &Path, layout: &Layout) -> Result<(), UpgradeError> {
    let json = serde_json::to_vec(layout).map_err(|e| UpgradeError::Write(e.to_string()))?;
    if json.len() >= LAYOUT_CHUNK * LAYOUT_CHUNKS as usize {
        return Err(UpgradeError::Write(format!(
            "{} bytes of layout do not fit in {LAYOUT_CHUNKS} values of {LAYOUT_CHUNK}",
            json.len()
        )));
    }
    let mut map: Array<MapData, [u8; LAYOUT_CHUNK]> = Array::create(LAYOUT_CHUNKS, 0)
        .map_err(|e| UpgradeError::Write(format!("creating it: {e}")))?;
    for (i, chunk) in json.chunks(LAYOUT_CHUNK).enumerate() {
        let mut v = [0u8; LAYOUT_CHUNK];
        v[..chunk.len()].copy_from_slice(chunk);
        map.set(i as u32, v, 0)
            .map_err(|e| UpgradeError::Write(e.to_string()))?;
    }
    let dir = pin_dir.join("maps");
    let (tmp, path) = (dir.join(LAYOUT_NEXT), dir.join(LAYOUT));
    let _ = std::fs::remove_file(&tmp);
    map.pin(&tmp)
        .map_err(|e| UpgradeError::Write(format!("pinning it at {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming the pin to", &path))
}

/// A map opened by its pin, read and written entry by entry with the raw
/// `bpf(2)` element commands (its key and value sizes are known only at
/// run time).
pub(super) struct RawMap {
    data: MapData,
    pub layout: MapLayout,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
/// `BPF_NOEXIST`: only if the key has no entry.
pub(super) const NOEXIST: u64 = 1;

/// The prefix of `union bpf_attr` the element commands read.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl RawMap {
    pub(super) fn open(path: &Path, name: &str) -> Result<Self, UpgradeError> {
        let pin = |source| UpgradeError::Pin {
            path: path.to_path_buf(),
            source,
        };
        let data = MapData::from_pin(path).map_err(pin)?;
        let info = data.info().map_err(pin)?;
        Ok(Self {
            layout: MapLayout {
                name: name.to_string(),
                map_type: map_type(&info),
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                version: 0,
            },
            data,
        })
    }

    fn err(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> UpgradeError {
        let name = self.layout.name.clone();
        move |source| UpgradeError::Copy { name, op, source }
    }

    fn value_len(&self, ncpus: usize) -> usize {
        if layout::per_cpu(self.layout.map_type) {
            layout::per_cpu_stride(self.layout.value_size) * ncpus
        } else {
            self.layout.value_size as usize
        }
    }

    fn call(&self, cmd: libc::c_long, key: u64, value: u64, flags: u64) -> std::io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: self.data.fd().as_fd().as_raw_fd() as u32,
            _pad: 0,
            key,
            value,
            flags,
        };
        // SAFETY: `attr` is the prefix of `union bpf_attr` the element
        // commands read, and its size is passed; the key and value
        // pointers in it come from the callers' buffers, sized for this
        // map's key and (per-CPU) value, which outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                &mut attr as *mut ElemAttr,
                size_of::<ElemAttr>() as libc::c_uint,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The value of `key` (per-CPU maps: every CPU's), `None` if absent.
    pub(super) fn lookup(&self, key: &[u8], ncpus: usize) -> std::io::Result<Option<Vec<u8>>> {
        debug_assert_eq!(key.len(), self.layout.key_size as usize);
        let mut v = vec![0u8; self.value_len(ncpus)];
        match self.call(
            BPF_MAP_LOOKUP_ELEM,
            key.as_ptr() as u64,
            v.as_mut_ptr() as u64,
            0,
        ) {
            Ok(()) => Ok(Some(v)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn update(&self, key: &[u8], value: &[u8], flags: u64) -> std::io::Result<()> {
        self.call(
            BPF_MAP_UPDATE_ELEM,
            key.as_ptr() as u64,
            value.as_ptr() as u64,
            flags,
        )
    }

    /// The key after `key` (the first with `None`), `None` at the end.
    fn next_key(&self, key: Option<&[u8]>) -> std::io::Result<Option<Vec<u8>>> {
        let mut next = vec![0u8; self.layout.key_size as usize];
        let k = key.map_or(0, |k| k.as_ptr() as u64);
        match self.call(BPF_MAP_GET_NEXT_KEY, k, next.as_mut_ptr() as u64, 0) {
            Ok(()) => Ok(Some(next)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What a copy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub copied: u64,
    /// Entries the converter dropped, or the new map had no room for.
    pub dropped: u64,
}

/// One map being replaced: the pinned one, the staged one, how entries
/// convert, and (per-CPU counters) each entry as first copied.
pub(super) struct Staged {
    name: String,
    action: Action,
    old: RawMap,
    new: RawMap,
    before: Vec<Option<Vec<u8>>>,
}

/// An upgrade loaded but not finished: the staged maps, to top up and
/// rename once the new program is attached.
pub struct Pending {
    pin_dir: PathBuf,
    layout: Layout,
    staged: Vec<Staged>,
    removed: Vec<String>,
    ncpus: usize,
}

/// The next progress line's time.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Copies what `old` holds into `new`, converting each entry with `c`:
/// arrays the indexes both hold, hashes every key (`flags`: `NOEXIST` to
/// add only what `new` lacks). Logs progress every few seconds.
fn copy(
    old: &RawMap,
    new: &RawMap,
    c: Convert,
    ncpus: usize,
    flags: u64,
    mut snap: Option<&mut Vec<Option<Vec<u8>>>>,
) -> Result<Copied, UpgradeError> {
    let (o, n) = (&old.layout, &new.layout);
    let convert = |v: &[u8]| {
        if layout::per_cpu(o.map_type) {
            layout::convert_per_cpu(c, v, o.value_size, n.value_size, ncpus)
        } else {
            c.value(v, n.value_size as usize)
        }
    };
    let mut done = Copied::default();
    let started = Instant::now();
    let mut report = started + PROGRESS_EVERY;
    let mut put = |key: &[u8], v: &[u8], done: &mut Copied| -> Result<(), UpgradeError> {
        // Arrays and per-CPU maps keep their keys; a hash's converter may
        // change them (and drop entries that belong elsewhere).
        let entry = if layout::per_cpu(o.map_type) || layout::array_like(o.map_type) {
            convert(v).map(|nv| (key.to_vec(), nv))
        } else {
            c.entry(key, v, n.key_size as usize, n.value_size as usize)
        };
        match entry {
            None => done.dropped += 1,
            Some((key, nv)) => match new.update(&key, &nv, flags) {
                Ok(()) => done.copied += 1,
                // Full (a smaller hash), or already there (NOEXIST).
                Err(e) if matches!(e.raw_os_error(), Some(libc::E2BIG | libc::EEXIST)) => {
                    done.dropped += u64::from(e.raw_os_error() == Some(libc::E2BIG));
                }
                Err(e) => return Err(new.err("update")(e)),
            },
        }
        if Instant::now() >= report {
            report += PROGRESS_EVERY;
            tracing::info!(map = %o.name, copied = done.copied, of_at_most = o.max_entries,
                elapsed_ms = started.elapsed().as_millis() as u64, "copying a pinned map to its new layout");
        }
        Ok(())
    };
    if matches!(o.map_type, kind::ARRAY | kind::PERCPU_ARRAY) {
        for i in 0..o.max_entries.min(n.max_entries) {
            let k = i.to_ne_bytes();
            let v = old.lookup(&k, ncpus).map_err(old.err("lookup"))?;
            if let Some(v) = &v {
                put(&k, v, &mut done)?;
            }
            // What was copied, to add later only what came after it.
            if let Some(s) = snap.as_deref_mut() {
                s.push(v);
            }
        }
        return Ok(done);
    }
    // A hash the old program changes meanwhile: a deleted key restarts the
    // walk from the first, so it is bounded (the duplicates are rewrites).
    let mut key: Option<Vec<u8>> = None;
    let mut steps = 0u64;
    while let Some(k) = old.next_key(key.as_deref()).map_err(old.err("next key"))? {
        if let Some(v) = old.lookup(&k, ncpus).map_err(old.err("lookup"))? {
            put(&k, &v, &mut done)?;
        }
        key = Some(k);
        steps += 1;
        if steps > 2 * u64::from(o.max_entries) + 1024 {
            break;
        }
    }
    Ok(done)
}

/// Copies what the map pinned at `old` holds into the one pinned at `new`
/// (both of map `name`), converting each entry with `c`, as an upgrade
/// does: the first copy, or with `only_missing` the top-up after the swap
/// (entries `new` lacks). For tests and tools: `hola run` copies through
/// its plan.
pub fn copy_pinned(
    name: &str,
    old: &Path,
    new: &Path,
    c: Convert,
    only_missing: bool,
) -> Result<Copied, UpgradeError> {
    let ncpus = super::possible_cpus()
        .map_err(|e| UpgradeError::Object(format!("possible CPUs: {e}")))? as usize;
    let (o, n) = (RawMap::open(old, name)?, RawMap::open(new, name)?);
    let flags = if only_missing { NOEXIST } else { 0 };
    copy(&o, &n, c, ncpus, flags, None)
}

/// Whether the old program's later additions to this map are carried over
/// after the swap: counters (per-CPU arrays but the program's scratch) and
/// hashes.
fn topped_up(m: &MapLayout) -> bool {
    match m.map_type {
        kind::PERCPU_ARRAY => !SCRATCH.contains(&m.name.as_str()),
        kind::ARRAY | kind::PROG_ARRAY | kind::RINGBUF => false,
        _ => true,
    }
}

/// Fills the staged maps of `plan` from the pinned ones (the first copy,
/// while the old program runs). The staged maps are pinned under
/// `pin_dir/maps-next` by the loader already.
pub(super) fn stage(
    pin_dir: &Path,
    plan: &layout::Plan,
    current: Layout,
    ncpus: usize,
) -> Result<Pending, UpgradeError> {
    let mut staged = Vec::new();
    let pinned = pinned_layout(pin_dir)?.map(|l| l.maps).unwrap_or_default();
    for (name, action) in &plan.actions {
        // The pinned map the entries come from: the map's own, or for a
        // derived map the one it is made from.
        let from = match action {
            Action::Convert(_) | Action::Fresh => name.as_str(),
            Action::Derive { from, .. } => from,
            Action::Reuse | Action::Create => continue,
        };
        let mut old = RawMap::open(&pin_dir.join("maps").join(from), from)?;
        let mut new = RawMap::open(&pin_dir.join(STAGE).join(name), name)?;
        old.layout.version = pinned
            .iter()
            .find(|m| m.name == from)
            .map_or(1, |m| m.version);
        new.layout.version = layout::version_of(name);
        let mut before = Vec::new();
        if let Action::Convert(c) | Action::Derive { convert: c, .. } = *action {
            let t = Instant::now();
            let counters = old.layout.map_type == kind::PERCPU_ARRAY && topped_up(&old.layout);
            let done = copy(&old, &new, c, ncpus, 0, counters.then_some(&mut before))?;
            tracing::info!(map = %name, copied = done.copied, dropped = done.dropped,
                elapsed_ms = t.elapsed().as_millis() as u64,
                from = %layout::describe(&old.layout), to = %layout::describe(&new.layout),
                "copied a pinned map into its new layout");
        } else if name == lb_common::maps::PEER_FLOWS {
            tracing::info!(
                map = %name,
                pinned = old.layout.max_entries,
                wanted = new.layout.max_entries,
                "a new PEER_FLOWS of the configured size replaces the pinned one; \
                 cluster peers send their flows again when they reconnect"
            );
        } else {
            tracing::info!(map = %name, "a new, empty map replaces the pinned one");
        }
        staged.push(Staged {
            name: name.clone(),
            action: *action,
            old,
            new,
            before,
        });
    }
    Ok(Pending {
        pin_dir: pin_dir.to_path_buf(),
        layout: current,
        staged,
        removed: plan.removed.clone(),
        ncpus,
    })
}

impl Pending {
    /// For a start that replaces nothing: only the layout to record.
    pub(super) fn record_only(pin_dir: &Path, layout: Layout, ncpus: usize) -> Self {
        Self {
            pin_dir: pin_dir.to_path_buf(),
            layout,
            staged: Vec::new(),
            removed: Vec::new(),
            ncpus,
        }
    }

    /// Once the new program is attached everywhere: carries over what the
    /// old program added since the first copy, puts the new maps in the
    /// old ones' place (which frees them), and records the new layout.
    pub fn finish(self) -> Result<(), UpgradeError> {
        let maps = self.pin_dir.join("maps");
        for s in &self.staged {
            if let Action::Convert(c) | Action::Derive { convert: c, .. } = s.action {
                self.top_up(s, c)?;
            }
            let to = maps.join(&s.name);
            std::fs::rename(self.pin_dir.join(STAGE).join(&s.name), &to)
                .map_err(io("putting the new map's pin at", &to))?;
        }
        for name in &self.removed {
            let p = maps.join(name);
            std::fs::remove_file(&p).map_err(io("removing the old map's pin", &p))?;
            tracing::info!(map = %name, "removed a pinned map this build does not have");
        }
        let stage = self.pin_dir.join(STAGE);
        if stage.exists() {
            std::fs::remove_dir(&stage).map_err(io("removing", &stage))?;
        }
        write_layout(&self.pin_dir, &self.layout)?;
        if !self.staged.is_empty() {
            tracing::info!(build = %self.layout.build, replaced = self.staged.len(),
                "upgrade done: the new program runs on the new maps, the old maps are gone");
        }
        Ok(())
    }

    fn top_up(&self, s: &Staged, c: Convert) -> Result<(), UpgradeError> {
        if !topped_up(&s.old.layout) {
            return Ok(());
        }
        let (o, n, ncpus) = (&s.old.layout, &s.new.layout, self.ncpus);
        if o.map_type != kind::PERCPU_ARRAY {
            let done = copy(&s.old, &s.new, c, ncpus, NOEXIST, None)?;
            tracing::info!(map = %s.name, added = done.copied, "entries the old program added after the copy");
            return Ok(());
        }
        let mut changed = 0u64;
        for (i, before) in s.before.iter().enumerate() {
            let k = (i as u32).to_ne_bytes();
            let after = s.old.lookup(&k, ncpus).map_err(s.old.err("lookup"))?;
            let (Some(before), Some(after)) = (before, after) else {
                continue;
            };
            if *before == after {
                continue;
            }
            let conv = |v: &[u8]| layout::convert_per_cpu(c, v, o.value_size, n.value_size, ncpus);
            let (Some(b), Some(a)) = (conv(before), conv(&after)) else {
                continue;
            };
            let Some(mut now) = s.new.lookup(&k, ncpus).map_err(s.new.err("lookup"))? else {
                continue;
            };
            layout::add_delta(&mut now, &b, &a);
            s.new.update(&k, &now, 0).map_err(s.new.err("update"))?;
            changed += 1;
        }
        tracing::info!(map = %s.name, entries = changed, "counted by the old program after the copy, added");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use lb_common::maps as names;

    use super::*;

    /// This build's layout, read from its eBPF object, with the default
    /// configuration on 4 CPUs.
    #[test]
    fn this_builds_layout_has_every_pinned_map_with_its_sizes() {
        let cfg = DataplaneConfig::default();
        let l = current_layout(&cfg, 4).expect("layout");
        assert_eq!(l.maps.len(), map_sizes(&cfg, 4).len());
        assert_eq!(l.build.len(), 16);
        assert_eq!(l.build, build_id());
        let get = |n: &str| {
            let m = l.maps.iter().find(|m| m.name == n).expect(n);
            (
                m.map_type,
                m.key_size,
                m.value_size,
                m.max_entries,
                m.version,
            )
        };
        let flows = 4 * crate::config::defaults::FLOW_CAPACITY_PER_CPU;
        assert_eq!(get(names::FLOWS4), (kind::LRU_HASH, 16, 8, flows, 1));
        assert_eq!(get(names::FLOWS), (kind::LRU_HASH, 40, 8, flows / 4, 2));
        assert_eq!(
            get(names::REASONS),
            (kind::PERCPU_ARRAY, 4, 16, lb_common::Reason::COUNT, 1)
        );
        assert_eq!(
            get(names::ICMP_PROGS),
            (kind::PROG_ARRAY, 4, 4, names::ICMP_PROGS_LEN, 1)
        );
        assert_eq!(
            get(names::FLOW_EVENTS),
            (kind::RINGBUF, 0, 0, super::super::FLOW_EVENTS_BYTES, 1)
        );
        assert_eq!(
            get(names::NAT),
            (
                kind::LRU_HASH,
                40,
                96,
                crate::config::defaults::NAT_CAPACITY,
                1
            )
        );
        // `struct bpf_devmap_val`: the ifindex and a program fd.
        assert_eq!(get(names::TX_PORTS), (kind::DEVMAP_HASH, 4, 8, 64, 1));
    }

    /// What the `LAYOUT` map holds, exactly.
    #[test]
    fn the_recorded_layout_is_json() {
        let l = Layout {
            build: "00ff".into(),
            maps: vec![MapLayout {
                name: "REASONS".into(),
                map_type: kind::PERCPU_ARRAY,
                key_size: 4,
                value_size: 16,
                max_entries: 18,
                version: 1,
            }],
        };
        let json = serde_json::to_string(&l).expect("json");
        assert_eq!(
            json,
            r#"{"build":"00ff","maps":[{"name":"REASONS","map_type":6,"key_size":4,"value_size":16,"max_entries":18,"version":1}]}"#
        );
        assert_eq!(serde_json::from_str::<Layout>(&json).expect("back"), l);
    }
}
