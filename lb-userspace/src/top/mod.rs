//! `hola top`: a live view of VIPs and backends, refreshed every second
//! from the stats the daemon serves. The rows are a pure function of one
//! stats report, the recent events and the view's keys ([`rows`]); [`view`]
//! draws them with ratatui (so a test draws them to a `TestBackend`);
//! [`term`] runs the terminal.

pub mod term;
pub mod view;

use crate::stats::{Event, StatsReport};

/// What the rows are sorted by (`s` cycles through them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Packets,
    Bytes,
    NewFlows,
}

impl SortKey {
    pub fn next(self) -> Self {
        match self {
            SortKey::Name => SortKey::Packets,
            SortKey::Packets => SortKey::Bytes,
            SortKey::Bytes => SortKey::NewFlows,
            SortKey::NewFlows => SortKey::Name,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Packets => "pkt/s",
            SortKey::Bytes => "bytes/s",
            SortKey::NewFlows => "new/s",
        }
    }
}

/// The keys of the view: sort order and filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub sort: SortKey,
    /// Largest first (for names: Z to A).
    pub descending: bool,
    /// Only VIPs (with their backends) whose VIP or a backend's address
    /// contains this text; empty: all.
    pub filter: String,
    /// Whether typed characters go to the filter (after `/`).
    pub editing: bool,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            sort: SortKey::Name,
            descending: false,
            filter: String::new(),
            editing: false,
        }
    }
}

/// One line of the table: a VIP, or one of its backends under it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// `None` for a VIP's row; the backend's address for a backend's.
    pub backend: Option<String>,
    pub vip: String,
    /// The VIP's mode, or the backend's state (active, draining, backup).
    pub what: String,
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    pub new_flows_per_second: f64,
    /// A backend's part of its VIP's new flows per second (0..=1); `None`
    /// for a VIP, or when the VIP has no new flows.
    pub share: Option<f64>,
    /// The part its effective weight intends (effective weight over the
    /// VIP's sum); `None` for a VIP or when every weight is 0.
    pub intended: Option<f64>,
    /// A backend's health (up, down, unchecked); for a VIP, "N/M up".
    pub health: String,
    /// The backend's last event ("down 4s ago: ..."), or "-".
    pub last_event: String,
}

/// "12s ago", "3m ago", "2h ago".
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

fn last_event(events: &[Event], vip: &str, backend: &str, now_ms: u64) -> String {
    events
        .iter()
        .filter(|e| e.vip == vip && e.backend == backend)
        .max_by_key(|e| e.timestamp_ms)
        .map_or_else(
            || "-".to_owned(),
            |e| {
                format!(
                    "{} {}: {}",
                    e.state,
                    age(now_ms.saturating_sub(e.timestamp_ms)),
                    e.detail
                )
            },
        )
}

fn sort_by<T>(
    items: &mut [T],
    keys: &Keys,
    name: impl Fn(&T) -> String,
    value: impl Fn(&T) -> f64,
) {
    items.sort_by(|a, b| {
        let o = match keys.sort {
            SortKey::Name => name(a).cmp(&name(b)),
            _ => value(a)
                .total_cmp(&value(b))
                .then_with(|| name(a).cmp(&name(b))),
        };
        if keys.descending { o.reverse() } else { o }
    });
}

fn value(sort: SortKey, r: &crate::stats::Rates) -> f64 {
    match sort {
        SortKey::Name | SortKey::Packets => r.packets_per_second,
        SortKey::Bytes => r.bytes_per_second,
        SortKey::NewFlows => r.new_flows_per_second,
    }
}

/// The table's rows: each VIP kept by the filter, its backends under it,
/// VIPs and each VIP's backends sorted by the keys.
pub fn rows(stats: &StatsReport, events: &[Event], keys: &Keys) -> Vec<Row> {
    let mut vips: Vec<_> = stats
        .vips
        .iter()
        .filter(|v| {
            keys.filter.is_empty()
                || v.vip.contains(&keys.filter)
                || v.backends.iter().any(|b| b.address.contains(&keys.filter))
        })
        .collect();
    sort_by(
        &mut vips,
        keys,
        |v| v.vip.clone(),
        |v| value(keys.sort, &v.rates),
    );
    let mut out = Vec::new();
    for v in vips {
        let up = v.backends.iter().filter(|b| b.health != "down").count();
        out.push(Row {
            backend: None,
            vip: v.vip.clone(),
            what: v.mode.clone(),
            packets_per_second: v.rates.packets_per_second,
            bytes_per_second: v.rates.bytes_per_second,
            new_flows_per_second: v.rates.new_flows_per_second,
            share: None,
            intended: None,
            health: format!("{up}/{} up", v.backends.len()),
            last_event: String::new(),
        });
        let flows: f64 = v
            .backends
            .iter()
            .map(|b| b.rates.new_flows_per_second)
            .sum();
        let weights: u64 = v
            .backends
            .iter()
            .map(|b| u64::from(b.effective_weight))
            .sum();
        let mut backends: Vec<_> = v.backends.iter().collect();
        sort_by(
            &mut backends,
            keys,
            |b| b.address.clone(),
            |b| value(keys.sort, &b.rates),
        );
        for b in backends {
            out.push(Row {
                backend: Some(b.address.clone()),
                vip: v.vip.clone(),
                what: b.state.clone(),
                packets_per_second: b.rates.packets_per_second,
                bytes_per_second: b.rates.bytes_per_second,
                new_flows_per_second: b.rates.new_flows_per_second,
                share: (flows > 0.0).then(|| b.rates.new_flows_per_second / flows),
                intended: (weights > 0).then(|| b.effective_weight as f64 / weights as f64),
                health: b.health.clone(),
                last_event: last_event(events, &v.vip, &b.address, stats.timestamp_ms),
            });
        }
    }
    out
}

/// A rate for the table: "0", "950", "12.3k", "4.56M", "7.89G".
pub fn rate(v: f64) -> String {
    let (d, unit) = match v {
        v if v >= 1e9 => (1e9, "G"),
        v if v >= 1e6 => (1e6, "M"),
        v if v >= 1e3 => (1e3, "k"),
        _ => return format!("{v:.0}"),
    };
    let x = v / d;
    if x >= 100.0 {
        format!("{x:.0}{unit}")
    } else if x >= 10.0 {
        format!("{x:.1}{unit}")
    } else {
        format!("{x:.2}{unit}")
    }
}

/// A share: "33.3%", or "-" without one.
pub fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
