//! The gRPC service driven through its trait, without a socket: codes and messages a client sees.
//! Each call first passes the service's policy, as `AuthLayer` applies it, and then carries its
//! claims in the request extensions, as the layer puts them after verifying a token, to act as a
//! user, another user, an administrator or Flotilla's auth service.

use platform::auth::{Claims, ROLE_ADMIN, ROLE_SERVICE, ROLE_USER};
use platform::database::Dialect;
use platform::proto::user::v1 as pb;
use platform::proto::user::v1::health_check_response::Status as Health;
use platform::proto::user::v1::user_service_server::UserService;
use test_support::both;
use tonic::{Code, Request, Status};
use user::domain::{Cursor, Email, PasswordHash};
use user::password::{HashParams, Hasher};
use user::{UserApi, UserStore};

use crate::claims;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A request to `method` carrying `claims`, or none (an anonymous caller), once the service's
/// policy admits it, exactly as `AuthLayer` decides after verifying the caller's token.
fn request<T>(method: &str, message: T, claims: Option<&Claims>) -> Result<Request<T>, Status> {
    let access = user::policy()
        .access(method)
        .ok_or_else(|| Status::permission_denied(format!("no access rule for method {method}")))?;
    access.check(claims)?;
    let mut request = Request::new(message);
    if let Some(claims) = claims {
        request.extensions_mut().insert(claims.clone());
    }
    Ok(request)
}

fn service() -> Claims {
    claims("service:auth", &[ROLE_SERVICE])
}

fn admin() -> Claims {
    claims("admin", &[ROLE_USER, ROLE_ADMIN])
}

fn as_user(user: &pb::User) -> Claims {
    claims(&user.id, &[ROLE_USER])
}

async fn create(
    api: &UserApi,
    email: &str,
    password: &str,
    name: &str,
) -> Result<pb::User, Status> {
    api.create_user(request(
        "CreateUser",
        pb::CreateUserRequest {
            email: email.into(),
            password: password.into(),
            name: name.into(),
        },
        None,
    )?)
    .await
    .map(tonic::Response::into_inner)
}

async fn authenticate(
    api: &UserApi,
    email: &str,
    password: &str,
    claims: Option<&Claims>,
) -> Result<pb::User, Status> {
    api.authenticate_user(request(
        "AuthenticateUser",
        pb::AuthenticateUserRequest {
            email: email.into(),
            password: password.into(),
        },
        claims,
    )?)
    .await
    .map(tonic::Response::into_inner)
}

async fn get(api: &UserApi, id: &str, claims: Option<&Claims>) -> Result<pb::User, Status> {
    api.get_user(request(
        "GetUser",
        pb::GetUserRequest { id: id.into() },
        claims,
    )?)
    .await
    .map(tonic::Response::into_inner)
}

async fn list(
    api: &UserApi,
    page_size: i32,
    page_token: &str,
    claims: Option<&Claims>,
) -> Result<pb::ListUsersResponse, Status> {
    api.list_users(request(
        "ListUsers",
        pb::ListUsersRequest {
            page_size,
            page_token: page_token.into(),
        },
        claims,
    )?)
    .await
    .map(tonic::Response::into_inner)
}

