//! The store against SQLite and PostgreSQL: every case runs on both.

use platform::database::DatabaseConfig;
use test_support::both;
use user::domain::{Account, Cursor, Email, PasswordHash, Roles, User, UserId};
use user::error::UserError;
use user::store::UserStore;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// An account with a placeholder hash (the store does not care what the hash is).
pub fn account(email: &str, at: i64) -> Result<Account, Box<dyn std::error::Error>> {
    let email = Email::parse("email", email)?;
    let hash = PasswordHash::from_phc(format!("$argon2id$v=19$m=8,t=1,p=1$placeholder-{at}"));
    Ok(Account::new(
        email,
        format!("Person {at}"),
        Roles::new_account(),
        hash,
        at,
    ))
}

fn emails(users: &[User]) -> Vec<&str> {
    users.iter().map(|user| user.email.as_str()).collect()
}

both!(insert_then_read_round_trips, crate::open, crate::close);
async fn insert_then_read_round_trips(store: UserStore) -> TestResult {
    let mut original = account("Ünïcödé.O'Brien@Example.COM", 1_700_000_000_000_001)?;
    original.user.name = "Zoë O'Brien, \"the first\"".into();
    store.insert(&original).await?;

    assert_eq!(
        store.get(&original.user.id).await?,
        Some(original.user.clone())
    );
    let found = store
        .find_by_email(&Email::parse("email", "Ünïcödé.O'Brien@example.com")?)
        .await?;
    assert_eq!(found, Some(original.clone()));
    assert_eq!(
        found.map(|account| account.password_hash),
        Some(original.password_hash)
    );

    assert_eq!(store.get(&UserId::generate()).await?, None);
    assert_eq!(
        store
            .find_by_email(&Email::parse("email", "nobody@example.com")?)
            .await?,
        None
    );
    Ok(())
}

both!(
    an_email_has_one_account_whatever_the_case_of_its_domain,
    crate::open,
    crate::close
);
async fn an_email_has_one_account_whatever_the_case_of_its_domain(store: UserStore) -> TestResult {
    let first = account("ada@example.com", 1)?;
    store.insert(&first).await?;

    let same = store.insert(&account("ada@example.com", 2)?).await;
    assert!(matches!(same, Err(UserError::EmailTaken)), "{same:?}");
    let shouting_domain = store.insert(&account("  ada@EXAMPLE.Com ", 3)?).await;
    assert!(
        matches!(shouting_domain, Err(UserError::EmailTaken)),
        "{shouting_domain:?}"
    );

    // The local part is kept as typed: another case there is another mailbox.
    store.insert(&account("Ada@example.com", 4)?).await?;
    assert_eq!(
        emails(&store.list(None, 10).await?),
        ["ada@example.com", "Ada@example.com"]
    );
    Ok(())
}

both!(
    listing_walks_pages_oldest_first_with_ids_breaking_ties,
    crate::open,
    crate::close
);
async fn listing_walks_pages_oldest_first_with_ids_breaking_ties(store: UserStore) -> TestResult {
    let mut accounts = Vec::new();
    for (email, at) in [
        ("e@example.com", 30),
        ("a@example.com", 10),
        ("c@example.com", 20),
        ("b@example.com", 20),
        ("d@example.com", 25),
    ] {
        let account = account(email, at)?;
        store.insert(&account).await?;
        accounts.push(account.user);
    }
    accounts
        .sort_by(|x, y| (x.created_at_us, x.id.as_str()).cmp(&(y.created_at_us, y.id.as_str())));
    let expected: Vec<&str> = emails(&accounts);

    let all = store.list(None, 10).await?;
    assert_eq!(emails(&all), expected);
    assert_eq!(all, accounts);

    let first = store.list(None, 2).await?;
    assert_eq!(emails(&first), expected[..2]);
    let after = Cursor::after(first.last().ok_or("empty page")?);
    let second = store.list(Some(&after), 2).await?;
    assert_eq!(emails(&second), expected[2..4]);
    let after = Cursor::after(second.last().ok_or("empty page")?);
    let third = store.list(Some(&after), 2).await?;
    assert_eq!(emails(&third), expected[4..]);
    let after = Cursor::after(third.last().ok_or("empty page")?);
    assert_eq!(store.list(Some(&after), 2).await?, vec![]);
    Ok(())
}

