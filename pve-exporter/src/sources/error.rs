//! Errors every source domain shares: a parse error with the input's name and position, and
//! a reader's error (I/O with the path, parse, time limit, vanished). Domains with errors of
//! their own (the PVE API, commands) have their own types beside these.

use std::{borrow::Cow, io, path::PathBuf, time::Duration};

/// Text that does not parse: which input, where in it (when the parser knows), and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input}{}: {msg}", position.map(|p| format!(" (at {p})")).unwrap_or_default())]
pub struct ParseError {
    /// The input's name: a file (`/proc/<pid>/stat`), a command's output, an API path.
    pub input: Cow<'static, str>,
    /// Byte offset or line number in the input, where known.
    pub position: Option<usize>,
    pub msg: String,
}

impl ParseError {
    pub fn new(input: impl Into<Cow<'static, str>>, msg: impl std::fmt::Display) -> Self {
        Self { input: input.into(), position: None, msg: msg.to_string() }
    }

    /// The same error, naming the input more precisely (`stat` -> `/proc/42/stat`).
    pub fn input(mut self, input: impl Into<Cow<'static, str>>) -> Self {
        self.input = input.into();
        self
    }

    /// At line or byte `position` of the input.
    pub fn at(mut self, position: usize) -> Self {
        self.position = Some(position);
        self
    }
}

/// What a reader of a source can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The process, file or cgroup vanished while it was read: not a fault.
    #[error("{0} vanished")]
    Gone(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{what}: no answer within {limit:?}")]
    Timeout { what: String, limit: Duration },
    /// A lookup or check that failed for a reason of its own (user names, ownership).
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

impl SourceError {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        SourceError::Io { path: path.into(), source }
    }

    pub fn invalid(what: impl Into<String>, why: impl std::fmt::Display) -> Self {
        SourceError::Invalid { what: what.into(), why: why.to_string() }
    }
}
