//! The account rules, case by case: email normalisation, the password policy's bounds (in
//! characters, not bytes), names, roles and redaction.

use super::*;

fn email(raw: &str) -> Result<String, ValidationError> {
    Email::parse("email", raw).map(|email| email.as_str().to_owned())
}

#[test]
fn emails_are_trimmed_and_only_their_domain_is_lower_cased() -> Result<(), ValidationError> {
    assert_eq!(
        email("  Ada.Lovelace@Example.COM \n")?,
        "Ada.Lovelace@example.com"
    );
    assert_eq!(email("bob@example.com")?, "bob@example.com");
    assert_eq!(email("Bob@EXAMPLE.com")?, "Bob@example.com");
    assert_eq!(email("x@localhost")?, "x@localhost");
    assert_eq!(email("ünï@BÜCHER.DE")?, "ünï@bücher.de");
    assert_eq!(
        email("first+tag@sub.Example.org")?,
        "first+tag@sub.example.org"
    );
    Ok(())
}

#[test]
fn malformed_emails_are_refused_without_echoing_them() {
    let cases = [
        "",
        "   ",
        "plainaddress",
        "@mail.test",
        "someone@",
        "@",
        "a@b@mail.test",
        "two words@mail.test",
        "someone@exa mple.com",
        "tab\t@mail.test",
        "nul\u{0}@mail.test",
        "bell@mail.test\u{7}",
        "nbsp\u{a0}@mail.test",
    ];
    for raw in cases {
        let error = Email::parse("email", raw).err();
        assert_eq!(error.as_ref().map(|e| e.field), Some("email"), "{raw:?}");
        let reason = error.map(|e| e.reason).unwrap_or_default();
        // The reason quotes examples with '@', never the address given.
        assert!(
            raw.trim().len() < 3 || !reason.contains(raw.trim()),
            "{reason}"
        );
    }
}

#[test]
fn emails_are_at_most_254_characters() -> Result<(), ValidationError> {
    let domain = "@example.com";
    let longest = format!("{}{domain}", "a".repeat(MAX_EMAIL_CHARS - domain.len()));
    assert_eq!(email(&longest)?.chars().count(), MAX_EMAIL_CHARS);
    let too_long = format!("a{longest}");
    assert!(email(&too_long).is_err());
    // Characters, not bytes: 254 two-byte characters pass.
    let wide = format!("{}@é.fr", "é".repeat(MAX_EMAIL_CHARS - 5));
    assert_eq!(email(&wide)?.chars().count(), MAX_EMAIL_CHARS);
    Ok(())
}

fn password(raw: &str) -> Result<(), ValidationError> {
    Password::new("password", raw.to_owned()).map(|_| ())
}

#[test]
fn passwords_are_8_to_128_characters_and_nothing_else() {
    assert!(password("1234567").is_err());
    assert!(password("12345678").is_ok());
    assert!(password(&"x".repeat(MAX_PASSWORD_CHARS)).is_ok());
    assert!(password(&"x".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
    // No composition rules: all lower-case, spaces, all digits are fine.
    assert!(password("correct horse battery staple").is_ok());
    assert!(password("aaaaaaaa").is_ok());
    assert!(password("").is_err());
}

#[test]
fn password_length_counts_characters_not_bytes() {
    // Seven 4-byte characters are 28 bytes but still too short.
    assert!(password(&"🔑".repeat(7)).is_err());
    assert!(password(&"🔑".repeat(8)).is_ok());
    // 128 two-byte characters (256 bytes) are allowed; 129 are not.
    assert!(password(&"é".repeat(MAX_PASSWORD_CHARS)).is_ok());
    assert!(password(&"é".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
}

#[test]
fn password_errors_state_the_rule_never_the_password() {
    let error = Password::new("password", "s3cr3t!".into()).err();
    let shown = error.map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(shown, "password: must be at least 8 characters");
}

#[test]
fn sign_in_candidates_only_have_an_upper_bound() {
    assert!(Password::candidate("short".into()).is_some());
    assert!(Password::candidate(String::new()).is_none());
    assert!(Password::candidate("x".repeat(MAX_PASSWORD_CHARS + 1)).is_none());
}

#[test]
fn secrets_are_redacted_in_debug() -> Result<(), ValidationError> {
    let secret = Password::new("password", "hunter2hunter2".into())?;
    assert!(!format!("{secret:?}").contains("hunter2"));
    let hash = PasswordHash::from_phc("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into());
    assert!(!format!("{hash:?}").contains("argon2id"));
    let new_user = RawNewUser {
        email: "a@example.com".into(),
        password: "hunter2hunter2".into(),
        name: "A".into(),
    }
    .validate()?;
    assert!(!format!("{new_user:?}").contains("hunter2"));
    Ok(())
}

#[test]
fn names_are_trimmed_1_to_100_characters_without_control_characters() -> Result<(), ValidationError>
{
    assert_eq!(validate_name("name", "  Ada  ")?, "Ada");
    assert_eq!(
        validate_name("name", &"ß".repeat(MAX_NAME_CHARS))?
            .chars()
            .count(),
        MAX_NAME_CHARS
    );
    for bad in [
        "",
        "   ",
        "a\u{0}b",
        "line\nbreak",
        "n".repeat(MAX_NAME_CHARS + 1).as_str(),
    ] {
        assert_eq!(
            validate_name("name", bad).err().map(|e| e.field),
            Some("name"),
            "{bad:?}"
        );
    }
    Ok(())
}

#[test]
fn sign_ups_report_the_first_broken_field() {
    let base = || RawNewUser {
        email: "ada@example.com".into(),
        password: "long enough".into(),
        name: "Ada".into(),
    };
    let field = |raw: RawNewUser| raw.validate().err().map(|e| e.field);
    assert_eq!(field(base()), None);
    assert_eq!(
        field(RawNewUser {
            email: "nope".into(),
            ..base()
        }),
        Some("email")
    );
    assert_eq!(
        field(RawNewUser {
            password: "short".into(),
            ..base()
        }),
        Some("password")
    );
    assert_eq!(
        field(RawNewUser {
            name: " ".into(),
            ..base()
        }),
        Some("name")
    );
}

#[test]
fn roles_are_a_sorted_set_stored_as_one_column() -> Result<(), ValidationError> {
    let roles = Roles::new_account();
    assert_eq!(roles.as_slice(), ["user"]);
    let admin = roles.with("admin")?.with("admin")?;
    assert_eq!(admin.as_slice(), ["admin", "user"]);
    assert!(admin.contains("admin") && !roles.contains("admin"));
    assert_eq!(admin.to_column(), "admin,user");
    assert_eq!(Roles::from_column("user,admin,user")?, admin);
    assert_eq!(Roles::from_column("")?.as_slice(), [] as [String; 0]);
    assert!(Roles::from_column("user,Admin").is_err());
    assert!(roles.with("a,b").is_err());
    Ok(())
}

#[test]
fn ids_are_uuids_in_canonical_form() -> Result<(), ValidationError> {
    let id = UserId::generate();
    assert_eq!(UserId::parse("id", id.as_str())?, id);
    assert_eq!(
        UserId::parse("id", &id.as_str().to_uppercase())?,
        id,
        "upper case is the same id"
    );
    for bad in ["", "42", "not-a-uuid", "' OR 1=1 --"] {
        assert!(UserId::parse("id", bad).is_err(), "{bad:?}");
    }
    Ok(())
}
