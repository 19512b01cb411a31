//! Redaction on arbitrary bytes, on the frames of arbitrary streams, and on a stream cut into arbitrary chunks.
//!
//! The input is one direction of a stream, as for the framer target; each step runs under three settings:
//! the proxy's default (SASL only), `--redact`, and `--redact --redact-bodies`.
//!
//! - `Redaction::apply` on the whole input, whatever it is: no panic, and the output has the input's length.
//! - `StreamRedactor::chunk` over the input cut at points chosen from its hash: no panic, each output chunk
//!   has its input chunk's length.
//! - For every frame the framer cut (each alone, with the stream header it came under, and all of them
//!   together as one fragment): the output has the same length; it tokenizes as the input did, into the same
//!   elements with the same attribute names in the same order (text and references may have become marker
//!   text, attribute values markers; unless quick-xml's namespace reader refuses a declaration in it, and
//!   redaction fails closed); every byte that changed is a marker byte; and `Redaction::may_hide`,
//!   which the transcript asks first to skip fragments without secrets, never rules out one that `apply_in`
//!   masks; nor, for a stanza the framer found in one namespace, does `Watch::may_hide_unqualified`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quick_xml::events::Event;
use quick_xml::Reader;
use xmpptap::tap::redact::{Redaction, StreamRedactor};
use xmpptap::xml::element::StreamHeader;
use xmpptap::xml::framer::{FrameKind, Limits};
use xmpptap_fuzz::{fnv, frame_in_chunks, Rng};

/// The structure of a fragment: markup events with names and attribute names; runs of text and references
/// as one `Text`.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    Start(String, Vec<String>),
    Empty(String, Vec<String>),
    End(String),
    Text,
    CData,
    Other,
}

/// The shape of `xml`, tolerating fragments (end tags whose start is elsewhere); `None` if quick-xml cannot
/// read it.
fn shape(xml: &[u8]) -> Option<Vec<Shape>> {
    let mut reader = Reader::from_reader(xml);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    config.trim_text(false);
    let mut out = Vec::new();
    let attrs = |t: &quick_xml::events::BytesStart| -> Option<Vec<String>> {
        t.attributes()
            .with_checks(false)
            .map(|a| a.ok().map(|a| a.key.0.to_owned()))
            .collect()
    };
    loop {
        let shape = match reader.read_event().ok()? {
            Event::Eof => return Some(out),
            Event::Start(t) => Shape::Start(t.name().0.to_owned(), attrs(&t)?),
            Event::Empty(t) => Shape::Empty(t.name().0.to_owned(), attrs(&t)?),
            Event::End(t) => Shape::End(t.name().0.to_owned()),
            Event::Text(t) if t.is_empty() => continue,
            Event::Text(_) | Event::GeneralRef(_) => Shape::Text,
            Event::CData(_) => Shape::CData,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => Shape::Other,
        };
        if shape == Shape::Text && out.last() == Some(&Shape::Text) {
            continue;
        }
        out.push(shape);
    }
}

/// Whether quick-xml's namespace reader reads `xml` to its end (it refuses declarations such as `xmlns:xml`).
fn namespaces_read(xml: &[u8]) -> bool {
    let mut reader = quick_xml::NsReader::from_reader(xml);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    loop {
        match reader.read_resolved_event() {
            Ok((_, Event::Eof)) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

fn is_marker(b: u8) -> bool {
    b == b'*'
        || b == b'['
        || b == b']'
        || b == b':'
        || b.is_ascii_digit()
        || b"redacted".contains(&b)
}

fn check(redaction: &Redaction, xml: &[u8], stream: Option<&StreamHeader>) {
    let Some(out) = redaction.apply_in(xml, stream) else {
        return;
    };
    // The transcript skips fragments `may_hide` rules out: it must never rule out one with a secret.
    assert!(
        redaction.may_hide(xml, stream),
        "may_hide says no, apply_in masks: {:?} under {redaction:?}",
        String::from_utf8_lossy(xml)
    );
    let text = String::from_utf8_lossy(xml);
    let out_text = String::from_utf8_lossy(&out);
    assert_eq!(
        out.len(),
        xml.len(),
        "length changed: {out_text:?} from {text:?}"
    );
    for (i, (&a, &b)) in xml.iter().zip(&out).enumerate() {
        assert!(
            a == b || is_marker(b),
            "byte {i} became {:?}: {out_text:?} from {text:?}",
            b as char
        );
    }
    let Some(before) = shape(xml) else {
        return;
    };
    if !namespaces_read(xml) {
        // A namespace declaration quick-xml refuses: `apply_in` failed closed and masked from there on,
        // markup included.
        return;
    }
    match shape(&out) {
        Some(after) => assert_eq!(
            before, after,
            "structure changed: {out_text:?} from {text:?}"
        ),
        None => panic!("output no longer tokenizes: {out_text:?} from {text:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let settings = [
        Redaction::default(),
        Redaction::redact(),
        Redaction::redact().with_bodies(),
    ];
    let mut rng = Rng::new(fnv(data));
    for redaction in &settings {
        if let Some(out) = redaction.apply(data) {
            assert_eq!(out.len(), data.len());
        }
        let mut stream = StreamRedactor::default();
        let mut at = 0;
        while at < data.len() {
            let end = data.len().min(at + rng.range(1, 64));
            let chunk = &data[at..end];
            if let Some(out) = stream.chunk(redaction, chunk, None) {
                assert_eq!(out.len(), chunk.len());
            }
            at = end;
        }
    }

    let (frames, _) = frame_in_chunks(data, &[data.len()], Limits::default());
    let mut header: Option<StreamHeader> = None;
    let mut all = Vec::new();
    for frame in &frames {
        if frame.kind == FrameKind::StreamOpen {
            header = StreamHeader::parse(&frame.head).ok();
        }
        all.extend_from_slice(&frame.bytes);
        for redaction in &settings {
            check(redaction, &frame.bytes, header.as_ref());
            if frame.one_namespace == Some(true) {
                let masked = redaction.apply_in(&frame.bytes, header.as_ref()).is_some();
                assert!(
                    !masked || redaction.watch(header.as_ref()).may_hide_unqualified(),
                    "may_hide_unqualified says no, apply_in masks: {:?} under {redaction:?}",
                    String::from_utf8_lossy(&frame.bytes)
                );
            }
        }
    }
    for redaction in &settings {
        check(redaction, &all, None);
    }
});
