//! Fault injection on the server, in the manner of Envoy's HTTP fault filter: abort a share of the
//! calls to a method with a gRPC code, or delay them, so the callers' breakers, retries, deadlines
//! and load shedding can be seen working against a real deployment.
//!
//! **Off by default.** Nothing is injected unless `FLOTILLA_FAULTS` names rules; unset or empty,
//! [`FaultLayer`] passes every call straight through (one branch, no allocation).
//!
//! # Grammar
//!
//! Rules are separated by `;`; whitespace around rules and their parts is ignored:
//!
//! ```text
//! rule   = target "=" action
//! target = package.Service/Method | package.Service/*
//! action = "abort:" code ":" percent "%" | "delay:" duration ":" percent "%"
//! ```
//!
//! - the target is the gRPC path without its leading slash; `package.Service/*` is every method
//!   of the service;
//! - `code` is a gRPC code name in snake or upper case (`unavailable`, `RESOURCE_EXHAUSTED`); `ok`
//!   is refused, since it is no fault;
//! - `duration` is a humantime duration above zero (`250ms`, `2s`);
//! - `percent` is 0 to 100, decimals allowed (`0.5%`).
//!
//! For example
//! `flotilla.product.v1.ProductService/GetProduct=abort:unavailable:100%;flotilla.user.v1.UserService/*=delay:250ms:10%`.
//!
//! Every rule that matches a call is drawn on its own, as Envoy applies both of its faults: the
//! delays that fire add up and come first, then the call is aborted if an abort fired (the first
//! one, in the order written), else it is served. An aborted call never reaches the service.
//!
//! Randomness: `fastrand`'s thread-local generator, seeded from the operating system; fairness
//! matters here, secrecy does not. Tests inject their own [`FaultDraw`].

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either, Ready};
use tonic::{Code, Status};

use crate::config::{ConfigError, Settings};

/// The setting holding the rules.
pub const FAULTS_VAR: &str = "FLOTILLA_FAULTS";

/// The message every injected abort carries, so nobody mistakes it for a real failure.
pub const FAULT_MESSAGE: &str = "fault injected by FLOTILLA_FAULTS";

/// The grammar with an example, as shown in every error about a bad rule.
const EXPECTED_FORM: &str = "rules separated by `;`, each `<package.Service/Method or \
     package.Service/*>=abort:<grpc code>:<percent>%` or `...=delay:<duration>:<percent>%`, such as \
     flotilla.product.v1.ProductService/GetProduct=abort:unavailable:100%;\
     flotilla.product.v1.ProductService/*=delay:250ms:10%";

/// Which calls a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultTarget {
    /// One method: `package.Service/Method`.
    Method {
        /// The fully qualified service name, `package.Service`.
        service: String,
        /// The method name.
        method: String,
    },
    /// Every method of a service: `package.Service/*`.
    Service(String),
}

impl FaultTarget {
    /// Whether a call to `service`/`method` is one of this target's.
    fn matches(&self, service: &str, method: &str) -> bool {
        match self {
            FaultTarget::Method {
                service: own_service,
                method: own_method,
            } => own_service == service && own_method == method,
            FaultTarget::Service(own_service) => own_service == service,
        }
    }
}

impl fmt::Display for FaultTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultTarget::Method { service, method } => write!(f, "{service}/{method}"),
            FaultTarget::Service(service) => write!(f, "{service}/*"),
        }
    }
}

/// What a rule does to a call it fires on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer at once with this gRPC code, without calling the service.
    Abort(Code),
    /// Wait this long, then call the service.
    Delay(Duration),
}

impl fmt::Display for FaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultAction::Abort(code) => write!(f, "abort:{}", code_name(*code)),
            FaultAction::Delay(delay) => {
                write!(f, "delay:{}", humantime::format_duration(*delay))
            }
        }
    }
}

