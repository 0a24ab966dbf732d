//! The data directory: one JSON file, `registry.json`, rewritten atomically after every change so a
//! restart does not forget the instances that were registered.
//!
//! The file holds the node's ID, the index, and each instance's definition with its checks; not the
//! checks' statuses, which are stale by the time anyone reads them (restored checks start critical
//! and run again). Writes go to `registry.json.tmp`, are flushed to disk, renamed over the file and
//! the directory is flushed, so a crash leaves the old file or the new one, never half of one.
//!
//! One writer task ([`Persister`]) writes the newest state whenever asked; requests that pile up
//! while it writes are served by one write. API changes wait for the write that covers them before
//! answering; background changes (a check's status) do not wait.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::domain::ServiceDefinition;

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "registry.json";
/// The format's version; a file of another version is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// Why the data directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("registry data file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file is not what this registry writes.
    #[error("registry data file {path} cannot be read: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// What the file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredState {
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The node's ID, made once.
    pub node_id: String,
    /// The index when it was written.
    pub index: u64,
    /// The instances.
    pub services: Vec<ServiceDefinition>,
}

/// Reads the file in `dir`; `None` when there is none yet.
///
/// # Errors
/// [`StoreError`] when it cannot be read or is not a registry file of this version.
pub fn load(dir: &Path) -> Result<Option<StoredState>, StoreError> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let state: StoredState =
        serde_json::from_slice(&bytes).map_err(|error| StoreError::Corrupt {
            path: path.clone(),
            reason: error.to_string(),
        })?;
    if state.version != FORMAT_VERSION {
        return Err(StoreError::Corrupt {
            path,
            reason: format!(
                "format version {} (this registry reads {FORMAT_VERSION})",
                state.version
            ),
        });
    }
    Ok(Some(state))
}

/// Writes `state` into `dir` atomically (temporary file, flush, rename, flush the directory).
///
/// # Errors
/// [`StoreError::Io`] when any step fails; the previous file is then left as it was.
pub fn save(dir: &Path, state: &StoredState) -> Result<(), StoreError> {
    let path = dir.join(FILE_NAME);
    let temporary = dir.join(format!("{FILE_NAME}.tmp"));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let bytes = serde_json::to_vec_pretty(state).map_err(|error| StoreError::Corrupt {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    let mut file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(&bytes).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    drop(file);
    std::fs::rename(&temporary, &path).map_err(io(&path))?;
    // The rename is durable only once the directory is flushed (not possible on every platform).
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Where the writer task is: the newest index asked for and the newest one written.
#[derive(Debug)]
pub struct Persister {
    dir: Option<PathBuf>,
    requested: watch::Sender<u64>,
    /// The index of the last write, with its failure if it failed.
    written: watch::Sender<(u64, Option<String>)>,
}

impl Persister {
    /// A persister for `dir` (`None`: keep nothing, every flush succeeds at once).
    pub fn new(dir: Option<PathBuf>, index: u64) -> Self {
        Self {
            dir,
            requested: watch::Sender::new(index),
            written: watch::Sender::new((index, None)),
        }
    }

    /// The data directory, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Asks for the state at `index` (or newer) to be written.
    pub fn request(&self, index: u64) {
        if self.dir.is_some() {
            self.requested.send_if_modified(|requested| {
                let newer = index > *requested;
                *requested = (*requested).max(index);
                newer
            });
        }
    }

    /// Waits until a write covering `index` finished.
    ///
    /// # Errors
    /// The reason the write failed.
    pub async fn flushed(&self, index: u64) -> Result<(), String> {
        if self.dir.is_none() {
            return Ok(());
        }
        let mut written = self.written.subscribe();
        match written.wait_for(|(done, _)| *done >= index).await {
            Ok(state) => match &state.1 {
                Some(error) => Err(error.clone()),
                None => Ok(()),
            },
            Err(_) => Err("the registry is shutting down".to_owned()),
        }
    }

    /// A receiver that wakes when a write is asked for.
    pub fn requests(&self) -> watch::Receiver<u64> {
        self.requested.subscribe()
    }

    /// Records a finished write.
    pub fn finished(&self, index: u64, outcome: Result<(), StoreError>) {
        let error = outcome.err().map(|error| error.to_string());
        if let Some(error) = &error {
            tracing::error!(%error, "could not write the registry's data file");
        }
        self.written.send_modify(|written| {
            written.0 = written.0.max(index);
            written.1 = error;
        });
    }

    /// The newest index asked for and not written yet, if any.
    pub fn pending(&self) -> Option<u64> {
        let requested = *self.requested.borrow();
        (requested > self.written.borrow().0).then_some(requested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_atomically() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert!(load(dir.path())?.is_none());
        let state = StoredState {
            version: FORMAT_VERSION,
            node_id: "n".into(),
            index: 42,
            services: Vec::new(),
        };
        save(dir.path(), &state)?;
        save(dir.path(), &state)?;
        let loaded = load(dir.path())?.ok_or("no file")?;
        assert_eq!(loaded.index, 42);
        assert!(!dir.path().join(format!("{FILE_NAME}.tmp")).exists());
        Ok(())
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join(FILE_NAME), b"{not json")?;
        assert!(matches!(load(dir.path()), Err(StoreError::Corrupt { .. })));
        std::fs::write(
            dir.path().join(FILE_NAME),
            br#"{"version":99,"node_id":"n","index":1,"services":[]}"#,
        )?;
        let error = load(dir.path()).err().ok_or("loaded")?;
        assert!(error.to_string().contains("format version 99"), "{error}");
        Ok(())
    }
}
