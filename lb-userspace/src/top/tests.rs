use ratatui::{Terminal, backend::TestBackend};

use super::*;
use crate::stats::{BackendReport, Rates, VipReport};

fn rates(pps: f64, bps: f64, nfps: f64) -> Rates {
    Rates {
        packets_per_second: pps,
        bytes_per_second: bps,
        new_flows_per_second: nfps,
    }
}

fn backend(address: &str, weight: u32, nfps: f64, health: &str) -> BackendReport {
    BackendReport {
        address: address.into(),
        weight,
        effective_weight: weight,
        state: "active".into(),
        health: health.into(),
        rates: rates(nfps * 10.0, nfps * 1000.0, nfps),
        ..BackendReport::default()
    }
}

fn report() -> StatsReport {
    StatsReport {
        timestamp_ms: 100_000,
        interval_seconds: 1.0,
        vips: vec![
            VipReport {
                vip: "198.18.1.2:80/tcp".into(),
                mode: "tunnel".into(),
                rates: rates(5.0, 500.0, 0.0),
                backends: vec![backend("198.18.0.13", 0, 0.0, "unchecked")],
                ..VipReport::default()
            },
            VipReport {
                vip: "198.18.1.1:80/tcp".into(),
                mode: "dsr".into(),
                rates: rates(400.0, 40_000.0, 40.0),
                backends: vec![
                    backend("198.18.0.11", 1, 10.0, "up"),
                    backend("198.18.0.12", 3, 30.0, "down"),
                ],
                ..VipReport::default()
            },
        ],
        ..StatsReport::default()
    }
}

fn names(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|r| r.backend.clone().unwrap_or_else(|| r.vip.clone()))
        .collect()
}

#[test]
fn backends_show_their_share_against_their_weights() {
    let events = vec![Event {
        timestamp_ms: 88_000,
        vip: "198.18.1.1:80/tcp".into(),
        backend: "198.18.0.12".into(),
        state: "down".into(),
        detail: "connection refused".into(),
    }];
    let r = rows(&report(), &events, &Keys::default());
    assert_eq!(
        names(&r),
        [
            "198.18.1.1:80/tcp",
            "198.18.0.11",
            "198.18.0.12",
            "198.18.1.2:80/tcp",
            "198.18.0.13"
        ]
    );
    assert_eq!(r[0].health, "1/2 up");
    assert_eq!(r[1].share, Some(0.25));
    assert_eq!(r[1].intended, Some(0.25));
    assert_eq!(r[2].share, Some(0.75));
    assert_eq!(r[2].last_event, "down 12s ago: connection refused");
    assert_eq!(r[1].last_event, "-");
    // No new flows, no weight: no shares.
    assert_eq!((r[4].share, r[4].intended), (None, None));
}

#[test]
fn sorting_and_filtering() {
    let keys = Keys {
        sort: SortKey::NewFlows,
        descending: true,
        ..Keys::default()
    };
    let r = rows(&report(), &[], &keys);
    assert_eq!(
        names(&r),
        [
            "198.18.1.1:80/tcp",
            "198.18.0.12",
            "198.18.0.11",
            "198.18.1.2:80/tcp",
            "198.18.0.13"
        ]
    );
    let keys = Keys {
        filter: "0.13".into(),
        ..Keys::default()
    };
    assert_eq!(
        names(&rows(&report(), &[], &keys)),
        ["198.18.1.2:80/tcp", "198.18.0.13"]
    );
}

#[test]
fn keys_edit_the_view() {
    use ratatui::crossterm::event::KeyCode;
    let mut k = Keys::default();
    assert!(term::on_key(&mut k, KeyCode::Char('s')));
    assert_eq!(k.sort, SortKey::Packets);
    term::on_key(&mut k, KeyCode::Char('r'));
    assert!(k.descending);
    term::on_key(&mut k, KeyCode::Char('/'));
    for c in "1.2q".chars() {
        term::on_key(&mut k, KeyCode::Char(c));
    }
    term::on_key(&mut k, KeyCode::Backspace);
    term::on_key(&mut k, KeyCode::Enter);
    assert_eq!((k.filter.as_str(), k.editing), ("1.2", false));
    assert!(!term::on_key(&mut k, KeyCode::Char('q')));
}

#[test]
fn figures_are_formatted_for_the_table() {
    assert_eq!(rate(0.0), "0");
    assert_eq!(rate(950.4), "950");
    assert_eq!(rate(12_345.0), "12.3k");
    assert_eq!(rate(4_560_000.0), "4.56M");
    assert_eq!(rate(123_000_000.0), "123M");
    assert_eq!(percent(Some(1.0 / 3.0)), "33.3%");
    assert_eq!(percent(None), "-");
    assert_eq!(age(61_000), "1m ago");
}

#[test]
fn the_table_draws_every_row() {
    let mut t = Terminal::new(TestBackend::new(120, 10)).unwrap();
    let s = term::screen(&report(), &[], &Keys::default());
    t.draw(|f| view::draw(f, &s)).unwrap();
    let buf = t.backend().buffer().clone();
    let lines: Vec<String> = (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect();
    assert!(
        lines[0].starts_with("hola top  rates over 1.0s  sort: name asc"),
        "{lines:#?}"
    );
    assert!(lines[2].starts_with("VIP / BACKEND"), "{lines:#?}");
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        words(&lines[4]),
        [
            "198.18.0.11",
            "active",
            "100",
            "10.0k",
            "10",
            "25.0%",
            "25.0%",
            "up",
            "-"
        ]
    );
    assert_eq!(
        words(&lines[3]),
        [
            "198.18.1.1:80/tcp",
            "dsr",
            "400",
            "40.0k",
            "40",
            "-",
            "-",
            "1/2",
            "up"
        ]
    );
}
