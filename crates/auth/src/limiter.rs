//! Limits failed logins, in memory, per account and per client address (OWASP's Authentication
//! Cheat Sheet, "Protect against automated attacks"; NIST SP 800-63B, section 5.2.2, "Rate
//! Limiting"): at most `max_failures_per_account` failures for one normalised email and at most
//! `max_failures_per_address` for one client within a fixed window that starts at the first
//! failure. Once a limit is reached, logins for that key are refused without asking the user
//! service until the window ends, and the refusal says when (`retry-after`).
//!
//! Choices a reviewer should know about:
//!
//! - **An attempt holds a failure's slot from the moment it starts** ([`LoginLimiter::begin`]),
//!   so a burst of concurrent guesses cannot all pass the check before the first failure is
//!   recorded. The slot is kept only when the attempt is settled as failed
//!   ([`LoginLimiter::failed`], the user service said "invalid credentials"); it is given back when
//!   the attempt succeeds, reaches no verdict ([`LoginLimiter::abandoned`]), or is **dropped
//!   unsettled**. Dropping is what happens to a cancelled or timed-out login: when the gateway's
//!   deadline passes, tonic drops the handler mid-call, and a person whose login was merely slow
//!   must not be charged a failure for it.
//! - **A success clears the account's failures but not the address's**; it only gives back its own
//!   slot. Otherwise one client could reset its address counter by signing in to an account of its
//!   own between guesses at someone else's.
//! - **The tables are bounded** ([`DEFAULT_CAPACITY`] keys each). When a table is full, expired
//!   entries go first; if none has expired, the entry with the fewest failures (the oldest among
//!   equals) is evicted, so a flood of one-failure keys from many addresses cannot push out an
//!   account that is close to, or at, its limit.
//! - The state is per process: several auth instances each allow the limit. A shared store
//!   (Redis, the database) would make it global at the cost of a round trip per login.
//!
//! A `std::sync::Mutex` guards the tables: it is held for a few map operations and never across an
//! `.await`. The tables live behind an `Arc` that every [`Attempt`] shares, so an attempt can give
//! its slots back from its `Drop`, wherever it is dropped.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::clock::{Clock, micros};

/// Most keys each table (accounts, addresses) holds: about a megabyte at the longest emails.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// How many failed logins are allowed, and over how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures allowed for one account per window (`FLOTILLA_LOGIN_MAX_FAILURES`, default 5).
    pub max_failures_per_account: u32,
    /// Failures allowed from one client address per window
    /// (`FLOTILLA_LOGIN_MAX_FAILURES_PER_ADDRESS`, default 20).
    pub max_failures_per_address: u32,
    /// The window, counted from a key's first failure (`FLOTILLA_LOGIN_WINDOW`, default 15m).
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_address: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// A login refused because a limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// How long until the window that blocks it ends.
    pub retry_after: Duration,
}

/// A login in progress. While it lives it holds one failure's slot of its account and of its
/// address, which is what stops a parallel burst. Settle it with [`LoginLimiter::failed`] (the
/// slots stay: a failure is recorded), [`LoginLimiter::succeeded`] or [`LoginLimiter::abandoned`];
/// dropping it unsettled (a cancelled or timed-out request) gives both slots back, as
/// [`LoginLimiter::abandoned`] does.
#[must_use = "an attempt that is dropped unsettled is given back; settle a failed login with \
              `LoginLimiter::failed`"]
pub struct Attempt {
    /// The limiter's tables, which the attempt settles against (also from `Drop`).
    shared: Arc<Shared>,
    account: String,
    address: String,
    account_window_us: i64,
    address_window_us: i64,
    settled: bool,
}

impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the shared tables: they hold every tracked key.
        f.debug_struct("Attempt")
            .field("account", &self.account)
            .field("address", &self.address)
            .field("account_window_us", &self.account_window_us)
            .field("address_window_us", &self.address_window_us)
            .field("settled", &self.settled)
            .finish()
    }
}

/// How an attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Wrong credentials: both slots stay counted.
    Failed,
    /// Signed in: the account's failures are cleared, the address's slot given back.
    Succeeded,
    /// No verdict (an outage, a cancelled or timed-out request): both slots given back.
    Abandoned,
}

impl Attempt {
    /// Settles the attempt once; `Drop` then has nothing left to do.
    fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        self.apply(outcome);
    }

    fn apply(&self, outcome: Outcome) {
        let mut tables = self.shared.lock();
        match outcome {
            Outcome::Failed => {}
            Outcome::Succeeded => {
                tables.accounts.entries.remove(&self.account);
                tables
                    .addresses
                    .give_back(&self.address, self.address_window_us);
            }
            Outcome::Abandoned => {
                tables
                    .accounts
                    .give_back(&self.account, self.account_window_us);
                tables
                    .addresses
                    .give_back(&self.address, self.address_window_us);
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.apply(Outcome::Abandoned);
        }
    }
}

