//! Tests for the rule grammar and the layer (paused clock, injected draws).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tower::{Layer, ServiceExt};

use super::*;
use crate::config::Settings;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const GET_PRODUCT: &str = "flotilla.product.v1.ProductService/GetProduct";

fn only(rules: &FaultRules) -> Result<&FaultRule, String> {
    match rules.rules() {
        [rule] => Ok(rule),
        other => Err(format!("expected one rule, got {other:?}")),
    }
}

fn product_method(method: &str) -> FaultTarget {
    FaultTarget::Method {
        service: "flotilla.product.v1.ProductService".to_owned(),
        method: method.to_owned(),
    }
}

#[test]
fn an_abort_rule_parses() -> TestResult {
    let rules = FaultRules::parse(&format!("{GET_PRODUCT}=abort:unavailable:100%"))?;
    let rule = only(&rules)?;
    assert_eq!(rule.target, product_method("GetProduct"));
    assert_eq!(rule.action, FaultAction::Abort(Code::Unavailable));
    assert_eq!(rule.percent, 100.0);
    Ok(())
}

#[test]
fn codes_are_read_in_snake_or_upper_case() -> TestResult {
    for (name, code) in [
        ("unavailable", Code::Unavailable),
        ("UNAVAILABLE", Code::Unavailable),
        ("resource_exhausted", Code::ResourceExhausted),
        ("RESOURCE_EXHAUSTED", Code::ResourceExhausted),
        ("deadline_exceeded", Code::DeadlineExceeded),
        ("internal", Code::Internal),
    ] {
        let rules = FaultRules::parse(&format!("{GET_PRODUCT}=abort:{name}:50%"))?;
        assert_eq!(only(&rules)?.action, FaultAction::Abort(code), "{name}");
    }
    Ok(())
}

#[test]
fn a_delay_rule_with_a_decimal_percent_parses() -> TestResult {
    let rules = FaultRules::parse(&format!("{GET_PRODUCT}=delay:250ms:12.5%"))?;
    let rule = only(&rules)?;
    assert_eq!(rule.action, FaultAction::Delay(Duration::from_millis(250)));
    assert_eq!(rule.percent, 12.5);
    Ok(())
}

#[test]
fn a_service_wildcard_parses() -> TestResult {
    let rules = FaultRules::parse("flotilla.user.v1.UserService/*=delay:2s:0%")?;
    assert_eq!(
        only(&rules)?.target,
        FaultTarget::Service("flotilla.user.v1.UserService".to_owned())
    );
    Ok(())
}

#[test]
fn several_rules_with_whitespace_and_a_trailing_separator_parse_in_order() -> TestResult {
    let rules = FaultRules::parse(&format!(
        "  {GET_PRODUCT} = abort : not_found : 10 % ;\n flotilla.user.v1.UserService/* =delay: 1s :0.5%;"
    ))?;
    assert_eq!(rules.rules().len(), 2);
    assert_eq!(rules.rules()[0].action, FaultAction::Abort(Code::NotFound));
    assert_eq!(rules.rules()[0].percent, 10.0);
    assert_eq!(
        rules.rules()[1].target,
        FaultTarget::Service("flotilla.user.v1.UserService".to_owned())
    );
    assert_eq!(
        rules.rules()[1].action,
        FaultAction::Delay(Duration::from_secs(1))
    );
    assert_eq!(rules.rules()[1].percent, 0.5);
    Ok(())
}

#[test]
fn rules_print_back_in_their_own_grammar() -> TestResult {
    let text = format!("{GET_PRODUCT}=abort:resource_exhausted:100%;a.B/*=delay:250ms:0.5%");
    let rules = FaultRules::parse(&text)?;
    assert_eq!(rules.to_string(), text);
    assert_eq!(FaultRules::parse(&rules.to_string())?, rules);
    Ok(())
}

