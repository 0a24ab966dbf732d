//! The first administrator, made sure of at every start from `FLOTILLA_ADMIN_EMAIL` and
//! `FLOTILLA_ADMIN_PASSWORD`, so a fresh deployment has someone who can list accounts and manage
//! products, without a manual database edit.
//!
//! It is idempotent across restarts and never overwrites anything silently:
//!
//! - no account has the email: one is created with the roles `user` and `admin`;
//! - an account has it and the password matches: it is given the `admin` role if it lacks it;
//! - an account has it with another password: nothing changes, and a warning says so, and that
//!   the deployment therefore has no administrator from these settings. Someone else may have
//!   signed up with that address; promoting their account, or resetting their password to one
//!   the operator knows, would hand it over.
//!
//! Several replicas may start at once: a lost race for the insert, or for the role change, is
//! resolved by reading the account again.

use platform::auth::ROLE_ADMIN;

use crate::config::AdminBootstrap;
use crate::domain::{Account, Roles, UserId};
use crate::error::UserError;
use crate::password::Hasher;
use crate::store::UserStore;

/// How many times a lost race is retried before giving up.
const ATTEMPTS: usize = 3;

/// What [`ensure_admin`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminOutcome {
    /// A new administrator account was created.
    Created(UserId),
    /// The existing account had the password and was given the `admin` role.
    Promoted(UserId),
    /// The existing account had the password and the `admin` role already.
    AlreadyAdmin(UserId),
    /// The existing account has another password; it was left as it is.
    PasswordMismatch(UserId),
}

/// Makes sure `admin` exists and holds the `admin` role, as described in the module doc. Logs the
/// outcome (the account id, never the password); a mismatch is a warning.
///
/// # Errors
/// Database or hashing failures, or races lost three times in a row.
pub async fn ensure_admin(
    store: &UserStore,
    hasher: &Hasher,
    admin: &AdminBootstrap,
) -> Result<AdminOutcome, UserError> {
    let mut last_error = None;
    for _ in 0..ATTEMPTS {
        match attempt(store, hasher, admin).await {
            Ok(Some(outcome)) => {
                log(&outcome);
                return Ok(outcome);
            }
            Ok(None) => {}
            Err(UserError::EmailTaken) => last_error = Some(UserError::EmailTaken),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or(UserError::EmailTaken))
}

/// One try: `None` when a concurrent writer got in between the read and the write.
async fn attempt(
    store: &UserStore,
    hasher: &Hasher,
    admin: &AdminBootstrap,
) -> Result<Option<AdminOutcome>, UserError> {
    let Some(existing) = store.find_by_email(&admin.email).await? else {
        let password_hash = hasher.hash(admin.password.clone()).await?;
        let roles = Roles::new_account().with(ROLE_ADMIN)?;
        let account = Account::new(
            admin.email.clone(),
            "Administrator".to_owned(),
            roles,
            password_hash,
            platform::time::now_micros(),
        );
        store.insert(&account).await?;
        return Ok(Some(AdminOutcome::Created(account.user.id)));
    };
    let id = existing.user.id.clone();
    let matches = hasher
        .verify(admin.password.clone(), Some(existing.password_hash))
        .await?;
    if !matches {
        return Ok(Some(AdminOutcome::PasswordMismatch(id)));
    }
    let roles = &existing.user.roles;
    if roles.contains(ROLE_ADMIN) {
        return Ok(Some(AdminOutcome::AlreadyAdmin(id)));
    }
    let promoted = roles.with(ROLE_ADMIN)?;
    let written = store
        .set_roles(&id, &promoted, roles, platform::time::now_micros())
        .await?;
    Ok(written.then_some(AdminOutcome::Promoted(id)))
}

fn log(outcome: &AdminOutcome) {
    match outcome {
        AdminOutcome::Created(id) => {
            tracing::info!(user_id = %id, "created the administrator account from FLOTILLA_ADMIN_EMAIL");
        }
        AdminOutcome::Promoted(id) => {
            tracing::info!(user_id = %id, "gave the admin role to the account of FLOTILLA_ADMIN_EMAIL");
        }
        AdminOutcome::AlreadyAdmin(id) => {
            tracing::debug!(user_id = %id, "the account of FLOTILLA_ADMIN_EMAIL is an administrator");
        }
        AdminOutcome::PasswordMismatch(id) => {
            tracing::warn!(
                user_id = %id,
                "NO ADMINISTRATOR FROM FLOTILLA_ADMIN_EMAIL: this deployment has no administrator \
                 from these settings. An account with FLOTILLA_ADMIN_EMAIL already exists and its \
                 password is not FLOTILLA_ADMIN_PASSWORD, so it was left unchanged: its password was \
                 NOT overwritten and it was NOT given the admin role (it may belong to someone else). \
                 To fix: set FLOTILLA_ADMIN_PASSWORD to that account's password and restart, or set \
                 FLOTILLA_ADMIN_EMAIL to an address that has no account"
            );
        }
    }
}
