//! Removing from a `<stream:features>` what cannot survive interception, as a pure function over the frame's
//! bytes.
//!
//! [`rewrite_features`] removes what a [`RewritePolicy`] names: channel binding (SCRAM-*-PLUS mechanisms and
//! XEP-0440 `<sasl-channel-binding>`), stream compression (XEP-0138), the SASL EXTERNAL mechanism and STARTTLS.
//! It cuts the byte ranges of the removed elements out of the original frame and copies everything else byte
//! for byte: nothing that stays is re-serialized, so the sender's prefixes, quotes, attribute order and
//! layout reach the peer unchanged. Each removal comes back as a [`Removed`] saying what and why, for the
//! transcript.
//!
//! This module does not decide which policy applies to which leg or stream (the session does), and does no
//! I/O.

use std::ops::Range;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;

use super::element::{
    ns_reader, push_reference, ElementError, StreamHeader, NS_COMPRESSION_FEATURE, NS_SASL,
    NS_STREAM, NS_TLS,
};

/// XEP-0440 SASL channel-binding type capability: `<sasl-channel-binding>`, a stream feature.
pub const NS_SASL_CHANNEL_BINDING: &str = "urn:xmpp:sasl-cb:0";
/// Extensible SASL Profile (XEP-0388): `<authentication>`, a stream feature listing `<mechanism>`s.
pub const NS_SASL2: &str = "urn:xmpp:sasl:2";

/// Why channel binding is removed.
const WHY_CHANNEL_BINDING: &str = "channel binding cannot survive two TLS sessions";
/// Why EXTERNAL is removed.
const WHY_EXTERNAL: &str =
    "xmpptap does not have the initiator's private key, so certificate authentication cannot pass through";
/// Why compression is removed.
const WHY_COMPRESSION: &str = "xmpptap cannot read or relay a compressed stream";
/// Why STARTTLS is removed.
const WHY_STARTTLS: &str = "STARTTLS stripping was asked for (a deliberate downgrade to plaintext)";
/// Why a mechanism list is removed once its mechanisms are.
const WHY_NO_MECHANISM_LEFT: &str = "no mechanism is left in it";

/// What [`rewrite_features`] removes. The default removes nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RewritePolicy {
    /// Remove SCRAM-*-PLUS mechanisms (SASL and SASL2) and XEP-0440
    /// `<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>`.
    pub strip_channel_binding: bool,
    /// Remove `<compression xmlns='http://jabber.org/features/compress'>` (XEP-0138).
    pub strip_compression: bool,
    /// Remove the SASL EXTERNAL mechanism (SASL and SASL2).
    pub strip_external: bool,
    /// Remove `<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>`, even when it is `<required/>`.
    pub strip_starttls: bool,
}

impl RewritePolicy {
    /// Whether this policy removes nothing, so that features need not be looked at.
    pub fn strips_nothing(&self) -> bool {
        *self == RewritePolicy::default()
    }
}

/// One thing [`rewrite_features`] removed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    /// What was removed, e.g. `SASL mechanism SCRAM-SHA-1-PLUS`.
    pub what: String,
    /// Why, e.g. `channel binding cannot survive two TLS sessions`.
    pub why: &'static str,
}

/// What [`rewrite_features`] returns when it removed something: the rewritten frame and what was removed.
pub type Rewritten = (Vec<u8>, Vec<Removed>);

/// The open child of `<stream:features>` (depth 1) while its content is read.
#[derive(Debug)]
enum Feature {
    /// A mechanism list: SASL `<mechanisms>` or SASL2 `<authentication>`.
    Mechanisms {
        /// `SASL` or `SASL2`, for messages.
        label: &'static str,
        /// `<mechanisms>` or `<authentication>`, for messages.
        element: &'static str,
        /// Its namespace, which its `<mechanism>` children share.
        ns: &'static str,
        /// Where the element starts.
        start: usize,
        /// How many `<mechanism>` children it has.
        total: usize,
        /// The mechanisms to remove, with their byte ranges.
        removals: Vec<(Range<usize>, Removed)>,
        /// The `<mechanism>` being read: where it starts and its text so far.
        open: Option<(usize, String)>,
    },
    /// A feature removed as a whole once it closes.
    Remove {
        /// Where the element starts.
        start: usize,
        /// What it is, for [`Removed::what`].
        what: &'static str,
        /// Why it goes.
        why: &'static str,
    },
    /// `<starttls>`, to be removed; `required` once `<required/>` is seen.
    StartTls { start: usize, required: bool },
    /// Left alone.
    Keep,
}