#[test]
fn each_kind_of_bad_rule_is_refused_with_the_rule_quoted() {
    for (bad, says) in [
        ("a.B/C", "no `=`"),
        ("a.B/C=", "action needs"),
        ("a.B/C=abort", "action needs"),
        ("a.B/C=abort:unavailable", "action needs"),
        ("a.B/C=explode:unavailable:10%", "unknown action"),
        ("a.B/C=abort:unavalable:10%", "unknown gRPC code"),
        ("a.B/C=abort:ok:10%", "OK is no fault"),
        ("a.B/C=abort:14:10%", "unknown gRPC code"),
        ("a.B/C=delay:250:10%", "not a duration"),
        ("a.B/C=delay:soon:10%", "not a duration"),
        ("a.B/C=delay:0s:10%", "zero"),
        ("a.B/C=abort:unavailable:10", "percentage"),
        ("a.B/C=abort:unavailable:101%", "percentage"),
        ("a.B/C=abort:unavailable:-1%", "percentage"),
        ("a.B/C=abort:unavailable:1e2%", "percentage"),
        ("a.B/C=abort:unavailable:inf%", "percentage"),
        ("a.B/C=abort:unavailable:.5%", "percentage"),
        ("a.B/C=abort:unavailable:%", "percentage"),
        ("/a.B/C=abort:unavailable:10%", "leading slash"),
        ("a.B=abort:unavailable:10%", "package.Service/Method"),
        ("a.B/=abort:unavailable:10%", "package.Service/Method"),
        ("/C=abort:unavailable:10%", "package.Service/Method"),
        ("a.B/C/D=abort:unavailable:10%", "package.Service/Method"),
        ("a.B/C*=abort:unavailable:10%", "package.Service/Method"),
        ("a B/C=abort:unavailable:10%", "package.Service/Method"),
    ] {
        match FaultRules::parse(bad) {
            Ok(rules) => panic!("{bad:?} parsed as {rules:?}"),
            Err(error) => {
                assert_eq!(error.rule, bad, "{bad:?}");
                assert!(
                    error.problem.contains(says),
                    "{bad:?}: {:?} does not say {says:?}",
                    error.problem
                );
            }
        }
    }
}

#[test]
fn one_bad_rule_among_good_ones_is_the_one_quoted() {
    let result = FaultRules::parse(&format!(
        "{GET_PRODUCT}=abort:unavailable:10%; a.B/C=delay:fast:5% ;a.B/D=abort:internal:1%"
    ));
    assert!(
        matches!(&result, Err(error) if error.rule == "a.B/C=delay:fast:5%"),
        "{result:?}"
    );
}

#[test]
fn unset_or_empty_setting_means_no_faults() -> TestResult {
    let unset = Settings::from_pairs(Vec::<(String, String)>::new());
    assert!(FaultRules::from_settings(&unset)?.is_empty());
    for empty in ["", "   "] {
        let settings = Settings::from_pairs([(FAULTS_VAR, empty)]);
        assert!(
            FaultRules::from_settings(&settings)?.is_empty(),
            "{empty:?}"
        );
        assert!(!FaultLayer::from_settings(&settings)?.is_active());
    }
    Ok(())
}

#[test]
fn the_setting_is_read() -> TestResult {
    let settings =
        Settings::from_pairs([(FAULTS_VAR, format!("{GET_PRODUCT}=abort:unavailable:100%"))]);
    let rules = FaultRules::from_settings(&settings)?;
    assert_eq!(only(&rules)?.action, FaultAction::Abort(Code::Unavailable));
    Ok(())
}

#[test]
fn a_bad_setting_names_the_variable_the_value_the_rule_and_the_grammar() {
    let value = format!("{GET_PRODUCT}=abort:unavailable:100%;a.B/C=abort:broken:5%");
    let settings = Settings::from_pairs([(FAULTS_VAR, value.clone())]);
    match FaultRules::from_settings(&settings) {
        Err(ConfigError::Invalid {
            name,
            value: shown,
            expected,
            ..
        }) => {
            assert_eq!(name, FAULTS_VAR);
            assert_eq!(shown, value);
            assert!(expected.contains("\"a.B/C=abort:broken:5%\""), "{expected}");
            assert!(expected.contains("unknown gRPC code"), "{expected}");
            assert!(expected.contains("=abort:unavailable:100%"), "{expected}");
            assert!(expected.contains("delay:<duration>"), "{expected}");
        }
        other => panic!("expected an invalid setting, got {other:?}"),
    }
}

/// An inner service counting its calls, answering an empty OK response.
fn counting() -> (
    Arc<AtomicUsize>,
    impl tower::Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let service = tower::service_fn(move |_request: http::Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty())) }
    });
    (calls, service)
}

fn request(path: &str) -> Result<http::Request<()>, http::Error> {
    http::Request::builder().uri(path).body(())
}

fn layer(rules: &str, draw: impl FaultDraw + 'static) -> Result<FaultLayer, FaultRuleError> {
    Ok(FaultLayer::with_draw(FaultRules::parse(rules)?, draw))
}

fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<&str> {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
}

