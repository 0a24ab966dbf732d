//! Accounts and their rules, in plain Rust: what a valid email, password and name are, how roles
//! are held, and what a stored account looks like. No tonic, no SQL, no I/O.
//!
//! - Emails are normalised before they are compared or stored: trimmed, the domain lower-cased
//!   (domains are case-insensitive, RFC 5321 §2.4), the local part kept exactly as typed (it may be
//!   case-sensitive at the receiving server, so folding it could merge two people's accounts).
//! - Passwords follow NIST SP 800-63B §5.1.1.2: 8 to 128 characters, counted as characters rather
//!   than bytes, with no composition rules. (NIST also suggests Unicode normalisation; no NFKC
//!   table is in the workspace, so passwords are compared exactly as typed.)
//! - Passwords and their hashes are wrapped in types whose `Debug` prints `***`, so neither can
//!   reach a log line or an error message by accident.

use std::fmt;

/// Shortest password, in characters (NIST SP 800-63B).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in characters: long enough for any passphrase, short enough that hashing
/// cannot be turned into a denial of service.
pub const MAX_PASSWORD_CHARS: usize = 128;
/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest email address, in characters (RFC 5321's path limit less the angle brackets).
pub const MAX_EMAIL_CHARS: usize = 254;

pub use platform::validation::ValidationError;

/// An account id: a UUID in its canonical hyphenated lower-case form, which is also the `sub` of
/// the account's access tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    /// Checks a client-given id and puts it in canonical form.
    ///
    /// # Errors
    /// A [`ValidationError`] naming `field` when the id is not a UUID.
    pub fn parse(field: &'static str, id: &str) -> Result<Self, ValidationError> {
        uuid::Uuid::try_parse(id)
            .map(|uuid| Self(uuid.hyphenated().to_string()))
            .map_err(|_| {
                ValidationError::new(
                    field,
                    "must be an account id as returned by CreateUser (a UUID)",
                )
            })
    }

    /// A fresh server-assigned id: a UUIDv7, so ids sort roughly by creation time.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().hyphenated().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A normalised email address: the unit of account uniqueness.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Normalises and checks an address: trims it, lower-cases the domain, and requires exactly one
    /// `@` with something on both sides, no whitespace or control characters, and at most
    /// [`MAX_EMAIL_CHARS`] characters. Deliverability is not checked: only a sent mail can tell.
    ///
    /// # Errors
    /// A [`ValidationError`] naming `field`; the reason never repeats the address.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if trimmed.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ValidationError::new(
                field,
                "must not contain spaces or control characters",
            ));
        }
        let mut parts = trimmed.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ValidationError::new(
                field,
                "must contain exactly one '@', as in name@example.com",
            ));
        };
        if local.is_empty() || domain.is_empty() {
            return Err(ValidationError::new(
                field,
                "must have a name before the '@' and a domain after it, as in name@example.com",
            ));
        }
        let normalised = format!("{local}@{}", domain.to_lowercase());
        // Counted after lower-casing, which can lengthen a few characters.
        if normalised.chars().count() > MAX_EMAIL_CHARS {
            return Err(ValidationError::new(
                field,
                format!("must be at most {MAX_EMAIL_CHARS} characters"),
            ));
        }
        Ok(Self(normalised))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password in memory, on its way to being hashed or checked. `Debug` prints `***`; there is no
/// `Display`, so it cannot be formatted into a message.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// A new password, checked against the policy: [`MIN_PASSWORD_CHARS`] to
    /// [`MAX_PASSWORD_CHARS`] characters, nothing else (NIST SP 800-63B: no composition rules).
    ///
    /// # Errors
    /// A [`ValidationError`] naming `field` that states the rule, never the password.
    pub fn new(field: &'static str, raw: String) -> Result<Self, ValidationError> {
        let length = raw.chars().count();
        if length < MIN_PASSWORD_CHARS {
            return Err(ValidationError::new(
                field,
                format!("must be at least {MIN_PASSWORD_CHARS} characters"),
            ));
        }
        if length > MAX_PASSWORD_CHARS {
            return Err(ValidationError::new(
                field,
                format!("must be at most {MAX_PASSWORD_CHARS} characters"),
            ));
        }
        Ok(Self(raw))
    }

    /// A password someone typed to sign in. Only the upper bound applies: it keeps hashing cheap
    /// to refuse, while a rule tightened later must not lock out passwords set before it. `None`
    /// for a password no account can have.
    pub fn candidate(raw: String) -> Option<Self> {
        (!raw.is_empty() && raw.chars().count() <= MAX_PASSWORD_CHARS).then_some(Self(raw))
    }

    /// The password's bytes, for the hash function only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A stored password hash: an argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), the
