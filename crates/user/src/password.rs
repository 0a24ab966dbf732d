//! Password hashing with argon2id, the winner of the Password Hashing Competition and OWASP's
//! first choice (OWASP Password Storage Cheat Sheet): a fresh random salt per password, the PHC
//! string stored whole so each hash carries its own parameters.
//!
//! Four properties matter beyond "use argon2":
//!
//! - **Hashing never blocks the async runtime.** One hash costs tens of milliseconds of CPU and
//!   19 MiB of memory at OWASP's parameters, so it runs in `tokio::task::spawn_blocking`.
//! - **Hashing is bounded, and so is waiting for it.** At most one hash per CPU runs at a time
//!   (a semaphore, at least two permits); more would not finish sooner, and an unbounded number
//!   (tokio allows 512 blocking threads) would let a burst of sign-ins reserve gigabytes. A caller
//!   waits for a permit at most [`PERMIT_WAIT`], without holding a thread, and is then refused
//!   with [`HashError::Busy`] (UNAVAILABLE to the client), so a flood cannot build a queue of
//!   hashing work that outlives it.
//! - **Sign-ups cannot starve sign-ins.** CreateUser is public, so anyone can ask for hashes.
//!   A new account's hash ([`Hasher::hash`]) must first take one of the sign-up permits, half of
//!   the hashing permits rounded down (at least one), and then a hashing permit; a sign-in
//!   ([`Hasher::verify`], [`Hasher::verify_and_upgrade`]) takes a hashing permit only. However
//!   many sign-ups arrive, they hold at most half of the hashing permits, and the rest stay free
//!   for sign-ins.
//! - **A missing account costs what a present one does.** [`Hasher::verify`] given no stored hash
//!   checks the password against a dummy hash made at start with the same parameters, so the
//!   answer time does not tell whether an email has an account (OWASP Authentication Cheat Sheet,
//!   "Authentication Responses").
//!
//! Hashes made with other parameters (before an upgrade) still verify, their own parameters
//! applying; [`Hasher::verify_and_upgrade`] also makes a fresh hash at the current parameters
//! when such a password matches, for the caller to store (OWASP's "upgrading the work factor").
//!
//! Not here: wiping passwords from memory after use (the workspace has no `zeroize`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::domain::{Password, PasswordHash};

/// OWASP's minimum configuration for argon2id: 19 MiB of memory.
pub const DEFAULT_MEMORY_KIB: u32 = 19 * 1024;
/// OWASP's minimum configuration for argon2id: 2 iterations.
pub const DEFAULT_ITERATIONS: u32 = 2;
/// OWASP's minimum configuration for argon2id: 1 lane.
pub const DEFAULT_PARALLELISM: u32 = 1;

/// The configurations OWASP lists as equally strong minimums for argon2id, as (memory in KiB,
/// iterations), each with one lane: more memory buys fewer passes.
const OWASP_MINIMUMS: [(u32, u32); 5] = [
    (47_104, 1),
    (DEFAULT_MEMORY_KIB, DEFAULT_ITERATIONS),
    (12_288, 3),
    (9_216, 4),
    (7_168, 5),
];

/// The longest a hash or a check waits for a permit before it is refused with
/// [`HashError::Busy`]. Long enough to ride out a short burst (a permit frees every few tens of
/// milliseconds per CPU at OWASP's parameters), short enough that a flood of sign-ups cannot
/// queue up minutes of argon2 work, and well inside the auth service's 5 s deadline for a sign-in.
pub const PERMIT_WAIT: Duration = Duration::from_secs(2);

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

    /// Whether these parameters cost at least as much as one of OWASP's minimum configurations
    /// for argon2id: 19456 KiB with 2 iterations (the default), or an equivalent from the same
    /// table (47104 KiB with 1, 12288 with 3, 9216 with 4, 7168 with 5), with at least one lane.
    /// Weaker parameters are accepted (tests use them to stay fast) but warned about at start.
    pub fn meets_owasp_minimum(self) -> bool {
        self.parallelism >= DEFAULT_PARALLELISM
            && OWASP_MINIMUMS.iter().any(|&(memory_kib, iterations)| {
                self.memory_kib >= memory_kib && self.iterations >= iterations
            })
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
    /// No hashing permit came free within [`PERMIT_WAIT`]: the service is at capacity and the
    /// request was refused rather than queued. A retry after a moment may succeed.
    #[error("password hashing is at capacity: no permit within {PERMIT_WAIT:?}")]
    Busy,
}

