//! What a new set of VIPs changes against the current one, field by field:
//! the VIPs and backends added and removed, and of those in both, each
//! setting that differs (a check's keys as `health.interval`). Pure: the
//! preview of `hola apply` and the start's state-file notice use it.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{BackendConfig, VipConfig};

/// One setting that differs; `None`: not set on that side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// A backend in both, with what differs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendChange {
    pub address: IpAddr,
    pub fields: Vec<FieldChange>,
}

/// A VIP in both, with what differs in it and in its backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipChange {
    pub vip: String,
    pub fields: Vec<FieldChange>,
    pub backends_added: Vec<IpAddr>,
    pub backends_removed: Vec<IpAddr>,
    pub backends_changed: Vec<BackendChange>,
}

/// Everything a change of VIPs does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDiff {
    /// VIPs added, with their backends.
    pub vips_added: Vec<(String, Vec<IpAddr>)>,
    /// VIPs removed, with their backends.
    pub vips_removed: Vec<(String, Vec<IpAddr>)>,
    /// VIPs in both that differ.
    pub vips_changed: Vec<VipChange>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.vips_added.is_empty() && self.vips_removed.is_empty() && self.vips_changed.is_empty()
    }

    /// One line: "1 VIP added, 1 removed, 2 changed (1 backend added, ...)".
    pub fn summary(&self) -> String {
        if self.is_empty() {
            return "no difference".into();
        }
        let count = |f: fn(&VipChange) -> usize| self.vips_changed.iter().map(f).sum::<usize>();
        format!(
            "VIPs: {} added, {} removed, {} changed; backends of VIPs in both: {} added, {} \
             removed, {} changed",
            self.vips_added.len(),
            self.vips_removed.len(),
            self.vips_changed.len(),
            count(|v| v.backends_added.len()),
            count(|v| v.backends_removed.len()),
            count(|v| v.backends_changed.len()),
        )
    }
}

/// What going from `old` to `new` changes.
pub fn diff(old: &[VipConfig], new: &[VipConfig]) -> ConfigDiff {
    let by_key = |vips: &[VipConfig]| -> BTreeMap<String, VipConfig> {
        vips.iter()
            .map(|v| (v.key().to_string(), v.clone()))
            .collect()
    };
    let (o, n) = (by_key(old), by_key(new));
    let addrs = |v: &VipConfig| v.backends.iter().map(|b| b.address).collect::<Vec<_>>();
    let mut d = ConfigDiff::default();
    for (k, v) in &n {
        match o.get(k) {
            None => d.vips_added.push((k.clone(), addrs(v))),
            Some(ov) => {
                let c = vip_change(k, ov, v);
                if !(c.fields.is_empty()
                    && c.backends_added.is_empty()
                    && c.backends_removed.is_empty()
                    && c.backends_changed.is_empty())
                {
                    d.vips_changed.push(c);
                }
            }
        }
    }
    for (k, v) in &o {
        if !n.contains_key(k) {
            d.vips_removed.push((k.clone(), addrs(v)));
        }
    }
    d
}

fn vip_change(key: &str, old: &VipConfig, new: &VipConfig) -> VipChange {
    let settings = |v: &VipConfig| {
        let mut v = v.clone();
        v.backends.clear();
        flat(&v)
    };
    let by_addr = |v: &VipConfig| -> BTreeMap<IpAddr, BackendConfig> {
        v.backends.iter().map(|b| (b.address, b.clone())).collect()
    };
    let (ob, nb) = (by_addr(old), by_addr(new));
    VipChange {
        vip: key.to_string(),
        fields: fields(&settings(old), &settings(new)),
        backends_added: nb.keys().filter(|a| !ob.contains_key(a)).copied().collect(),
        backends_removed: ob.keys().filter(|a| !nb.contains_key(a)).copied().collect(),
        backends_changed: nb
            .iter()
            .filter_map(|(a, b)| {
                let f = fields(&flat(ob.get(a)?), &flat(b));
                (!f.is_empty()).then_some(BackendChange {
                    address: *a,
                    fields: f,
                })
            })
            .collect(),
    }
}

/// The settings of a table as `key.sub = value` pairs, as its JSON has
/// them (defaults included, so that a default written out is no change).
fn flat<T: Serialize>(t: &T) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Null => {}
            Value::String(s) => {
                out.insert(prefix.to_string(), s.clone());
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(t) {
        walk("", &v, &mut out);
    }
    out
}

fn fields(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<FieldChange> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| FieldChange {
            field: k.clone(),
            old: old.get(k).cloned(),
            new: new.get(k).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::vip;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn vips_and_backends_added_removed_and_changed_field_by_field() {
        let old = vec![vip(&[
            ("198.18.0.11", 1, false),
            ("198.18.0.12", 1, false),
            ("198.18.0.13", 1, false),
        ])];
        let mut new = old.clone();
        new[0].backends.remove(2);
        new[0].backends[0].weight = 3;
        new[0].backends[1].drain = true;
        new[0]
            .backends
            .push(vip(&[("198.18.0.14", 2, false)]).backends[0].clone());
        new[0].health.as_mut().expect("check").rise = 5;
        new[0].table_size = Some(251);
        let mut added = vip(&[("198.18.0.21", 1, false)]);
        added.port = 443;
        new.push(added);
        let d = diff(&old, &new);
        let change = |field: &str, old: Option<&str>, new: Option<&str>| FieldChange {
            field: field.into(),
            old: old.map(Into::into),
            new: new.map(Into::into),
        };
        assert_eq!(
            d,
            ConfigDiff {
                vips_added: vec![("198.18.1.1:443/tcp".into(), vec![ip("198.18.0.21")])],
                vips_removed: vec![],
                vips_changed: vec![VipChange {
                    vip: "198.18.1.1:80/tcp".into(),
                    fields: vec![
                        change("health.rise", Some("2"), Some("5")),
                        change("table_size", None, Some("251")),
                    ],
                    backends_added: vec![ip("198.18.0.14")],
                    backends_removed: vec![ip("198.18.0.13")],
                    backends_changed: vec![
                        BackendChange {
                            address: ip("198.18.0.11"),
                            fields: vec![change("weight", Some("1"), Some("3"))],
                        },
                        BackendChange {
                            address: ip("198.18.0.12"),
                            fields: vec![change("drain", None, Some("true"))],
                        },
                    ],
                }],
            }
        );
        assert_eq!(
            d.summary(),
            "VIPs: 1 added, 0 removed, 1 changed; backends of VIPs in both: 1 added, 1 \
             removed, 2 changed"
        );
        let back = diff(&new, &old);
        assert_eq!(back.vips_removed, d.vips_added);
        assert!(diff(&old, &old).is_empty());
        assert_eq!(diff(&old, &old).summary(), "no difference");
    }
}
