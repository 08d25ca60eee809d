//! Diagnostics: every problem in the watched repository, located for a human.

use std::fmt;

use serde::Serialize;

/// One problem found while loading or rendering, in `file:line: field: message` form.
///
/// A value rather than an error type: a pass collects all of them, so a user
/// fixes ten broken files in one round trip instead of ten.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    /// Path of the file, relative to the repository root.
    pub file: String,
    /// 1-based line, where one is known.
    pub line: Option<usize>,
    /// Field path inside the document (`spec.variations[2].synthesizer.name`); empty for the file.
    pub field: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(
        file: impl Into<String>,
        line: Option<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            file: file.into(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Where an object was defined, for messages that point at it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}
