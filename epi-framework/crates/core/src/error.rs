//! Error types shared by the framework and its plugins.
//!
//! Every error that comes from input a user gave names where the input was (file and line where
//! there is one), which field, and what was expected, in the form `file:line: field: message`.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a user's input a problem was found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    /// The file, when the input came from one.
    pub file: Option<PathBuf>,
    /// 1-based line number, when the input is line oriented.
    pub line: Option<u64>,
    /// The field, column or key that was wrong.
    pub field: Option<String>,
}

impl Location {
    /// A location in `file`.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Location {
            file: Some(path.as_ref().to_path_buf()),
            line: None,
            field: None,
        }
    }
    /// The same location at `line`.
    pub fn at_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }
    /// The same location naming `field`.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(file) = &self.file {
            match self.line {
                Some(l) => parts.push(format!("{}:{}", file.display(), l)),
                None => parts.push(file.display().to_string()),
            }
        } else if let Some(l) = self.line {
            parts.push(format!("line {l}"));
        }
        if let Some(field) = &self.field {
            parts.push(field.clone());
        }
        write!(f, "{}", parts.join(": "))
    }
}

/// A problem with user input: where it is and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct InputError {
    /// Where the problem is.
    pub location: Location,
    /// What was expected, and what was found.
    pub message: String,
}

impl InputError {
    /// A new input error at `location`.
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        InputError {
            location,
            message: message.into(),
        }
    }
}

/// Errors raised by the framework.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input (file, line, field, expectation).
    #[error(transparent)]
    Input(#[from] InputError),
    /// An I/O failure on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A computation that cannot be done with the data given (e.g. zero tokens).
    #[error("{0}")]
    Invalid(String),
    /// A plugin was asked for that is not registered.
    #[error("no {kind} plugin named `{key}` (known: {known})")]
    UnknownPlugin {
        /// The kind asked for.
        kind: String,
        /// The key asked for.
        key: String,
        /// The registered keys of that kind.
        known: String,
    },
    /// A plugin's configuration is wrong (an unknown key, a bad value): the user's settings,
    /// not the plugin, must change.
    #[error("{plugin}: configuration: {message}")]
    Configuration {
        /// The plugin key.
        plugin: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A plugin failed.
    #[error("{plugin}: {message}")]
    Plugin {
        /// The plugin key.
        plugin: String,
        /// What went wrong.
        message: String,
    },
    /// A results database error.
    #[error("results database {path}: {message}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// The framework's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
