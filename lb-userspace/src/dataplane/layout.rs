//! Layouts of the pinned maps, and what an upgrade does with each: the
//! pure half of upgrades (the kernel half is `upgrade.rs`).
//!
//! A map's layout is its kind, key and value sizes, capacity and a layout
//! version, bumped whenever what an entry means changes (a field reused, a
//! unit changed) even at the same sizes. The layout of every pinned map is
//! kept beside the pins (the pinned `LAYOUT` map), so that a new build can
//! tell, map by map, whether the pinned one is its own ([`Action::Reuse`]),
//! missing ([`Action::Create`]), or another build's, and then whether it
//! can convert its entries ([`Action::Convert`]) or must refuse before
//! anything changes ([`LayoutError`]).

use std::collections::BTreeMap;

use lb_common::maps as names;
use serde::{Deserialize, Serialize};

/// Kernel map types (`enum bpf_map_type`) the balancer uses.
pub mod kind {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PROG_ARRAY: u32 = 3;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LRU_HASH: u32 = 9;
    pub const LRU_PERCPU_HASH: u32 = 10;
    pub const DEVMAP_HASH: u32 = 25;
    pub const RINGBUF: u32 = 27;
}

/// The layout of one pinned map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapLayout {
    pub name: String,
    /// `enum bpf_map_type`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    /// What an entry means: see [`VERSIONS`].
    pub version: u32,
}

/// Every pinned map's layout, and the build that pinned them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// A hash of the eBPF object (`upgrade::build_id`), or
    /// [`LEGACY_BUILD`] for pins made before layouts were recorded.
    pub build: String,
    pub maps: Vec<MapLayout>,
}

/// The build of pins without a recorded layout (made by a build before
/// layout versions): their layouts are read from the kernel and taken as
/// version 1.
pub const LEGACY_BUILD: &str = "unrecorded (a build before layout versions)";

/// Layout versions of the maps whose entries changed meaning since
/// layouts were first recorded; a map not listed is at version 1. Bump a
/// map's version (and add a [`CONVERTERS`] row from the previous one, or
/// upgrades from it are refused) whenever its key or value is read
/// differently, including at the same sizes.
///
/// - `FLOWS` 2: IPv6 flows only; IPv4 flows moved to `FLOWS4` (16-byte
///   keys). Version 1 held both.
/// - `FLOOD` 2: `FloodState` gained `syns` (24 bytes).
/// - `BACKEND_STATS` 2: 64-byte values; `counted_*` and `legacy_*` added
///   (issue 15: a forwarded packet is counted by its backend alone, its
///   VIP's totals and `fwd_established` derived from the backends').
pub const VERSIONS: &[(&str, u32)] = &[
    (names::FLOWS, 2),
    (names::FLOOD, 2),
    (names::BACKEND_STATS, 2),
];

/// The version of `name`'s layout in this build.
pub fn version_of(name: &str) -> u32 {
    VERSIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(1, |(_, v)| *v)
}

/// Maps whose capacity comes from the configuration: a different capacity
/// is a configuration change, refused under a running data plane (the
/// tables userspace keeps are sized with them). Every other map is sized
/// by the build (`REASONS` by the reasons it knows), and an upgrade copies
/// the entries both sizes hold.
pub const CONFIG_SIZED: &[&str] = &[
    names::FLOWS,
    names::FLOWS4,
    names::VIPS,
    names::VIP_ADDRS4,
    names::VIP_ADDRS6,
    names::VIP_STATS,
    names::BACKENDS,
    names::BACKEND_STATS,
    names::RINGS,
    names::PREV_RINGS,
    names::PREV_UNTIL,
    names::GRACE_SYNS,
    names::NAT,
    names::NAT_SYN,
    names::FULLNAT_FLOWS,
    names::HANDSHAKES,
    names::NAT_SOURCES4,
    names::NAT_SOURCES6,
    names::PEER_FLOWS,
    names::QUIC_SERVERS,
];

/// Per-CPU arrays that hold the program's working state, not counters:
/// copied once, never topped up with what the old program added after
/// the copy.
pub const SCRATCH: &[&str] = &[
    names::FLOOD,
    names::NAT_SCRATCH,
    names::FULLNAT_CURSOR,
    names::NAT_CLOCK,
];

