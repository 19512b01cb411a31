//! xmpptap: a transparent, intercepting XMPP proxy and debugger.
//!
//! An operator places xmpptap between two XMPP servers (S2S) so that they federate through it as if it were not
//! there, while every stanza is written to a transcript. xmpptap terminates TLS on both legs with certificates
//! minted from its own CA, lets Server Dialback pass end to end, and forwards the original bytes of every stanza.
//!
//! # Data path
//!
//! ```text
//!  initiator ──TCP──▶ listen ──▶ session (negotiate: headers, features, STARTTLS) ──▶ relay ──TCP──▶ receiver
//!                                   │   framing: xml::Framer cuts each side's bytes into frames   │
//!                                   ├── upstream: routes, SRV, connect with retries ◀─────────────┘
//!                                   ├── tls: CA, certificates minted per domain, client/server configs
//!                                   └── tap: events to a bounded channel, drained by the JSONL writer
//! ```
//!
//! # Layout
//!
//! - [`cli`]: command-line flags (clap); the doc comments are the `--help`.
//! - [`config`]: the TOML config file, merged with flags into a validated [`config::ProxyConfig`].
//! - [`listen`]: listeners, the accept loop, one task per connection, graceful shutdown.
//! - [`session`]: one intercepted connection: the negotiation state machine and the relay loop.
//! - [`xml`]: the sans-IO framer (bytes in, frames out) and the small parsers for headers and features.
//! - [`tls`]: xmpptap's CA, minted leaf certificates, rustls configurations for both legs.
//! - [`upstream`]: choosing where a domain's stream goes (static routes, SRV, reverse-proxy) and connecting.
//! - [`tap`]: transcript events and the writers that drain them without slowing the data path.
//! - [`show`]: `xmpptap show`, a transcript printed for people, and the live view of `--log -` on a terminal.
//! - [`export`]: `xmpptap export`, a redacted copy of a transcript and a pcap built from it.
//! - [`probe`]: `xmpptap probe s2s|c2s`: a server checked from outside as a peer reaches it, each phase timed.
//! - [`control`]: the HTTP/JSON control API and `/metrics`: live connections, counters, closing, injecting, rules.
//! - [`rules`]: fault-injection rules (delay, drop, rewrite, inject, ...): TOML data and a pure decision.
//! - [`side`]: the names of the two peers ([`side::Side`]) and of the two directions ([`side::Direction`]).
//! - [`policy`]: federation policy: which domains may use xmpptap, and per-domain rate limits.

pub mod cli;
pub mod config;
pub mod control;
pub mod export;
pub mod listen;
pub mod policy;
pub mod probe;
pub mod rules;
pub mod session;
pub mod show;
pub mod side;
pub mod tap;
pub mod tls;
pub mod upstream;
pub mod xml;
