//! Steering the features the initiator sees. Interception breaks a few negotiated features by design:
//! channel binding (SCRAM-*-PLUS, XEP-0440) cannot survive two TLS sessions, stream compression (XEP-0138)
//! would hide the stream from xmpptap, and S2S SASL EXTERNAL needs the initiator's own private key unless
//! xmpptap presents a minted client certificate. Those are cut out of the receiver's `<stream:features>`
//! before they go down, each removal recorded as a `rewrite` event; everything else passes byte for byte
//! (see [`crate::xml::rewrite`]). `--strip-starttls` removes STARTTLS the same way.

use super::observe::Observer;
use crate::cli::ClientCert;
use crate::config::{ListenerKind, ProxyConfig};
use crate::tap::event::{RemovedFeature, Xml};
use crate::tap::EventKind;
use crate::xml::element::{ElementHead, NS_STREAM};
use crate::xml::framer::{Frame, FrameKind};
use crate::xml::rewrite::{rewrite_features, RewritePolicy};
use bytes::Bytes;

/// The feature policy of one session.
#[derive(Debug)]
pub struct Rewriter {
    policy: RewritePolicy,
}

impl Rewriter {
    /// The policy for a session on a listener of `kind`.
    pub fn new(config: &ProxyConfig, kind: ListenerKind) -> Self {
        Rewriter {
            policy: RewritePolicy {
                strip_channel_binding: true,
                strip_compression: true,
                strip_external: kind == ListenerKind::S2s && config.client_cert == ClientCert::None,
                strip_starttls: config.strip_starttls,
            },
        }
    }

    /// The bytes to send down instead of `bytes` if this frame is a features element that loses something;
    /// `None` forwards the original. `obs` is the downstream observer (its stream header resolves prefixes).
    pub fn features(&self, frame: &Frame, bytes: &[u8], obs: &Observer) -> Option<Bytes> {
        if frame.kind != FrameKind::Stanza {
            return None;
        }
        let tag = &bytes[frame.head.clone()];
        // Cheap filter on the hot path: only an element whose name ends in "features" is worth parsing.
        let name_end = tag
            .iter()
            .position(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'/' | b'>'))
            .unwrap_or(tag.len());
        if !tag[..name_end].ends_with(b"features") {
            return None;
        }
        let stream = obs.header.as_ref()?;
        if !ElementHead::parse(tag, stream).is_ok_and(|head| head.is(NS_STREAM, "features")) {
            return None;
        }
        match rewrite_features(bytes, stream, &self.policy) {
            Ok(Some((rewritten, removed))) => {
                for r in &removed {
                    tracing::info!(what = %r.what, why = r.why, "removed from the features the initiator sees");
                }
                let rewritten = Bytes::from(rewritten);
                obs.own(EventKind::Rewrite {
                    removed: removed
                        .into_iter()
                        .map(|r| RemovedFeature {
                            what: r.what,
                            why: r.why,
                        })
                        .collect(),
                    xml: Xml(rewritten.clone()),
                });
                Some(rewritten)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, "features not rewritten: cannot read them");
                None
            }
        }
    }
}