/// What checking a sign-in's password found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Whether the password matches the stored hash (`false` when there was none).
    pub matched: bool,
    /// A fresh hash of the password at the current parameters, when it matched a stored hash
    /// made with other ones; the caller should store it in place of the old one.
    pub upgraded: Option<PasswordHash>,
}

/// Which share of the hashing permits a piece of work may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Share {
    /// A new account's password: a sign-up permit, then a hashing permit.
    SignUp,
    /// A password check (and its upgrade): a hashing permit only.
    SignIn,
}

/// The permits a piece of work holds until it ends, even if its caller stopped waiting, so the
/// bounds count real work.
#[derive(Debug)]
pub(crate) struct Admission {
    _sign_up: Option<OwnedSemaphorePermit>,
    _hashing: OwnedSemaphorePermit,
}

/// Hashes and checks passwords: argon2id at fixed parameters, off the async runtime, bounded.
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    dummy: PasswordHash,
    /// One per hash that may run at once.
    hashing: Arc<Semaphore>,
    /// At most half of `hashing`: what sign-ups may hold between them.
    sign_ups: Arc<Semaphore>,
    capacity: usize,
    sign_up_capacity: usize,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("memory_kib", &self.params.m_cost())
            .field("iterations", &self.params.t_cost())
            .field("parallelism", &self.params.p_cost())
            .field("concurrent_hashes", &self.capacity)
            .field("concurrent_sign_ups", &self.sign_up_capacity)
            .field("free_hashes", &self.hashing.available_permits())
            .finish_non_exhaustive()
    }
}

impl Hasher {
    /// A hasher at `params`, with its dummy hash (of a random password) already made. As many
    /// hashes run at once as there are CPUs, at least two, so that with sign-ups limited to half
    /// of them at least one is always left for sign-ins.
    ///
    /// # Errors
    /// [`HashError`] when argon2 refuses the parameters.
    pub async fn new(params: HashParams) -> Result<Self, HashError> {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self::with_capacity(params, cpus).await
    }

    /// A hasher running at most `concurrent` hashes at once (at least two), half of them
    /// (rounded down, at least one) for sign-ups.
    async fn with_capacity(params: HashParams, concurrent: usize) -> Result<Self, HashError> {
        let params = params
            .to_argon2()
            .map_err(|error| HashError::Argon2(error.to_string()))?;
        let capacity = concurrent.max(2);
        let sign_up_capacity = (capacity / 2).max(1);
        let mut hasher = Self {
            params,
            dummy: PasswordHash::from_phc(String::new()),
            hashing: Arc::new(Semaphore::new(capacity)),
            sign_ups: Arc::new(Semaphore::new(sign_up_capacity)),
            capacity,
            sign_up_capacity,
        };
        // Nobody knows this password, and the result of checking against it is ignored anyway.
        let unknowable = Password::candidate(uuid::Uuid::new_v4().simple().to_string())
            .ok_or_else(|| HashError::Argon2("dummy password out of bounds".into()))?;
        let dummy_params = hasher.params.clone();
        let admission = hasher.admit(Share::SignIn).await?;
        hasher.dummy = run_admitted(admission, move || hash_now(dummy_params, &unknowable)).await?;
        Ok(hasher)
    }

