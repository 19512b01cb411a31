//! Where an initiator's stream goes, and getting a TCP connection there.
//!
//! - [`route`]: turns the `to` domain of a stream header into ordered candidate addresses: a static
//!   `--route` wins, else the reverse-proxy `--upstream`, else DNS SRV (RFC 2782 order) with an A/AAAA
//!   fallback. It owns the one DNS resolver, validates untrusted domains before they reach DNS, and refuses
//!   routes that lead back to xmpptap's own listeners.
//! - [`connect`]: dials the candidates in order with a per-attempt timeout, re-resolving and backing off
//!   between rounds, and reports every failed attempt.
//!
//! Nothing here speaks XMPP or TLS: the session opens the stream on the connected socket.
pub mod connect;
pub mod route;
