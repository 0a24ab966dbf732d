//! The first administrator from the settings: created once, promoted only with the right password,
//! never overwritten; through `ensure_admin` and through `build`, as at a real start and restart.

use platform::auth::{ROLE_SERVICE, ROLE_USER};
use platform::config::Settings;
use platform::proto::user::v1 as pb;
use platform::proto::user::v1::user_service_server::UserService;
use test_support::both;
use tonic::{Code, Request};
use user::bootstrap::{AdminOutcome, ensure_admin};
use user::config::AdminBootstrap;
use user::domain::{Email, Password, User};
use user::{UserConfig, UserStore};

use crate::claims;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const ADMIN_EMAIL: &str = "root@example.com";
const ADMIN_PASSWORD: &str = "the operator's password";

fn admin_settings(password: &str) -> Result<AdminBootstrap, Box<dyn std::error::Error>> {
    Ok(AdminBootstrap {
        email: Email::parse("email", ADMIN_EMAIL)?,
        password: Password::new("password", password.to_owned())?,
    })
}

async fn only_account(store: &UserStore) -> Result<User, Box<dyn std::error::Error>> {
    let mut users = store.list(None, 10).await?;
    assert_eq!(users.len(), 1, "{users:?}");
    users.pop().ok_or_else(|| "no account".into())
}

async fn signs_in(store: &UserStore, password: &str) -> Result<bool, Box<dyn std::error::Error>> {
    let api = crate::api(store.clone()).await?;
    let mut request = Request::new(pb::AuthenticateUserRequest {
        email: ADMIN_EMAIL.into(),
        password: password.into(),
    });
    request
        .extensions_mut()
        .insert(claims("service:auth", &[ROLE_SERVICE]));
    match api.authenticate_user(request).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::Unauthenticated => Ok(false),
        Err(status) => Err(status.into()),
    }
}

async fn sign_up(
    store: &UserStore,
    password: &str,
) -> Result<pb::User, Box<dyn std::error::Error>> {
    let api = crate::api(store.clone()).await?;
    let created = api
        .create_user(Request::new(pb::CreateUserRequest {
            email: ADMIN_EMAIL.into(),
            password: password.into(),
            name: "Somebody".into(),
        }))
        .await?
        .into_inner();
    Ok(created)
}

both!(
    a_missing_administrator_is_created_once,
    crate::open,
    crate::close
);
async fn a_missing_administrator_is_created_once(store: UserStore) -> TestResult {
    let hasher = crate::fast_hasher().await?;
    let admin = admin_settings(ADMIN_PASSWORD)?;
    let AdminOutcome::Created(id) = ensure_admin(&store, &hasher, &admin).await? else {
        return Err("expected a new account".into());
    };
    let account = only_account(&store).await?;
    assert_eq!(account.id, id);
    assert_eq!(account.email.as_str(), ADMIN_EMAIL);
    assert_eq!(account.roles.as_slice(), ["admin", "user"]);
    assert!(signs_in(&store, ADMIN_PASSWORD).await?);

    assert_eq!(
        ensure_admin(&store, &hasher, &admin).await?,
        AdminOutcome::AlreadyAdmin(id)
    );
    assert_eq!(only_account(&store).await?, account, "nothing changed");
    Ok(())
}

both!(
    an_existing_account_with_the_password_is_promoted,
    crate::open,
    crate::close
);
async fn an_existing_account_with_the_password_is_promoted(store: UserStore) -> TestResult {
    let created = sign_up(&store, ADMIN_PASSWORD).await?;
    assert_eq!(created.roles, [ROLE_USER]);
    let hasher = crate::fast_hasher().await?;
    let admin = admin_settings(ADMIN_PASSWORD)?;

    let outcome = ensure_admin(&store, &hasher, &admin).await?;
    assert!(
        matches!(&outcome, AdminOutcome::Promoted(id) if id.as_str() == created.id),
        "{outcome:?}"
    );
    let account = only_account(&store).await?;
    assert_eq!(account.roles.as_slice(), ["admin", "user"]);
    assert_eq!(account.name, "Somebody", "only the roles change");
    assert!(matches!(
        ensure_admin(&store, &hasher, &admin).await?,
        AdminOutcome::AlreadyAdmin(_)
    ));
    Ok(())
}

both!(
    an_existing_account_with_another_password_is_left_alone,
    crate::open,
    crate::close
);
async fn an_existing_account_with_another_password_is_left_alone(store: UserStore) -> TestResult {
    let theirs = "somebody else's password";
    sign_up(&store, theirs).await?;
    let before = only_account(&store).await?;
    let hasher = crate::fast_hasher().await?;
    let admin = admin_settings(ADMIN_PASSWORD)?;

    for _restart in 0..2 {
        assert_eq!(
            ensure_admin(&store, &hasher, &admin).await?,
            AdminOutcome::PasswordMismatch(before.id.clone())
        );
        assert_eq!(
            only_account(&store).await?,
            before,
            "roles and times unchanged"
        );
        assert!(
            signs_in(&store, theirs).await?,
            "their password still works"
        );
        assert!(
            !signs_in(&store, ADMIN_PASSWORD).await?,
            "the operator's password was not set"
        );
    }
    Ok(())
}

/// Settings as the binary would read them, pointing at `store`'s database.
fn config(store: &UserStore, password: &str) -> Result<UserConfig, platform::config::ConfigError> {
    let url = crate::url_of(store);
    let settings = Settings::from_pairs([
        ("DATABASE_URL", url.as_str()),
        ("FLOTILLA_USER_DB_MAX_CONNECTIONS", "2"),
        ("FLOTILLA_ARGON2_MEMORY_KIB", "1024"),
        ("FLOTILLA_ARGON2_ITERATIONS", "1"),
        ("FLOTILLA_ARGON2_PARALLELISM", "1"),
        ("FLOTILLA_ADMIN_EMAIL", ADMIN_EMAIL),
        ("FLOTILLA_ADMIN_PASSWORD", password),
    ]);
    UserConfig::from_settings(&settings, "DATABASE_URL", "sqlite://unused.db")
}

both!(
    restarts_are_idempotent_and_never_overwrite,
    crate::open,
    crate::close
);
async fn restarts_are_idempotent_and_never_overwrite(store: UserStore) -> TestResult {
    let first = user::build(&config(&store, ADMIN_PASSWORD)?).await?;
    first.database.close().await;
    let created = only_account(&store).await?;
    assert_eq!(created.roles.as_slice(), ["admin", "user"]);

    let again = user::build(&config(&store, ADMIN_PASSWORD)?).await?;
    again.database.close().await;
    assert_eq!(only_account(&store).await?, created);

    // The operator changed the variable: the start succeeds, with a warning, and changes nothing.
    let changed = user::build(&config(&store, "a new operator password")?).await?;
    changed.database.close().await;
    assert_eq!(only_account(&store).await?, created);
    assert!(signs_in(&store, ADMIN_PASSWORD).await?);
    assert!(!signs_in(&store, "a new operator password").await?);
    Ok(())
}
