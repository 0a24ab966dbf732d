//! Per-method access rules. A method without a rule is refused: a new RPC is closed until someone
//! decides who may call it.

use std::collections::HashMap;

use super::claims::{Claims, ROLE_ADMIN};

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

    /// Whether `claims` satisfy this rule (a public rule needs no claims).
    pub fn allows(self, claims: Option<&Claims>) -> bool {
        match self {
            Access::Public => true,
            Access::Authenticated => claims.is_some(),
            Access::Role(role) => claims.is_some_and(|claims| claims.has_role(role)),
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

    /// The methods that have a rule, for tests that check a policy covers a whole service.
    pub fn methods(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.rules.keys().copied()
    }
}
