//! Per-route deadlines: every API request runs inside the deadline of its route, and every call its
//! handler makes to a service inherits what is left of it as `grpc-timeout`
//! ([`platform::resilience::deadline`]), through retries and across hops.
//!
//! One default for every route (`FLOTILLA_GATEWAY_TIMEOUT`, 3 s as go-zero's REST default), and
//! overrides for single routes (`FLOTILLA_GATEWAY_ROUTE_TIMEOUTS`), such as a longer one for a
//! login that hashes a password, or a short one for a read that is useless when late:
//!
//! ```text
//! FLOTILLA_GATEWAY_ROUTE_TIMEOUTS='POST /v1/auth/login=5s; GET /v1/products/{id}=500ms'
//! ```
//!
//! Routes are named as the OpenAPI document names them (method and path template); an override
//! for a route the gateway does not have is refused at start, so a typo cannot quietly do nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use platform::config::{ConfigError, Settings};
use tokio::time::Instant;
use utoipa::OpenApi;

/// The default deadline's variable.
pub const TIMEOUT_VAR: &str = "FLOTILLA_GATEWAY_TIMEOUT";
/// The per-route overrides' variable.
pub const ROUTE_TIMEOUTS_VAR: &str = "FLOTILLA_GATEWAY_ROUTE_TIMEOUTS";
/// The default deadline of a request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// The deadline of each route: a default and overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDeadlines {
    default: Duration,
    /// By (method, path template).
    by_route: BTreeMap<(String, String), Duration>,
}

impl RouteDeadlines {
    /// `default` for every route.
    pub fn uniform(default: Duration) -> Self {
        Self {
            default,
            by_route: BTreeMap::new(),
        }
    }

    /// Reads `FLOTILLA_GATEWAY_TIMEOUT` (default 3 s) and `FLOTILLA_GATEWAY_ROUTE_TIMEOUTS`
    /// (`METHOD /path/{template}=duration`, separated by `;`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the variable: a timeout that is not a positive duration,
    /// an override that does not parse, or one for a route the gateway does not serve (the
    /// message lists the routes).
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let default = settings.duration(TIMEOUT_VAR, DEFAULT_TIMEOUT)?;
        if default.is_zero() {
            return Err(invalid(settings, TIMEOUT_VAR, "0s", "a positive duration"));
        }
        let text = settings.string(ROUTE_TIMEOUTS_VAR, "")?;
        let by_route = parse(&text, &api_routes())
            .map_err(|expected| invalid(settings, ROUTE_TIMEOUTS_VAR, &text, &expected))?;
        Ok(Self { default, by_route })
    }

    /// The deadline of `method` on the route `template` (`None`: no route matched).
    pub fn for_route(&self, method: &str, template: Option<&str>) -> Duration {
        template
            .and_then(|template| {
                self.by_route
                    .get(&(method.to_owned(), template.to_owned()))
                    .copied()
            })
            .unwrap_or(self.default)
    }
}

impl Default for RouteDeadlines {
    fn default() -> Self {
        Self::uniform(DEFAULT_TIMEOUT)
    }
}

/// Runs the request inside its route's deadline.
pub(crate) async fn within_route_deadline(
    State(deadlines): State<RouteDeadlines>,
    request: Request,
    next: Next,
) -> Response {
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let timeout = deadlines.for_route(request.method().as_str(), template);
    let deadline = Instant::now().checked_add(timeout);
    platform::resilience::deadline::scope(deadline, next.run(request)).await
}

/// Every (method, path template) of the API, from its OpenAPI document.
fn api_routes() -> Vec<(String, String)> {
    let document = crate::openapi::ApiDoc::openapi();
    let mut routes = Vec::new();
    for (path, item) in &document.paths.paths {
        let methods = [
            ("GET", item.get.is_some()),
            ("POST", item.post.is_some()),
            ("PUT", item.put.is_some()),
            ("PATCH", item.patch.is_some()),
            ("DELETE", item.delete.is_some()),
        ];
        for (method, present) in methods {
            if present {
                routes.push((method.to_owned(), path.clone()));
            }
        }
    }
    routes
}

