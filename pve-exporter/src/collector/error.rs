//! The error of a collector or a stage: typed, so the engine tells "it vanished" (normal)
//! from "it failed" (a fault) without reading strings. Text only at the edge (log lines).

use crate::sources::error::{ParseError, SourceError};
use std::{
    io,
    path::PathBuf,
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing to do on this host (no such storages, no debugfs reader, not a PVE host):
    /// not reported as a run.
    #[error("not applicable")]
    NotApplicable,
    /// What it read vanished during the scrape (a process, a VM, a cgroup, a file): not a failure.
    #[error("{0} vanished during the scrape")]
    Gone(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Text that does not parse: the input's name and, where known, the position in it.
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{what}: no answer within {limit:?}")]
    Timeout { what: String, limit: Duration },
    /// A source's own error, with what it was reading.
    #[error("{what}: {source}")]
    Source {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Waiting stopped: a stage or group did not answer by the scrape's deadline, or is known to hang.
    #[error("{0}")]
    Stalled(String),
    /// Several parts failed (each VM, each storage); the others were reported.
    #[error("{}", join(.0))]
    Many(Vec<Error>),
    /// What the collector needs is not on this host (a fixed reason).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The PVE API failed (typed: a node that did not answer is backed off from).
    #[error(transparent)]
    Api(#[from] crate::sources::pve::api::ApiError),
    /// A command failed (`zfs`, `vgs`, ...): the error names the command.
    #[error(transparent)]
    Command(#[from] crate::sources::storage::command::Error),
    /// A source left something out of its answer (a dataset missing from `zfs get`, say).
    #[error("{what}: {why}")]
    Missing { what: String, why: String },
    /// A bug: the collector panicked.
    #[error("panicked: {0}")]
    Panicked(String),
}

impl From<SourceError> for Error {
    fn from(e: SourceError) -> Self {
        match e {
            SourceError::Gone(what) => Error::Gone(what),
            SourceError::Io { path, source } => Error::Io { path, source },
            SourceError::Parse(p) => Error::Parse(p),
            SourceError::Timeout { what, limit } => Error::Timeout { what, limit },
            e @ SourceError::Invalid { .. } => Error::Source { what: "check".into(), source: Box::new(e) },
        }
    }
}

fn join(errors: &[Error]) -> String {
    errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")
}

impl Error {
    /// A source error, with what was being read.
    pub fn source(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Source { what: what.into(), source: Box::new(e) }
    }

    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Ok when `errors` (of any error type that converts) is empty, else the one error or all of them.
    pub fn all_of<E: Into<Error>>(errors: impl IntoIterator<Item = E>) -> Result<(), Error> {
        Error::all(errors.into_iter().map(Into::into).collect())
    }

    /// Ok when `errors` is empty, else the one error or all of them.
    pub fn all(mut errors: Vec<Error>) -> Result<(), Error> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Many(errors)),
        }
    }

    /// Whether this is a failure to report (not NotApplicable, not Gone).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Error::NotApplicable | Error::Gone(_))
    }
}

/// Run a collector: its time and result. A bug that panics in one collector costs that
/// collector, not the scrape.
pub fn run_timed(f: impl FnOnce() -> Result<(), Error>) -> (Duration, Result<(), Error>) {
    let t = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(Error::Panicked(panic_message(&p))));
    (t.elapsed(), r)
}

pub use crate::host::panic_message;