/// Failed-login counters per account and per client address.
#[derive(Debug)]
pub struct LoginLimiter {
    shared: Arc<Shared>,
}

/// What a limiter and its attempts share.
#[derive(Debug)]
struct Shared {
    limits: LoginLimits,
    clock: Arc<dyn Clock>,
    tables: Mutex<Tables>,
}

impl Shared {
    /// The tables; a panic while they were held cannot leave them inconsistent (every change is a
    /// single map operation), so a poisoned lock is simply taken over.
    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
struct Tables {
    accounts: Table,
    addresses: Table,
}

impl LoginLimiter {
    /// A limiter with [`DEFAULT_CAPACITY`] keys per table.
    pub fn new(limits: LoginLimits, clock: Arc<dyn Clock>) -> Self {
        Self::with_capacity(limits, clock, DEFAULT_CAPACITY)
    }

    /// A limiter holding at most `capacity` keys per table (at least 1).
    pub fn with_capacity(limits: LoginLimits, clock: Arc<dyn Clock>, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            shared: Arc::new(Shared {
                limits,
                clock,
                tables: Mutex::new(Tables {
                    accounts: Table::new(capacity),
                    addresses: Table::new(capacity),
                }),
            }),
        }
    }

    /// Starts a login for `account` from `address`: refused when either has reached its limit,
    /// otherwise holding one failure's slot of both until it is settled or dropped.
    ///
    /// # Errors
    /// [`Blocked`] with the longer of the two waits when a limit is reached.
    pub fn begin(&self, account: &str, address: &str) -> Result<Attempt, Blocked> {
        let shared = &self.shared;
        let now_us = shared.clock.now_micros();
        let window_us = micros(shared.limits.window);
        let mut tables = shared.lock();
        let waits = [
            tables.accounts.wait(
                account,
                now_us,
                window_us,
                shared.limits.max_failures_per_account,
            ),
            tables.addresses.wait(
                address,
                now_us,
                window_us,
                shared.limits.max_failures_per_address,
            ),
        ];
        if let Some(wait_us) = waits.into_iter().flatten().max() {
            return Err(Blocked {
                retry_after: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)),
            });
        }
        let account_window_us = tables.accounts.charge(account, now_us, window_us);
        let address_window_us = tables.addresses.charge(address, now_us, window_us);
        drop(tables);
        Ok(Attempt {
            shared: Arc::clone(shared),
            account: account.to_owned(),
            address: address.to_owned(),
            account_window_us,
            address_window_us,
            settled: false,
        })
    }

    /// Settles a failed login (the user service said the credentials are wrong): both slots the
    /// attempt took stay counted. This is the only way a failure is recorded.
    pub fn failed(&self, attempt: Attempt) {
        attempt.settle(Outcome::Failed);
    }

    /// Settles a successful login: the account's failures are cleared, and the address gets back
    /// the slot this attempt took (its other failures stay).
    pub fn succeeded(&self, attempt: Attempt) {
        attempt.settle(Outcome::Succeeded);
    }

    /// Settles a login that reached no verdict (the user service was unavailable): both slots are
    /// given back, so an outage does not lock people out. Dropping an attempt does the same.
    pub fn abandoned(&self, attempt: Attempt) {
        attempt.settle(Outcome::Abandoned);
    }

    /// How many keys each table holds now, (accounts, addresses); for tests and metrics.
    pub fn tracked(&self) -> (usize, usize) {
        let tables = self.shared.lock();
        (
            tables.accounts.entries.len(),
            tables.addresses.entries.len(),
        )
    }
}

/// Failures of one key within its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    window_start_us: i64,
    failures: u32,
}

#[derive(Debug)]
struct Table {
    entries: HashMap<String, Entry>,
    capacity: usize,
}

impl Table {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// How long `key` must still wait, if it has reached `max` in its current window.
    fn wait(&self, key: &str, now_us: i64, window_us: i64, max: u32) -> Option<i64> {
        let entry = self.entries.get(key)?;
        let ends_us = entry.window_start_us.saturating_add(window_us);
        (now_us < ends_us && entry.failures >= max).then(|| ends_us - now_us)
    }

