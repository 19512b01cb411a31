//! Harness for interop tests against real XMPP servers, shared by the files in `tests/`
//! (`mod support;`).
//!
//! # Layout
//! - `dns`: an in-process authoritative DNS server whose records a test changes at run time;
//!   the servers under test resolve through it.
//! - `prosody`: starts a real Prosody on a loopback address with ephemeral ports, its DNS
//!   pointed at `dns`, and registers accounts.
//! - `client`: a minimal C2S client (SASL PLAIN, bind, presence, messages).
//! - `xmpptap`: runs the real `xmpptap` binary and reads its transcript.
//! - `federation`: a.test and b.test, two real Prosody servers federating through xmpptap.
//! - `fake`: fake XMPP peers speaking literal bytes (plain and TLS), for the proxy's edge cases.
//! - `wire`: the literal stream-level elements and S2S headers they send, and checks of stream errors.
//! - `scratch`: a test's scratch directory, and a test CA for the certificates of the servers it
//!   starts.
//!
//! # Addresses
//! Each test gets its own slice of loopback, `127.<file>.<test>.<host>` (see [`addr`]), so tests
//! in one binary and different test binaries can run in parallel without port races (ports are
//! still ephemeral: found by binding port 0 on that address). Linux routes all of 127/8 to `lo`.
//!
//! `<file>` is claimed once per test file; add yours here:
//! - 10: `prosody_direct.rs`
//! - 20: `federation.rs`
//! - 30: `proxy_edge_cases.rs`
//! - 40: `captures.rs`
//! - 50: `keylog.rs`
//! - 60: `c2s.rs`
//! - 70: `interception.rs`
//! - 90: `examples/federation_demo.rs`
//! - 100: `hostile.rs`
//! - 110: `probe.rs`
//! - 120: `soak.rs`
//! - 130: `rules.rs`
//! - 140: `rule_actions.rs`
//!
//! `<test>` numbers the tests inside a file (from 1). `<host>` by convention: 2 and 3 the first
//! and second XMPP server, 10 the proxy, 53 the DNS server.
//!
//! # Requirements
//! Prosody 0.12 and lua-unbound installed (`prosody`, `prosodyctl` on `PATH`); run as root or
//! with a Prosody that may run as the current user (the config sets `run_as_root = true`).

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod client;
pub mod control;
pub mod dns;
pub mod fake;
pub mod federation;
pub mod prosody;
pub mod pyclient;
pub mod scratch;
pub mod wire;
pub mod xmpptap;

use std::net::{IpAddr, Ipv4Addr};

/// Loopback address `127.<file>.<test>.<host>` (see the module docs).
pub const fn addr(file: u8, test: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, file, test, host)
}

/// `N` distinct TCP ports on `ip` that were free a moment ago (all bound with port 0 at once,
/// then released). Safe enough on an address used by one test only.
pub fn free_ports<const N: usize>(ip: IpAddr) -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| {
            std::net::TcpListener::bind((ip, 0))
                .unwrap_or_else(|e| panic!("bind {ip}:0 to find a free port: {e}"))
        })
        .collect();
    std::array::from_fn(|i| {
        listeners[i]
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr on {ip}: {e}"))
            .port()
    })
}
