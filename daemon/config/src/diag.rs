//! Diagnostics: one finding about a configuration file, with its place and a rendered snippet.
//!
//! Rendering is hand-written and mimics rustc:
//!
//! ```text
//! error: address fd01::1 is outside global.subnet fd00::/16
//!   --> mesh.yml:7:14
//!    |
//!  7 |     address: fd01::1
//!    |              ^^^^^^^
//! ```

use std::fmt;

use serde::Serialize;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The configuration is rejected.
    Error,
    /// The configuration is accepted, but something looks wrong or unsafe.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding about a configuration file, pointing at the offending place.
///
/// `line` and `column` are 1-based; both are 0 when the place is unknown (then `snippet` is
/// `None`). `column` counts characters, not bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Whether the finding rejects the configuration.
    pub severity: Severity,
    /// What is wrong, in one sentence without a trailing period.
    pub message: String,
    /// Dotted path of the offending key or value, such as `nodes.foo.backends.b1.peer`;
    /// empty for the whole document.
    pub path: String,
    /// File name as given to the loader.
    pub file: String,
    /// 1-based line, or 0 when unknown.
    pub line: u32,
    /// 1-based column in characters, or 0 when unknown.
    pub column: u32,
    /// Number of characters to underline, at least 1 when the place is known.
    pub len: u32,
    /// The source line that holds the place, without its line break.
    pub snippet: Option<String>,
    /// An optional hint on how to fix it ("did you mean ...").
    pub help: Option<String>,
}

impl Diagnostic {
    /// Builds an error with no place; [`Diagnostic::at`] adds one.
    pub fn error(message: impl Into<String>) -> Self {
        Self::new(Severity::Error, message)
    }

    /// Builds a warning with no place; [`Diagnostic::at`] adds one.
    pub fn warning(message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, message)
    }

    fn new(severity: Severity, message: impl Into<String>) -> Self {
        Self {
            severity,
            message: message.into(),
            path: String::new(),
            file: String::new(),
            line: 0,
            column: 0,
            len: 0,
            snippet: None,
            help: None,
        }
    }

    /// Returns the diagnostic placed at `line:column` (1-based) of `source`, underlining `len`
    /// characters (clipped to the end of the line).
    pub fn at(mut self, file: &str, source: &str, line: u32, column: u32, len: u32) -> Self {
        self.file = file.to_owned();
        if line == 0 {
            return self;
        }
        self.line = line;
        self.column = column.max(1);
        let text = yaml_line(source, line as usize - 1).map(str::to_owned);
        if let Some(text) = &text {
            let line_chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
            let room = line_chars.saturating_sub(self.column - 1).max(1);
            self.len = len.clamp(1, room);
        } else {
            self.len = len.max(1);
        }
        self.snippet = text;
        self
    }

    /// Returns the diagnostic with its dotted `path` set.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Returns the diagnostic with a hint attached.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Tells whether this is an error (as opposed to a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.severity, self.message)?;
        let width = if self.line == 0 {
            1
        } else {
            self.line.to_string().len()
        };
        let pad = " ".repeat(width + 1);
        if self.line == 0 {
            write!(f, "{pad}--> {}", self.file)?;
        } else {
            write!(f, "{pad}--> {}:{}:{}", self.file, self.line, self.column)?;
        }
        if !self.path.is_empty() {
            write!(f, " ({})", self.path)?;
        }
        if let Some(snippet) = &self.snippet {
            // Tabs would shift the caret; show them as single spaces on both lines.
            let shown: String = snippet
                .chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            write!(f, "\n{pad} |\n {} | {shown}\n{pad} | ", self.line)?;
            write!(
                f,
                "{}{}",
                " ".repeat((self.column as usize).saturating_sub(1)),
                "^".repeat(self.len.max(1) as usize)
            )?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n{pad} = help: {help}")?;
        }
        Ok(())
    }
}

/// Every finding about one configuration file, errors and warnings, in source order.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Tells whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    /// Returns the errors.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    /// Returns the warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| !d.is_error())
    }

    /// Returns all findings.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    /// Returns the number of findings.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Tells whether there are no findings at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// Sorts by position so the output reads top to bottom; unplaced findings go last.
    pub(crate) fn sort(&mut self) {
        self.0
            .sort_by_key(|d| (d.line == 0, d.line, d.column, d.severity));
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Returns line `n` (0-based) of `source` as the YAML parser numbers lines: `\r\n`, a lone
/// `\r` and `\n` each end a line (YAML 1.2 §5.4), so that a diagnostic's snippet is the line
/// its number names even in a file with stray carriage returns.
fn yaml_line(source: &str, n: usize) -> Option<&str> {
    let mut rest = source;
    for _ in 0..n {
        let end = rest.find(['\r', '\n'])?;
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_rustc() {
        let src = "global:\n  subnet: fd00::/16\nnodes:\n  foo:\n    address: fd01::1\n";
        let d = Diagnostic::error("address fd01::1 is outside global.subnet fd00::/16")
            .at("mesh.yml", src, 5, 14, 7);
        assert_eq!(
            d.to_string(),
            "error: address fd01::1 is outside global.subnet fd00::/16\n  --> mesh.yml:5:14\n   |\n 5 |     address: fd01::1\n   |              ^^^^^^^"
        );
    }

    #[test]
    fn clips_caret_to_line_and_handles_unknown_place() {
        let d = Diagnostic::warning("w").at("f", "ab\n", 1, 2, 99);
        assert_eq!(d.len, 1);
        let d = Diagnostic::error("e").at("f", "", 0, 0, 0);
        assert_eq!(d.to_string(), "error: e\n  --> f");
    }
}
