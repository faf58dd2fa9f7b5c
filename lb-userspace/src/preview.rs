//! What `hola apply` did or would do, as the owner answers it and as it is
//! shown: by `hola apply [--dry-run]`, `hola config diff` and the log of a
//! SIGHUP reload (the same text everywhere).

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    config::diff::{ConfigDiff, FieldChange},
    reconcile::moves::VipMoves,
};

/// Flow-table entries a preview reads at most: beyond, the figures are a
/// sample. The walk costs two syscalls an entry on the owner's thread
/// (about a tenth of a second for this many), and the hash order of the
/// walk makes the first entries a sample unrelated to the flows' backends.
pub const MAX_FLOWS_READ: usize = 100_000;

/// What `hola apply` does or would do: the VIPs and backends added,
/// removed and changed, and per VIP the Maglev slots and flows that move.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The file the VIPs come from, as the caller named it.
    pub file: String,
    /// Made (`hola apply`), or only previewed (`--dry-run`, `config diff`).
    pub applied: bool,
    pub diff: ConfigDiff,
    /// VIPs in both the current and the new state.
    pub moves: Vec<VipMoves>,
    /// Flow-table entries read (of every VIP), and whether the table had
    /// more (then the flow figures are from a sample of this size).
    pub flows_read: u64,
    pub flows_sampled: bool,
}

fn value(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(unset)")
}

fn fields(f: &[FieldChange]) -> String {
    let parts: Vec<String> = f
        .iter()
        .map(|c| format!("{} {} → {}", c.field, value(&c.old), value(&c.new)))
        .collect();
    parts.join(", ")
}

fn list(a: &[IpAddr]) -> String {
    let parts: Vec<String> = a.iter().map(ToString::to_string).collect();
    parts.join(", ")
}

fn per_backend<T: std::fmt::Display>(m: &BTreeMap<IpAddr, T>, signed: bool) -> String {
    let parts: Vec<String> = m
        .iter()
        .map(|(a, n)| {
            let n = n.to_string();
            if signed && !n.starts_with('-') {
                format!("{a} +{n}")
            } else {
                format!("{a} {n}")
            }
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

impl ApplyReport {
    /// The report as text, one item a line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verb = if self.applied {
            "applied"
        } else {
            "would apply (nothing changed)"
        };
        let _ = writeln!(out, "{}: {verb}: {}", self.file, self.diff.summary());
        for (vip, backends) in &self.diff.vips_added {
            let _ = writeln!(out, "+ VIP {vip} (backends: {})", list(backends));
        }
        for (vip, backends) in &self.diff.vips_removed {
            let _ = writeln!(out, "- VIP {vip} (backends: {})", list(backends));
        }
        for v in &self.diff.vips_changed {
            let _ = writeln!(out, "~ VIP {}", v.vip);
            if !v.fields.is_empty() {
                let _ = writeln!(out, "    {}", fields(&v.fields));
            }
            for a in &v.backends_added {
                let _ = writeln!(out, "    + backend {a}");
            }
            for a in &v.backends_removed {
                let _ = writeln!(out, "    - backend {a}");
            }
            for b in &v.backends_changed {
                let _ = writeln!(out, "    ~ backend {}: {}", b.address, fields(&b.fields));
            }
        }
        for m in self
            .moves
            .iter()
            .filter(|m| m.slots_moved > 0 || m.flows > 0)
        {
            let _ = writeln!(
                out,
                "VIP {}: {} of {} Maglev slots change owner ({:.1}%); {} of {} flows move ({:.1}%)",
                m.vip,
                m.slots_moved,
                m.slots,
                m.slot_percent(),
                m.flows_moved,
                m.flows,
                m.flow_percent()
            );
            if m.slots_moved > 0 {
                let _ = writeln!(out, "    slots: {}", per_backend(&m.slot_change, true));
            }
            if m.flows_moved > 0 {
                let _ = writeln!(
                    out,
                    "    flows lost: {}; gained: {}",
                    per_backend(&m.flows_lost, false),
                    per_backend(&m.flows_gained, false)
                );
            }
        }
        let read = if self.flows_sampled {
            format!(
                "{} flow-table entries read, a sample: the table holds more",
                self.flows_read
            )
        } else {
            format!("{} flow-table entries read (all)", self.flows_read)
        };
        let _ = writeln!(out, "{read}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::diff::{BackendChange, VipChange};

    #[test]
    fn the_report_names_each_change_and_each_share() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let r = ApplyReport {
            file: "hola.toml".into(),
            applied: false,
            diff: ConfigDiff {
                vips_added: vec![("198.18.1.1:443/tcp".into(), vec![ip("198.18.0.21")])],
                vips_removed: vec![],
                vips_changed: vec![VipChange {
                    vip: "198.18.1.1:80/tcp".into(),
                    fields: vec![],
                    backends_added: vec![],
                    backends_removed: vec![ip("198.18.0.13")],
                    backends_changed: vec![BackendChange {
                        address: ip("198.18.0.11"),
                        fields: vec![FieldChange {
                            field: "weight".into(),
                            old: Some("1".into()),
                            new: Some("3".into()),
                        }],
                    }],
                }],
            },
            moves: vec![VipMoves {
                vip: "198.18.1.1:80/tcp".into(),
                slots: 13,
                slots_moved: 5,
                flows: 40,
                flows_moved: 13,
                slot_change: BTreeMap::from([(ip("198.18.0.11"), 2), (ip("198.18.0.13"), -2)]),
                flows_lost: BTreeMap::from([(ip("198.18.0.13"), 13)]),
                flows_gained: BTreeMap::from([(ip("198.18.0.11"), 13)]),
            }],
            flows_read: 40,
            flows_sampled: false,
        };
        assert_eq!(
            r.render(),
            "hola.toml: would apply (nothing changed): VIPs: 1 added, 0 removed, 1 changed; \
             backends of VIPs in both: 0 added, 1 removed, 1 changed\n\
             + VIP 198.18.1.1:443/tcp (backends: 198.18.0.21)\n\
             ~ VIP 198.18.1.1:80/tcp\n    - backend 198.18.0.13\n    \
             ~ backend 198.18.0.11: weight 1 → 3\n\
             VIP 198.18.1.1:80/tcp: 5 of 13 Maglev slots change owner (38.5%); 13 of 40 flows \
             move (32.5%)\n    slots: 198.18.0.11 +2, 198.18.0.13 -2\n    \
             flows lost: 198.18.0.13 13; gained: 198.18.0.11 13\n\
             40 flow-table entries read (all)\n"
        );
    }
}
