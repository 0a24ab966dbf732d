//! The tower layer that applies a [`Policy`] to a tonic service: reads `authorization: Bearer …`
//! metadata, verifies it, checks the method's rule, and puts the [`Claims`] in the request
//! extensions, where a handler reads them (`request.extensions().get::<Claims>()`) for rules that
//! depend on the data ("self or admin").

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, header};
use tonic::server::NamedService;

use super::claims::Claims;
use super::policy::{Access, Policy};
use super::verifier::{AuthError, Verifier};

/// The bearer token of a request, if it has an `authorization` header.
///
/// # Errors
/// [`AuthError::MalformedHeader`] when the header is not `Bearer <token>`.
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| AuthError::MalformedHeader)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::MalformedHeader);
    }
    Ok(Some(token))
}

/// Decides whether a request may proceed under `access`, verifying its token when one is needed.
///
/// # Errors
/// The [`AuthError`] to answer with.
pub(crate) async fn authorize(
    verifier: &Verifier,
    access: Access,
    headers: &HeaderMap,
) -> Result<Option<Claims>, AuthError> {
    if access == Access::Public {
        return Ok(None);
    }
    let token = bearer_token(headers)?.ok_or(AuthError::Missing)?;
    let claims = verifier.verify(token).await?;
    access.check(Some(&claims))?;
    Ok(Some(claims))
}

/// Wraps a tonic service in [`Authorized`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: Verifier,
    policy: Arc<Policy>,
}

impl AuthLayer {
    /// A layer enforcing `policy` with `verifier`.
    pub fn new(verifier: Verifier, policy: Policy) -> Self {
        Self {
            verifier,
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            verifier: self.verifier.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// A tonic service behind its access policy.
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    inner: S,
    verifier: Verifier,
    policy: Arc<Policy>,
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one that serves this request (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let verifier = self.verifier.clone();
        let method = request.uri().path().rsplit('/').next().unwrap_or_default();
        let access = self.policy.access(method);
        let method = method.to_owned();
        Box::pin(async move {
            let Some(access) = access else {
                let status =
                    tonic::Status::permission_denied(format!("no access rule for method {method}"));
                return Ok(status.into_http());
            };
            match authorize(&verifier, access, request.headers()).await {
                Ok(Some(claims)) => {
                    request.extensions_mut().insert(claims);
                }
                Ok(None) => {}
                Err(error) => return Ok(tonic::Status::from(error).into_http()),
            }
            inner.call(request).await
        })
    }
}
