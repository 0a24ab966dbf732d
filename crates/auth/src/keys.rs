//! The signing keys on disk and in memory: the current Ed25519 key that signs every new token, the
//! previous one that still verifies tokens it signed until they have all expired, or a shared HS256
//! secret in the simple mode.
//!
//! Rotation without a flag day (the JWKS pattern of RFC 7517 and OpenID Connect Core, section
//! 10.1.1): [`rotate_key_files`] moves the current key to the previous-key file and generates a new
//! current one; after a restart the service signs with the new key and keeps publishing the old
//! public key until the previous file's modification time plus the access-token lifetime plus the
//! leeway, when the last token it signed has expired. Verifiers elsewhere fetch the JWKS again when
//! a token names an unknown `kid`, so they pick up the new key on their own.
//!
//! Files hold PKCS#8 PEM (what `openssl genpkey -algorithm ed25519` writes) and are created with mode
//! 0600. New files are written under a temporary name and renamed into place, so a crash leaves
//! either the old file or the new one, never half a key. Errors name the file, never its contents.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use platform::auth::{KeyError, PublicJwk, SigningKey};
use platform::config::Secret;

use crate::clock::micros;

/// Why a key file cannot be read, made or rotated. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read the JWT signing key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file does not hold a usable key.
    #[error("the JWT signing key file {path} is not usable: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: KeyError,
    },
    /// The file could not be written.
    #[error("cannot write the JWT signing key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A new key could not be generated.
    #[error("cannot generate a JWT signing key: {0}")]
    Generate(#[source] KeyError),
    /// Rotation was asked to move a key file onto itself.
    #[error("the current and previous JWT signing key files are the same file, {path}")]
    SamePath {
        /// The file.
        path: PathBuf,
    },
}

/// The key ids after a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The key that signed until now, now in the previous-key file.
    pub previous_kid: String,
    /// The new key, in the current-key file.
    pub current_kid: String,
}

/// Generates an Ed25519 key into `path` (mode 0600, parent directories created) unless a file is
/// already there; an existing file is left untouched, whatever it holds. `flotilla up` calls this
/// for `<data-dir>/jwt-ed25519.pem`.
///
/// # Errors
/// [`KeyFileError::Write`] when the file or its directory cannot be created;
/// [`KeyFileError::Generate`] when the random source fails.
pub fn ensure_key_file(path: &Path) -> Result<(), KeyFileError> {
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    let write_error = |source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    let key = SigningKey::generate_ed25519().map_err(KeyFileError::Generate)?;
    match write_new_file(path, pem_of(&key)?) {
        Ok(()) => {
            tracing::info!(path = %path.display(), kid = key.kid().unwrap_or_default(), "generated a JWT signing key");
            Ok(())
        }
        // Another process made it first: theirs is kept.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(write_error(error)),
    }
}

/// Moves the key in `current` to `previous` (replacing what was there, and stamping it with the
/// time of the rotation, which starts its grace period) and generates a new key into `current`.
/// The service picks the new keys up when it restarts.
///
/// # Errors
/// [`KeyFileError`] when the current key cannot be read or a file cannot be written. If the first
/// write succeeds and the second fails, both files hold the old key, which is safe to retry.
pub fn rotate_key_files(current: &Path, previous: &Path) -> Result<Rotation, KeyFileError> {
    if current == previous {
        return Err(KeyFileError::SamePath {
            path: current.to_path_buf(),
        });
    }
    let old = read_key_file(current)?;
    let fresh = SigningKey::generate_ed25519().map_err(KeyFileError::Generate)?;
    replace_file(previous, pem_of(&old)?)?;
    replace_file(current, pem_of(&fresh)?)?;
    let rotation = Rotation {
        previous_kid: old.kid().unwrap_or_default().to_owned(),
        current_kid: fresh.kid().unwrap_or_default().to_owned(),
    };
    tracing::info!(
        previous_kid = %rotation.previous_kid,
        current_kid = %rotation.current_kid,
        "rotated the JWT signing key"
    );
    Ok(rotation)
}

/// The keys the service signs and verifies with.
#[derive(Debug, Clone)]
pub enum KeyRing {
    /// HS256 with a shared secret: nothing is published.
    SharedSecret {
        /// The key that signs.
        key: SigningKey,
        /// The secret, for the verifier.
        secret: Secret,
    },
    /// Ed25519 (the default).
    Ed25519 {
        /// The key that signs every new token.
        current: SigningKey,
        /// The key that signed before the last rotation, while its tokens may still be alive.
        previous: Option<PreviousKey>,
    },
}

