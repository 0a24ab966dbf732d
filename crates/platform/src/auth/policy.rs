//! Per-method access rules. A method without a rule is refused: a new RPC is closed until someone
//! decides who may call it.

use std::collections::HashMap;

use super::claims::{Claims, ROLE_ADMIN};
use super::verifier::AuthError;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone; no token is needed or checked.
    Public,
    /// Any bearer of a valid token.
    Authenticated,
    /// A bearer of a valid token holding this role.
    Role(&'static str),
}

impl Access {
    /// Administrators only.
    pub const ADMIN: Access = Access::Role(ROLE_ADMIN);

    /// Whether a caller with `claims` (verified; `None` for no token) may call under this rule: the
    /// one decision the layer, the gateway's extractors and tests share.
    ///
    /// # Errors
    /// [`AuthError::Missing`] when the rule needs a token and there is none,
    /// [`AuthError::Forbidden`] when the claims lack the rule's role.
    pub fn check(self, claims: Option<&Claims>) -> Result<(), AuthError> {
        match (self, claims) {
            (Access::Public, _) => Ok(()),
            (_, None) => Err(AuthError::Missing),
            (Access::Role(role), Some(claims)) if !claims.has_role(role) => {
                Err(AuthError::Forbidden(role))
            }
            (_, Some(_)) => Ok(()),
        }
    }
}

/// The rules of one gRPC service, by method name (`GetUser`, not the full path).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: HashMap<&'static str, Access>,
}

impl Policy {
    /// A policy with no rules: every method refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the rule of `method`.
    #[must_use]
    pub fn method(mut self, method: &'static str, access: Access) -> Self {
        self.rules.insert(method, access);
        self
    }

    /// The rule of `method`, if it has one.
    pub fn access(&self, method: &str) -> Option<Access> {
        self.rules.get(method).copied()
    }

    /// The methods that have a rule.
    pub fn methods(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.rules.keys().copied()
    }

    /// The methods of `service` (a full name such as `flotilla.product.v1.ProductService`) in
    /// Flotilla's contracts that have no rule, and the rules that name no method of it: what a
    /// service's test asserts is empty, so a new RPC is never closed (or opened) by accident.
    pub fn mismatches(&self, service: &str) -> Vec<String> {
        let Ok(descriptors) = <prost_types::FileDescriptorSet as prost::Message>::decode(
            crate::proto::FILE_DESCRIPTOR_SET,
        ) else {
            return vec!["the compiled descriptor set does not decode".to_owned()];
        };
        let declared: Vec<String> = descriptors
            .file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_owned();
                file.service
                    .iter()
                    .map(move |declared| (package.clone(), declared))
            })
            .filter(|(package, declared)| format!("{package}.{}", declared.name()) == service)
            .flat_map(|(_, declared)| {
                declared
                    .method
                    .iter()
                    .map(|method| method.name().to_owned())
            })
            .collect();
        let mut mismatches: Vec<String> = declared
            .iter()
            .filter(|method| !self.rules.contains_key(method.as_str()))
            .map(|method| format!("{method} has no rule"))
            .collect();
        mismatches.extend(
            self.rules
                .keys()
                .filter(|method| !declared.iter().any(|name| name == *method))
                .map(|method| format!("{method} is not a method of {service}")),
        );
        mismatches
    }
}
