//! The HTTP API: the subset of Consul's that Flotilla uses, routed with axum.
//!
//! | Method | Path | Consul's page |
//! | --- | --- | --- |
//! | `PUT` | `/v1/agent/service/register` | agent/service, Register Service |
//! | `PUT` | `/v1/agent/service/deregister/{service_id}` | agent/service, Deregister Service |
//! | `PUT` | `/v1/agent/check/{pass,warn,fail}/{check_id}` (`?note=`) | agent/check, TTL Check Pass/Warn/Fail |
//! | `GET` | `/v1/agent/services` | agent/service, List Services |
//! | `GET` | `/v1/agent/checks` | agent/check, List Checks |
//! | `GET` | `/v1/health/service/{service}` (`passing`, `tag`, blocking) | health, List Service Instances |
//! | `GET` | `/v1/catalog/services` (blocking) | catalog, List Services |
//! | `GET` | `/v1/status/leader` | status, Get Raft Leader |
//!
//! **Blocking queries** (Consul's `features/blocking` page): `index` and `wait` (Go durations,
//! default 5 min, at most 10 min, plus a random jitter of up to `wait/16`). A query answers at once
//! when `index` is 0 or differs from the current index, else when the index moves or `wait` runs
//! out, with the same body shape either way. Malformed values answer 400 `Invalid wait time` or
//! `Invalid index`, as Consul does. While the registry drains for shutdown, blocking queries answer
//! at once.
//!
//! **Every answer carries `X-Consul-Index`** (the global index unless the endpoint has its own),
//! never 0. Errors are plain text with Consul's wording ([`crate::error`]); unknown paths and
//! methods answer as Consul does (404 `Invalid URL path…`, 405 `method GET not allowed`).

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Serialize;

use crate::decode;
use crate::domain::Status;
use crate::error::ApiError;
use crate::registry::Registry;

/// The largest request body accepted (a registration is a few kilobytes).
pub const BODY_LIMIT: usize = 1024 * 1024;
/// How long a blocking query waits when `wait` is unset (Consul's default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// The longest a blocking query waits (Consul's limit).
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// The query string as pairs, in order (repeated keys kept, as `tag` needs).
type Params = Query<Vec<(String, String)>>;

/// The registry's HTTP API over `registry`, without a socket (tests drive it with `oneshot`).
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v1/agent/service/register", put(register))
        .route(
            "/v1/agent/service/deregister/{*service_id}",
            put(deregister),
        )
        .route("/v1/agent/check/pass/{*check_id}", put(pass))
        .route("/v1/agent/check/warn/{*check_id}", put(warn))
        .route("/v1/agent/check/fail/{*check_id}", put(fail))
        .route("/v1/agent/services", get(agent_services))
        .route("/v1/agent/checks", get(agent_checks))
        .route("/v1/health/service/", get(missing_service_name))
        .route("/v1/health/service/{*service}", get(health_service))
        .route("/v1/catalog/services", get(catalog_services))
        .route("/v1/status/leader", get(leader))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response_with_state(
            registry.clone(),
            with_index,
        ))
        .with_state(registry)
}

async fn register(State(registry): State<Registry>, body: Bytes) -> Result<(), ApiError> {
    let definition = decode::service_registration(&body)?.validate()?;
    registry.register(definition).await?;
    Ok(())
}

async fn deregister(
    State(registry): State<Registry>,
    Path(service_id): Path<String>,
) -> Result<(), ApiError> {
    registry.deregister(&service_id).await?;
    Ok(())
}

async fn pass(
    State(registry): State<Registry>,
    Path(check_id): Path<String>,
    Query(params): Params,
) -> Result<(), ApiError> {
    report(&registry, &check_id, Status::Passing, &params).await
}

async fn warn(
    State(registry): State<Registry>,
    Path(check_id): Path<String>,
    Query(params): Params,
) -> Result<(), ApiError> {
    report(&registry, &check_id, Status::Warning, &params).await
}