/// The code and message of a failed call, for one-line assertions.
fn failure<T: std::fmt::Debug>(result: Result<T, Status>) -> (Code, String) {
    match result {
        Ok(value) => (Code::Ok, format!("unexpected success: {value:?}")),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

both!(
    a_new_account_signs_in_with_its_password_only,
    crate::open,
    crate::close
);
async fn a_new_account_signs_in_with_its_password_only(store: UserStore) -> TestResult {
    let api = crate::api(store).await?;
    let password = "correct horse battery staple";
    let created = create(&api, "  Ada@Example.COM ", password, "  Ada Lovelace ").await?;
    assert_eq!(created.email, "Ada@example.com");
    assert_eq!(created.name, "Ada Lovelace");
    assert_eq!(created.roles, [ROLE_USER]);
    assert!(created.created_at.is_some() && created.updated_at.is_some());
    let shown = format!("{created:?}");
    assert!(
        !shown.contains(password) && !shown.contains("argon2"),
        "{shown}"
    );

    let service = service();
    let signed_in = authenticate(&api, "Ada@example.com", password, Some(&service)).await?;
    assert_eq!(signed_in, created);
    // The domain's case does not matter; the address is normalised the same way.
    let shouted = authenticate(&api, " Ada@EXAMPLE.com", password, Some(&service)).await?;
    assert_eq!(shouted.id, created.id);

    let invalid = (Code::Unauthenticated, "invalid credentials".to_owned());
    let wrong_password = authenticate(
        &api,
        "Ada@example.com",
        "correct horse battery",
        Some(&service),
    );
    assert_eq!(failure(wrong_password.await), invalid);
    let unknown_email = authenticate(&api, "nobody@example.com", password, Some(&service));
    assert_eq!(failure(unknown_email.await), invalid);
    let malformed_email = authenticate(&api, "not an email", password, Some(&service));
    assert_eq!(failure(malformed_email.await), invalid);
    let other_local_case = authenticate(&api, "ada@example.com", password, Some(&service));
    assert_eq!(failure(other_local_case.await), invalid);
    let empty_password = authenticate(&api, "Ada@example.com", "", Some(&service));
    assert_eq!(failure(empty_password.await), invalid);
    let huge_password = "x".repeat(10_000);
    let huge = authenticate(&api, "Ada@example.com", &huge_password, Some(&service));
    assert_eq!(failure(huge.await), invalid);
    Ok(())
}

both!(
    only_the_auth_service_may_check_passwords,
    crate::open,
    crate::close
);
async fn only_the_auth_service_may_check_passwords(store: UserStore) -> TestResult {
    let api = crate::api(store).await?;
    let password = "a perfectly fine password";
    let created = create(&api, "bob@example.com", password, "Bob").await?;

    let anonymous = authenticate(&api, "bob@example.com", password, None).await;
    assert_eq!(failure(anonymous).0, Code::Unauthenticated);
    let user = as_user(&created);
    let as_himself = authenticate(&api, "bob@example.com", password, Some(&user)).await;
    assert_eq!(failure(as_himself).0, Code::PermissionDenied);
    let admin = admin();
    let as_admin = authenticate(&api, "bob@example.com", password, Some(&admin)).await;
    assert_eq!(failure(as_admin).0, Code::PermissionDenied);
    Ok(())
}

both!(
    sign_ups_are_checked_and_emails_are_unique,
    crate::open,
    crate::close
);
async fn sign_ups_are_checked_and_emails_are_unique(store: UserStore) -> TestResult {
    let api = crate::api(store).await?;
    create(&api, "carol@example.com", "first password", "Carol").await?;

    let taken = (
        Code::AlreadyExists,
        "an account with this email already exists".to_owned(),
    );
    let again = create(&api, "carol@example.com", "second password", "Carol 2").await;
    assert_eq!(failure(again), taken);
    let domain_case = create(&api, "carol@EXAMPLE.com", "second password", "Carol 3").await;
    assert_eq!(failure(domain_case), taken);

    let long_password = "p".repeat(129);
    let long_name = "n".repeat(101);
    let cases = [
        ("carol", "long enough", "Carol", "email"),
        ("a@b@example.com", "long enough", "Carol", "email"),
        ("dave@example.com", "short", "Dave", "password"),
        (
            "dave@example.com",
            long_password.as_str(),
            "Dave",
            "password",
        ),
        ("dave@example.com", "long enough", "   ", "name"),
        (
            "dave@example.com",
            "long enough",
            long_name.as_str(),
            "name",
        ),
        ("dave@example.com", "long enough", "Dave\u{0}", "name"),
    ];
    for (email, password, name, field) in cases {
        let (code, message) = failure(create(&api, email, password, name).await);
        assert_eq!(code, Code::InvalidArgument, "{email} {name}: {message}");
        assert!(message.contains(field), "{message} should name {field}");
        assert!(!message.contains(password), "{message} shows the password");
    }
    // 128 four-byte characters are within the policy (it counts characters).
    create(&api, "erin@example.com", &"🔑".repeat(128), "Erin").await?;
    Ok(())
}

both!(
    an_account_is_readable_by_its_owner_and_administrators,
    crate::open,
    crate::close
);
async fn an_account_is_readable_by_its_owner_and_administrators(store: UserStore) -> TestResult {
    let api = crate::api(store).await?;
    let frank = create(&api, "frank@example.com", "frank's password", "Frank").await?;
    let grace = create(&api, "grace@example.com", "grace's password", "Grace").await?;
    let as_frank = as_user(&frank);
    let admin = admin();

    assert_eq!(get(&api, &frank.id, Some(&as_frank)).await?, frank);
    assert_eq!(
        get(&api, &frank.id.to_uppercase(), Some(&as_frank)).await?,
        frank
    );
    assert_eq!(get(&api, &grace.id, Some(&admin)).await?, grace);

    let other = failure(get(&api, &grace.id, Some(&as_frank)).await);
    assert_eq!(other.0, Code::PermissionDenied);
    // Whether an id exists is not told to someone who may not read it.
    let missing = uuid::Uuid::now_v7().to_string();
    assert_eq!(failure(get(&api, &missing, Some(&as_frank)).await), other);
    assert_eq!(failure(get(&api, "garbage", Some(&as_frank)).await), other);

    assert_eq!(
        failure(get(&api, &missing, Some(&admin)).await).0,
        Code::NotFound
    );
    assert_eq!(
        failure(get(&api, "garbage", Some(&admin)).await).0,
        Code::InvalidArgument
    );
    assert_eq!(
        failure(get(&api, &frank.id, None).await).0,
        Code::Unauthenticated
    );
    Ok(())
}

both!(
    administrators_page_through_every_account,
    crate::open,
    crate::close
);
async fn administrators_page_through_every_account(store: UserStore) -> TestResult {
    let api = crate::api(store).await?;
    let mut created = Vec::new();
    for index in 0..7 {
        let email = format!("person{index}@example.com");
        created.push(create(&api, &email, "same old password", &format!("P{index}")).await?);
    }
    let admin = admin();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(&api, 3, &token, Some(&admin)).await?;
        assert!(page.users.len() <= 3);
        seen.extend(page.users);
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every account once, oldest first");
    assert_eq!(list(&api, 0, "", Some(&admin)).await?.users.len(), 7);

    let user = as_user(&created[0]);
    assert_eq!(
        failure(list(&api, 3, "", Some(&user)).await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        failure(list(&api, 3, "", None).await).0,
        Code::Unauthenticated
    );
    assert_eq!(
        failure(list(&api, 3, "garbage", Some(&admin)).await).0,
        Code::InvalidArgument
    );
    assert_eq!(
        failure(list(&api, -1, "", Some(&admin)).await).0,
        Code::InvalidArgument
    );
    let forged = platform::pagination::encode_token(
        &Cursor {
            created_at_us: 0,
            id: "' OR 1=1 --".into(),
        },
        "users:all",
    );
    assert_eq!(
        failure(list(&api, 3, &forged, Some(&admin)).await).0,
        Code::InvalidArgument
    );
    Ok(())
}

both!(health_follows_the_database, crate::open, crate::close);
async fn health_follows_the_database(store: UserStore) -> TestResult {
    let api = crate::api(store.clone()).await?;
    let before = platform::time::now_micros() / 1_000_000;
    let healthy = api
        .health_check(request("HealthCheck", (), None)?)
        .await?
        .into_inner();
    assert_eq!(healthy.status(), Health::Serving);
    let seconds = healthy.timestamp.map(|t| t.seconds).unwrap_or_default();
    assert!(seconds >= before, "{seconds} < {before}");

    store.database().close().await;
    let closed = api
        .health_check(request("HealthCheck", (), None)?)
        .await?
        .into_inner();
    assert_eq!(closed.status(), Health::NotServing);
    assert!(closed.timestamp.is_some());
    Ok(())
}

/// Stronger than [`crate::FAST`], still cheap: what an operator raising the parameters looks like.
const RAISED: HashParams = HashParams {
    memory_kib: 2048,
    iterations: 2,
    parallelism: 1,
};

/// The stored hash of `email`'s account.
async fn stored_hash(store: &UserStore, email: &str) -> Result<String, Box<dyn std::error::Error>> {
    let account = store
        .find_by_email(&Email::parse("email", email)?)
        .await?
        .ok_or("no such account")?;
    Ok(account.password_hash.as_phc().to_owned())
}

both!(
    a_sign_in_rehashes_a_password_made_with_other_parameters,
    crate::open,
    crate::close
);
async fn a_sign_in_rehashes_a_password_made_with_other_parameters(store: UserStore) -> TestResult {
    let password = "upgrade me on sign-in";
    let old = crate::api(store.clone()).await?;
    let created = create(&old, "henry@example.com", password, "Henry").await?;
    let before = stored_hash(&store, "henry@example.com").await?;
    assert!(
        before.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
        "{before}"
    );

    let hasher = Hasher::new(RAISED).await?;
    let raised = UserApi::new(store.clone(), hasher.clone());
    let service = service();
    // A wrong password changes nothing.
    let wrong = authenticate(
        &raised,
        "henry@example.com",
        "not his password",
        Some(&service),
    );
    assert_eq!(failure(wrong.await).0, Code::Unauthenticated);
    assert_eq!(stored_hash(&store, "henry@example.com").await?, before);

    // The right one signs in as ever, and leaves a hash at the raised parameters behind.
    let signed_in = authenticate(&raised, "henry@example.com", password, Some(&service)).await?;
    assert_eq!(
        signed_in, created,
        "the account as readers see it is unchanged"
    );
    let after = stored_hash(&store, "henry@example.com").await?;
    assert!(
        after.starts_with("$argon2id$v=19$m=2048,t=2,p=1$"),
        "{after}"
    );
    assert!(hasher.is_current(&PasswordHash::from_phc(after.clone())));
    assert_eq!(get(&raised, &created.id, Some(&admin())).await?, created);

    // Once current, it stays as it is; and the password still works, the wrong one still not.
    authenticate(&raised, "henry@example.com", password, Some(&service)).await?;
    assert_eq!(stored_hash(&store, "henry@example.com").await?, after);
    let wrong = authenticate(
        &raised,
        "henry@example.com",
        "not his password",
        Some(&service),
    );
    assert_eq!(failure(wrong.await).0, Code::Unauthenticated);
    Ok(())
}

both!(
    a_rehash_that_cannot_be_stored_does_not_fail_the_sign_in,
    crate::open,
    crate::close
);
async fn a_rehash_that_cannot_be_stored_does_not_fail_the_sign_in(store: UserStore) -> TestResult {
    let password = "upgrade me if you can";
    let old = crate::api(store.clone()).await?;
    let created = create(&old, "iris@example.com", password, "Iris").await?;
    let before = stored_hash(&store, "iris@example.com").await?;

    // The database refuses every change to a stored hash.
    let statements: &[&'static str] = match store.database().dialect() {
        Dialect::Sqlite => &[
            "CREATE TRIGGER refuse_rehash BEFORE UPDATE OF password_hash ON users \
             BEGIN SELECT RAISE(ABORT, 'rehash refused by test'); END",
        ],
        Dialect::Postgres => &[
            "CREATE FUNCTION refuse_rehash() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'rehash refused by test'; END $$",
            "CREATE TRIGGER refuse_rehash BEFORE UPDATE OF password_hash ON users \
             FOR EACH ROW EXECUTE FUNCTION refuse_rehash()",
        ],
    };
    for &statement in statements {
        sqlx::raw_sql(statement)
            .execute(store.database().pool())
            .await?;
    }

    let raised = UserApi::new(store.clone(), Hasher::new(RAISED).await?);
    let service = service();
    let signed_in = authenticate(&raised, "iris@example.com", password, Some(&service)).await?;
    assert_eq!(signed_in, created);
    assert_eq!(
        stored_hash(&store, "iris@example.com").await?,
        before,
        "the refused rehash left the old hash"
    );
    Ok(())
}
