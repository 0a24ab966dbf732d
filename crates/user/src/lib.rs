//! The user service: accounts, password checks and roles. Its implementation arrives with the
//! identity issue; the crate exists now so the workspace has its final shape.