/// An entry converter: the old key and value to the new ones, or `None`.
pub type EntryFn = fn(&[u8], &[u8]) -> Option<(Vec<u8>, Vec<u8>)>;

/// How one entry of a map becomes an entry of the new layout.
#[derive(Clone, Copy, Debug)]
pub enum Convert {
    /// The same bytes (arrays: the entries both capacities hold).
    Identity,
    /// The old value, then zeros up to the new size: a struct that gained
    /// fields at its end whose zero means "nothing yet" (counters).
    ZeroExtend,
    /// A function of the old value (per CPU for per-CPU maps); `None`
    /// drops the entry. Keys are kept.
    Value(fn(&[u8]) -> Option<Vec<u8>>),
    /// A function of the old key and value to the new ones (hashes that
    /// are not per CPU only): a key that changes size, or entries that
    /// go to another map (`None` drops the entry).
    Entry(EntryFn),
}

impl PartialEq for Convert {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Convert::Identity, Convert::Identity) | (Convert::ZeroExtend, Convert::ZeroExtend) => {
                true
            }
            // The same function (for plans' comparisons in tests).
            (Convert::Value(a), Convert::Value(b)) => std::ptr::fn_addr_eq(*a, *b),
            (Convert::Entry(a), Convert::Entry(b)) => std::ptr::fn_addr_eq(*a, *b),
            _ => false,
        }
    }
}

impl Eq for Convert {}

impl Convert {
    /// One value (one CPU's, for per-CPU maps) in the new layout.
    pub fn value(&self, old: &[u8], new_size: usize) -> Option<Vec<u8>> {
        match self {
            Convert::Identity => (old.len() == new_size).then(|| old.to_vec()),
            Convert::ZeroExtend => (old.len() <= new_size).then(|| {
                let mut v = old.to_vec();
                v.resize(new_size, 0);
                v
            }),
            Convert::Value(f) => f(old).filter(|v| v.len() == new_size),
            // Keys change: only `entry` applies it.
            Convert::Entry(_) => None,
        }
    }

    /// One entry of a hash in the new layout: its key and value, `None`
    /// when dropped (the converter's choice, or sizes that do not fit).
    pub fn entry(
        &self,
        key: &[u8],
        old: &[u8],
        new_key: usize,
        new_size: usize,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        match self {
            Convert::Entry(f) => {
                f(key, old).filter(|(k, v)| k.len() == new_key && v.len() == new_size)
            }
            c => (key.len() == new_key)
                .then(|| c.value(old, new_size).map(|v| (key.to_vec(), v)))
                .flatten(),
        }
    }
}

/// A converter from one layout version of a map to another.
#[derive(Clone, Copy, Debug)]
pub struct Converter {
    pub map: &'static str,
    /// `None`: from `map`'s own pinned entries. `Some(other)`: `map` is
    /// new in this build and filled from the pinned map `other` (at
    /// version `from`), as when one map is split into two.
    pub source: Option<&'static str>,
    pub from: u32,
    pub to: u32,
    pub convert: Convert,
}

/// The converters this build has, for layouts [`VERSIONS`] bumped and
/// maps made from others. A grown build-sized array (`REASONS`) and a new
/// empty map need none.
pub const CONVERTERS: &[Converter] = &[
    // FLOWS 1 held IPv4 and IPv6 flows: its IPv6 ones stay, its IPv4 ones
    // go to the new FLOWS4.
    Converter {
        map: names::FLOWS,
        source: None,
        from: 1,
        to: 2,
        convert: Convert::Entry(flows::keep_v6),
    },
    Converter {
        map: names::FLOWS4,
        source: Some(names::FLOWS),
        from: 1,
        to: 1,
        convert: Convert::Entry(flows::to_v4),
    },
    Converter {
        map: names::FLOOD,
        source: None,
        from: 1,
        to: 2,
        // No SYN counted yet in the current window.
        convert: Convert::ZeroExtend,
    },
    Converter {
        map: names::BACKEND_STATS,
        source: None,
        from: 1,
        to: 2,
        convert: Convert::Value(backend_stats_v2),
    },
];

