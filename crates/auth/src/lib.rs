//! The auth service: JWT access tokens and rotating refresh tokens. Its implementation arrives with
//! the identity issue; the crate exists now so the workspace has its final shape.