async fn fail(
    State(registry): State<Registry>,
    Path(check_id): Path<String>,
    Query(params): Params,
) -> Result<(), ApiError> {
    report(&registry, &check_id, Status::Critical, &params).await
}

async fn report(
    registry: &Registry,
    check_id: &str,
    status: Status,
    params: &[(String, String)],
) -> Result<(), ApiError> {
    let note = first(params, "note").unwrap_or_default();
    registry.report_ttl(check_id, status, note).await?;
    Ok(())
}

async fn agent_services(State(registry): State<Registry>) -> Response {
    json(
        StatusCode::OK,
        &registry.view(|catalog, node| catalog.agent_services(node)),
    )
}

async fn agent_checks(State(registry): State<Registry>) -> Response {
    json(
        StatusCode::OK,
        &registry.view(|catalog, node| catalog.agent_checks(node)),
    )
}

async fn health_service(
    State(registry): State<Registry>,
    Path(service): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let blocking = BlockingQuery::parse(&params)?;
    check_datacenter(&registry, &params)?;
    let passing = bool_param(&params, "passing")
        .map_err(|()| ApiError::bad_request("Invalid value for ?passing"))?;
    let tags: Vec<String> = params
        .iter()
        .filter(|(key, _)| key == "tag")
        .map(|(_, value)| value.clone())
        .collect();
    let (index, entries) = registry
        .blocking(blocking.index, blocking.wait, |catalog, node| {
            catalog.health(node, &service, passing, &tags)
        })
        .await;
    Ok(blocking_json(index, &entries))
}

/// Consul's answer to a health query without a name.
async fn missing_service_name() -> ApiError {
    ApiError::bad_request("Missing service name")
}

async fn catalog_services(
    State(registry): State<Registry>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    let blocking = BlockingQuery::parse(&params)?;
    check_datacenter(&registry, &params)?;
    let (index, services) = registry
        .blocking(blocking.index, blocking.wait, |catalog, _| {
            catalog.catalog_services()
        })
        .await;
    Ok(blocking_json(index, &services))
}

async fn leader(State(registry): State<Registry>) -> Response {
    json(StatusCode::OK, &registry.leader())
}

async fn not_found(uri: Uri) -> ApiError {
    let message = if uri.path().contains("/v1/") {
        "Invalid URL path: not a recognized HTTP API endpoint\n"
    } else {
        "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
    };
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: message.to_owned(),
    }
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!("method {method} not allowed"),
    }
}

/// Adds `X-Consul-Index` to every answer that does not carry its own.
async fn with_index(State(registry): State<Registry>, mut response: Response) -> Response {
    if !response.headers().contains_key(CONSUL_INDEX) {
        response
            .headers_mut()
            .insert(CONSUL_INDEX, HeaderValue::from(registry.index().max(1)));
    }
    response
}

const CONSUL_INDEX: &str = "x-consul-index";

/// `index` and `wait` of a blocking query, with the jitter already added to `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockingQuery {
    index: u64,
    wait: Duration,
}

impl BlockingQuery {
    /// Consul's `parseWait`: `Invalid wait time` and `Invalid index` for values Go cannot parse;
    /// a wait of zero or less is the default, one above the limit is the limit.
    fn parse(params: &[(String, String)]) -> Result<Self, ApiError> {
        let mut wait = DEFAULT_WAIT;
        if let Some(text) = first(params, "wait").filter(|text| !text.is_empty()) {
            let nanos = crate::duration::parse(text)
                .map_err(|_| ApiError::bad_request("Invalid wait time"))?;
            wait = crate::duration::positive(nanos)
                .unwrap_or(DEFAULT_WAIT)
                .min(MAX_WAIT);
        }
        let mut index = 0;
        if let Some(text) = first(params, "index").filter(|text| !text.is_empty()) {
            index = text
                .parse::<u64>()
                .ok()
                .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ApiError::bad_request("Invalid index"))?;
        }
        Ok(Self {
            index,
            wait: wait + jitter(wait / 16),
        })
    }
}