/// The flow-table split (`FLOWS` 1 into `FLOWS` 2 and `FLOWS4`).
mod flows {
    use lb_common::{FAMILY_V4, FlowKey, FlowKey4};

    fn key(k: &[u8]) -> Option<FlowKey> {
        (k.len() == size_of::<FlowKey>())
            // SAFETY: exactly a FlowKey's bytes, a plain-old-data type
            // with no invalid bit pattern; read unaligned.
            .then(|| unsafe { std::ptr::read_unaligned(k.as_ptr().cast::<FlowKey>()) })
    }

    /// A `FLOWS` 1 entry that stays in `FLOWS` 2: an IPv6 flow's.
    pub(super) fn keep_v6(k: &[u8], v: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        key(k)
            .filter(|f| f.family != FAMILY_V4)
            .map(|_| (k.to_vec(), v.to_vec()))
    }

    /// A `FLOWS` 1 entry that goes to `FLOWS4`: an IPv4 flow's, its key
    /// narrowed to 16 bytes, its value (backend id, hash) as it was.
    pub(super) fn to_v4(k: &[u8], v: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let f = key(k).filter(|f| f.family == FAMILY_V4)?;
        let k4 = FlowKey4::of(&f);
        // SAFETY: FlowKey4 is 16 bytes of integers without padding bytes
        // (its `_pad` is a field, zeroed).
        let bytes: [u8; 16] = unsafe { std::mem::transmute(k4) };
        Some((bytes.to_vec(), v.to_vec()))
    }
}

/// `BACKEND_STATS` 1 → 2 (one CPU's value): the counters kept, and all
/// of them marked `legacy`: the build that counted them also counted
/// every one in its VIP's `VIP_STATS` and in `REASONS`, so the derived
/// totals must not add them again.
///
/// A 64-byte value is this layout already (pins of this build whose
/// layout was not recorded: a daemon killed before it attached, which
/// the next one takes for a build before layouts): kept as it is.
fn backend_stats_v2(old: &[u8]) -> Option<Vec<u8>> {
    if old.len() == 64 {
        return Some(old.to_vec());
    }
    if old.len() != 32 {
        return None;
    }
    let word = |i: usize| -> [u8; 8] { old[i * 8..i * 8 + 8].try_into().expect("8 bytes") };
    let mut v = Vec::with_capacity(64);
    for w in [
        word(0),
        word(1),
        word(2),
        word(3),
        [0; 8],
        [0; 8],
        word(0),
        word(1),
    ] {
        v.extend_from_slice(&w);
    }
    Some(v)
}

/// What an upgrade does with one map of the new build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The pinned map is this layout's: used as it is, by both programs
    /// while they overlap.
    Reuse,
    /// Not pinned: created (empty) and pinned.
    Create,
    /// Another layout: a new map, filled from the pinned one entry by
    /// entry, replaces it once the new program is attached.
    Convert(Convert),
    /// Not pinned, but made from the pinned map `from` (a map split in
    /// two): a new map, filled from it entry by entry (the converter
    /// choosing which), pinned once the new program is attached.
    Derive {
        from: &'static str,
        convert: Convert,
    },
    /// Another layout or a map only a program of one build may use (a
    /// program array) while the program changes: a new, empty map replaces
    /// it once the new program is attached.
    Fresh,
}

/// The plan of an upgrade: per map of the new build, what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<(String, Action)>,
    /// Pinned maps the new build does not have: removed after the swap.
    pub removed: Vec<String>,
}

impl Plan {
    /// Whether the program's maps change under it (some map replaced):
    /// the new maps are staged and swapped in with the program.
    pub fn migrates(&self) -> bool {
        self.actions.iter().any(|(_, a)| {
            matches!(
                a,
                Action::Convert(_) | Action::Derive { .. } | Action::Fresh
            )
        })
    }

    pub fn action(&self, name: &str) -> Option<Action> {
        self.actions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error(
        "pinned map {name} holds {pinned} entries but the configuration asks for {wanted}; capacities cannot change under a running data plane: restore the old setting, or run `hola down` then `hola run` (this drops every flow)"
    )]
    Capacity {
        name: String,
        pinned: u32,
        wanted: u32,
    },
    #[error(
        "pinned map {name} has layout {old} (pinned by build {build}) and this build's is {new}; this build has no converter from one to the other: run the build that pinned it, or `hola down` then `hola run` (this drops every flow, NAT translation and counter)"
    )]
    NoConverter {
        name: String,
        old: String,
        new: String,
        build: String,
    },
}

