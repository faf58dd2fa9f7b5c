//! The TOML front end's first half: the text read into the lenient model
//! ([`RawConfig`], in `raw`), with every field's line. A syntax error, an
//! unknown key or a wrong TOML type stops here, at the first (serde does);
//! everything else is reported while `raw` turns the model into a
//! [`Config`](super::Config).

use std::collections::HashMap;
use std::ops::Range;

use ::toml::de::{DeTable, DeValue};
use serde::Deserialize;

use super::error::{ConfigError, ConfigErrors, Lines};
use super::raw::RawConfig;

/// The lenient model of `text`, and where each of its fields is written.
/// A syntax error, an unknown key or a wrong TOML type stops here.
pub(super) fn read(text: &str, origin: &str) -> Result<(RawConfig, Locator), ConfigErrors> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let mut errors: Vec<ConfigError> = syntax
            .iter()
            .map(|e| {
                ConfigError::new(
                    origin,
                    e.span().map(|s| line_at(text, s.start)),
                    None,
                    format!("syntax error: {}", e.message().trim_end()),
                )
            })
            .collect();
        // The parser recovers line by line; after the first error on a line
        // the others are mostly its echo.
        errors.sort_by_key(|e| e.line());
        errors.dedup_by_key(|e| e.line());
        return Err(ConfigErrors(errors));
    }
    let locator = Locator::new(text, &root);
    match RawConfig::deserialize(::toml::de::Deserializer::from(root)) {
        Ok(raw) => Ok((raw, locator)),
        Err(e) => {
            let (line, path) = match e.span() {
                Some(span) => (Some(line_at(text, span.start)), locator.path_at(&span)),
                None => (None, None),
            };
            let message = e.message().trim_end();
            let path = path.filter(|p| !p.is_empty());
            let message = match &path {
                Some(p) => format!("{p}: {message}"),
                None => message.to_string(),
            };
            Err(ConfigErrors(vec![ConfigError::new(
                origin, line, path, message,
            )]))
        }
    }
}

// ---------------------------------------------------------------------------
// Locating fields in the text

/// The 1-based line of byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Field path (`vip[1].backend[0].weight`) to where it is written.
#[derive(Default)]
pub(super) struct Locator {
    /// Line of each path's key (or of the table, for array elements).
    lines: HashMap<String, usize>,
    /// Every key and value span with its path, to name the field of a serde error.
    spans: Vec<(Range<usize>, String)>,
}

impl Locator {
    fn new(text: &str, root: &::toml::Spanned<DeTable<'_>>) -> Self {
        let mut me = Self::default();
        me.walk_table(text, root.get_ref(), "");
        me
    }

    fn walk_table(&mut self, text: &str, table: &DeTable<'_>, prefix: &str) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.lines
                .entry(path.clone())
                .or_insert_with(|| line_at(text, key.span().start));
            self.spans.push((key.span(), path.clone()));
            self.walk_value(text, value, &path);
        }
    }

    fn walk_value(&mut self, text: &str, value: &::toml::Spanned<DeValue<'_>>, path: &str) {
        self.spans.push((value.span(), path.to_string()));
        match value.get_ref() {
            DeValue::Table(t) => self.walk_table(text, t, path),
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.lines
                        .insert(p.clone(), line_at(text, item.span().start));
                    self.walk_value(text, item, &p);
                }
            }
            _ => {}
        }
    }

    /// The innermost field whose key or value covers `span`.
    fn path_at(&self, span: &Range<usize>) -> Option<String> {
        self.spans
            .iter()
            .filter(|(s, _)| s.start <= span.start && span.end <= s.end.max(s.start + 1))
            .min_by_key(|(s, _)| s.len())
            .map(|(_, p)| p.clone())
    }
}

impl Lines for Locator {
    /// The line of `path`, or of the nearest enclosing field that is written
    /// (a defaulted `vip[1].table_size` points at `vip[1]`).
    fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(&l) = self.lines.get(p) {
                return Some(l);
            }
            p = &p[..p.rfind(['.', '['])?];
        }
    }
}