/// Removes what `policy` names from a whole `<stream:features>` frame; prefixes resolve through the frame's own
/// declarations, then `stream`'s.
///
/// Returns `Ok(None)` when nothing is removed (the caller forwards the original bytes), else the rewritten bytes
/// and what was removed, in document order. A `<mechanism>` is cut out of its `<mechanisms>` (or SASL2
/// `<authentication>`); a list left without any `<mechanism>` is removed whole. Each cut also takes the
/// whitespace right before the removed element (its indentation), so a pretty-printed list stays pretty; all
/// other bytes are copied unchanged.
///
/// Fails if the frame is not a closed `<stream:features>` element readable by quick-xml.
pub fn rewrite_features(
    frame: &[u8],
    stream: &StreamHeader,
    policy: &RewritePolicy,
) -> Result<Option<Rewritten>, ElementError> {
    if policy.strips_nothing() {
        return Ok(None);
    }
    let mut reader = ns_reader(frame, Some(stream))?;
    let position = |reader: &quick_xml::NsReader<&[u8]>| {
        usize::try_from(reader.buffer_position()).map_or(frame.len(), |p| p.min(frame.len()))
    };
    let mut cuts: Vec<Range<usize>> = Vec::new();
    let mut removed = Vec::new();
    // Open elements: 1 inside `<stream:features>`, 2 inside a feature, 3 inside a feature's child.
    let mut depth = 0usize;
    let mut feature = Feature::Keep;
    loop {
        let start = position(&reader);
        let (ns, event) = reader.read_resolved_event()?;
        // Owned: the resolved namespace borrows the reader, which is asked for its position next.
        let ns = match ns {
            ResolveResult::Bound(ns) => Some(ns.0.to_owned()),
            _ => None,
        };
        let ns = ns.as_deref();
        let end = position(&reader);
        match event {
            Event::Start(ref tag) | Event::Empty(ref tag) => {
                let empty = matches!(event, Event::Empty(_));
                let local = tag.local_name().into_inner();
                match depth {
                    0 => {
                        check_root(local, ns, tag.name().0)?;
                        if empty {
                            return Ok(None);
                        }
                    }
                    1 => {
                        feature = classify(ns, local, start, policy);
                        if empty {
                            close_feature(
                                std::mem::replace(&mut feature, Feature::Keep),
                                frame,
                                end,
                                &mut cuts,
                                &mut removed,
                            );
                        }
                    }
                    2 => match &mut feature {
                        Feature::Mechanisms {
                            ns: list_ns,
                            total,
                            open,
                            ..
                        } if local == "mechanism" && ns == Some(*list_ns) => {
                            *total += 1;
                            // `<mechanism/>` names nothing: it stays.
                            if !empty {
                                *open = Some((start, String::new()));
                            }
                        }
                        Feature::StartTls { required, .. } if local == "required" => {
                            *required = true
                        }
                        _ => {}
                    },
                    _ => {}
                }
                if !empty {
                    depth += 1;
                }
            }
            Event::Text(ref text) if depth == 3 => {
                if let Feature::Mechanisms {
                    open: Some((_, name)),
                    ..
                } = &mut feature
                {
                    name.push_str(&text.xml10_content());
                }
            }
            Event::GeneralRef(ref reference) if depth == 3 => {
                if let Feature::Mechanisms {
                    open: Some((_, name)),
                    ..
                } = &mut feature
                {
                    push_reference(name, reference)?;
                }
            }
            Event::CData(ref cdata) if depth == 3 => {
                if let Feature::Mechanisms {
                    open: Some((_, name)),
                    ..
                } = &mut feature
                {
                    name.push_str(&cdata.xml10_content());
                }
            }
            Event::End(_) => {
                // The framer and quick-xml's end-name check keep ends balanced; saturate regardless.
                depth = depth.saturating_sub(1);
                match depth {
                    0 => break,
                    1 => close_feature(
                        std::mem::replace(&mut feature, Feature::Keep),
                        frame,
                        end,
                        &mut cuts,
                        &mut removed,
                    ),
                    2 => {
                        if let Feature::Mechanisms {
                            label,
                            removals,
                            open,
                            ..
                        } = &mut feature
                        {
                            if let Some((mechanism_start, name)) = open.take() {
                                let name = name.trim();
                                if let Some(why) = mechanism_verdict(name, policy) {
                                    removals.push((
                                        with_indentation(frame, mechanism_start)..end,
                                        Removed {
                                            what: format!("{label} mechanism {name}"),
                                            why,
                                        },
                                    ));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => return Err(ElementError::Unclosed),
            _ => {}
        }
    }
    if cuts.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(frame.len());
    let mut at = 0;
    for cut in &cuts {
        // Cuts come in document order and do not overlap; clamping keeps that true regardless.
        let from = cut.start.max(at);
        out.extend_from_slice(frame.get(at..from).unwrap_or_default());
        at = cut.end.max(from);
    }
    out.extend_from_slice(frame.get(at..).unwrap_or_default());
    Ok(Some((out, removed)))
}

/// Checks that the root element is `<stream:features>`: local name `features` in [`NS_STREAM`] (an undeclared
/// `stream:` prefix is tolerated, as by [`super::element::Features::parse`]).
fn check_root(local: &str, ns: Option<&str>, qname: &str) -> Result<(), ElementError> {
    let prefix = qname.split_once(':').map(|(prefix, _)| prefix);
    let in_stream_ns = match ns {
        Some(ns) => ns == NS_STREAM,
        None => prefix == Some("stream"),
    };
    if local == "features" && in_stream_ns {
        return Ok(());
    }
    if ns.is_none() {
        if let Some(prefix) = prefix.filter(|p| *p != "stream") {
            return Err(ElementError::UndeclaredPrefix(prefix.to_owned()));
        }
    }
    Err(ElementError::Unexpected {
        expected: "<stream:features>",
        found: qname.to_owned(),
    })
}

/// What to do with a child of `<stream:features>` that starts at `start`.
fn classify(ns: Option<&str>, local: &str, start: usize, policy: &RewritePolicy) -> Feature {
    let mechanisms = |label, element, ns| Feature::Mechanisms {
        label,
        element,
        ns,
        start,
        total: 0,
        removals: Vec::new(),
        open: None,
    };
    let strips_mechanisms = policy.strip_channel_binding || policy.strip_external;
    match (ns.unwrap_or(""), local) {
        (NS_SASL, "mechanisms") if strips_mechanisms => mechanisms("SASL", "<mechanisms>", NS_SASL),
        (NS_SASL2, "authentication") if strips_mechanisms => {
            mechanisms("SASL2", "<authentication>", NS_SASL2)
        }
        (NS_SASL_CHANNEL_BINDING, "sasl-channel-binding") if policy.strip_channel_binding => {
            Feature::Remove {
                start,
                what: "channel-binding types <sasl-channel-binding> (XEP-0440)",
                why: WHY_CHANNEL_BINDING,
            }
        }
        (NS_COMPRESSION_FEATURE, "compression") if policy.strip_compression => Feature::Remove {
            start,
            what: "stream compression <compression> (XEP-0138)",
            why: WHY_COMPRESSION,
        },
        (NS_TLS, "starttls") if policy.strip_starttls => Feature::StartTls {
            start,
            required: false,
        },
        _ => Feature::Keep,
    }
}

/// Why a SASL mechanism goes, if it does.
fn mechanism_verdict(name: &str, policy: &RewritePolicy) -> Option<&'static str> {
    // Mechanism names are upper case (RFC 4422 3.1); compare without trusting that.
    let upper = name.to_ascii_uppercase();
    if policy.strip_channel_binding && upper.ends_with("-PLUS") {
        Some(WHY_CHANNEL_BINDING)
    } else if policy.strip_external && upper == "EXTERNAL" {
        Some(WHY_EXTERNAL)
    } else {
        None
    }
}

/// Records the cuts for a feature that ends at `end`.
fn close_feature(
    feature: Feature,
    frame: &[u8],
    end: usize,
    cuts: &mut Vec<Range<usize>>,
    removed: &mut Vec<Removed>,
) {
    match feature {
        Feature::Mechanisms {
            label,
            element,
            start,
            total,
            removals,
            ..
        } => {
            if removals.is_empty() {
                return;
            }
            let all_gone = removals.len() == total;
            for (range, what) in removals {
                if !all_gone {
                    cuts.push(range);
                }
                removed.push(what);
            }
            if all_gone {
                cuts.push(with_indentation(frame, start)..end);
                removed.push(Removed {
                    what: format!("{label} {element}"),
                    why: WHY_NO_MECHANISM_LEFT,
                });
            }
        }
        Feature::Remove { start, what, why } => {
            cuts.push(with_indentation(frame, start)..end);
            removed.push(Removed {
                what: what.to_owned(),
                why,
            });
        }
        Feature::StartTls { start, required } => {
            cuts.push(with_indentation(frame, start)..end);
            removed.push(Removed {
                what: if required {
                    "STARTTLS <starttls> (required)".to_owned()
                } else {
                    "STARTTLS <starttls>".to_owned()
                },
                why: WHY_STARTTLS,
            });
        }
        Feature::Keep => {}
    }
}

/// `start` moved back over the XML whitespace right before it: the indentation of the element starting there.
/// Never crosses markup: a tag ends in `>`, which is not whitespace.
fn with_indentation(frame: &[u8], start: usize) -> usize {
    let before = frame.get(..start).unwrap_or_default();
    let indentation = before
        .iter()
        .rev()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    start - indentation
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::element::Features;

    const PROSODY_C2S: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='a.example' \
        id='8f2c1b9e-6f0a-4c55-9d0e-2b7d3c4a5e6f' xml:lang='en'>";
    const PROSODY_S2S: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:db='jabber:server:dialback' \
        xmlns:stream='http://etherx.jabber.org/streams' version='1.0' from='b.example' to='a.example' \
        id='3a5e0c79-44e1-4b59-8e39-1c6e0f1d3d5f' xml:lang='en'>";
    const DOUBLE_QUOTED_C2S: &[u8] = b"<stream:stream xmlns=\"jabber:client\" \
        xmlns:stream=\"http://etherx.jabber.org/streams\" version=\"1.0\" from=\"a.example\" id=\"x1\">";
    /// A header that binds a prefix for the TLS namespace, which the features then use.
    const PREFIXED_TLS_S2S: &[u8] =
        b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
        xmlns:tls='urn:ietf:params:xml:ns:xmpp-tls' version='1.0' from='b.example' id='y2'>";

    const CHANNEL_BINDING: RewritePolicy = RewritePolicy {
        strip_channel_binding: true,
        strip_compression: false,
        strip_external: false,
        strip_starttls: false,
    };
    /// What a C2S leg gets: channel binding and compression go.
    const C2S: RewritePolicy = RewritePolicy {
        strip_compression: true,
        ..CHANNEL_BINDING
    };
    const EXTERNAL: RewritePolicy = RewritePolicy {
        strip_channel_binding: false,
        strip_compression: false,
        strip_external: true,
        strip_starttls: false,
    };
    const STARTTLS: RewritePolicy = RewritePolicy {
        strip_channel_binding: false,
        strip_compression: false,
        strip_external: false,
        strip_starttls: true,
    };
    const EVERYTHING: RewritePolicy = RewritePolicy {
        strip_channel_binding: true,
        strip_compression: true,
        strip_external: true,
        strip_starttls: true,
    };

    struct Case {
        name: &'static str,
        header: &'static [u8],
        policy: RewritePolicy,
        input: &'static str,
        /// The rewritten frame and [`Removed::what`] of each removal; `None` if nothing changes.
        expected: Option<(&'static str, &'static [&'static str])>,
        /// What [`Features::parse`] of the output must say, as a change to what it says of the input.
        features: fn(&mut Features),
    }

    fn unchanged(_: &mut Features) {}

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn cases() -> Vec<Case> {
        vec![
            Case {
                name: "Prosody C2S after TLS: -PLUS and <sasl-channel-binding> go, SCRAM-SHA-1 stays",
                header: PROSODY_C2S,
                policy: CHANNEL_BINDING,
                input: "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                        <mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
                        <mechanism>PLAIN</mechanism></mechanisms>\
                        <sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'><channel-binding type='tls-exporter'/>\
                        <channel-binding type='tls-server-end-point'/></sasl-channel-binding></stream:features>",
                expected: Some((
                    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                     <mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism></mechanisms>\
                     </stream:features>",
                    &[
                        "SASL mechanism SCRAM-SHA-1-PLUS",
                        "channel-binding types <sasl-channel-binding> (XEP-0440)",
                    ],
                )),
                features: |f| {
                    f.mechanisms = strings(&["SCRAM-SHA-1", "PLAIN"]);
                    f.other.clear();
                },
            },
            Case {
                name: "ejabberd C2S: every -PLUS and <compression> go; caps, register and the rest stay",
                header: PROSODY_C2S,
                policy: C2S,
                input: "<stream:features><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
                        node='https://www.process-one.net/en/ejabberd/' ver='z6GUfFg3yYHhbNh6NkrEl/FIZ6M='/>\
                        <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                        <mechanism>SCRAM-SHA-512-PLUS</mechanism><mechanism>SCRAM-SHA-256-PLUS</mechanism>\
                        <mechanism>SCRAM-SHA-1-PLUS</mechanism><mechanism>SCRAM-SHA-512</mechanism>\
                        <mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
                        <mechanism>PLAIN</mechanism><mechanism>X-OAUTH2</mechanism></mechanisms>\
                        <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
                        <register xmlns='http://jabber.org/features/iq-register'/></stream:features>",
                expected: Some((
                    "<stream:features><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' \
                     node='https://www.process-one.net/en/ejabberd/' ver='z6GUfFg3yYHhbNh6NkrEl/FIZ6M='/>\
                     <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                     <mechanism>SCRAM-SHA-512</mechanism>\
                     <mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
                     <mechanism>PLAIN</mechanism><mechanism>X-OAUTH2</mechanism></mechanisms>\
                     <register xmlns='http://jabber.org/features/iq-register'/></stream:features>",
                    &[
                        "SASL mechanism SCRAM-SHA-512-PLUS",
                        "SASL mechanism SCRAM-SHA-256-PLUS",
                        "SASL mechanism SCRAM-SHA-1-PLUS",
                        "stream compression <compression> (XEP-0138)",
                    ],
                )),
                features: |f| {
                    f.mechanisms
                        .retain(|m| !m.ends_with("-PLUS"));
                    f.compression.clear();
                },
            },
            Case {
                name: "double quotes, xmlns:stream on the element, indentation between children",
                header: DOUBLE_QUOTED_C2S,
                policy: C2S,
                input: "<stream:features xmlns:stream=\"http://etherx.jabber.org/streams\">\n  \
                        <mechanisms xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\">\n    \
                        <mechanism>SCRAM-SHA-1-PLUS</mechanism>\n    \
                        <mechanism>SCRAM-SHA-1</mechanism>\n  \
                        </mechanisms>\n  \
                        <compression xmlns=\"http://jabber.org/features/compress\">\n    \
                        <method>zlib</method>\n  </compression>\n  \
                        <sm xmlns=\"urn:xmpp:sm:3\"/>\n</stream:features>",
                expected: Some((
                    "<stream:features xmlns:stream=\"http://etherx.jabber.org/streams\">\n  \
                     <mechanisms xmlns=\"urn:ietf:params:xml:ns:xmpp-sasl\">\n    \
                     <mechanism>SCRAM-SHA-1</mechanism>\n  \
                     </mechanisms>\n  \
                     <sm xmlns=\"urn:xmpp:sm:3\"/>\n</stream:features>",
                    &[
                        "SASL mechanism SCRAM-SHA-1-PLUS",
                        "stream compression <compression> (XEP-0138)",
                    ],
                )),
                features: |f| {
                    f.mechanisms = strings(&["SCRAM-SHA-1"]);
                    f.compression.clear();
                },
            },
            Case {
                name: "Prosody S2S after TLS: EXTERNAL goes, the emptied <mechanisms> too; dialback, bidi stay",
                header: PROSODY_S2S,
                policy: EXTERNAL,
                input: "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                        <mechanism>EXTERNAL</mechanism></mechanisms>\
                        <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
                        <bidi xmlns='urn:xmpp:features:bidi'/></stream:features>",
                expected: Some((
                    "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
                     <bidi xmlns='urn:xmpp:features:bidi'/></stream:features>",
                    &["SASL mechanism EXTERNAL", "SASL <mechanisms>"],
                )),
                features: |f| f.mechanisms.clear(),
            },
            Case {
                name: "EXTERNAL among others: only EXTERNAL goes",
                header: PROSODY_S2S,
                policy: EVERYTHING,
                input: "<stream:features>\n<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\n\
                        <mechanism>EXTERNAL</mechanism>\n<mechanism>SCRAM-SHA-1</mechanism>\n\
                        </mechanisms>\n</stream:features>",
                expected: Some((
                    "<stream:features>\n<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\n\
                     <mechanism>SCRAM-SHA-1</mechanism>\n\
                     </mechanisms>\n</stream:features>",
                    &["SASL mechanism EXTERNAL"],
                )),
                features: |f| f.mechanisms = strings(&["SCRAM-SHA-1"]),
            },
            Case {
                name: "channel binding only: EXTERNAL stays",
                header: PROSODY_C2S,
                policy: CHANNEL_BINDING,
                input: "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                        <mechanism>EXTERNAL</mechanism><mechanism>SCRAM-SHA-256-PLUS</mechanism>\
                        </mechanisms></stream:features>",
                expected: Some((
                    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                     <mechanism>EXTERNAL</mechanism></mechanisms></stream:features>",
                    &["SASL mechanism SCRAM-SHA-256-PLUS"],
                )),
                features: |f| f.mechanisms = strings(&["EXTERNAL"]),
            },
            Case {
                name: "Prosody S2S before TLS: required <starttls> goes when asked",
                header: PROSODY_S2S,
                policy: STARTTLS,
                input: "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
                        <dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>",
                expected: Some((
                    "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>\
                     </stream:features>",
                    &["STARTTLS <starttls> (required)"],
                )),
                features: |f| f.starttls = None,
            },
            Case {
                name: "optional <starttls> written with a prefix the stream header binds",
                header: PREFIXED_TLS_S2S,
                policy: STARTTLS,
                input: "<stream:features> <tls:starttls/> <bidi xmlns='urn:xmpp:features:bidi'/></stream:features>",
                expected: Some((
                    "<stream:features> <bidi xmlns='urn:xmpp:features:bidi'/></stream:features>",
                    &["STARTTLS <starttls>"],
                )),
                // Features::parse does not know the header's `tls` prefix: nothing to compare there.
                features: |f| f.other.retain(|o| o != "{}starttls"),
            },
            Case {
                name: "a prefixed SASL namespace and a character reference in a mechanism name",
                header: PROSODY_C2S,
                policy: CHANNEL_BINDING,
                input: "<stream:features><sasl:mechanisms xmlns:sasl='urn:ietf:params:xml:ns:xmpp-sasl'>\
                        <sasl:mechanism> SCRAM-SHA-1-&#80;LUS </sasl:mechanism>\
                        <sasl:mechanism>PLAIN</sasl:mechanism></sasl:mechanisms></stream:features>",
                expected: Some((
                    "<stream:features><sasl:mechanisms xmlns:sasl='urn:ietf:params:xml:ns:xmpp-sasl'>\
                     <sasl:mechanism>PLAIN</sasl:mechanism></sasl:mechanisms></stream:features>",
                    &["SASL mechanism SCRAM-SHA-1-PLUS"],
                )),
                features: |f| f.mechanisms = strings(&["PLAIN"]),
            },
            Case {
                name: "SASL2 <authentication>: its -PLUS goes too, <inline> stays",
                header: PROSODY_C2S,
                policy: CHANNEL_BINDING,
                input: "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                        <mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>\
                        </mechanisms><authentication xmlns='urn:xmpp:sasl:2'>\
                        <mechanism>SCRAM-SHA-256-PLUS</mechanism><mechanism>SCRAM-SHA-256</mechanism>\
                        <inline><sm xmlns='urn:xmpp:sm:3'/></inline></authentication></stream:features>",
                expected: Some((
                    "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                     <mechanism>SCRAM-SHA-256</mechanism>\
                     </mechanisms><authentication xmlns='urn:xmpp:sasl:2'>\
                     <mechanism>SCRAM-SHA-256</mechanism>\
                     <inline><sm xmlns='urn:xmpp:sm:3'/></inline></authentication></stream:features>",
                    &[
                        "SASL mechanism SCRAM-SHA-256-PLUS",
                        "SASL2 mechanism SCRAM-SHA-256-PLUS",
                    ],
                )),
                features: |f| f.mechanisms = strings(&["SCRAM-SHA-256"]),
            },
            Case {
                name: "SASL2 with only -PLUS: <authentication> goes whole",
                header: PROSODY_C2S,
                policy: CHANNEL_BINDING,
                input: "<stream:features><authentication xmlns='urn:xmpp:sasl:2'>\
                        <mechanism>SCRAM-SHA-1-PLUS</mechanism><inline/></authentication>\
                        <sm xmlns='urn:xmpp:sm:3'/></stream:features>",
                expected: Some((
                    "<stream:features><sm xmlns='urn:xmpp:sm:3'/></stream:features>",
                    &["SASL2 mechanism SCRAM-SHA-1-PLUS", "SASL2 <authentication>"],
                )),
                features: |f| f.other.clear(),
            },
            Case {
                name: "post-SASL features: nothing to do",
                header: PROSODY_C2S,
                policy: EVERYTHING,
                input: "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><required/></bind>\
                        <session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>\
                        <sm xmlns='urn:xmpp:sm:3'/><ver xmlns='urn:xmpp:features:rosterver'/></stream:features>",
                expected: None,
                features: unchanged,
            },
            Case {
                name: "a policy that strips nothing leaves everything",
                header: PROSODY_C2S,
                policy: RewritePolicy::default(),
                input: "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                        <mechanism>SCRAM-SHA-1-PLUS</mechanism></mechanisms>\
                        <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
                        <starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>",
                expected: None,
                features: unchanged,
            },
            Case {
                name: "look-alikes in other namespaces, and an empty <mechanism/>, stay",
                header: PROSODY_S2S,
                policy: EVERYTHING,
                input: "<stream:features><mechanisms xmlns='urn:example:not-sasl'><mechanism>EXTERNAL</mechanism>\
                        </mechanisms><starttls xmlns='urn:example:not-tls'/>\
                        <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism/>\
                        <other>EXTERNAL</other></mechanisms><compression/></stream:features>",
                expected: None,
                features: unchanged,
            },
            Case {
                name: "an empty <stream:features/>",
                header: PROSODY_S2S,
                policy: EVERYTHING,
                input: "<stream:features/>",
                expected: None,
                features: unchanged,
            },
        ]
    }

    #[test]
    fn rewrite_table() {
        for case in cases() {
            let name = case.name;
            let stream = StreamHeader::parse(case.header).unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = rewrite_features(case.input.as_bytes(), &stream, &case.policy)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = got.map(|(bytes, removed)| {
                let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                let whats: Vec<String> = removed.into_iter().map(|r| r.what).collect();
                (text, whats)
            });
            let expected = case
                .expected
                .map(|(text, whats)| (text.to_owned(), strings(whats)));
            assert_eq!(got, expected, "{name}");

            let output = got.map_or(case.input.to_owned(), |(text, _)| text);
            let mut want =
                Features::parse(case.input.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            (case.features)(&mut want);
            let reparsed = Features::parse(output.as_bytes())
                .unwrap_or_else(|e| panic!("{name}: output: {e}"));
            assert_eq!(reparsed, want, "{name}: output re-parsed");
        }
    }

    #[test]
    fn removals_say_why() {
        let stream = StreamHeader::parse(PROSODY_C2S).unwrap_or_else(|e| panic!("{e}"));
        let frame = b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>\
            <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>EXTERNAL</mechanism>\
            <mechanism>SCRAM-SHA-1-PLUS</mechanism></mechanisms>\
            <compression xmlns='http://jabber.org/features/compress'><method>zlib</method></compression>\
            </stream:features>";
        let (bytes, removed) = rewrite_features(frame, &stream, &EVERYTHING)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("something must be removed"));
        assert_eq!(bytes, b"<stream:features></stream:features>");
        let removed: Vec<(&str, &str)> = removed.iter().map(|r| (r.what.as_str(), r.why)).collect();
        assert_eq!(
            removed,
            [
                ("STARTTLS <starttls>", WHY_STARTTLS),
                ("SASL mechanism EXTERNAL", WHY_EXTERNAL),
                ("SASL mechanism SCRAM-SHA-1-PLUS", WHY_CHANNEL_BINDING),
                ("SASL <mechanisms>", WHY_NO_MECHANISM_LEFT),
                (
                    "stream compression <compression> (XEP-0138)",
                    WHY_COMPRESSION
                ),
            ]
        );
        assert_eq!(
            WHY_CHANNEL_BINDING,
            "channel binding cannot survive two TLS sessions"
        );
        let json = serde_json::to_string(&Removed {
            what: "SASL mechanism SCRAM-SHA-1-PLUS".into(),
            why: WHY_CHANNEL_BINDING,
        })
        .unwrap_or_default();
        assert_eq!(
            json,
            r#"{"what":"SASL mechanism SCRAM-SHA-1-PLUS","why":"channel binding cannot survive two TLS sessions"}"#
        );
    }

    #[test]
    fn frames_that_are_not_features() {
        let stream = StreamHeader::parse(PROSODY_S2S).unwrap_or_else(|e| panic!("{e}"));
        type Expect = fn(&ElementError) -> bool;
        let cases: &[(&[u8], Expect)] = &[
            (b"<stream:error><bad-format xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>", |e| {
                matches!(e, ElementError::Unexpected { found, .. } if found == "stream:error")
            }),
            (b"<features xmlns='urn:example'/>", |e| {
                matches!(e, ElementError::Unexpected { .. })
            }),
            (b"<x:features><starttls/></x:features>", |e| {
                matches!(e, ElementError::UndeclaredPrefix(p) if p == "x")
            }),
            (b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>", |e| {
                matches!(e, ElementError::Unclosed)
            }),
            (b"", |e| matches!(e, ElementError::Unclosed)),
        ];
        for (frame, expected) in cases {
            let text = String::from_utf8_lossy(frame);
            match rewrite_features(frame, &stream, &EVERYTHING) {
                Err(e) => assert!(expected(&e), "{text}: unexpected error {e:?}"),
                Ok(got) => panic!("{text}: expected an error, got {got:?}"),
            }
        }
        // Only a policy that removes something reads the frame at all.
        assert!(matches!(
            rewrite_features(b"<oops", &stream, &RewritePolicy::default()),
            Ok(None)
        ));
        assert!(RewritePolicy::default().strips_nothing() && !STARTTLS.strips_nothing());
    }

    // Property tests: `<stream:features>` generated at random from a fixed seed (the same ones on every run),
    // with what each policy must remove known by construction, so the exact output is the oracle.

    /// xorshift64: a fixed-seed generator, so a failure reproduces.
    struct Prng(u64);

    impl Prng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n.max(1) as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// A generated features frame: its bytes, the bytes that must remain, and the `what` of each removal.
    #[derive(Default)]
    struct GeneratedFeatures {
        input: String,
        output: String,
        removed: Vec<String>,
    }

    impl GeneratedFeatures {
        /// Appends `text` to the input, and to the output unless it goes.
        fn push(&mut self, text: &str, goes: bool) {
            self.input.push_str(text);
            if !goes {
                self.output.push_str(text);
            }
        }
    }

    /// A mechanism name as written (spaces, a character reference or CDATA perhaps), and the name it reads as.
    fn gen_mechanism(rng: &mut Prng) -> (String, String) {
        let name = rng.pick(&[
            "SCRAM-SHA-1",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-256",
            "PLAIN",
            "EXTERNAL",
            "external",
            "scram-sha-512-plus",
            "X-OAUTH2",
            "PLUS",
        ]);
        let written = match rng.below(6) {
            0 => format!(" {name}\n"),
            1 if name.contains('P') => name.replacen('P', "&#80;", 1),
            2 => format!("<![CDATA[{name}]]>"),
            _ => name.to_owned(),
        };
        (written, name.to_owned())
    }

    /// What a mechanism named `name` is removed for under `policy`, as [`mechanism_verdict`] decides.
    fn mechanism_goes(name: &str, policy: &RewritePolicy) -> bool {
        let upper = name.to_ascii_uppercase();
        (policy.strip_channel_binding && upper.ends_with("-PLUS"))
            || (policy.strip_external && upper == "EXTERNAL")
    }

    /// A mechanism list (SASL `<mechanisms>` or SASL2 `<authentication>`), with `indent` before it.
    fn gen_mechanism_list(
        rng: &mut Prng,
        policy: &RewritePolicy,
        indent: &str,
        inner: &str,
        out: &mut GeneratedFeatures,
    ) {
        let sasl2 = rng.chance(30);
        let (open, close, label, element, prefix) = if sasl2 {
            (
                "<authentication xmlns='urn:xmpp:sasl:2'>".to_owned(),
                "</authentication>",
                "SASL2",
                "<authentication>",
                "",
            )
        } else if rng.chance(30) {
            (
                "<sasl:mechanisms xmlns:sasl=\"urn:ietf:params:xml:ns:xmpp-sasl\">".to_owned(),
                "</sasl:mechanisms>",
                "SASL",
                "<mechanisms>",
                "sasl:",
            )
        } else {
            (
                "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>".to_owned(),
                "</mechanisms>",
                "SASL",
                "<mechanisms>",
                "",
            )
        };
        let strips = policy.strip_channel_binding || policy.strip_external;
        // Children: (indentation + element, goes, what).
        let mut children: Vec<(String, bool, Option<String>)> = Vec::new();
        let mut total = 0;
        for _ in 0..rng.below(6) {
            match rng.below(8) {
                0 => children.push((format!("{inner}<{prefix}mechanism/>"), false, None)),
                1 => children.push((format!("{inner}<other>EXTERNAL</other>"), false, None)),
                2 if sasl2 => children.push((
                    format!("{inner}<inline><sm xmlns='urn:xmpp:sm:3'/></inline>"),
                    false,
                    None,
                )),
                _ => {
                    let (written, name) = gen_mechanism(rng);
                    let goes = strips && mechanism_goes(&name, policy);
                    let what = format!("{label} mechanism {}", name.trim());
                    children.push((
                        format!("{inner}<{prefix}mechanism>{written}</{prefix}mechanism>"),
                        goes,
                        goes.then_some(what),
                    ));
                }
            }
            if children.last().is_some_and(|c| c.0.contains("mechanism")) {
                total += 1;
            }
        }
        let gone = children.iter().filter(|c| c.1).count();
        let all_gone = gone > 0 && gone == total;
        out.push(indent, all_gone);
        out.push(&open, all_gone);
        for (child, goes, what) in children {
            out.push(&child, all_gone || goes);
            out.removed.extend(what);
        }
        out.push(&format!("{indent}{close}"), all_gone);
        if all_gone {
            out.removed.push(format!("{label} {element}"));
        }
    }

    /// A whole `<stream:features>` under a header that binds `tls` when `tls_prefix`, with what `policy`
    /// removes from it.
    fn gen_features(rng: &mut Prng, policy: &RewritePolicy, tls_prefix: bool) -> GeneratedFeatures {
        let mut out = GeneratedFeatures::default();
        let pretty = rng.chance(40);
        let (indent, inner) = if pretty { ("\n  ", "\n    ") } else { ("", "") };
        out.push("<stream:features>", false);
        for _ in 0..rng.below(7) {
            match rng.below(10) {
                0 | 1 => gen_mechanism_list(rng, policy, indent, inner, &mut out),
                2 => {
                    let required = rng.chance(50);
                    let body = if required { "<required/>" } else { "" };
                    let element = if tls_prefix && rng.chance(50) {
                        if required {
                            "<tls:starttls><tls:required/></tls:starttls>".to_owned()
                        } else {
                            "<tls:starttls/>".to_owned()
                        }
                    } else {
                        format!(
                            "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>{body}</starttls>"
                        )
                    };
                    let goes = policy.strip_starttls;
                    out.push(&format!("{indent}{element}"), goes);
                    if goes {
                        out.removed.push(if required {
                            "STARTTLS <starttls> (required)".to_owned()
                        } else {
                            "STARTTLS <starttls>".to_owned()
                        });
                    }
                }
                3 => {
                    let goes = policy.strip_compression;
                    out.push(
                        &format!(
                            "{indent}<compression xmlns='http://jabber.org/features/compress'>\
                             <method>zlib</method></compression>"
                        ),
                        goes,
                    );
                    if goes {
                        out.removed
                            .push("stream compression <compression> (XEP-0138)".to_owned());
                    }
                }
                4 => {
                    let goes = policy.strip_channel_binding;
                    out.push(
                        &format!(
                            "{indent}<sasl-channel-binding xmlns='urn:xmpp:sasl-cb:0'>\
                             <channel-binding type='tls-exporter'/></sasl-channel-binding>"
                        ),
                        goes,
                    );
                    if goes {
                        out.removed.push(
                            "channel-binding types <sasl-channel-binding> (XEP-0440)".to_owned(),
                        );
                    }
                }
                _ => {
                    let kept = rng.pick(&[
                        "<dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback>",
                        "<bidi xmlns='urn:xmpp:features:bidi'/>",
                        "<sm xmlns='urn:xmpp:sm:3'/>",
                        "<starttls xmlns='urn:example:not-tls'/>",
                        "<compression/>",
                        "<mechanisms xmlns='urn:example'><mechanism>EXTERNAL</mechanism></mechanisms>",
                        "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' ver='a&amp;b'/>",
                    ]);
                    out.push(&format!("{indent}{kept}"), false);
                }
            }
        }
        out.push(
            &format!("{}</stream:features>", if pretty { "\n" } else { "" }),
            false,
        );
        out
    }

    #[test]
    fn generated_features_lose_exactly_what_the_policy_names() {
        let mut rng = Prng(0xfea7_05e5_5eed_0001);
        let headers: [(&[u8], bool); 4] = [
            (PROSODY_C2S, false),
            (PROSODY_S2S, false),
            (DOUBLE_QUOTED_C2S, false),
            (PREFIXED_TLS_S2S, true),
        ];
        let mut removals = 0;
        for round in 0..2000 {
            let policy = RewritePolicy {
                strip_channel_binding: rng.chance(50),
                strip_compression: rng.chance(50),
                strip_external: rng.chance(50),
                strip_starttls: rng.chance(50),
            };
            let (header, tls_prefix) = headers[rng.below(headers.len())];
            let stream = StreamHeader::parse(header).unwrap_or_else(|e| panic!("{e}"));
            let features = gen_features(&mut rng, &policy, tls_prefix);
            let context = || format!("round {round}, {policy:?}: {:?}", features.input);
            let got = rewrite_features(features.input.as_bytes(), &stream, &policy)
                .unwrap_or_else(|e| panic!("{e}: {}", context()));
            match got {
                None => {
                    assert!(
                        features.removed.is_empty(),
                        "nothing removed: {}",
                        context()
                    );
                    assert_eq!(features.output, features.input, "{}", context());
                }
                Some((bytes, removed)) => {
                    removals += removed.len();
                    let text = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(text, features.output, "{}", context());
                    let whats: Vec<String> = removed.into_iter().map(|r| r.what).collect();
                    assert_eq!(whats, features.removed, "{}", context());
                    // What is left reads as features with nothing more to remove.
                    let again = rewrite_features(text.as_bytes(), &stream, &policy)
                        .unwrap_or_else(|e| panic!("{e}: output of {}", context()));
                    assert!(again.is_none(), "removed twice: {}", context());
                    assert!(
                        Features::parse(text.as_bytes()).is_ok(),
                        "output does not parse: {}",
                        context()
                    );
                }
            }
        }
        assert!(
            removals > 1000,
            "the generator removes too little: {removals}"
        );
    }

    #[test]
    fn malformed_features_never_panic() {
        let mut rng = Prng(0x0bad_fea7_05e5_0002);
        let stream = StreamHeader::parse(PREFIXED_TLS_S2S).unwrap_or_else(|e| panic!("{e}"));
        let everything = RewritePolicy {
            strip_channel_binding: true,
            strip_compression: true,
            strip_external: true,
            strip_starttls: true,
        };
        let hostile: &[&[u8]] = &[
            b"<",
            b">",
            b"</mechanism>",
            b"</stream:features>",
            b"<mechanism>",
            b"&",
            b"&#0;",
            b"&bogus;",
            b"\xff",
            b"\xc3",
            b"<![CDATA[",
            b"]]>",
            b"<!--",
            b"xmlns:x='",
            b"<x:y/>",
            b"'",
            b"/>",
        ];
        for _ in 0..3000 {
            let mut input = gen_features(&mut rng, &everything, true).input.into_bytes();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(input.len() + 1);
                match rng.below(3) {
                    0 if at < input.len() => {
                        input.remove(at);
                    }
                    1 => input.truncate(at),
                    _ => {
                        let snippet = hostile[rng.below(hostile.len())];
                        input.splice(at..at, snippet.iter().copied());
                    }
                }
            }
            // Any answer but a panic; a rewrite only ever makes the frame shorter.
            if let Ok(Some((bytes, removed))) = rewrite_features(&input, &stream, &everything) {
                assert!(bytes.len() < input.len() && !removed.is_empty());
            }
        }
    }
}