    /// Counts one failure for `key` and returns the start of the window it was counted in.
    fn charge(&mut self, key: &str, now_us: i64, window_us: i64) -> i64 {
        if let Some(entry) = self.entries.get_mut(key) {
            if now_us < entry.window_start_us.saturating_add(window_us) {
                entry.failures = entry.failures.saturating_add(1);
            } else {
                *entry = Entry {
                    window_start_us: now_us,
                    failures: 1,
                };
            }
            return entry.window_start_us;
        }
        if self.entries.len() >= self.capacity {
            self.make_room(now_us, window_us);
        }
        self.entries.insert(
            key.to_owned(),
            Entry {
                window_start_us: now_us,
                failures: 1,
            },
        );
        now_us
    }

    /// Removes the slot an attempt took, if its window is still the current one.
    fn give_back(&mut self, key: &str, window_start_us: i64) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if entry.window_start_us != window_start_us {
            return;
        }
        entry.failures = entry.failures.saturating_sub(1);
        if entry.failures == 0 {
            self.entries.remove(key);
        }
    }

    /// Frees at least one slot: expired entries first, else the least-failed, oldest entry.
    fn make_room(&mut self, now_us: i64, window_us: i64) {
        self.entries
            .retain(|_, entry| now_us < entry.window_start_us.saturating_add(window_us));
        if self.entries.len() < self.capacity {
            return;
        }
        let victim = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| (entry.failures, entry.window_start_us))
            .map(|(key, _)| key.clone());
        if let Some(victim) = victim {
            self.entries.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const MINUTE: Duration = Duration::from_secs(60);

    fn limiter(capacity: usize) -> (LoginLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at(1_700_000_000_000_000));
        let limiter = LoginLimiter::with_capacity(LoginLimits::default(), clock.clone(), capacity);
        (limiter, clock)
    }

    /// One failed login: begun and settled as failed, which is how a failure is recorded.
    fn fail(limiter: &LoginLimiter, account: &str, address: &str) -> Result<(), Blocked> {
        limiter
            .begin(account, address)
            .map(|attempt| limiter.failed(attempt))
    }

    #[test]
    fn five_failures_block_the_account_until_the_window_ends() -> Result<(), Blocked> {
        let (limiter, clock) = limiter(DEFAULT_CAPACITY);
        for _ in 0..5 {
            fail(&limiter, "ada@example.com", "192.0.2.1")?;
        }
        clock.advance(MINUTE);
        let blocked = limiter.begin("ada@example.com", "192.0.2.99").err();
        assert_eq!(
            blocked,
            Some(Blocked {
                retry_after: 14 * MINUTE
            }),
            "blocked from any address, for the rest of the window"
        );
        assert!(
            limiter.begin("bob@example.com", "192.0.2.1").is_ok(),
            "another account is not affected"
        );
        clock.advance(14 * MINUTE);
        let attempt = limiter.begin("ada@example.com", "192.0.2.1")?;
        limiter.succeeded(attempt);
        Ok(())
    }

    #[test]
    fn a_new_window_starts_from_zero() -> Result<(), Blocked> {
        let (limiter, clock) = limiter(DEFAULT_CAPACITY);
        for _ in 0..4 {
            fail(&limiter, "ada@example.com", "192.0.2.1")?;
        }
        clock.advance(15 * MINUTE);
        // The window ended: four more failures are allowed before the fifth blocks.
        for _ in 0..5 {
            fail(&limiter, "ada@example.com", "192.0.2.1")?;
        }
        assert!(limiter.begin("ada@example.com", "192.0.2.1").is_err());
        Ok(())
    }

    #[test]
    fn success_clears_the_account_but_not_the_address() -> Result<(), Blocked> {
        let (limiter, _clock) = limiter(DEFAULT_CAPACITY);
        for index in 0..4 {
            fail(&limiter, "ada@example.com", "192.0.2.1")?;
            fail(&limiter, &format!("other-{index}@example.com"), "192.0.2.1")?;
        }
        let attempt = limiter.begin("ada@example.com", "192.0.2.1")?;
        limiter.succeeded(attempt);
        for _ in 0..5 {
            fail(&limiter, "ada@example.com", "192.0.2.2")?;
        }
        // The address kept its 8 failures: 12 more reach 20.
        for index in 0..12 {
            fail(&limiter, &format!("more-{index}@example.com"), "192.0.2.1")?;
        }
        assert!(limiter.begin("fresh@example.com", "192.0.2.1").is_err());
        Ok(())
    }

    #[test]
    fn twenty_failures_block_an_address_across_accounts() -> Result<(), Blocked> {
        let (limiter, clock) = limiter(DEFAULT_CAPACITY);
        for index in 0..20 {
            fail(
                &limiter,
                &format!("user-{index}@example.com"),
                "198.51.100.7",
            )?;
        }
        clock.advance(MINUTE);
        assert_eq!(
            limiter.begin("new@example.com", "198.51.100.7").err(),
            Some(Blocked {
                retry_after: 14 * MINUTE
            })
        );
        assert!(limiter.begin("new@example.com", "198.51.100.8").is_ok());
        Ok(())
    }

    #[test]
    fn attempts_in_flight_count_so_a_burst_cannot_exceed_the_limit() -> Result<(), Blocked> {
        let (limiter, _clock) = limiter(DEFAULT_CAPACITY);
        let in_flight: Vec<Attempt> = (0..5)
            .map(|_| limiter.begin("ada@example.com", "192.0.2.1"))
            .collect::<Result<_, _>>()?;
        assert!(limiter.begin("ada@example.com", "192.0.2.1").is_err());
        // An outage settles them as abandoned: nothing stays counted.
        for attempt in in_flight {
            limiter.abandoned(attempt);
        }
        assert_eq!(limiter.tracked(), (0, 0));
        Ok(())
    }

    #[test]
    fn the_tables_are_bounded_and_keep_blocked_keys() -> Result<(), Blocked> {
        let (limiter, clock) = limiter(100);
        for _ in 0..5 {
            fail(&limiter, "victim@example.com", "192.0.2.1")?;
        }
        for index in 0..10_000 {
            let _ = fail(
                &limiter,
                &format!("flood-{index}@example.com"),
                &format!("10.0.{}.{}", index / 256, index % 256),
            );
        }
        let (accounts, addresses) = limiter.tracked();
        assert!(
            accounts <= 100 && addresses <= 100,
            "{accounts} {addresses}"
        );
        assert!(
            limiter.begin("victim@example.com", "192.0.2.50").is_err(),
            "a flood of one-failure keys does not evict a blocked account"
        );
        // Expired entries make room first.
        clock.advance(16 * MINUTE);
        fail(&limiter, "late@example.com", "192.0.2.9")?;
        assert_eq!(limiter.tracked(), (1, 1));
        Ok(())
    }

    #[test]
    fn a_settled_attempt_from_an_old_window_changes_nothing_new() -> Result<(), Blocked> {
        let (limiter, clock) = limiter(DEFAULT_CAPACITY);
        let old = limiter.begin("ada@example.com", "192.0.2.1")?;
        clock.advance(16 * MINUTE);
        fail(&limiter, "ada@example.com", "192.0.2.1")?;
        limiter.abandoned(old);
        assert_eq!(
            limiter.tracked(),
            (1, 1),
            "the new window's failure stays counted"
        );
        Ok(())
    }

    #[test]
    fn a_dropped_attempt_gives_its_slots_back() -> Result<(), Blocked> {
        let (limiter, _clock) = limiter(DEFAULT_CAPACITY);
        for _ in 0..4 {
            fail(&limiter, "ada@example.com", "192.0.2.1")?;
        }
        let before = limiter.tracked();
        // A login cancelled mid-call (the gateway's deadline passed): tonic drops the handler and
        // the attempt with it, unsettled.
        let attempt = limiter.begin("ada@example.com", "192.0.2.1")?;
        assert!(
            limiter.begin("ada@example.com", "192.0.2.1").is_err(),
            "while it is in flight it holds the fifth slot"
        );
        drop(attempt);
        assert_eq!(limiter.tracked(), before, "the counts are as before");
        // So the fifth real failure is still allowed, and only it blocks.
        fail(&limiter, "ada@example.com", "192.0.2.1")?;
        assert!(limiter.begin("ada@example.com", "192.0.2.1").is_err());
        Ok(())
    }

    #[test]
    fn a_dropped_first_attempt_leaves_nothing_behind() -> Result<(), Blocked> {
        let (limiter, _clock) = limiter(DEFAULT_CAPACITY);
        drop(limiter.begin("ada@example.com", "192.0.2.1")?);
        assert_eq!(limiter.tracked(), (0, 0));
        let attempt = limiter.begin("ada@example.com", "192.0.2.1")?;
        limiter.succeeded(attempt);
        assert_eq!(limiter.tracked(), (0, 0));
        Ok(())
    }

    #[test]
    fn attempts_dropped_in_flight_give_back_a_whole_burst() -> Result<(), Blocked> {
        let (limiter, _clock) = limiter(DEFAULT_CAPACITY);
        let in_flight: Vec<Attempt> = (0..20)
            .map(|index| limiter.begin(&format!("user-{index}@example.com"), "192.0.2.1"))
            .collect::<Result<_, _>>()?;
        assert!(
            limiter.begin("one-more@example.com", "192.0.2.1").is_err(),
            "the address is full while the burst is in flight"
        );
        drop(in_flight);
        assert_eq!(limiter.tracked(), (0, 0));
        assert!(limiter.begin("one-more@example.com", "192.0.2.1").is_ok());
        Ok(())
    }
}
