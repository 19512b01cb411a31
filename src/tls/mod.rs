//! TLS for both legs: xmpptap's [`ca`] and the rustls configurations built from it.
pub mod ca;