/// A layout in words, for messages: `version 2 (lru_hash, key 40 B,
/// value 16 B, 65536 entries)`.
pub fn describe(m: &MapLayout) -> String {
    let kind = match m.map_type {
        kind::HASH => "hash".to_string(),
        kind::ARRAY => "array".into(),
        kind::PROG_ARRAY => "prog_array".into(),
        kind::PERCPU_HASH => "percpu_hash".into(),
        kind::PERCPU_ARRAY => "percpu_array".into(),
        kind::LRU_HASH => "lru_hash".into(),
        kind::LRU_PERCPU_HASH => "lru_percpu_hash".into(),
        kind::DEVMAP_HASH => "devmap_hash".into(),
        kind::RINGBUF => "ringbuf".into(),
        t => format!("type {t}"),
    };
    format!(
        "version {} ({kind}, key {} B, value {} B, {} entries)",
        m.version, m.key_size, m.value_size, m.max_entries
    )
}

/// Whether a value is one per possible CPU.
pub fn per_cpu(map_type: u32) -> bool {
    matches!(
        map_type,
        kind::PERCPU_ARRAY | kind::PERCPU_HASH | kind::LRU_PERCPU_HASH
    )
}

/// Whether a map is indexed by position (an array) rather than hashed.
pub fn array_like(t: u32) -> bool {
    matches!(t, kind::ARRAY | kind::PERCPU_ARRAY)
}

/// Kinds whose entries are copied as they are between each other (an
/// entry means the same in either; only eviction differs).
fn same_shape(a: u32, b: u32) -> bool {
    let class = |t| match t {
        kind::HASH | kind::LRU_HASH => kind::HASH,
        kind::PERCPU_HASH | kind::LRU_PERCPU_HASH => kind::PERCPU_HASH,
        t => t,
    };
    class(a) == class(b)
}

/// The plan of an upgrade from the pinned maps' layout `old` to `new`,
/// with the converters of `converters`; refused (nothing planned) when a
/// map cannot be carried over.
pub fn plan(old: &Layout, new: &Layout, converters: &[Converter]) -> Result<Plan, LayoutError> {
    let pinned: BTreeMap<&str, &MapLayout> =
        old.maps.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut actions = Vec::with_capacity(new.maps.len());
    for n in &new.maps {
        let action = match pinned.get(n.name.as_str()) {
            None => derived(n, &pinned, converters),
            Some(o) => one(o, n, &old.build, converters)?,
        };
        actions.push((n.name.clone(), action));
    }
    let mut plan = Plan {
        actions,
        removed: old
            .maps
            .iter()
            .filter(|o| !new.maps.iter().any(|n| n.name == o.name))
            .map(|o| o.name.clone())
            .collect(),
    };
    // A program array holds one build's programs, which use that build's
    // maps: while maps change, the old program must keep calling its own.
    if plan.migrates() {
        for ((_, a), n) in plan.actions.iter_mut().zip(&new.maps) {
            if n.map_type == kind::PROG_ARRAY && *a == Action::Reuse {
                *a = Action::Fresh;
            }
        }
    }
    Ok(plan)
}

/// What to do with the new build's `n`, not pinned: made from another
/// pinned map when a converter says so (that map at its version, of the
/// same kind), else created empty.
fn derived(n: &MapLayout, pinned: &BTreeMap<&str, &MapLayout>, converters: &[Converter]) -> Action {
    converters
        .iter()
        .filter(|c| c.map == n.name && c.to == n.version)
        .find_map(|c| {
            let src = pinned.get(c.source?)?;
            (src.version == c.from && same_shape(src.map_type, n.map_type)).then_some(
                Action::Derive {
                    from: c.source?,
                    convert: c.convert,
                },
            )
        })
        .unwrap_or(Action::Create)
}