/// A random duration below `ceiling` (Consul's `lib.RandomStagger`), to spread the wake-ups of
/// concurrent blocking queries.
fn jitter(ceiling: Duration) -> Duration {
    let fraction = getrandom::u32().map_or(0.0, |value| f64::from(value) / f64::from(u32::MAX));
    ceiling.mul_f64(fraction.min(0.999_999))
}

/// The first value of `key` (Go's `url.Values.Get`).
fn first<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// Consul's `getBoolQueryParam`: absent is false, present and empty is true, else Go's
/// `strconv.ParseBool`.
fn bool_param(params: &[(String, String)], key: &str) -> Result<bool, ()> {
    match first(params, key) {
        None | Some("") => Ok(first(params, key).is_some()),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
        Some(_) => Err(()),
    }
}

/// There is one datacenter: asking for another is Consul's 500 `No path to datacenter`; a `filter`
/// expression is refused rather than ignored (this registry does not evaluate them).
fn check_datacenter(registry: &Registry, params: &[(String, String)]) -> Result<(), ApiError> {
    if let Some(dc) = first(params, "dc").filter(|dc| !dc.is_empty())
        && dc != registry.node().datacenter
    {
        return Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "No path to datacenter".to_owned(),
        });
    }
    if first(params, "filter").is_some_and(|filter| !filter.is_empty()) {
        return Err(ApiError::bad_request(
            "Failed to create boolean expression evaluator: filter expressions are not supported by the embedded registry",
        ));
    }
    Ok(())
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(error) => ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: error.to_string(),
        }
        .into_response(),
    }
}

/// A blocking endpoint's answer: JSON with Consul's query metadata headers.
fn blocking_json<T: Serialize + ?Sized>(index: u64, value: &T) -> Response {
    let mut response = json(StatusCode::OK, value);
    let headers = response.headers_mut();
    headers.insert(CONSUL_INDEX, HeaderValue::from(index.max(1)));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn blocking_parameters_follow_consul() -> Result<(), ApiError> {
        let default = BlockingQuery::parse(&params(&[]))?;
        assert_eq!(default.index, 0);
        assert!(default.wait >= DEFAULT_WAIT && default.wait < DEFAULT_WAIT + DEFAULT_WAIT / 16);
        let capped = BlockingQuery::parse(&params(&[("wait", "1h"), ("index", "7")]))?;
        assert_eq!(capped.index, 7);
        assert!(capped.wait >= MAX_WAIT && capped.wait < MAX_WAIT + MAX_WAIT / 16);
        let short = BlockingQuery::parse(&params(&[("wait", "160ms")]))?;
        assert!(
            short.wait >= Duration::from_millis(160) && short.wait < Duration::from_millis(170)
        );
        for (key, value, message) in [
            ("wait", "10", "Invalid wait time"),
            ("wait", "soon", "Invalid wait time"),
            ("index", "-1", "Invalid index"),
            ("index", "+1", "Invalid index"),
            ("index", "x", "Invalid index"),
        ] {
            assert_eq!(
                BlockingQuery::parse(&params(&[(key, value)])).map_err(|e| e.message),
                Err(message.to_owned())
            );
        }
        Ok(())
    }

    #[test]
    fn bool_parameters_follow_consul() {
        assert_eq!(bool_param(&params(&[]), "passing"), Ok(false));
        assert_eq!(bool_param(&params(&[("passing", "")]), "passing"), Ok(true));
        assert_eq!(
            bool_param(&params(&[("passing", "T")]), "passing"),
            Ok(true)
        );
        assert_eq!(
            bool_param(&params(&[("passing", "0")]), "passing"),
            Ok(false)
        );
        assert_eq!(
            bool_param(&params(&[("passing", "yes")]), "passing"),
            Err(())
        );
    }
}
