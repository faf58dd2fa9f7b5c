//! Drawing `hola top`: a title line with the keys, the table of rows.

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Row as TableRow, Table},
};

use super::{Keys, Row, percent, rate};

/// What one frame shows.
#[derive(Clone, Debug, Default)]
pub struct Screen {
    pub rows: Vec<Row>,
    pub keys: Keys,
    /// When the stats were read (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The rates' interval in seconds (0 until the daemon has two samples).
    pub interval_seconds: f64,
    /// Why the last refresh failed, if it did (the rows are the last good).
    pub error: Option<String>,
}

/// The table's column titles.
pub const HEADER: [&str; 9] = [
    "VIP / BACKEND",
    "MODE/STATE",
    "PKT/S",
    "BYTES/S",
    "NEW/S",
    "SHARE",
    "WEIGHT",
    "HEALTH",
    "LAST EVENT",
];

/// The cells of one row, as the table shows them.
pub fn cells(r: &Row) -> [String; 9] {
    let name = match &r.backend {
        Some(b) => format!("  {b}"),
        None => r.vip.clone(),
    };
    [
        name,
        r.what.clone(),
        rate(r.packets_per_second),
        rate(r.bytes_per_second),
        rate(r.new_flows_per_second),
        percent(r.share),
        percent(r.intended),
        r.health.clone(),
        r.last_event.clone(),
    ]
}

fn title(s: &Screen) -> String {
    let dir = if s.keys.descending { "desc" } else { "asc" };
    let filter = if s.keys.editing {
        format!("/{}_", s.keys.filter)
    } else if s.keys.filter.is_empty() {
        "none".to_owned()
    } else {
        s.keys.filter.clone()
    };
    let rates = if s.interval_seconds > 0.0 {
        format!("rates over {:.1}s", s.interval_seconds)
    } else {
        "rates after the second sample".to_owned()
    };
    format!(
        "hola top  {rates}  sort: {} {dir}  filter: {filter}  [s]ort [r]everse [/]filter [q]uit",
        s.keys.sort.label()
    )
}

/// Draws `s` on the whole frame.
pub fn draw(f: &mut Frame<'_>, s: &Screen) {
    let [top, status, body] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(f.area());
    f.render_widget(Line::from(title(s)), top);
    let status_line = match &s.error {
        Some(e) => format!("refresh failed: {e}"),
        None => format!("{} rows", s.rows.len()),
    };
    f.render_widget(Line::from(status_line), status);
    let rows = s.rows.iter().map(|r| {
        let style = if r.backend.is_none() {
            Style::default().add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        TableRow::new(cells(r).map(Cell::from)).style(style)
    });
    let widths = [
        Constraint::Min(22),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(10),
        Constraint::Min(10),
    ];
    let table = Table::new(rows, widths)
        .header(TableRow::new(HEADER).style(Style::default().add_modifier(Modifier::REVERSED)));
    f.render_widget(table, body);
}