/// One parsed rule: a target, an action, and the share of matching calls it fires on.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// The calls it applies to.
    pub target: FaultTarget,
    /// What it does.
    pub action: FaultAction,
    /// The share of matching calls it fires on, in percent (0 to 100).
    pub percent: f64,
}

impl FaultRule {
    /// Whether the rule fires on one call, given a uniform draw in `[0, 1)`.
    fn fires(&self, draw: &dyn FaultDraw) -> bool {
        let fraction = self.percent / 100.0;
        // 0% and 100% are certain: no draw, so they hold whatever the random source does.
        fraction >= 1.0 || (fraction > 0.0 && draw.draw() < fraction)
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}%", self.target, self.action, self.percent)
    }
}

/// The fault rules of one server, from `FLOTILLA_FAULTS`; empty means no faults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultRules {
    rules: Vec<FaultRule>,
}

impl FaultRules {
    /// No rules: nothing is injected.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads `FLOTILLA_FAULTS`; unset or empty means no rules.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `FLOTILLA_FAULTS`, quoting the first bad rule and what is
    /// wrong with it, and showing the grammar with an example.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let value = match settings.string(FAULTS_VAR, "") {
            Ok(value) => value,
            // `Settings::string` refuses an empty value; here empty means "no faults", as unset.
            Err(ConfigError::Invalid { value, .. }) if value.trim().is_empty() => String::new(),
            Err(error) => return Err(error),
        };
        Self::parse(&value).map_err(|error| ConfigError::Invalid {
            name: FAULTS_VAR.to_owned(),
            value: value.clone(),
            origin: settings.origin(FAULTS_VAR),
            expected: format!("{EXPECTED_FORM} (rule {:?}: {})", error.rule, error.problem),
        })
    }

    /// Parses rules written in the grammar of the module documentation.
    ///
    /// # Errors
    /// A [`FaultRuleError`] quoting the first bad rule.
    pub fn parse(text: &str) -> Result<Self, FaultRuleError> {
        let rules = text
            .split(';')
            .map(str::trim)
            // A trailing or doubled `;` is harmless.
            .filter(|rule| !rule.is_empty())
            .map(|rule| {
                parse_rule(rule).map_err(|problem| FaultRuleError {
                    rule: rule.to_owned(),
                    problem,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules })
    }

    /// Whether there are no rules (fault injection is off).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, in the order written.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// What to do to a call on `path` (`/package.Service/Method`), drawing each matching rule.
    fn decide(&self, path: &str, draw: &dyn FaultDraw) -> Decision {
        let mut decision = Decision::default();
        let Some((service, method)) = path.strip_prefix('/').and_then(|path| path.split_once('/'))
        else {
            return decision;
        };
        for rule in &self.rules {
            if !rule.target.matches(service, method) || !rule.fires(draw) {
                continue;
            }
            match rule.action {
                FaultAction::Delay(delay) => {
                    decision.delay = decision.delay.saturating_add(delay);
                }
                FaultAction::Abort(code) => {
                    decision.abort = decision.abort.or(Some(code));
                }
            }
        }
        decision
    }
}

impl fmt::Display for FaultRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, rule) in self.rules.iter().enumerate() {
            if index > 0 {
                f.write_str(";")?;
            }
            write!(f, "{rule}")?;
        }
        Ok(())
    }
}

/// A bad rule: the rule as written and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault rule {rule:?}: {problem}")]
pub struct FaultRuleError {
    /// The rule as written (trimmed).
    pub rule: String,
    /// What is wrong with it.
    pub problem: String,
}

/// A source of uniform draws in `[0, 1)`, deciding whether a rule fires; injectable so tests are
/// deterministic. Any `Fn() -> f64 + Send + Sync` is one.
pub trait FaultDraw: Send + Sync {
    /// The next draw, in `[0, 1)`.
    fn draw(&self) -> f64;
}

impl<F> FaultDraw for F
where
    F: Fn() -> f64 + Send + Sync,
{
    fn draw(&self) -> f64 {
        self()
    }
}