/// What to do with one pinned map `o` for the new build's `n`.
fn one(
    o: &MapLayout,
    n: &MapLayout,
    build: &str,
    converters: &[Converter],
) -> Result<Action, LayoutError> {
    let entry_same = o.map_type == n.map_type
        && o.key_size == n.key_size
        && o.value_size == n.value_size
        && o.version == n.version;
    // (A map whose layout version changes is a new map filled by its
    // converter: its capacity is this build's reading of the setting.)
    if o.max_entries != n.max_entries
        && o.version == n.version
        && CONFIG_SIZED.contains(&n.name.as_str())
    {
        // Only peers' flows, sent again by every peer when it reconnects
        // (which a restart makes it do): a new map loses nothing for good.
        if n.name == names::PEER_FLOWS {
            return Ok(Action::Fresh);
        }
        return Err(LayoutError::Capacity {
            name: n.name.clone(),
            pinned: o.max_entries,
            wanted: n.max_entries,
        });
    }
    if entry_same && o.max_entries == n.max_entries {
        return Ok(Action::Reuse);
    }
    // Nothing in them outlives the program that uses them: the new build
    // fills its program array, and a ring buffer's records are transient.
    if matches!(n.map_type, kind::PROG_ARRAY | kind::RINGBUF) && o.map_type == n.map_type {
        return Ok(Action::Fresh);
    }
    if entry_same {
        // A build-sized map of another size: what both sizes hold.
        return Ok(Action::Convert(Convert::Identity));
    }
    let refuse = || LayoutError::NoConverter {
        name: n.name.clone(),
        old: describe(o),
        new: describe(n),
        build: build.to_string(),
    };
    if per_cpu(o.map_type) != per_cpu(n.map_type)
        || array_like(o.map_type) != array_like(n.map_type)
        || !same_shape(o.map_type, n.map_type)
    {
        return Err(refuse());
    }
    if o.version == n.version && o.key_size == n.key_size && o.value_size == n.value_size {
        // Only the kind differs within a shape (hash and LRU hash).
        return Ok(Action::Convert(Convert::Identity));
    }
    converters
        .iter()
        .find(|c| c.map == n.name && c.source.is_none() && c.from == o.version && c.to == n.version)
        .filter(|c| o.key_size == n.key_size || matches!(c.convert, Convert::Entry(_)))
        .map(|c| Action::Convert(c.convert))
        .ok_or_else(refuse)
}

/// The size of one CPU's value in a per-CPU map's buffer: the value size
/// rounded up to 8 bytes (how the kernel lays out per-CPU values).
pub fn per_cpu_stride(value_size: u32) -> usize {
    (value_size as usize).div_ceil(8) * 8
}

/// A per-CPU buffer of `ncpus` values of `old_size` bytes converted to
/// values of `new_size` bytes; `None` when the converter drops any CPU's
/// value.
pub fn convert_per_cpu(
    c: Convert,
    buf: &[u8],
    old_size: u32,
    new_size: u32,
    ncpus: usize,
) -> Option<Vec<u8>> {
    let (os, ns) = (per_cpu_stride(old_size), per_cpu_stride(new_size));
    let mut out = vec![0u8; ns * ncpus];
    for cpu in 0..ncpus {
        let old = buf.get(cpu * os..cpu * os + old_size as usize)?;
        let v = c.value(old, new_size as usize)?;
        out[cpu * ns..cpu * ns + new_size as usize].copy_from_slice(&v);
    }
    Some(out)
}