/// parameters travelling with the hash. `Debug` prints `***`: a hash is offline-crackable and is
/// never logged or returned.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string, from the hash function or the database.
    pub fn from_phc(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string, for the store and the verifier only.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(***)")
    }
}

/// Checks a display name: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no control characters.
///
/// # Errors
/// A [`ValidationError`] naming `field`.
pub fn validate_name(field: &'static str, raw: &str) -> Result<String, ValidationError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters (such as NUL, tab or newline)",
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}

/// The roles an account holds: a sorted set of lower-case words such as `admin` and `user`.
/// Stored as one comma-separated column, which is why a role is a plain word.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Roles(Vec<String>);

impl Roles {
    /// The roles of a new account: `user` only.
    pub fn new_account() -> Self {
        Self(vec![platform::auth::ROLE_USER.to_owned()])
    }

    /// These roles plus `role`.
    ///
    /// # Errors
    /// A [`ValidationError`] when `role` is not a lower-case word.
    pub fn with(&self, role: &str) -> Result<Self, ValidationError> {
        check_role(role)?;
        let mut roles = self.0.clone();
        roles.push(role.to_owned());
        roles.sort();
        roles.dedup();
        Ok(Self(roles))
    }

    /// Whether `role` is held.
    pub fn contains(&self, role: &str) -> bool {
        self.0.iter().any(|held| held == role)
    }

    /// The roles, sorted.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The stored form: sorted and comma-separated.
    pub fn to_column(&self) -> String {
        self.0.join(",")
    }

    /// Roles back from their stored form.
    ///
    /// # Errors
    /// A [`ValidationError`] on `roles` when an entry is not a lower-case word.
    pub fn from_column(column: &str) -> Result<Self, ValidationError> {
        let mut roles = Vec::new();
        for role in column.split(',').filter(|role| !role.is_empty()) {
            check_role(role)?;
            roles.push(role.to_owned());
        }
        roles.sort();
        roles.dedup();
        Ok(Self(roles))
    }
}

fn check_role(role: &str) -> Result<(), ValidationError> {
    let valid = !role.is_empty()
        && role.len() <= 32
        && role
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte == b'_' || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(ValidationError::new(
            "roles",
            format!("{role:?} is not a role: expected a lower-case word such as admin"),
        ))
    }
}

/// An account as every reader may see it: no password, hashed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// Normalised email address; unique.
    pub email: Email,
    /// Display name.
    pub name: String,
    /// Roles held.
    pub roles: Roles,
    /// Creation instant, microseconds since the epoch.
    pub created_at_us: i64,
    /// Last change, microseconds since the epoch.
    pub updated_at_us: i64,
}

/// An account with its password hash: what the store writes, and reads only to check a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account.
    pub user: User,
    /// Its password hash.
    pub password_hash: PasswordHash,
}

impl Account {
    /// A new account created now, with a fresh id.
    pub fn new(
        email: Email,
        name: String,
        roles: Roles,
        password_hash: PasswordHash,
        now_us: i64,
    ) -> Self {
        Self {
            user: User {
                id: UserId::generate(),
                email,
                name,
                roles,
                created_at_us: now_us,
                updated_at_us: now_us,
            },
            password_hash,
        }
    }
}

/// A sign-up as it arrives, unchecked. `Debug` leaves the password out.
#[derive(Clone, Default)]
pub struct RawNewUser {
    /// Email address as typed.
    pub email: String,
    /// Password as typed.
    pub password: String,
    /// Display name as typed.
    pub name: String,
}

/// A sign-up that passed every rule, password not yet hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Normalised email.
    pub email: Email,
    /// The password, within the policy.
    pub password: Password,
    /// Trimmed display name.
    pub name: String,
}

impl std::fmt::Debug for RawNewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawNewUser")
            .field("email", &self.email)
            .field("password", &"***")
            .field("name", &self.name)
            .finish()
    }
}

impl RawNewUser {
    /// Checks every rule.
    ///
    /// # Errors
    /// The first [`ValidationError`] found, in field order (email, password, name).
    pub fn validate(self) -> Result<NewUser, ValidationError> {
        let email = Email::parse("email", &self.email)?;
        let password = Password::new("password", self.password)?;
        let name = validate_name("name", &self.name)?;
        Ok(NewUser {
            email,
            password,
            name,
        })
    }
}

/// Where a listing page ended: the last account's creation instant and id (a keyset cursor).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// Creation instant of the last account returned.
    pub created_at_us: i64,
    /// Id of the last account returned.
    pub id: String,
}

impl Cursor {
    /// The cursor just after `user`.
    pub fn after(user: &User) -> Self {
        Self {
            created_at_us: user.created_at_us,
            id: user.id.as_str().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