/// Server-side fault injection, as a tower layer for `tonic::transport::Server::builder().layer`.
#[derive(Clone)]
pub struct FaultLayer {
    /// `None` when there are no rules, so the pass-through is one branch.
    shared: Option<Arc<Shared>>,
}

struct Shared {
    rules: FaultRules,
    draw: Box<dyn FaultDraw>,
}

impl fmt::Debug for FaultLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultLayer")
            .field("rules", &self.shared.as_ref().map(|shared| &shared.rules))
            .finish_non_exhaustive()
    }
}

impl FaultLayer {
    /// A layer injecting `rules` with the default random source (`GrpcServer` logs the active
    /// rules when it installs it).
    pub fn new(rules: FaultRules) -> Self {
        Self::with_draw(rules, fastrand::f64)
    }

    /// Reads `FLOTILLA_FAULTS` and builds the layer (a pass-through when it is unset or empty).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a bad rule, as [`FaultRules::from_settings`].
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        FaultRules::from_settings(settings).map(Self::new)
    }

    /// A layer injecting `rules`, deciding with `draw`: what tests use.
    pub fn with_draw(rules: FaultRules, draw: impl FaultDraw + 'static) -> Self {
        if rules.is_empty() {
            return Self { shared: None };
        }
        Self {
            shared: Some(Arc::new(Shared {
                rules,
                draw: Box::new(draw),
            })),
        }
    }

    /// Whether the layer injects anything.
    pub fn is_active(&self) -> bool {
        self.shared.is_some()
    }
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`FaultLayer`] makes.
#[derive(Clone)]
pub struct FaultService<S> {
    inner: S,
    shared: Option<Arc<Shared>>,
}

impl<S: fmt::Debug> fmt::Debug for FaultService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultService")
            .field("inner", &self.inner)
            .field("rules", &self.shared.as_ref().map(|shared| &shared.rules))
            .finish()
    }
}

/// What happens to one call.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Decision {
    delay: Duration,
    abort: Option<Code>,
}

/// The future of [`FaultService`]: the inner call untouched (no allocation), an abort ready at
/// once, or a boxed delay.
pub type FaultFuture<F, Response, Error> =
    Either<F, Either<Ready<Result<Response, Error>>, BoxFuture<'static, Result<Response, Error>>>>;

impl<S, B, ResBody> tower::Service<http::Request<B>> for FaultService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = FaultFuture<S::Future, Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(shared) = &self.shared else {
            return Either::Left(self.inner.call(request));
        };
        let decision = shared
            .rules
            .decide(request.uri().path(), shared.draw.as_ref());
        if decision == Decision::default() {
            return Either::Left(self.inner.call(request));
        }
        tracing::debug!(
            path = request.uri().path(),
            delay = ?decision.delay,
            abort = ?decision.abort,
            "fault injected ({FAULTS_VAR})"
        );
        match decision {
            Decision {
                delay: Duration::ZERO,
                abort: Some(code),
            } => Either::Right(Either::Left(futures::future::ready(Ok(aborted(code))))),
            Decision { delay, abort } => {
                // The inner service was polled ready; take that one for the later call and leave a
                // clone to be polled for the next (tower's usual pattern for calls that outlive
                // `call`).
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Either::Right(Either::Right(Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    match abort {
                        Some(code) => Ok(aborted(code)),
                        None => ready.call(request).await,
                    }
                })))
            }
        }
    }
}

/// The response of an aborted call: a trailers-only gRPC error.
fn aborted<ResBody: Default>(code: Code) -> http::Response<ResBody> {
    Status::new(code, FAULT_MESSAGE).into_http()
}

