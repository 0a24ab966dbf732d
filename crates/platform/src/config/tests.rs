use std::time::Duration;

use super::*;

#[test]
fn duration_accepts_human_forms() {
    let settings = Settings::from_pairs([("A", "15m"), ("B", "500ms"), ("C", "1h 30m")]);
    assert_eq!(
        settings.duration("A", Duration::ZERO).ok(),
        Some(Duration::from_secs(900))
    );
    assert_eq!(
        settings.duration("B", Duration::ZERO).ok(),
        Some(Duration::from_millis(500))
    );
    assert_eq!(
        settings.duration("C", Duration::ZERO).ok(),
        Some(Duration::from_secs(5400))
    );
    assert_eq!(
        settings.duration("UNSET", Duration::from_secs(7)).ok(),
        Some(Duration::from_secs(7))
    );
}

#[test]
fn bare_number_names_variable_value_and_form() {
    let settings = Settings::from_pairs([("FLOTILLA_DRAIN_TIMEOUT", "10")]);
    let error = settings
        .duration("FLOTILLA_DRAIN_TIMEOUT", Duration::ZERO)
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(error.contains("FLOTILLA_DRAIN_TIMEOUT=\"10\""), "{error}");
    assert!(error.contains("15m"), "{error}");
    assert!(error.contains("environment"), "{error}");
}

#[test]
fn unknown_unit_and_empty_value_are_errors() {
    let settings = Settings::from_pairs([("A", "10 fortnights"), ("B", "")]);
    assert!(settings.duration("A", Duration::ZERO).is_err());
    let error = settings
        .duration("B", Duration::ZERO)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("empty"), "{error}");
}

#[test]
fn socket_addr_and_url_are_checked() {
    let settings = Settings::from_pairs([
        ("GOOD_ADDR", "127.0.0.1:0"),
        ("BAD_ADDR", "localhost"),
        ("GOOD_URL", "http://127.0.0.1:50053"),
        ("BAD_URL", "127.0.0.1:50053"),
    ]);
    let fallback: SocketAddr = ([0, 0, 0, 0], 1).into();
    assert_eq!(
        settings.socket_addr("GOOD_ADDR", fallback).ok(),
        Some(([127, 0, 0, 1], 0).into())
    );
    let error = settings
        .socket_addr("BAD_ADDR", fallback)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("BAD_ADDR=\"localhost\"") && error.contains("IP:PORT"),
        "{error}"
    );
    assert!(
        settings
            .url("GOOD_URL", "http://x", &["http", "https"])
            .is_ok()
    );
    let error = settings
        .url("BAD_URL", "http://x", &["http", "https"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("http://"), "{error}");
}

#[test]
fn environment_wins_over_file_and_file_over_default() {
    let dir = tempfile::tempdir().ok();
    let dir = dir
        .as_ref()
        .map(|dir| dir.path().to_path_buf())
        .unwrap_or_default();
    let path = dir.join("flotilla.toml");
    std::fs::write(&path, "FLOTILLA_A = \"1s\"\nFLOTILLA_B = \"2s\"\n").ok();
    let mut settings = Settings::from_pairs([("FLOTILLA_A", "9s")]);
    settings.file = read_settings_file(&path).unwrap_or_default();
    settings.file_path = Some(path.clone());
    let settings = settings.with_default("FLOTILLA_C", "3s");
    assert_eq!(
        settings.duration("FLOTILLA_A", Duration::ZERO).ok(),
        Some(Duration::from_secs(9))
    );
    assert_eq!(
        settings.duration("FLOTILLA_B", Duration::ZERO).ok(),
        Some(Duration::from_secs(2))
    );
    assert_eq!(
        settings.duration("FLOTILLA_C", Duration::ZERO).ok(),
        Some(Duration::from_secs(3))
    );
    let origins: Vec<(String, Origin)> = settings
        .effective()
        .into_iter()
        .map(|s| (s.name, s.origin))
        .collect();
    assert_eq!(
        origins,
        vec![
            ("FLOTILLA_A".to_owned(), Origin::Environment),
            ("FLOTILLA_B".to_owned(), Origin::File(path)),
            ("FLOTILLA_C".to_owned(), Origin::Default),
        ]
    );
}

#[test]
fn unknown_file_keys_are_reported() {
    let dir = tempfile::tempdir().ok();
    let dir = dir
        .as_ref()
        .map(|dir| dir.path().to_path_buf())
        .unwrap_or_default();
    let path = dir.join("flotilla.toml");
    std::fs::write(&path, "FLOTILLA_DRAIN_TIMOUT = \"1s\"\n").ok();
    let settings = Settings::from_environment(Some(&path));
    let settings = settings.ok();
    let error = settings
        .as_ref()
        .and_then(|settings| {
            settings
                .reject_unknown_file_keys(&["FLOTILLA_DRAIN_TIMEOUT"])
                .err()
        })
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(error.contains("FLOTILLA_DRAIN_TIMOUT"), "{error}");
}

#[test]
fn nested_tables_in_the_file_are_refused() {
    let dir = tempfile::tempdir().ok();
    let dir = dir
        .as_ref()
        .map(|dir| dir.path().to_path_buf())
        .unwrap_or_default();
    let path = dir.join("flotilla.toml");
    std::fs::write(&path, "[product]\nport = 1\n").ok();
    let error = read_settings_file(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("flat"), "{error}");
}

