//! Password hashing with argon2id, the winner of the Password Hashing Competition and OWASP's
//! first choice (OWASP Password Storage Cheat Sheet): a fresh random salt per password, the PHC
//! string stored whole so each hash carries its own parameters.
//!
//! Three properties matter beyond "use argon2":
//!
//! - **Hashing never blocks the async runtime.** One hash costs tens of milliseconds of CPU and
//!   19 MiB of memory at OWASP's parameters, so it runs in `tokio::task::spawn_blocking`.
//! - **Hashing is bounded.** At most one hash per CPU runs at a time (a semaphore); more would
//!   not finish sooner, and an unbounded number (tokio allows 512 blocking threads) would let a
//!   burst of sign-ins reserve gigabytes. Waiting callers queue without holding a thread.
//! - **A missing account costs what a present one does.** [`Hasher::verify`] given no stored hash
//!   checks the password against a dummy hash made at start with the same parameters, so the
//!   answer time does not tell whether an email has an account (OWASP Authentication Cheat Sheet,
//!   "Authentication Responses").
//!
//! Not here: rehashing on sign-in when the parameters are raised, and wiping passwords from
//! memory after use (the workspace has no `zeroize`).

use std::fmt;
use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;

use crate::domain::{Password, PasswordHash};

/// OWASP's minimum configuration for argon2id: 19 MiB of memory.
pub const DEFAULT_MEMORY_KIB: u32 = 19 * 1024;
/// OWASP's minimum configuration for argon2id: 2 iterations.
pub const DEFAULT_ITERATIONS: u32 = 2;
/// OWASP's minimum configuration for argon2id: 1 lane.
pub const DEFAULT_PARALLELISM: u32 = 1;

/// The cost of one argon2id hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory, in KiB (`FLOTILLA_ARGON2_MEMORY_KIB`, default 19456).
    pub memory_kib: u32,
    /// Passes over the memory (`FLOTILLA_ARGON2_ITERATIONS`, default 2).
    pub iterations: u32,
    /// Lanes (`FLOTILLA_ARGON2_PARALLELISM`, default 1).
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        Self {
            memory_kib: DEFAULT_MEMORY_KIB,
            iterations: DEFAULT_ITERATIONS,
            parallelism: DEFAULT_PARALLELISM,
        }
    }
}

impl HashParams {
    /// The parameters in argon2's form.
    ///
    /// # Errors
    /// The [`argon2::Error`] for parameters argon2 refuses, such as less than 8 KiB of memory
    /// per lane.
    pub fn to_argon2(self) -> Result<Params, argon2::Error> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
    }
}

/// Why a password could not be hashed or checked. Never carries the password or a hash.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// argon2 refused its parameters, a stored hash is not a PHC string it can read, or the
    /// system's random source failed.
    #[error("password hashing failed: {0}")]
    Argon2(String),
    /// The blocking task running the hash panicked or was cancelled.
    #[error("password hashing task did not finish")]
    Task,
}

/// Hashes and checks passwords: argon2id at fixed parameters, off the async runtime, bounded.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    dummy: PasswordHash,
    permits: Arc<Semaphore>,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("memory_kib", &self.params.m_cost())
            .field("iterations", &self.params.t_cost())
            .field("parallelism", &self.params.p_cost())
            .field("concurrent_hashes", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// A hasher at `params`, with its dummy hash (of a random password) already made.
    ///
    /// # Errors
    /// [`HashError`] when argon2 refuses the parameters.
    pub async fn new(params: HashParams) -> Result<Self, HashError> {
        let params = params
            .to_argon2()
            .map_err(|error| HashError::Argon2(error.to_string()))?;
        let concurrent = std::thread::available_parallelism().map_or(1, usize::from);
        let permits = Arc::new(Semaphore::new(concurrent));
        // Nobody knows this password, and the result of checking against it is ignored anyway.
        let unknowable = Password::candidate(uuid::Uuid::new_v4().simple().to_string())
            .ok_or_else(|| HashError::Argon2("dummy password out of bounds".into()))?;
        let dummy_params = params.clone();
        let dummy = run_bounded(&permits, move || hash_now(dummy_params, &unknowable)).await?;
        Ok(Self {
            params,
            dummy,
            permits,
        })
    }

    /// Hashes `password` with a fresh random salt.
    ///
    /// # Errors
    /// [`HashError`] when argon2 or the random source fails.
    pub async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        let params = self.params.clone();
        run_bounded(&self.permits, move || hash_now(params, &password)).await
    }

    /// Whether `password` matches `stored`. With no stored hash (no such account) the password
    /// is checked against the dummy hash, taking the same time, and the answer is `false`.
    ///
    /// # Errors
    /// [`HashError`] when the stored hash cannot be read.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<PasswordHash>,
    ) -> Result<bool, HashError> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.clone());
        let matched = run_bounded(&self.permits, move || verify_now(&password, &hash)).await?;
        Ok(exists && matched)
    }
}