    /// Hashes a new account's `password` with a fresh random salt, within the sign-ups' share of
    /// the permits.
    ///
    /// # Errors
    /// [`HashError::Busy`] when no permit came free within [`PERMIT_WAIT`]; other
    /// [`HashError`]s when argon2 or the random source fails.
    pub async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        let params = self.params.clone();
        let admission = self.admit(Share::SignUp).await?;
        run_admitted(admission, move || hash_now(params, &password)).await
    }

    /// Whether `password` matches `stored`. With no stored hash (no such account) the password
    /// is checked against the dummy hash, taking the same time, and the answer is `false`.
    ///
    /// # Errors
    /// [`HashError::Busy`] when no permit came free within [`PERMIT_WAIT`]; other
    /// [`HashError`]s when the stored hash cannot be read.
    pub async fn verify(
        &self,
        password: Password,
        stored: Option<PasswordHash>,
    ) -> Result<bool, HashError> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.clone());
        let admission = self.admit(Share::SignIn).await?;
        let matched =
            run_admitted(admission, move || verify_now(&password, &parse(&hash)?)).await?;
        Ok(exists && matched)
    }

    /// As [`Hasher::verify`], and when the password matches a stored hash made with other
    /// parameters (or another argon2 variant or version), also hashes it afresh at the current
    /// ones, under the same permit. A failure to make the fresh hash is logged and leaves
    /// [`Verification::upgraded`] empty: it never fails the check.
    ///
    /// # Errors
    /// As [`Hasher::verify`].
    pub async fn verify_and_upgrade(
        &self,
        password: Password,
        stored: Option<PasswordHash>,
    ) -> Result<Verification, HashError> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy.clone());
        let params = self.params.clone();
        let admission = self.admit(Share::SignIn).await?;
        run_admitted(admission, move || {
            let parsed = parse(&hash)?;
            // Checked whether or not the account exists (the dummy hash otherwise): equal work.
            let matched = verify_now(&password, &parsed)?;
            let matched = exists && matched;
            let upgraded = if matched && !made_with(&parsed, &params) {
                hash_now(params, &password)
                    .inspect_err(|error| {
                        tracing::warn!(%error, "could not rehash a password at the current parameters");
                    })
                    .ok()
            } else {
                None
            };
            Ok(Verification { matched, upgraded })
        })
        .await
    }

    /// Whether `stored` was made with this hasher's algorithm (argon2id), version and
    /// parameters; `false` for a hash that cannot be read.
    pub fn is_current(&self, stored: &PasswordHash) -> bool {
        parse(stored).is_ok_and(|parsed| made_with(&parsed, &self.params))
    }

    /// Takes every sign-up permit, as that many sign-ups in flight would, until the result is
    /// dropped: for tests that need the sign-up share saturated.
    #[cfg(test)]
    pub(crate) async fn saturate_sign_ups(&self) -> Result<Vec<Admission>, HashError> {
        let mut held = Vec::new();
        for _ in 0..self.sign_up_capacity {
            held.push(self.admit(Share::SignUp).await?);
        }
        Ok(held)
    }

    /// Waits for the permits of `share`, at most [`PERMIT_WAIT`] in all.
    async fn admit(&self, share: Share) -> Result<Admission, HashError> {
        let deadline = Instant::now() + PERMIT_WAIT;
        let sign_up = match share {
            Share::SignUp => Some(acquire_by(&self.sign_ups, deadline).await?),
            Share::SignIn => None,
        };
        let hashing = acquire_by(&self.hashing, deadline).await?;
        Ok(Admission {
            _sign_up: sign_up,
            _hashing: hashing,
        })
    }
}

/// A permit of `permits`, or [`HashError::Busy`] if none comes free by `deadline`. A free permit
/// is taken even when the deadline has passed.
async fn acquire_by(
    permits: &Arc<Semaphore>,
    deadline: Instant,
) -> Result<OwnedSemaphorePermit, HashError> {
    match tokio::time::timeout_at(deadline, Arc::clone(permits).acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        // The semaphores are never closed.
        Ok(Err(_closed)) => Err(HashError::Task),
        Err(_elapsed) => Err(HashError::Busy),
    }
}

/// Hashes on the calling thread: only ever called inside [`run_admitted`].
fn hash_now(params: Params, password: &Password) -> Result<PasswordHash, HashError> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.expose())
        .map(|hash| PasswordHash::from_phc(hash.to_string()))
        .map_err(|error| HashError::Argon2(error.to_string()))
}

