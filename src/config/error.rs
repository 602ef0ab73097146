//! Config errors that name the file, the line, the column and the key.
//!
//! Every message has the same shape, whether it comes from the TOML parser,
//! from serde (unknown key, bad duration) or from a check after parsing:
//! `config/prod.toml:42:7: certificate[1].key: <what is wrong>`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where in the config file a value stands (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// Converts a byte offset into the source to a line and column.
    pub fn from_offset(source: &str, offset: usize) -> Self {
        let offset = offset.min(source.len());
        let before = source.get(..offset).unwrap_or(source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before
            .get(line_start..)
            .map_or(1, |s| s.chars().count() + 1);
        Self { line, column }
    }

    pub fn from_span(source: &str, span: Option<Range<usize>>) -> Self {
        span.map_or(Location { line: 1, column: 1 }, |s| {
            Self::from_offset(source, s.start)
        })
    }
}

/// One problem in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub at: Location,
    /// Dotted key path, e.g. `listener[0].backend`; empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: &Path,
        at: Location,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            at,
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the file as a whole (e.g. it cannot be read).
        if self.at.line == 0 {
            write!(f, "{}: ", self.file.display())?;
        } else {
            write!(
                f,
                "{}:{}:{}: ",
                self.file.display(),
                self.at.line,
                self.at.column
            )?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// All the problems found in one load; never empty.
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

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = "a = 1\nbb = 2\n\nccc = 3";
        assert_eq!(
            Location::from_offset(src, 0),
            Location { line: 1, column: 1 }
        );
        assert_eq!(
            Location::from_offset(src, 6),
            Location { line: 2, column: 1 }
        );
        assert_eq!(
            Location::from_offset(src, 11),
            Location { line: 2, column: 6 }
        );
        assert_eq!(
            Location::from_offset(src, 14),
            Location { line: 4, column: 1 }
        );
        assert_eq!(
            Location::from_offset(src, 999),
            Location { line: 4, column: 8 }
        );
    }
}