/// Hashes on the calling thread: only ever called inside [`run_bounded`].
fn hash_now(params: Params, password: &Password) -> Result<PasswordHash, HashError> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.expose())
        .map(|hash| PasswordHash::from_phc(hash.to_string()))
        .map_err(|error| HashError::Argon2(error.to_string()))
}

/// Checks on the calling thread: only ever called inside [`run_bounded`]. The hash's own
/// algorithm, version and parameters apply, so hashes made before a parameter change still verify.
fn verify_now(password: &Password, hash: &PasswordHash) -> Result<bool, HashError> {
    let parsed = argon2::PasswordHash::new(hash.as_phc())
        .map_err(|error| HashError::Argon2(error.to_string()))?;
    match Argon2::default().verify_password(password.expose(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(error) => Err(HashError::Argon2(error.to_string())),
    }
}

/// Runs `work` on the blocking pool once one of `permits` is free; the permit is held until the
/// work ends, even if the caller has stopped waiting, so the bound counts real work.
async fn run_bounded<T: Send + 'static>(
    permits: &Arc<Semaphore>,
    work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
) -> Result<T, HashError> {
    let permit = permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| HashError::Task)?;
    tokio::task::spawn_blocking(move || {
        let result = work();
        drop(permit);
        result
    })
    .await
    .map_err(|_| HashError::Task)?
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const FAST: HashParams = HashParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };

    fn password(raw: &str) -> Result<Password, crate::domain::ValidationError> {
        Password::new("password", raw.to_owned())
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() -> TestResult {
        let hasher = Hasher::new(FAST).await?;
        let hash = hasher.hash(password("correct horse battery")?).await?;
        assert!(hash.as_phc().starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert!(!hash.as_phc().contains("correct horse"));
        assert!(
            hasher
                .verify(password("correct horse battery")?, Some(hash.clone()))
                .await?
        );
        assert!(
            !hasher
                .verify(password("correct horse battery!")?, Some(hash.clone()))
                .await?
        );
        assert!(
            !hasher
                .verify(password("Correct horse battery")?, Some(hash))
                .await?
        );
        Ok(())
    }

    #[tokio::test]
    async fn salts_are_fresh_each_time() -> TestResult {
        let hasher = Hasher::new(FAST).await?;
        let first = hasher.hash(password("same password")?).await?;
        let second = hasher.hash(password("same password")?).await?;
        assert_ne!(first, second);
        Ok(())
    }

    #[tokio::test]
    async fn multi_byte_passwords_round_trip() -> TestResult {
        let hasher = Hasher::new(FAST).await?;
        let hash = hasher.hash(password("пароль-🔑-密码")?).await?;
        assert!(
            hasher
                .verify(password("пароль-🔑-密码")?, Some(hash))
                .await?
        );
        Ok(())
    }

    #[tokio::test]
    async fn no_account_means_no_match_even_for_the_dummy_password() -> TestResult {
        let hasher = Hasher::new(FAST).await?;
        assert!(!hasher.verify(password("anything at all")?, None).await?);
        Ok(())
    }

    #[tokio::test]
    async fn a_hash_made_with_other_parameters_still_verifies() -> TestResult {
        let old = Hasher::new(FAST).await?;
        let hash = old.hash(password("kept across upgrades")?).await?;
        let new = Hasher::new(HashParams {
            memory_kib: 2048,
            iterations: 2,
            parallelism: 1,
        })
        .await?;
        assert!(
            new.verify(password("kept across upgrades")?, Some(hash))
                .await?
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_error_not_a_match() -> TestResult {
        let hasher = Hasher::new(FAST).await?;
        let corrupt = PasswordHash::from_phc("not a phc string".into());
        let result = hasher
            .verify(password("whatever it is")?, Some(corrupt))
            .await;
        assert!(matches!(result, Err(HashError::Argon2(_))), "{result:?}");
        Ok(())
    }

    #[test]
    fn owasp_parameters_are_the_default() {
        assert_eq!(
            HashParams::default(),
            HashParams {
                memory_kib: 19_456,
                iterations: 2,
                parallelism: 1
            }
        );
        assert!(HashParams::default().to_argon2().is_ok());
        let too_little = HashParams {
            memory_kib: 8,
            parallelism: 2,
            ..HashParams::default()
        };
        assert!(too_little.to_argon2().is_err());
    }
}
