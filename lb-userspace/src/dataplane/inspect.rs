//! What `hola doctor` asks of the data plane without changing it: the maps
//! `hola run` pins and what bpffs holds of them, and the tag of this
//! build's balancer program (to tell whether the attached one is it).

use std::path::Path;

use aya::{EbpfLoader, maps::MapInfo};
use lb_common::maps as names;

use super::{
    DataplaneConfig, DataplaneError,
    load::{map_sizes, program, settings},
    possible_cpus,
};
use crate::programs;

/// A map `hola run` pins: the capacity the configuration gives it, and the
/// pin's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedMap {
    pub name: &'static str,
    pub wanted: u32,
    /// `None`: no pin; `Some(Err)`: a pin that cannot be read (the error).
    pub pinned: Option<Result<u32, String>>,
}

/// Every map `hola run` would pin under `pin_dir/maps` with `cfg`, and the
/// capacity of the pin there now.
pub fn pinned_maps(
    cfg: &DataplaneConfig,
    pin_dir: &Path,
) -> Result<Vec<PinnedMap>, DataplaneError> {
    let ncpus = possible_cpus()?;
    Ok(map_sizes(cfg, ncpus)
        .into_iter()
        .map(|(name, wanted)| {
            let path = pin_dir.join("maps").join(name);
            let pinned = path.exists().then(|| {
                MapInfo::from_pin(&path)
                    .map(|i| i.max_entries())
                    .map_err(|e| e.to_string())
            });
            PinnedMap {
                name,
                wanted,
                pinned,
            }
        })
        .collect())
}

/// What the next `hola run` of this build would do to the maps pinned
/// under `pin_dir` with `cfg` (for `hola doctor`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinsPreview {
    /// Nothing pinned, or pins of this build's layout: used as they are.
    Current,
    /// Pins of another build's layout (`build`) that `hola run` upgrades
    /// in place: the maps it creates empty, and those it fills from the
    /// pinned ones (converted, or derived from a map that split).
    Upgrade {
        build: String,
        created: Vec<String>,
        converted: Vec<String>,
    },
    /// Pins `hola run` refuses to start on, and why.
    Refused(String),
}

/// [`PinsPreview`] of the maps pinned under `pin_dir`.
pub fn pins_preview(cfg: &DataplaneConfig, pin_dir: &Path) -> PinsPreview {
    use super::layout::{self, Action};
    let ncpus = match possible_cpus() {
        Ok(n) => n,
        Err(e) => return PinsPreview::Refused(e.to_string()),
    };
    let old = match super::upgrade::pinned_layout(pin_dir) {
        Ok(Some(old)) => old,
        Ok(None) => return PinsPreview::Current,
        Err(e) => return PinsPreview::Refused(e.to_string()),
    };
    let current = match super::upgrade::current_layout(cfg, ncpus) {
        Ok(c) => c,
        Err(e) => return PinsPreview::Refused(e.to_string()),
    };
    let plan = match layout::plan(&old, &current, layout::CONVERTERS) {
        Ok(p) => p,
        Err(e) => return PinsPreview::Refused(e.to_string()),
    };
    let named = |f: fn(&Action) -> bool| -> Vec<String> {
        plan.actions
            .iter()
            .filter(|(_, a)| f(a))
            .map(|(n, _)| n.clone())
            .collect()
    };
    let created = named(|a| *a == Action::Create);
    let converted = named(|a| matches!(a, Action::Convert(_) | Action::Derive { .. }));
    // (Another build of the same layout: its maps are used as they are.)
    if created.is_empty() && converted.is_empty() {
        return PinsPreview::Current;
    }
    PinsPreview::Upgrade {
        build: old.build,
        created,
        converted,
    }
}

/// The capacity [`build_tag`] gives the maps: a program's instructions,
/// which its tag hashes, do not depend on its maps' sizes.
const SMALL: u32 = 64;

/// The kernel's tag (a hash of the instructions) of this build's
/// `hola_lb`, loaded with `cfg`'s settings and small maps, attached
/// nowhere, unloaded on return.
pub fn build_tag(cfg: &DataplaneConfig) -> Result<u64, DataplaneError> {
    let ncpus = possible_cpus()?;
    let mut loader = EbpfLoader::new();
    for (name, size) in map_sizes(cfg, ncpus) {
        // A ring buffer's size must be a multiple of the page size: kept.
        if name != names::FLOW_EVENTS {
            loader.map_max_entries(name, size.min(SMALL));
        }
    }
    let mut ebpf = loader
        .override_global(names::SETTINGS, &settings(cfg, ncpus), true)
        .load(programs::HOLA)?;
    let prog = program(&mut ebpf, names::PROG_LB)?;
    let err = |source| DataplaneError::Program {
        name: names::PROG_LB,
        source,
    };
    prog.load().map_err(err)?;
    Ok(prog.info().map_err(err)?.tag())
}