/// Adds to the counters `into` (native-endian u64 words) what the old
/// program counted between two reads of the same entry, `before` and
/// `after` (same size as each other, at most `into`'s: a grown value's
/// new words get nothing). Wrapping, as the counters do.
pub fn add_delta(into: &mut [u8], before: &[u8], after: &[u8]) {
    let words = before.len().min(after.len()).min(into.len()) / 8;
    for w in 0..words {
        let r = w * 8..w * 8 + 8;
        let word = |b: &[u8]| u64::from_ne_bytes(b[r.clone()].try_into().expect("8 bytes"));
        let sum = word(into).wrapping_add(word(after).wrapping_sub(word(before)));
        into[r.clone()].copy_from_slice(&sum.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, t: u32, k: u32, v: u32, max: u32, version: u32) -> MapLayout {
        MapLayout {
            name: name.into(),
            map_type: t,
            key_size: k,
            value_size: v,
            max_entries: max,
            version,
        }
    }

    fn layout(maps: Vec<MapLayout>) -> Layout {
        Layout {
            build: "b1".into(),
            maps,
        }
    }

    /// The upgrade from the commit before `REASONS` grew (16 reasons) to
    /// one with 18, three new maps and the program array.
    #[test]
    fn reasons_grown_new_maps_and_the_program_array() {
        let old = layout(vec![
            m("FLOWS", kind::LRU_HASH, 40, 8, 131072, 1),
            m("REASONS", kind::PERCPU_ARRAY, 4, 16, 16, 1),
            m("ICMP_PROGS", kind::PROG_ARRAY, 4, 4, 4, 1),
            m("OLD_ONLY", kind::ARRAY, 4, 8, 1, 1),
        ]);
        let new = layout(vec![
            m("FLOWS", kind::LRU_HASH, 40, 8, 131072, 1),
            m("REASONS", kind::PERCPU_ARRAY, 4, 16, 18, 1),
            m("ICMP_PROGS", kind::PROG_ARRAY, 4, 4, 4, 1),
            m("VIP_FILTER", kind::ARRAY, 4, 8, 1024, 1),
        ]);
        let p = plan(&old, &new, &[]).expect("plan");
        assert_eq!(
            p.actions,
            vec![
                ("FLOWS".to_string(), Action::Reuse),
                ("REASONS".into(), Action::Convert(Convert::Identity)),
                ("ICMP_PROGS".into(), Action::Fresh),
                ("VIP_FILTER".into(), Action::Create),
            ]
        );
        assert_eq!(p.removed, vec!["OLD_ONLY".to_string()]);
        assert!(p.migrates());

        // The same layout: every map reused, the program array too.
        let same = plan(&new, &new, &[]).expect("plan");
        assert!(same.actions[..3].iter().all(|(_, a)| *a == Action::Reuse));
        assert_eq!(same.action("VIP_FILTER"), Some(Action::Reuse));
        assert!(!same.migrates());
        assert!(same.removed.is_empty());

        // Only a new map: nothing staged, the program array kept.
        let fewer = layout(new.maps[..3].to_vec());
        let p = plan(&fewer, &new, &[]).expect("plan");
        assert!(!p.migrates());
        assert_eq!(p.action("ICMP_PROGS"), Some(Action::Reuse));
        assert_eq!(p.action("VIP_FILTER"), Some(Action::Create));
    }

    #[test]
    fn capacities_from_the_configuration_are_refused_but_peer_flows() {
        let old = layout(vec![m("FLOWS", kind::LRU_HASH, 40, 8, 131072, 1)]);
        let new = layout(vec![m("FLOWS", kind::LRU_HASH, 40, 8, 262144, 1)]);
        let e = plan(&old, &new, &[]).unwrap_err();
        assert_eq!(
            e,
            LayoutError::Capacity {
                name: "FLOWS".into(),
                pinned: 131072,
                wanted: 262144
            }
        );
        assert!(e.to_string().contains("hola down"), "{e}");
        let old = layout(vec![m("PEER_FLOWS", kind::LRU_HASH, 40, 16, 1, 1)]);
        let new = layout(vec![m("PEER_FLOWS", kind::LRU_HASH, 40, 16, 4000, 1)]);
        assert_eq!(
            plan(&old, &new, &[]).expect("plan").actions,
            vec![("PEER_FLOWS".to_string(), Action::Fresh)]
        );
    }

    /// The upgrade from a build with one flow table (`FLOWS` 1) to this
    /// one: `FLOWS` converted (its IPv6 entries kept, at its new capacity),
    /// `FLOWS4` made from it (its IPv4 entries, keys narrowed).
    #[test]
    fn one_flow_table_split_in_two() {
        let old = layout(vec![m("FLOWS", kind::LRU_HASH, 40, 8, 8192, 1)]);
        let new = layout(vec![
            m("FLOWS4", kind::LRU_HASH, 16, 8, 8192, 1),
            m("FLOWS", kind::LRU_HASH, 40, 8, 2048, 2),
        ]);
        let p = plan(&old, &new, CONVERTERS).expect("plan");
        assert_eq!(
            p.actions,
            vec![
                (
                    "FLOWS4".to_string(),
                    Action::Derive {
                        from: "FLOWS",
                        convert: Convert::Entry(flows::to_v4)
                    }
                ),
                (
                    "FLOWS".into(),
                    Action::Convert(Convert::Entry(flows::keep_v6))
                ),
            ]
        );
        assert!(p.migrates());
        assert!(p.removed.is_empty());
        // This build's own pins: both reused.
        let same = plan(&new, &new, CONVERTERS).expect("plan");
        assert!(same.actions.iter().all(|(_, a)| *a == Action::Reuse));
        // Without the converters the split is refused, not done halfway.
        assert!(matches!(
            plan(&old, &new, &[]),
            Err(LayoutError::NoConverter { .. })
        ));

        let key = |family: u8, src: [u8; 16]| lb_common::FlowKey {
            src,
            dst: lb_common::flow::v4_addr([198, 18, 1, 1]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: lb_common::PROTO_TCP,
            family,
            _pad: [0; 2],
        };
        let bytes = |k: &lb_common::FlowKey| -> Vec<u8> {
            // SAFETY: a FlowKey is 40 bytes of integers, no padding bytes.
            unsafe { std::mem::transmute::<lb_common::FlowKey, [u8; 40]>(*k) }.to_vec()
        };
        let value = [7u8, 0, 0, 0, 0xaa, 0xbb, 0xcc, 0xdd];
        let k4 = key(
            lb_common::FAMILY_V4,
            lb_common::flow::v4_addr([198, 18, 0, 1]),
        );
        let k6 = key(
            lb_common::FAMILY_V6,
            [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        );
        let to4 = Convert::Entry(flows::to_v4);
        let keep6 = Convert::Entry(flows::keep_v6);
        let mut narrowed = vec![198, 18, 0, 1, 198, 18, 1, 1];
        narrowed.extend(40000u16.to_be_bytes());
        narrowed.extend(80u16.to_be_bytes());
        narrowed.extend([lb_common::PROTO_TCP, 0, 0, 0]);
        assert_eq!(
            to4.entry(&bytes(&k4), &value, 16, 8),
            Some((narrowed, value.to_vec()))
        );
        assert_eq!(to4.entry(&bytes(&k6), &value, 16, 8), None);
        assert_eq!(keep6.entry(&bytes(&k4), &value, 40, 8), None);
        assert_eq!(
            keep6.entry(&bytes(&k6), &value, 40, 8),
            Some((bytes(&k6), value.to_vec()))
        );
        // A key of another size is no FlowKey: dropped, not misread.
        assert_eq!(to4.entry(&[0u8; 39], &value, 16, 8), None);
    }

    fn widen(v: &[u8]) -> Option<Vec<u8>> {
        // u32 → u64, little or big end alike for these tests' values.
        let x = u32::from_ne_bytes(v.try_into().ok()?);
        Some(u64::from(x).to_ne_bytes().to_vec())
    }

    #[test]
    fn a_changed_entry_needs_its_converter() {
        let old = layout(vec![m("NAT", kind::LRU_HASH, 40, 4, 100, 1)]);
        let new = layout(vec![m("NAT", kind::LRU_HASH, 40, 8, 100, 2)]);
        let e = plan(&old, &new, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pinned map NAT has layout version 1 (lru_hash, key 40 B, value 4 B, 100 entries) \
             (pinned by build b1) and this build's is version 2 (lru_hash, key 40 B, value 8 B, \
             100 entries); this build has no converter from one to the other: run the build \
             that pinned it, or `hola down` then `hola run` (this drops every flow, NAT \
             translation and counter)"
        );
        let table = [Converter {
            map: "NAT",
            source: None,
            from: 1,
            to: 2,
            convert: Convert::Value(widen),
        }];
        let p = plan(&old, &new, &table).expect("plan");
        assert_eq!(
            p.action("NAT"),
            Some(Action::Convert(Convert::Value(widen)))
        );
        // A converter from another version does not apply.
        let older = layout(vec![m("NAT", kind::LRU_HASH, 40, 4, 100, 0)]);
        assert!(plan(&older, &new, &table).is_err());
        // Same version, another size: a change made without a bump.
        let unbumped = layout(vec![m("NAT", kind::LRU_HASH, 40, 8, 100, 1)]);
        assert!(matches!(
            plan(&old, &unbumped, &table),
            Err(LayoutError::NoConverter { .. })
        ));
        // A per-CPU map never becomes a shared one by conversion.
        let shared = layout(vec![m("C", kind::ARRAY, 4, 8, 1, 1)]);
        let percpu = layout(vec![m("C", kind::PERCPU_ARRAY, 4, 8, 1, 1)]);
        assert!(plan(&shared, &percpu, &[]).is_err());
        // A hash that became an LRU hash keeps its entries.
        let hash = layout(vec![m("H", kind::HASH, 4, 8, 10, 1)]);
        let lru = layout(vec![m("H", kind::LRU_HASH, 4, 8, 10, 1)]);
        assert_eq!(
            plan(&hash, &lru, &[]).expect("plan").action("H"),
            Some(Action::Convert(Convert::Identity))
        );
    }

    #[test]
    fn converters_on_values() {
        assert_eq!(Convert::Identity.value(&[1, 2, 3], 3), Some(vec![1, 2, 3]));
        assert_eq!(Convert::Identity.value(&[1, 2, 3], 4), None);
        assert_eq!(
            Convert::ZeroExtend.value(&[1, 2, 3], 5),
            Some(vec![1, 2, 3, 0, 0])
        );
        assert_eq!(Convert::ZeroExtend.value(&[1, 2, 3], 2), None);
        let w = Convert::Value(widen).value(&7u32.to_ne_bytes(), 8);
        assert_eq!(w, Some(7u64.to_ne_bytes().to_vec()));
        assert_eq!(Convert::Value(widen).value(&7u32.to_ne_bytes(), 4), None);
    }

    #[test]
    fn per_cpu_values_are_converted_cpu_by_cpu() {
        assert_eq!(per_cpu_stride(4), 8);
        assert_eq!(per_cpu_stride(16), 16);
        assert_eq!(per_cpu_stride(44), 48);
        // Two CPUs of a 4-byte value (stride 8) → 6-byte values (stride 8).
        let buf = [1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8, 0, 0, 0, 0];
        assert_eq!(
            convert_per_cpu(Convert::ZeroExtend, &buf, 4, 6, 2),
            Some(vec![1, 2, 3, 4, 0, 0, 0, 0, 5, 6, 7, 8, 0, 0, 0, 0])
        );
        // → 12-byte values (stride 16).
        let out = convert_per_cpu(Convert::ZeroExtend, &buf, 4, 12, 2).expect("converted");
        assert_eq!(out.len(), 32);
        assert_eq!(&out[..4], &[1, 2, 3, 4]);
        assert_eq!(&out[16..20], &[5, 6, 7, 8]);
        assert!(out[4..16].iter().chain(&out[20..]).all(|b| *b == 0));
        // A buffer short of a CPU's value: not converted.
        assert_eq!(convert_per_cpu(Convert::Identity, &buf[..8], 4, 4, 2), None);
    }

    #[test]
    fn counters_continue_with_what_was_counted_after_the_copy() {
        let words = |w: &[u64]| w.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>();
        // Copied at (10, 100); the old program counted on to (13, 150)
        // before the swap; the new one has counted (2, 20) since.
        let mut into = words(&[12, 120, 0]);
        add_delta(&mut into, &words(&[10, 100]), &words(&[13, 150]));
        assert_eq!(into, words(&[15, 170, 0]));
        // Wrapping counters.
        let mut into = words(&[5]);
        add_delta(&mut into, &words(&[u64::MAX]), &words(&[1]));
        assert_eq!(into, words(&[7]));
    }

    #[test]
    fn describe_names_kind_sizes_and_version() {
        assert_eq!(
            describe(&m("REASONS", kind::PERCPU_ARRAY, 4, 16, 18, 1)),
            "version 1 (percpu_array, key 4 B, value 16 B, 18 entries)"
        );
        assert_eq!(version_of(names::FLOWS), 2);
        assert_eq!(version_of(names::FLOWS4), 1);
    }
}