/// A rotated-out key and when it stops being trusted.
#[derive(Debug, Clone)]
pub struct PreviousKey {
    /// The key (only its public half is used).
    pub key: SigningKey,
    /// When it leaves the JWKS and stops verifying, in microseconds since the epoch.
    pub retire_at_us: i64,
}

impl KeyRing {
    /// The shared-secret ring.
    pub fn shared_secret(secret: Secret) -> Self {
        Self::SharedSecret {
            key: SigningKey::shared_secret(secret.expose().as_bytes()),
            secret,
        }
    }

    /// Reads the current key from `key_file` and, when given and present, the previous key from
    /// `previous_file`, trusted until that file's modification time plus `grace`. A previous file
    /// that does not exist means no previous key (there was no rotation yet, or it was removed).
    ///
    /// # Errors
    /// [`KeyFileError`] naming the file that cannot be read or holds no Ed25519 key.
    pub fn load(
        key_file: &Path,
        previous_file: Option<&Path>,
        grace: Duration,
    ) -> Result<Self, KeyFileError> {
        let current = read_key_file(key_file)?;
        let previous = match previous_file {
            Some(path) if path.exists() => {
                let key = read_key_file(path)?;
                let modified = std::fs::metadata(path)
                    .and_then(|metadata| metadata.modified())
                    .map_err(|source| KeyFileError::Read {
                        path: path.to_path_buf(),
                        source,
                    })?;
                let modified_us = modified.duration_since(UNIX_EPOCH).map(micros).unwrap_or(0);
                Some(PreviousKey {
                    key,
                    retire_at_us: modified_us.saturating_add(micros(grace)),
                })
            }
            _ => None,
        };
        Ok(Self::Ed25519 { current, previous })
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> &SigningKey {
        match self {
            Self::SharedSecret { key, .. } => key,
            Self::Ed25519 { current, .. } => current,
        }
    }

    /// The previous key, if it is still trusted at `now_us`.
    pub fn previous_at(&self, now_us: i64) -> Option<&SigningKey> {
        match self {
            Self::Ed25519 {
                previous: Some(previous),
                current,
            } if now_us < previous.retire_at_us && previous.key.kid() != current.kid() => {
                Some(&previous.key)
            }
            _ => None,
        }
    }

    /// The public keys to publish at `now_us`: the current one, and the previous one during its
    /// grace period. Empty for a shared secret, which must never be published.
    pub fn published(&self, now_us: i64) -> Vec<PublicJwk> {
        match self {
            Self::SharedSecret { .. } => Vec::new(),
            Self::Ed25519 { current, .. } => current
                .public_jwk()
                .into_iter()
                .chain(self.previous_at(now_us).and_then(SigningKey::public_jwk))
                .cloned()
                .collect(),
        }
    }
}

/// Reads and parses one key file.
fn read_key_file(path: &Path) -> Result<SigningKey, KeyFileError> {
    let pem = std::fs::read(path).map_err(|source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    warn_if_readable_by_others(path);
    SigningKey::from_ed25519_pem(&pem).map_err(|source| KeyFileError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

/// A private key readable by the group or others is a leak waiting to happen; say so. It is not
/// refused, because mounted secrets (Kubernetes, Docker) are often 0644 inside a private mount.
#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the JWT signing key file is readable by other users; run chmod 600 on it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

fn pem_of(key: &SigningKey) -> Result<&str, KeyFileError> {
    key.private_pem()
        .ok_or(KeyFileError::Generate(KeyError::NotEd25519))
}

/// Creates `path` (failing if it exists) with mode 0600 and writes `contents` to disk. A file that
/// could not be written completely is removed.
fn write_new_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file: File = options.open(path)?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// Replaces `path` with a new file (mode 0600) holding `contents`: written beside it under a
/// temporary name, then renamed over it.
fn replace_file(path: &Path, contents: &str) -> Result<(), KeyFileError> {
    let write_error = |source| KeyFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent).map_err(write_error)?;
    }
    write_new_file(&temporary, contents).map_err(write_error)?;
    std::fs::rename(&temporary, path).map_err(|error| {
        let _ = std::fs::remove_file(&temporary);
        write_error(error)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const GRACE: Duration = Duration::from_secs(15 * 60 + 30);

    #[cfg(unix)]
    fn mode(path: &Path) -> std::io::Result<u32> {
        use std::os::unix::fs::PermissionsExt;
        Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
    }

    #[test]
    fn ensure_key_file_creates_a_private_key_once() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested").join("jwt-ed25519.pem");
        ensure_key_file(&path)?;
        #[cfg(unix)]
        assert_eq!(mode(&path)?, 0o600);
        let first = std::fs::read_to_string(&path)?;
        assert!(first.starts_with("-----BEGIN PRIVATE KEY-----"));
        SigningKey::from_ed25519_pem(first.as_bytes())?;

        ensure_key_file(&path)?;
        assert_eq!(
            std::fs::read_to_string(&path)?,
            first,
            "an existing key is kept"
        );
        Ok(())
    }

    #[test]
    fn ensure_key_file_never_overwrites_whatever_is_there() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "not a key")?;
        ensure_key_file(&path)?;
        assert_eq!(std::fs::read_to_string(&path)?, "not a key");
        Ok(())
    }

    #[test]
    fn rotation_moves_the_key_and_starts_its_grace() -> TestResult {
        let dir = tempfile::tempdir()?;
        let current = dir.path().join("jwt-ed25519.pem");
        let previous = dir.path().join("jwt-ed25519.previous.pem");
        ensure_key_file(&current)?;
        let before = SigningKey::from_ed25519_pem(&std::fs::read(&current)?)?;

        let rotation = rotate_key_files(&current, &previous)?;
        assert_eq!(rotation.previous_kid, before.kid().unwrap_or_default());
        assert_ne!(rotation.current_kid, rotation.previous_kid);
        #[cfg(unix)]
        {
            assert_eq!(mode(&current)?, 0o600);
            assert_eq!(mode(&previous)?, 0o600);
        }
        let leftovers = std::fs::read_dir(dir.path())?.count();
        assert_eq!(leftovers, 2, "no temporary file is left behind");

        let ring = KeyRing::load(&current, Some(&previous), GRACE)?;
        assert_eq!(ring.current().kid(), Some(rotation.current_kid.as_str()));
        let KeyRing::Ed25519 {
            previous: Some(old),
            ..
        } = &ring
        else {
            return Err("the previous key should be loaded".into());
        };
        let rotated_at = old.retire_at_us - micros(GRACE);
        let now = platform::time::now_micros();
        assert!(
            (now - rotated_at).abs() < 60_000_000,
            "the grace starts at the rotation, not when the key was made"
        );
        assert!(matches!(
            rotate_key_files(&current, &current),
            Err(KeyFileError::SamePath { .. })
        ));
        Ok(())
    }

    #[test]
    fn the_previous_key_is_published_only_within_its_grace() -> TestResult {
        let current = SigningKey::generate_ed25519()?;
        let old = SigningKey::generate_ed25519()?;
        let retire_at_us = 1_700_000_000_000_000;
        let ring = KeyRing::Ed25519 {
            current: current.clone(),
            previous: Some(PreviousKey {
                key: old.clone(),
                retire_at_us,
            }),
        };
        let kids = |now_us| -> Vec<String> {
            ring.published(now_us)
                .into_iter()
                .map(|jwk| jwk.kid)
                .collect()
        };
        let both: Vec<String> = [&current, &old]
            .iter()
            .filter_map(|key| key.kid().map(str::to_owned))
            .collect();
        assert_eq!(kids(retire_at_us - 1), both);
        assert_eq!(kids(retire_at_us), both[..1].to_vec());
        assert!(ring.previous_at(retire_at_us).is_none());
        Ok(())
    }

    #[test]
    fn a_missing_previous_file_means_no_previous_key() -> TestResult {
        let dir = tempfile::tempdir()?;
        let current = dir.path().join("current.pem");
        ensure_key_file(&current)?;
        let ring = KeyRing::load(&current, Some(&dir.path().join("absent.pem")), GRACE)?;
        assert!(matches!(ring, KeyRing::Ed25519 { previous: None, .. }));
        assert_eq!(ring.published(0).len(), 1);
        Ok(())
    }

    #[test]
    fn bad_key_files_are_named_and_never_shown() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bad.pem");
        std::fs::write(
            &path,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n",
        )?;
        let error = KeyRing::load(&path, None, GRACE)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(error.contains("bad.pem"), "{error}");
        assert!(error.contains("not usable"), "{error}");
        assert!(!error.contains("c2VjcmV0"), "{error}");
        let missing = KeyRing::load(&dir.path().join("missing.pem"), None, GRACE)
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(
            missing.contains("cannot read") && missing.contains("missing.pem"),
            "{missing}"
        );
        Ok(())
    }

    #[test]
    fn a_shared_secret_is_never_published() {
        let ring = KeyRing::shared_secret(Secret::new("0123456789abcdef0123456789abcdef".into()));
        assert!(ring.published(0).is_empty());
        assert!(ring.current().kid().is_none());
    }
}
