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
    /// The VIP (and backend) the error is about, by position, when it is
    /// about one.
    subject: Option<Subject>,
    message: String,
}

/// Which VIP, and which of its backends, an error is about: positions in
/// `Config::vips` and in that VIP's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    pub vip: usize,
    pub backend: Option<usize>,
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
            subject: None,
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
    /// The VIP and backend the error is about, when it is about one.
    pub fn subject(&self) -> Option<Subject> {
        self.subject
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
    /// What the errors recorded now are about.
    subject: Option<Subject>,
}

impl<'a> Sink<'a> {
    pub(super) fn new(origin: &'a str, lines: &'a dyn Lines) -> Self {
        Self {
            origin,
            lines,
            errors: Vec::new(),
            poisoned: Vec::new(),
            subject: None,
        }
    }

    /// The errors recorded from now on are about `subject`.
    pub(super) fn about(&mut self, subject: Option<Subject>) {
        self.subject = subject;
    }

    /// The errors recorded from now on are about backend `j` of the
    /// current VIP (`None`: the VIP itself).
    pub(super) fn about_backend(&mut self, j: Option<usize>) {
        if let Some(s) = &mut self.subject {
            s.backend = j;
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
        let mut e = ConfigError::new(
            self.origin,
            self.lines.line(path),
            Some(path.to_string()),
            message.into(),
        );
        e.subject = self.subject;
        self.errors.push(e);
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
