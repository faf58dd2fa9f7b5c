//! Running `hola top` on the terminal: read the stats and events every
//! second, draw, and act on keys in between.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind};

use super::{
    Keys, rows,
    view::{self, Screen},
};
use crate::{
    api::paths,
    client,
    stats::{Event, StatsReport},
};

/// How often the view reads the daemon's stats.
pub const REFRESH: Duration = Duration::from_secs(1);

/// One reading of what `hola top` shows: the stats and the recent events,
/// through the same client calls `hola stats` and `hola events` make.
pub async fn fetch(socket: &Path) -> anyhow::Result<(StatsReport, Vec<Event>)> {
    let stats = client::get_json(socket, paths::STATS).await?;
    let events = client::get_json(socket, paths::EVENTS).await?;
    Ok((stats, events))
}

/// The screen for one reading and the keys.
pub fn screen(stats: &StatsReport, events: &[Event], keys: &Keys) -> Screen {
    Screen {
        rows: rows(stats, events, keys),
        keys: keys.clone(),
        timestamp_ms: stats.timestamp_ms,
        interval_seconds: stats.interval_seconds,
        error: None,
    }
}

/// What a key press does to the keys; `false` when it quits.
pub fn on_key(keys: &mut Keys, code: KeyCode) -> bool {
    if keys.editing {
        match code {
            KeyCode::Enter | KeyCode::Esc => keys.editing = false,
            KeyCode::Backspace => {
                keys.filter.pop();
            }
            KeyCode::Char(c) => keys.filter.push(c),
            _ => {}
        }
        return true;
    }
    match code {
        KeyCode::Char('q') | KeyCode::Esc => return false,
        KeyCode::Char('s') => keys.sort = keys.sort.next(),
        KeyCode::Char('r') => keys.descending = !keys.descending,
        KeyCode::Char('/') => {
            keys.editing = true;
            keys.filter.clear();
        }
        _ => {}
    }
    true
}

/// Runs the view until `q`: the first reading must succeed (so a wrong
/// socket is an error, not an empty screen); later failures are shown.
pub fn run(socket: &Path, filter: Option<String>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut stats, mut events) = rt.block_on(fetch(socket))?;
    let mut keys = Keys {
        filter: filter.unwrap_or_default(),
        ..Keys::default()
    };
    let mut error = None;
    let mut terminal = ratatui::try_init()?;
    let result = (|| -> anyhow::Result<()> {
        let mut next = Instant::now() + REFRESH;
        loop {
            let mut s = screen(&stats, &events, &keys);
            s.error.clone_from(&error);
            terminal.draw(|f| view::draw(f, &s))?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let TermEvent::Key(k) = event::read()?
                    && k.kind == KeyEventKind::Press
                    && !on_key(&mut keys, k.code)
                {
                    return Ok(());
                }
                continue;
            }
            next = Instant::now() + REFRESH;
            match rt.block_on(fetch(socket)) {
                Ok((s, e)) => {
                    (stats, events) = (s, e);
                    error = None;
                }
                Err(e) => error = Some(format!("{e:#}")),
            }
        }
    })();
    ratatui::restore();
    result
}