/// A stored hash, read.
fn parse(hash: &PasswordHash) -> Result<argon2::PasswordHash, HashError> {
    argon2::PasswordHash::new(hash.as_phc()).map_err(|error| HashError::Argon2(error.to_string()))
}

/// Checks on the calling thread: only ever called inside [`run_admitted`]. The hash's own
/// algorithm, version and parameters apply, so hashes made before a parameter change still verify.
fn verify_now(password: &Password, hash: &argon2::PasswordHash) -> Result<bool, HashError> {
    match Argon2::default().verify_password(password.expose(), hash) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(error) => Err(HashError::Argon2(error.to_string())),
    }
}

/// Whether `hash` is argon2id v19 at exactly `params` (memory, passes, lanes, output length).
fn made_with(hash: &argon2::PasswordHash, params: &Params) -> bool {
    let Ok(own) = Params::try_from(hash) else {
        return false;
    };
    let output_len = |params: &Params| params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    hash.algorithm == Algorithm::Argon2id.ident()
        && hash.version == Some(Version::V0x13.into())
        && own.m_cost() == params.m_cost()
        && own.t_cost() == params.t_cost()
        && own.p_cost() == params.p_cost()
        && output_len(&own) == output_len(params)
}

/// Runs `work` on the blocking pool, holding `admission` until the work ends, even if the caller
/// has stopped waiting, so the bounds count real work.
async fn run_admitted<T: Send + 'static>(
    admission: Admission,
    work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
) -> Result<T, HashError> {
    tokio::task::spawn_blocking(move || {
        let result = work();
        drop(admission);
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

    #[tokio::test]
    async fn a_matching_old_hash_is_upgraded_and_nothing_else_is() -> TestResult {
        let old = Hasher::new(FAST).await?;
        let stored = old.hash(password("kept across upgrades")?).await?;
        let new = Hasher::new(HashParams {
            memory_kib: 2048,
            iterations: 2,
            parallelism: 1,
        })
        .await?;
        assert!(old.is_current(&stored));
        assert!(!new.is_current(&stored));

        let checked = new
            .verify_and_upgrade(password("kept across upgrades")?, Some(stored.clone()))
            .await?;
        assert!(checked.matched);
        let upgraded = checked.upgraded.ok_or("no upgraded hash")?;
        assert!(
            upgraded
                .as_phc()
                .starts_with("$argon2id$v=19$m=2048,t=2,p=1$")
        );
        assert!(new.is_current(&upgraded));
        assert!(
            new.verify(password("kept across upgrades")?, Some(upgraded.clone()))
                .await?
        );

        // A wrong password, a current hash and a missing account bring no new hash.
        let wrong = new
            .verify_and_upgrade(password("not the password")?, Some(stored))
            .await?;
        assert_eq!(
            wrong,
            Verification {
                matched: false,
                upgraded: None
            }
        );
        let current = new
            .verify_and_upgrade(password("kept across upgrades")?, Some(upgraded))
            .await?;
        assert_eq!(
            current,
            Verification {
                matched: true,
                upgraded: None
            }
        );
        let missing = new
            .verify_and_upgrade(password("kept across upgrades")?, None)
            .await?;
        assert_eq!(
            missing,
            Verification {
                matched: false,
                upgraded: None
            }
        );
        Ok(())
    }

    #[tokio::test]
    async fn another_variant_or_output_length_is_not_current() -> TestResult {
        let hasher = Hasher::new(FAST).await?;
        let params = FAST.to_argon2()?;
        let raw = password("some password")?;
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, params.clone())
            .hash_password(raw.expose())?
            .to_string();
        assert!(!hasher.is_current(&PasswordHash::from_phc(argon2i)));
        let long = Params::new(1024, 1, 1, Some(64))?;
        let long = Argon2::new(Algorithm::Argon2id, Version::V0x13, long)
            .hash_password(raw.expose())?
            .to_string();
        assert!(!hasher.is_current(&PasswordHash::from_phc(long)));
        assert!(!hasher.is_current(&PasswordHash::from_phc("garbage".into())));
        Ok(())
    }

    /// Time is paused: waiting for a permit costs no real time, and the clock moves only when
    /// every task waits on a timer, so the bound is exercised exactly and deterministically.
    #[tokio::test(start_paused = true)]
    async fn saturated_sign_ups_are_refused_while_sign_ins_still_get_a_permit() -> TestResult {
        let hasher = Hasher::with_capacity(FAST, 4).await?;
        assert_eq!((hasher.capacity, hasher.sign_up_capacity), (4, 2));

        // Two sign-ups in flight hold the whole sign-up share (and two of the four hashes).
        let sign_ups = hasher.saturate_sign_ups().await?;
        let start = Instant::now();
        let refused = hasher.hash(password("one sign-up too many")?).await;
        assert!(matches!(refused, Err(HashError::Busy)), "{refused:?}");
        assert_eq!(
            start.elapsed(),
            PERMIT_WAIT,
            "waited the bound, then gave up"
        );
        assert_eq!(hasher.sign_ups.available_permits(), 0);
        assert_eq!(hasher.hashing.available_permits(), 2, "nothing queued");

        // A sign-in meanwhile gets one of the two hashes left, without waiting.
        let start = Instant::now();
        assert!(!hasher.verify(password("a sign-in")?, None).await?);
        let stored = {
            let other = Hasher::with_capacity(FAST, 2).await?;
            other.hash(password("a sign-in")?).await?
        };
        assert!(
            hasher
                .verify(password("a sign-in")?, Some(stored.clone()))
                .await?
        );
        assert_eq!(start.elapsed(), Duration::ZERO);

        // Sign-ins are bounded too: with every hash taken, one waits the bound and is refused.
        let sign_ins = [
            hasher.admit(Share::SignIn).await?,
            hasher.admit(Share::SignIn).await?,
        ];
        let start = Instant::now();
        let refused = hasher.verify(password("a sign-in")?, Some(stored)).await;
        assert!(matches!(refused, Err(HashError::Busy)), "{refused:?}");
        assert_eq!(start.elapsed(), PERMIT_WAIT);

        // A sign-up whose permits free up within the bound goes ahead.
        drop(sign_ins);
        let patient = password("a patient sign-up")?;
        let waiting = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.hash(patient).await }
        });
        tokio::time::advance(PERMIT_WAIT / 2).await;
        drop(sign_ups);
        let hashed = waiting.await?;
        assert!(hashed.is_ok(), "{hashed:?}");
        assert_eq!(hasher.sign_ups.available_permits(), 2);
        assert_eq!(hasher.hashing.available_permits(), 4);
        Ok(())
    }

    #[tokio::test]
    async fn sign_ins_always_keep_at_least_one_hash() -> TestResult {
        for (concurrent, capacity, sign_ups) in [(1, 2, 1), (2, 2, 1), (3, 3, 1), (8, 8, 4)] {
            let hasher = Hasher::with_capacity(FAST, concurrent).await?;
            assert_eq!(
                (hasher.capacity, hasher.sign_up_capacity),
                (capacity, sign_ups)
            );
        }
        Ok(())
    }

    #[test]
    fn owasp_minimums_are_recognised() {
        assert!(HashParams::default().meets_owasp_minimum());
        assert!(!FAST.meets_owasp_minimum());
        let with = |memory_kib, iterations| HashParams {
            memory_kib,
            iterations,
            parallelism: 1,
        };
        assert!(with(47_104, 1).meets_owasp_minimum());
        assert!(with(65_536, 3).meets_owasp_minimum());
        assert!(with(7_168, 5).meets_owasp_minimum());
        assert!(!with(47_103, 1).meets_owasp_minimum());
        assert!(!with(19_455, 2).meets_owasp_minimum());
        assert!(!with(19_456, 1).meets_owasp_minimum());
        assert!(!with(7_168, 4).meets_owasp_minimum());
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