/// Parses the overrides against the known `routes`; the error says what was expected.
fn parse(
    text: &str,
    routes: &[(String, String)],
) -> Result<BTreeMap<(String, String), Duration>, String> {
    let mut by_route = BTreeMap::new();
    for rule in text
        .split(';')
        .map(str::trim)
        .filter(|rule| !rule.is_empty())
    {
        let form = || {
            format!("rules like `POST /v1/auth/login=5s`, separated by `;`; `{rule}` is not one")
        };
        let (route, timeout) = rule.split_once('=').ok_or_else(form)?;
        let (method, path) = route.trim().split_once(' ').ok_or_else(form)?;
        let key = (method.trim().to_ascii_uppercase(), path.trim().to_owned());
        if !routes.contains(&key) {
            let known: Vec<String> = routes
                .iter()
                .map(|(method, path)| format!("{method} {path}"))
                .collect();
            return Err(format!(
                "routes the gateway serves ({}); `{} {}` is not one",
                known.join(", "),
                key.0,
                key.1
            ));
        }
        let timeout = humantime::parse_duration(timeout.trim())
            .ok()
            .filter(|timeout| !timeout.is_zero())
            .ok_or_else(|| format!("a positive duration such as 500ms or 5s for `{rule}`"))?;
        by_route.insert(key, timeout);
    }
    Ok(by_route)
}

fn invalid(settings: &Settings, name: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        value: value.to_owned(),
        origin: settings.origin(name),
        expected: expected.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn overrides_apply_to_their_route_and_the_default_to_the_rest() -> TestResult {
        let settings = Settings::from_pairs([
            (TIMEOUT_VAR, "2s"),
            (
                ROUTE_TIMEOUTS_VAR,
                "POST /v1/auth/login=5s; get /v1/products/{id}=500ms;",
            ),
        ]);
        let deadlines = RouteDeadlines::from_settings(&settings)?;
        assert_eq!(
            deadlines.for_route("POST", Some("/v1/auth/login")),
            Duration::from_secs(5)
        );
        assert_eq!(
            deadlines.for_route("GET", Some("/v1/products/{id}")),
            Duration::from_millis(500)
        );
        assert_eq!(
            deadlines.for_route("PATCH", Some("/v1/products/{id}")),
            Duration::from_secs(2)
        );
        assert_eq!(deadlines.for_route("GET", None), Duration::from_secs(2));
        let defaults =
            RouteDeadlines::from_settings(&Settings::from_pairs(Vec::<(&str, &str)>::new()))?;
        assert_eq!(defaults, RouteDeadlines::default());
        Ok(())
    }

    #[test]
    fn a_route_the_gateway_does_not_serve_or_a_bad_rule_is_refused() {
        for bad in [
            "GET /v1/product/{id}=1s",
            "GET /v1/products/{id}",
            "/v1/products=1s",
            "GET /v1/products=soon",
            "GET /v1/products=0s",
        ] {
            let settings = Settings::from_pairs([(ROUTE_TIMEOUTS_VAR, bad)]);
            match RouteDeadlines::from_settings(&settings) {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, ROUTE_TIMEOUTS_VAR),
                other => panic!("{bad}: expected an error, got {other:?}"),
            }
        }
        let unknown = parse("GET /v1/product/{id}=1s", &api_routes()).err();
        assert!(
            unknown.is_some_and(|message| message.contains("GET /v1/products/{id}")),
            "the message lists the routes"
        );
    }

    #[test]
    fn the_api_routes_come_from_the_openapi_document() {
        let routes = api_routes();
        for route in [
            ("GET", "/v1/products/{id}"),
            ("POST", "/v1/auth/login"),
            ("DELETE", "/v1/products/{id}"),
        ] {
            assert!(
                routes.contains(&(route.0.to_owned(), route.1.to_owned())),
                "{route:?}"
            );
        }
    }
}