#[tokio::test]
async fn a_certain_abort_never_calls_the_service_and_answers_the_code() -> TestResult {
    let (calls, inner) = counting();
    let service = layer(&format!("{GET_PRODUCT}=abort:unavailable:100%"), || 0.999)?.layer(inner);
    for _ in 0..5 {
        let response = service
            .clone()
            .oneshot(request(&format!("/{GET_PRODUCT}"))?)
            .await?;
        assert_eq!(grpc_status(&response), Some("14"));
        let status =
            tonic::Status::from_header_map(response.headers()).ok_or("no status in the headers")?;
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), FAULT_MESSAGE);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test]
async fn a_zero_percent_rule_always_calls_the_service() -> TestResult {
    let (calls, inner) = counting();
    let service = layer(&format!("{GET_PRODUCT}=abort:unavailable:0%"), || 0.0)?.layer(inner);
    for _ in 0..5 {
        let response = service
            .clone()
            .oneshot(request(&format!("/{GET_PRODUCT}"))?)
            .await?;
        assert_eq!(grpc_status(&response), None);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    Ok(())
}

#[tokio::test]
async fn the_share_of_aborted_calls_follows_the_percent() -> TestResult {
    let (calls, inner) = counting();
    // Draws 0.0, 0.1, ..., 0.9 in turn: a 30% rule fires on exactly the first three.
    let next = AtomicUsize::new(0);
    let draw = move || (next.fetch_add(1, Ordering::SeqCst) % 10) as f64 / 10.0;
    let service = layer(&format!("{GET_PRODUCT}=abort:internal:30%"), draw)?.layer(inner);
    let mut aborted = 0;
    for _ in 0..10 {
        let response = service
            .clone()
            .oneshot(request(&format!("/{GET_PRODUCT}"))?)
            .await?;
        if grpc_status(&response) == Some("13") {
            aborted += 1;
        }
    }
    assert_eq!(aborted, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_delay_waits_then_calls_the_service() -> TestResult {
    let (calls, inner) = counting();
    let service = layer(&format!("{GET_PRODUCT}=delay:250ms:100%"), || 0.5)?.layer(inner);
    let started = Instant::now();
    let response = service
        .oneshot(request(&format!("/{GET_PRODUCT}"))?)
        .await?;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(grpc_status(&response), None);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_delay_that_does_not_fire_adds_nothing() -> TestResult {
    let (calls, inner) = counting();
    let service = layer(&format!("{GET_PRODUCT}=delay:250ms:40%"), || 0.5)?.layer(inner);
    let started = Instant::now();
    service
        .oneshot(request(&format!("/{GET_PRODUCT}"))?)
        .await?;
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_delay_and_an_abort_on_one_method_wait_then_abort() -> TestResult {
    let (calls, inner) = counting();
    let service = layer(
        &format!("{GET_PRODUCT}=delay:1s:100%;{GET_PRODUCT}=abort:resource_exhausted:100%"),
        || 0.5,
    )?
    .layer(inner);
    let started = Instant::now();
    let response = service
        .oneshot(request(&format!("/{GET_PRODUCT}"))?)
        .await?;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(grpc_status(&response), Some("8"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test]
async fn other_paths_are_untouched() -> TestResult {
    let (calls, inner) = counting();
    let service = layer(&format!("{GET_PRODUCT}=abort:unavailable:100%"), || 0.0)?.layer(inner);
    for path in [
        "/flotilla.product.v1.ProductService/ListProducts",
        "/flotilla.product.v1.ProductServiceX/GetProduct",
        "/flotilla.product.v2.ProductService/GetProduct",
        "/grpc.health.v1.Health/Check",
        "/",
        "/flotilla.product.v1.ProductService",
    ] {
        let response = service.clone().oneshot(request(path)?).await?;
        assert_eq!(grpc_status(&response), None, "{path}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    Ok(())
}

#[tokio::test]
async fn a_service_wildcard_covers_every_method_of_that_service_only() -> TestResult {
    let (calls, inner) = counting();
    let service = layer(
        "flotilla.product.v1.ProductService/*=abort:unavailable:100%",
        || 0.0,
    )?
    .layer(inner);
    for method in ["GetProduct", "ListProducts", "CreateProduct"] {
        let path = format!("/flotilla.product.v1.ProductService/{method}");
        let response = service.clone().oneshot(request(&path)?).await?;
        assert_eq!(grpc_status(&response), Some("14"), "{path}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let response = service
        .oneshot(request("/flotilla.user.v1.UserService/GetUser")?)
        .await?;
    assert_eq!(grpc_status(&response), None);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn no_rules_pass_everything_through() -> TestResult {
    let (calls, inner) = counting();
    let layer = FaultLayer::new(FaultRules::none());
    assert!(!layer.is_active());
    let response = layer
        .layer(inner)
        .oneshot(request(&format!("/{GET_PRODUCT}"))?)
        .await?;
    assert_eq!(grpc_status(&response), None);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

/// The layer must fit where `serve` puts its layers: on tonic's server builder, over its routes.
#[test]
fn the_layer_fits_the_tonic_server_builder() {
    let _server = tonic::transport::Server::builder()
        .layer(FaultLayer::new(FaultRules::none()))
        .add_routes(tonic::service::Routes::default());
}