/// Every gRPC code a rule may name, with its name in snake case.
const CODES: [(&str, Code); 16] = [
    ("cancelled", Code::Cancelled),
    ("unknown", Code::Unknown),
    ("invalid_argument", Code::InvalidArgument),
    ("deadline_exceeded", Code::DeadlineExceeded),
    ("not_found", Code::NotFound),
    ("already_exists", Code::AlreadyExists),
    ("permission_denied", Code::PermissionDenied),
    ("resource_exhausted", Code::ResourceExhausted),
    ("failed_precondition", Code::FailedPrecondition),
    ("aborted", Code::Aborted),
    ("out_of_range", Code::OutOfRange),
    ("unimplemented", Code::Unimplemented),
    ("internal", Code::Internal),
    ("unavailable", Code::Unavailable),
    ("data_loss", Code::DataLoss),
    ("unauthenticated", Code::Unauthenticated),
];

fn code_name(code: Code) -> &'static str {
    CODES
        .iter()
        .find(|(_, known)| *known == code)
        .map_or("ok", |(name, _)| name)
}

fn parse_rule(rule: &str) -> Result<FaultRule, String> {
    let (target, action) = rule
        .split_once('=')
        .ok_or_else(|| "no `=` between the method and the action".to_owned())?;
    let target = parse_target(target.trim())?;
    let (kind_and_argument, percent) = action.trim().rsplit_once(':').ok_or_else(|| {
        "the action needs `abort:<code>:<percent>%` or `delay:<duration>:<percent>%`".to_owned()
    })?;
    let (kind, argument) = kind_and_argument.split_once(':').ok_or_else(|| {
        "the action needs `abort:<code>:<percent>%` or `delay:<duration>:<percent>%`".to_owned()
    })?;
    let argument = argument.trim();
    let action = match kind.trim().to_ascii_lowercase().as_str() {
        "abort" => FaultAction::Abort(parse_code(argument)?),
        "delay" => FaultAction::Delay(parse_delay(argument)?),
        other => return Err(format!("unknown action {other:?}: expected abort or delay")),
    };
    Ok(FaultRule {
        target,
        action,
        percent: parse_percent(percent.trim())?,
    })
}

fn parse_target(target: &str) -> Result<FaultTarget, String> {
    let bad = || {
        format!(
            "the method {target:?} is not `package.Service/Method` or `package.Service/*` \
             (the gRPC path without its leading slash)"
        )
    };
    let (service, method) = target.split_once('/').ok_or_else(bad)?;
    let is_name = |text: &str, extra: char| {
        !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == extra)
    };
    if !is_name(service, '.') || service.starts_with('.') || service.ends_with('.') {
        return Err(bad());
    }
    if method == "*" {
        return Ok(FaultTarget::Service(service.to_owned()));
    }
    if !is_name(method, '_') {
        return Err(bad());
    }
    Ok(FaultTarget::Method {
        service: service.to_owned(),
        method: method.to_owned(),
    })
}

fn parse_code(name: &str) -> Result<Code, String> {
    let lower = name.to_ascii_lowercase();
    if lower == "ok" {
        return Err("abort needs an error code; OK is no fault".to_owned());
    }
    CODES
        .iter()
        .find(|(known, _)| *known == lower)
        .map(|(_, code)| *code)
        .ok_or_else(|| {
            format!(
                "unknown gRPC code {name:?}: expected one of {}",
                CODES
                    .iter()
                    .map(|(known, _)| *known)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn parse_delay(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(delay) if !delay.is_zero() => Ok(delay),
        Ok(_) => Err("a delay of zero injects nothing".to_owned()),
        Err(_) => Err(format!(
            "{text:?} is not a duration with a unit, such as 250ms or 2s"
        )),
    }
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let bad = || format!("{text:?} is not a percentage from 0% to 100%, such as 10% or 0.5%");
    let number = text.strip_suffix('%').ok_or_else(bad)?.trim_end();
    // Digits with at most one inner point: `f64::from_str` alone would take `inf`, `NaN`, `1e2`.
    let (whole, fraction) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    number
        .parse::<f64>()
        .ok()
        .filter(|percent| (0.0..=100.0).contains(percent))
        .ok_or_else(bad)
}
