//! The binary's settings handling, as a person meets it at the command line.

use std::process::Command;

use crate::{TestResult, binary};

#[test]
fn a_bad_setting_stops_the_start_with_exit_64_and_a_clear_message() -> TestResult {
    for (name, value, expected) in [
        ("FLOTILLA_DRAIN_TIMEOUT", "10", "15m"),
        (
            "OTEL_TRACES_SAMPLER",
            "sometimes",
            "parentbased_traceidratio",
        ),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4317", "http://"),
    ] {
        let dir = tempfile::tempdir()?;
        let output = Command::new(binary())
            .args(["up", "--data-dir"])
            .arg(dir.path())
            .env(name, value)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{name}=\"{value}\"")),
            "the variable and its value are named: {stderr}"
        );
        assert!(
            stderr.contains(expected),
            "the expected form is shown: {stderr}"
        );
        assert!(
            !dir.path().join("product.db").exists(),
            "nothing starts on a bad setting ({name})"
        );
    }
    Ok(())
}

#[test]
fn generate_key_writes_a_private_key_once() -> TestResult {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("keys/jwt.pem");
    let generate = || {
        Command::new(binary())
            .arg("generate-key")
            .arg(&path)
            .output()
    };
    let output = generate()?;
    assert!(output.status.success(), "{output:?}");
    let key = std::fs::read_to_string(&path)?;
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    assert_eq!(
        std::fs::metadata(&path)?.permissions().mode() & 0o777,
        0o600
    );
    // A second run keeps the key that is there.
    assert!(generate()?.status.success());
    assert_eq!(std::fs::read_to_string(&path)?, key);
    Ok(())
}

/// `flotilla config --component product --config <file holding file_text>`, with a database
/// password and a drain timeout in the environment.
fn config_of_product(
    file_text: &str,
) -> Result<std::process::Output, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("flotilla.toml");
    std::fs::write(&file, file_text)?;
    Ok(Command::new(binary())
        .args(["config", "--component", "product", "--config"])
        .arg(&file)
        .env("DATABASE_URL", "postgres://app:hunter2@db:5432/product")
        .env("FLOTILLA_DRAIN_TIMEOUT", "30s")
        .output()?)
}

#[test]
fn config_refuses_misspelt_names_in_the_file() -> TestResult {
    let output = config_of_product("FLOTILLA_GATEWAY_TIMOUT = \"5s\"\n")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("FLOTILLA_GATEWAY_TIMOUT"), "{stderr}");
    Ok(())
}

#[test]
fn config_prints_effective_settings_with_secrets_redacted() -> TestResult {
    // One file can serve several components: the gateway's setting is accepted by the product.
    let output = config_of_product(
        "FLOTILLA_DRAIN_TIMEOUT = \"20s\"\nFLOTILLA_PRODUCT_GRPC_ADDR = \"0.0.0.0:6000\"\nFLOTILLA_GATEWAY_TIMEOUT = \"5s\"\n",
    )?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("DATABASE_URL=postgres://app:***@db:5432/product  # environment"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("FLOTILLA_DRAIN_TIMEOUT=30s  # environment"),
        "the environment wins: {stdout}"
    );
    assert!(
        stdout.contains("FLOTILLA_PRODUCT_GRPC_ADDR=0.0.0.0:6000  # file"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FLOTILLA_PRODUCT_ADMIN_ADDR=0.0.0.0:9083  # default"),
        "{stdout}"
    );
    Ok(())
}