both!(
    roles_change_only_from_what_was_read,
    crate::open,
    crate::close
);
async fn roles_change_only_from_what_was_read(store: UserStore) -> TestResult {
    let original = account("root@example.com", 1)?;
    store.insert(&original).await?;
    let id = &original.user.id;
    let user_only = Roles::new_account();
    let admin = user_only.with("admin")?;

    assert!(store.set_roles(id, &admin, &user_only, 2).await?);
    let read = store.get(id).await?.ok_or("account gone")?;
    assert_eq!(read.roles.as_slice(), ["admin", "user"]);
    assert_eq!((read.created_at_us, read.updated_at_us), (1, 2));
    // A writer that read the old roles loses.
    assert!(!store.set_roles(id, &admin, &user_only, 3).await?);
    assert!(
        !store
            .set_roles(&UserId::generate(), &admin, &user_only, 3)
            .await?
    );
    Ok(())
}

both!(
    a_taken_email_is_found_whatever_the_case_of_its_domain,
    crate::open,
    crate::close
);
async fn a_taken_email_is_found_whatever_the_case_of_its_domain(store: UserStore) -> TestResult {
    let taken = |raw: &str| Email::parse("email", raw);
    assert!(!store.email_taken(&taken("ada@example.com")?).await?);
    store.insert(&account("ada@example.com", 1)?).await?;
    assert!(store.email_taken(&taken("ada@example.com")?).await?);
    assert!(store.email_taken(&taken(" ada@EXAMPLE.com")?).await?);
    assert!(!store.email_taken(&taken("Ada@example.com")?).await?);
    Ok(())
}

both!(
    a_password_hash_is_replaced_only_from_what_was_read,
    crate::open,
    crate::close
);
async fn a_password_hash_is_replaced_only_from_what_was_read(store: UserStore) -> TestResult {
    let original = account("hash@example.com", 1)?;
    store.insert(&original).await?;
    let id = &original.user.id;
    let email = &original.user.email;
    let fresh = PasswordHash::from_phc("$argon2id$v=19$m=16,t=2,p=1$fresh".into());

    assert!(
        store
            .replace_password_hash(id, &original.password_hash, &fresh)
            .await?
    );
    let read = store.find_by_email(email).await?.ok_or("account gone")?;
    assert_eq!(read.password_hash, fresh);
    assert_eq!(
        read.user, original.user,
        "nothing else changes, times included"
    );
    // A writer that read the old hash loses, and so does one for a missing account.
    let late = PasswordHash::from_phc("$argon2id$v=19$m=32,t=2,p=1$late".into());
    assert!(
        !store
            .replace_password_hash(id, &original.password_hash, &late)
            .await?
    );
    assert!(
        !store
            .replace_password_hash(&UserId::generate(), &fresh, &late)
            .await?
    );
    let read = store.find_by_email(email).await?.ok_or("account gone")?;
    assert_eq!(read.password_hash, fresh);
    Ok(())
}

both!(
    reopening_keeps_accounts_and_migrations_are_idempotent,
    crate::open,
    crate::close
);
async fn reopening_keeps_accounts_and_migrations_are_idempotent(store: UserStore) -> TestResult {
    let kept = account("kept@example.com", 1)?;
    store.insert(&kept).await?;
    let reopened = UserStore::open(&DatabaseConfig::new(crate::url_of(&store), 2)).await?;
    assert_eq!(reopened.get(&kept.user.id).await?, Some(kept.user));
    reopened.database().close().await;
    Ok(())
}
