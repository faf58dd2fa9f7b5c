//! Configuration errors: each one located as precisely as known (file,
//! line, field path), all of one configuration together, and the [`Sink`]
//! that collects them while the configuration is read and checked.

use std::fmt;

/// One mistake in a configuration, located as precisely as known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", location(.file, .line))]
pub struct ConfigError {
    file: String,
    line: Option<usize>,
    /// The field the error is about (`vip[1].backend[0].weight`), when known.
    path: Option<String>,
    message: String,
}

/// `file:line`, or `file` when the line is unknown.
fn location(file: &str, line: &Option<usize>) -> String {
    match line {
        Some(l) => format!("{file}:{l}"),
        None => file.to_string(),
    }
}

impl ConfigError {
    pub(super) fn new(
        file: &str,
        line: Option<usize>,
        path: Option<String>,
        message: String,
    ) -> Self {
        Self {
            file: file.to_string(),
            line,
            path,
            message,
        }
    }

    /// The file name (the `origin` given to [`parse`](super::parse) or
    /// [`Config::validate`](super::Config::validate)).
    pub fn file(&self) -> &str {
        &self.file
    }
    /// 1-based line, when the error comes from a file.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
    /// The field path (`vip[1].backend[0].weight`), when the error is about one field.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
    /// What is wrong and how to fix it, starting with the field path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Every mistake found in one configuration, in file order where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The line a field path (`vip[1].backend[0].weight`) is written on.
pub(super) trait Lines {
    fn line(&self, path: &str) -> Option<usize>;
}

/// A configuration that did not come from a file.
pub(super) struct NoLines;

impl Lines for NoLines {
    fn line(&self, _: &str) -> Option<usize> {
        None
    }
}

/// Where errors go while reading and checking one configuration.
pub(super) struct Sink<'a> {
    origin: &'a str,
    lines: &'a dyn Lines,
    errors: Vec<ConfigError>,
    /// Fields holding a placeholder for a missing or unreadable value,
    /// already reported: further errors about them would only be noise.
    poisoned: Vec<String>,
}

impl<'a> Sink<'a> {
    pub(super) fn new(origin: &'a str, lines: &'a dyn Lines) -> Self {
        Self {
            origin,
            lines,
            errors: Vec::new(),
            poisoned: Vec::new(),
        }
    }

    /// Whether `path` or a field enclosing it holds a placeholder.
    pub(super) fn is_poisoned(&self, path: &str) -> bool {
        self.poisoned.iter().any(|p| {
            path.strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// Marks `path` as holding a placeholder (its error is reported).
    pub(super) fn poison(&mut self, path: &str) {
        self.poisoned.push(path.to_string());
    }

    /// Records `message` (which starts with `path`) at the line of `path`.
    pub(super) fn error(&mut self, path: &str, message: impl Into<String>) {
        if self.is_poisoned(path) {
            return;
        }
        self.errors.push(ConfigError::new(
            self.origin,
            self.lines.line(path),
            Some(path.to_string()),
            message.into(),
        ));
    }

    /// `value` when nothing was reported; else every error, in file order
    /// where lines are known.
    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        let mut errors = self.errors;
        errors.sort_by_key(|e| e.line().unwrap_or(usize::MAX));
        Err(ConfigErrors(errors))
    }
}