#[test]
fn secrets_never_show() {
    let settings = Settings::from_pairs([
        ("JWT_SECRET", "a-very-secret-value"),
        ("DATABASE_URL", "postgres://app:hunter2@db:5432/app"),
    ]);
    let secret = settings.optional_secret("JWT_SECRET").ok().flatten();
    assert_eq!(format!("{secret:?}"), "Some(***)");
    assert_eq!(
        secret.as_ref().map(Secret::expose),
        Some("a-very-secret-value")
    );
    settings
        .url("DATABASE_URL", "sqlite://x", &["postgres", "sqlite"])
        .ok();
    let shown = format!("{:?}", settings.effective());
    assert!(
        !shown.contains("a-very-secret-value") && !shown.contains("hunter2"),
        "{shown}"
    );
    assert!(shown.contains("postgres://app:***@db:5432/app"), "{shown}");
}

#[test]
fn invalid_secret_is_not_echoed() {
    let settings = Settings::from_pairs([("FLOTILLA_ADMIN_PASSWORD_TIMEOUT", "hunter2")]);
    let error = settings
        .duration("FLOTILLA_ADMIN_PASSWORD_TIMEOUT", Duration::ZERO)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        !error.contains("hunter2") && error.contains("***"),
        "{error}"
    );
}

#[test]
fn url_secrets_are_redacted_wherever_they_sit() {
    let cases = [
        (
            "postgres://app:hunter2@db:5432/app",
            "postgres://app:***@db:5432/app",
        ),
        (
            "postgres://app:hun/ter?2@db/app",
            "postgres://app:***@db/app",
        ),
        (
            "postgres://app@db/app?password=hunter2&sslmode=require",
            "postgres://app@db/app?password=***&sslmode=require",
        ),
        (
            "postgres://app@db/app?sslkey=/k&application_name=x",
            "postgres://app@db/app?sslkey=***&application_name=x",
        ),
        (
            "sqlite://data/product.db?mode=rwc",
            "sqlite://data/product.db?mode=rwc",
        ),
        ("not a url", "not a url"),
    ];
    for (url, shown) in cases {
        assert_eq!(redact_url_password(url), shown, "{url}");
    }
}

#[test]
fn ip_lists_are_parsed_or_refused_by_entry() {
    let settings = Settings::from_pairs([("GOOD", "10.0.0.2, ::1"), ("BAD", "10.0.0.2,gateway")]);
    let good = settings.ip_addresses("GOOD", &[]).unwrap_or_default();
    assert_eq!(good.len(), 2);
    let error = settings
        .ip_addresses("BAD", &[])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("BAD=\"10.0.0.2,gateway\"") && error.contains("IP addresses"),
        "{error}"
    );
    assert_eq!(settings.ip_addresses("UNSET", &[]).ok(), Some(Vec::new()));
    let loopback: std::net::IpAddr = [127, 0, 0, 1].into();
    let empty = Settings::from_pairs([("NONE", " ")]);
    assert_eq!(
        empty.ip_addresses("NONE", &[loopback]).ok(),
        Some(Vec::new()),
        "empty means none"
    );
    let shown = settings
        .effective()
        .into_iter()
        .find(|s| s.name == "GOOD")
        .map(|s| s.value);
    assert_eq!(shown.as_deref(), Some("10.0.0.2, ::1"));
}

#[test]
fn host_port_lists_keep_names_and_refuse_what_has_no_port() {
    let settings = Settings::from_pairs([
        ("GOOD", "http://10.0.0.2:50053, product-2:50053,[::1]:7"),
        ("NO_PORT", "product"),
        ("HTTPS", "https://product:443"),
        ("PATH", "product:50053/x"),
        ("ZERO", "product:0"),
    ]);
    assert_eq!(
        settings.host_ports("GOOD", &[]).ok(),
        Some(vec![
            "10.0.0.2:50053".to_owned(),
            "product-2:50053".to_owned(),
            "[::1]:7".to_owned()
        ])
    );
    for bad in ["NO_PORT", "HTTPS", "PATH", "ZERO"] {
        let error = settings
            .host_ports(bad, &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains(bad) && error.contains("HOST:PORT"),
            "{error}"
        );
    }
    assert_eq!(
        settings.host_ports("UNSET", &["127.0.0.1:50053"]).ok(),
        Some(vec!["127.0.0.1:50053".to_owned()])
    );
}

#[test]
fn optional_ips_are_none_when_unset_and_refused_when_not_an_address() {
    let settings = Settings::from_pairs([("GOOD", "10.0.0.7"), ("BAD", "my-host")]);
    assert_eq!(
        settings.optional_ip("GOOD").ok(),
        Some(Some([10, 0, 0, 7].into()))
    );
    assert_eq!(settings.optional_ip("UNSET").ok(), Some(None));
    assert!(settings.optional_ip("BAD").is_err());
    let shown = settings
        .effective()
        .into_iter()
        .find(|s| s.name == "UNSET")
        .map(|s| s.value);
    assert_eq!(shown.as_deref(), Some("(not set)"));
}
