//! The rule engine on what a peer sends: matching (`RuleSet::decide`) and the edits rules make
//! (`rules::edit::rewrite`, `dialback_invalid`, `injected`), on the elements the framer cuts.
//!
//! An input is one byte, then the bytes a peer sends after its stream header. The byte chooses one of the
//! rule files in [`RULE_FILES`] (bits 0 to 2), the direction (bit 3: down) and the listener (bit 4: C2S);
//! readable seeds start with a letter: `@` to `G` are rule files 0 to 7 up on S2S, `H` to `O` down on S2S, `P`
//! to `W` up on C2S, `X` to `_` down on C2S. The rest follows a Prosody stream header for that direction and
//! listener through the framer, as the relay reads it (a `<proceed/>` restarts the stream, and a new header
//! then resolves prefixes). For every Stanza frame:
//!
//! - `ElementHead::parse` on the frame's head bytes (what the relay parses) and on the whole frame agree;
//! - `RuleSet::decide` runs, with one `RuleState` over the whole input (so `after_stanzas` and `every`
//!   count) and a fixed roll of 0.5;
//! - every `rewrite`, `dialback_invalid` and `inject` action of the rule file is carried out on the frame,
//!   whichever rule the decision chose, since any of them may meet any element.
//!
//! Nothing panics, and:
//!
//! - a rewrite never fails with `EditError::Spec` (the rule file was validated), and its output, when there
//!   is one, is UTF-8, one well-formed element with nothing after it (quick-xml, end names and attributes
//!   checked), and one Stanza frame again under the same stream header. Unless it is `replace_with`, the
//!   output keeps the element's name, has every `set` attribute once with its value and no `remove`d one;
//!   without `replace_text` it differs from the input and rewriting it again changes nothing;
//! - `dialback_invalid` answers exactly for the elements `Dialback::parse` reads as `type='valid'`, and its
//!   output is one element that reads as the same dialback answer with `type='invalid'`;
//! - what `inject` sends is one element, and its `{from}`, `{to}` and `{id}` are the matched element's
//!   attributes, escaped, each placeholder filled once (a value that itself reads `{to}` stays as it is).

#![no_main]

use libfuzzer_sys::fuzz_target;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::collections::BTreeSet;
use std::sync::OnceLock;
use xmpptap::config::ListenerKind;
use xmpptap::rules::edit::{dialback_invalid, injected, rewrite};
use xmpptap::rules::{Action, EditError, RewriteSpec, RuleSet, RuleState, Subject};
use xmpptap::side::Direction;
use xmpptap::xml::element::{attributes, Dialback, ElementHead, StreamHeader};
use xmpptap::xml::framer::{FrameKind, Limits};
use xmpptap_fuzz::{frame_in_chunks, Framed, Outcome};

/// What `probability` is rolled against: rules with 0.3 never act, rules with 0.7 always do.
const ROLL: f64 = 0.5;

/// The rule files, between them every action (and every kind of rewrite and injection) and every condition.
const RULE_FILES: [&str; 8] = [
    // 0: the examples: negotiation and dialback.
    r#"
[[rule]]
name = "no-starttls-offered"
[rule.match]
direction = "down"
element = "features"
ns = "http://etherx.jabber.org/streams"
[rule.action]
kind = "rewrite"
remove_children = ["{urn:ietf:params:xml:ns:xmpp-tls}starttls"]

[[rule]]
name = "refuse-dialback"
[rule.match]
element = "result"
ns = "jabber:server:dialback"
type = "valid"
[rule.action]
kind = "dialback_invalid"

[[rule]]
name = "headline-before-message"
[rule.match]
direction = "up"
element = "message"
child = "body"
[rule.action]
kind = "inject"
at = "before"
xml = "<message type='headline' from='{from}' to='{to}' id='xmpptap-{id}'><body>xmpptap: {id} follows</body></message>"

[[rule]]
name = "no-starttls-from-clients"
[rule.match]
listener = "c2s"
element = "starttls"
ns = "urn:ietf:params:xml:ns:xmpp-tls"
[rule.action]
kind = "close"
condition = "policy-violation"
text = "no TLS today"
"#,
    // 1: attributes.
    r#"
[[rule]]
name = "retype-chat"
[rule.match]
element = "message"
type = "chat"
[rule.action]
kind = "rewrite"
set = { type = "normal", "xml:lang" = "de", x-note = "a&b'c\"<d>" }
remove = ["id"]

[[rule]]
name = "unaddressed"
[rule.match]
attributes = { from = "*@*", to = "*" }
[rule.action]
kind = "rewrite"
remove = ["from", "xml:lang"]
set = { to = "{to}" }

[[rule]]
name = "slow-presence"
[rule.match]
element = "presence"
listener = "c2s"
[rule.action]
kind = "delay"
ms = 100
jitter_ms = 50

[[rule]]
name = "drop-some"
[rule.match]
after_stanzas = 2
every = 3
[rule.action]
kind = "drop"
"#,
    // 2: text.
    r#"
[[rule]]
name = "censor"
[rule.match]
text = "(?i)secret|hello"
[rule.action]
kind = "rewrite"
replace_text = { pattern = "(?i)(secret|hello)", with = "[$1 & <redacted> ]]>" }

[[rule]]
name = "quote-body"
[rule.match]
child = "{jabber:server}body"
[rule.action]
kind = "rewrite"
replace_text = { pattern = "^", with = "> " }

[[rule]]
name = "squeeze"
[rule.action]
kind = "rewrite"
replace_text = { pattern = '\s+', with = "" }

[[rule]]
name = "stutter"
[rule.match]
probability = 0.7
[rule.action]
kind = "rewrite"
replace_text = { pattern = "(.)", with = "$1$1" }
"#,
    // 3: whole elements replaced and answered.
    r#"
[[rule]]
name = "pong"
[rule.match]
element = "iq"
type = "get"
child = "{urn:xmpp:ping}ping"
[rule.action]
kind = "rewrite"
replace_with = "<iq type='result' from='{to}' to='{from}' id='{id}'/>"

[[rule]]
name = "bounce"
[rule.match]
element = "message"
[rule.action]
kind = "rewrite"
replace_with = """
<message from='{to}' to='{from}' id='{id}' type='error'>
  <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>
    <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{id} from {from} &amp; {other}</text></error>
  <x><![CDATA[{to}]]></x>
</message>"""

[[rule]]
name = "pong-back"
[rule.match]
child = "ping"
[rule.action]
kind = "inject"
at = "reply"
xml = "<iq type='result' id='{id}' from='{to}' to='{from}'/>"

[[rule]]
name = "bare-presence"
[rule.action]
kind = "rewrite"
replace_with = "<presence/>"
"#,
    // 4: connection-level actions.
    r#"
[[rule]]
name = "stall-briefly"
[rule.match]
initiator = "*.test"
receiver = "b.*"
probability = 0.3
[rule.action]
kind = "stall"
ms = 10

[[rule]]
name = "throttle-down"
[rule.match]
direction = "down"
probability = 0.7
[rule.action]
kind = "throttle"
bytes_per_sec = 100

[[rule]]
name = "slice-s2s"
[rule.match]
listener = "s2s"
every = 2
[rule.action]
kind = "slice"
bytes = 3
delay_ms = 1

[[rule]]
name = "cut"
[rule.match]
after_stanzas = 1
initiator = "*"
[rule.action]
kind = "cut_after"
bytes = 10
stanzas = 2

[[rule]]
name = "reset"
[rule.match]
attributes = { id = "reset-?" }
[rule.action]
kind = "reset"

[[rule]]
name = "stall"
[rule.action]
kind = "stall"
"#,
    // 5: children.
    r#"
[[rule]]
name = "bare-features"
[rule.match]
element = "features"
[rule.action]
kind = "rewrite"
remove_children = [
    "starttls",
    "{urn:ietf:params:xml:ns:xmpp-sasl}mechanisms",
    "{urn:xmpp:features:dialback}dialback",
    "{urn:xmpp:sm:3}sm",
    "{urn:xmpp:features:rosterver}ver",
]

[[rule]]
name = "bare-stanzas"
[rule.action]
kind = "rewrite"
remove_children = [
    "{jabber:server}body",
    "{jabber:client}body",
    "{urn:xmpp:ping}ping",
    "thread",
    "{http://jabber.org/protocol/chatstates}active",
    "error",
]

[[rule]]
name = "everything"
[rule.action]
kind = "rewrite"
set = { type = "error", id = "x" }
remove = ["from"]
remove_children = ["body", "c", "{urn:ietf:params:xml:ns:xmpp-tls}starttls"]
replace_text = { pattern = '(\w+)', with = "<$1>" }
"#,
    // 6: dialback under any prefix, and injections after.
    r#"
[[rule]]
name = "refuse-any-dialback"
[rule.match]
ns = "jabber:server:dialback"
type = "valid"
[rule.action]
kind = "dialback_invalid"

[[rule]]
name = "invalid-everything"
[rule.action]
kind = "dialback_invalid"

[[rule]]
name = "presence-after"
[rule.action]
kind = "inject"
at = "after"
xml = "<presence from='{from}' to='{to}' id='{id}{id}'><status>{from} {to} {id} {other} {</status></presence>"
"#,
    // 7: client streams.
    r#"
[[rule]]
name = "downgrade-auth"
[rule.match]
listener = "c2s"
element = "auth"
ns = "urn:ietf:params:xml:ns:xmpp-sasl"
attributes = { mechanism = "SCRAM-*" }
[rule.action]
kind = "rewrite"
set = { mechanism = "PLAIN" }
replace_text = { pattern = "^.*$", with = "=" }

[[rule]]
name = "no-resumption"
[rule.match]
element = "enable"
ns = "urn:xmpp:sm:3"
[rule.action]
kind = "rewrite"
remove = ["resume"]
set = { max = "0" }

[[rule]]
name = "close-on-shutdown"
[rule.match]
text = "shutdown|SIGTERM"
[rule.action]
kind = "close"

[[rule]]
name = "slow-bodies"
[rule.match]
child = "body"
text = "."
[rule.action]
kind = "delay"
ms = 5
"#,
];

/// The stream headers Prosody sends, by listener and direction: (header, initiator, receiver) as the relay
/// knows them from the initiator's header.
const HEADERS: [(&[u8], Option<&str>, Option<&str>); 4] = [
    // S2S up: the initiating server a.test.
    (
        b"<?xml version='1.0'?><stream:stream xmlns:db='jabber:server:dialback' \
          xmlns:stream='http://etherx.jabber.org/streams' xml:lang='en' from='a.test' to='b.test' \
          version='1.0' xmlns='jabber:server'>",
        Some("a.test"),
        Some("b.test"),
    ),
    // S2S down: the receiving server b.test.
    (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
          xmlns:stream='http://etherx.jabber.org/streams' id='2a8d3309-cab0-423a-861e-a4eb0df17d7c' \
          xml:lang='en' xmlns:db='jabber:server:dialback' from='b.test' to='a.test' version='1.0'>",
        Some("a.test"),
        Some("b.test"),
    ),
    // C2S up: a client of a.test.
    (
        b"<?xml version='1.0'?><stream:stream to='a.test' xmlns='jabber:client' \
          xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>",
        None,
        Some("a.test"),
    ),
    // C2S down: the server a.test.
    (
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
          xmlns:stream='http://etherx.jabber.org/streams' id='d8d3f6f5-5d52-4e56-8a51-0c4ed0c4b0a1' \
          xml:lang='en' from='a.test' version='1.0'>",
        None,
        Some("a.test"),
    ),
];

fn rule_sets() -> &'static [RuleSet] {
    static SETS: OnceLock<Vec<RuleSet>> = OnceLock::new();
    SETS.get_or_init(|| {
        let sets: Vec<RuleSet> = RULE_FILES
            .iter()
            .map(|text| RuleSet::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}")))
            .collect();
        // The table covers every action, every kind of rewrite and injection, and every condition.
        let mut seen = BTreeSet::new();
        for rule in sets.iter().flat_map(|set| set.rules()) {
            seen.insert(rule.action.name().to_owned());
            match &rule.action {
                Action::Rewrite(spec) => {
                    for (field, used) in [
                        ("set", !spec.set.is_empty()),
                        ("remove", !spec.remove.is_empty()),
                        ("remove_children", !spec.remove_children.is_empty()),
                        ("replace_text", spec.replace_text.is_some()),
                        ("replace_with", spec.replace_with.is_some()),
                    ] {
                        if used {
                            seen.insert(format!("rewrite.{field}"));
                        }
                    }
                }
                Action::Inject { at, .. } => {
                    seen.insert(format!("inject.{at:?}"));
                }
                _ => {}
            }
            let m = &rule.matches;
            for (field, used) in [
                ("listener", m.listener.is_some()),
                ("direction", m.direction.is_some()),
                ("initiator", m.initiator.is_some()),
                ("receiver", m.receiver.is_some()),
                ("element", m.element.is_some()),
                ("ns", m.ns.is_some()),
                ("type", m.kind.is_some()),
                ("attributes", !m.attributes.is_empty()),
                ("child", m.child.is_some()),
                ("text", m.text.is_some()),
                ("after_stanzas", m.after_stanzas.is_some()),
                ("every", m.every.is_some()),
                ("probability", m.probability.is_some()),
            ] {
                if used {
                    seen.insert(format!("match.{field}"));
                }
            }
        }
        let expected = [
            "close",
            "cut_after",
            "delay",
            "dialback_invalid",
            "drop",
            "inject",
            "inject.After",
            "inject.Before",
            "inject.Reply",
            "match.after_stanzas",
            "match.attributes",
            "match.child",
            "match.direction",
            "match.element",
            "match.every",
            "match.initiator",
            "match.listener",
            "match.ns",
            "match.probability",
            "match.receiver",
            "match.text",
            "match.type",
            "reset",
            "rewrite",
            "rewrite.remove",
            "rewrite.remove_children",
            "rewrite.replace_text",
            "rewrite.replace_with",
            "rewrite.set",
            "slice",
            "stall",
            "throttle",
        ];
        assert_eq!(
            seen.iter().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "the rule files no longer cover everything"
        );
        sets
    })
}

/// Whether `bytes` are exactly one well-formed element: quick-xml with end names and attributes (duplicates
/// included) checked, only predefined entities and character references, no declaration, comment,
/// processing instruction or DTD, nothing before the element and nothing after it.
fn one_element(bytes: &[u8]) -> Result<(), String> {
    let mut reader = Reader::from_reader(bytes);
    reader.config_mut().trim_text(false);
    let mut depth = 0usize;
    loop {
        let at = reader.buffer_position();
        let event = reader
            .read_event()
            .map_err(|e| format!("quick-xml: {e} at byte {at}"))?;
        match &event {
            Event::Start(tag) | Event::Empty(tag) => {
                if depth == 0 && at != 0 {
                    return Err(format!(
                        "bytes before the element, or a second one, at {at}"
                    ));
                }
                for attribute in tag.attributes() {
                    attribute.map_err(|e| format!("attribute at byte {at}: {e}"))?;
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(_) | Event::CData(_) if depth == 0 => {
                return Err(format!("text outside the element at byte {at}"))
            }
            Event::Text(_) | Event::CData(_) => {}
            Event::GeneralRef(r) => {
                let known =
                    r.is_char_ref() || matches!(&**r, "lt" | "gt" | "amp" | "apos" | "quot");
                if depth == 0 || !known {
                    return Err(format!("reference &{}; at byte {at}", &**r));
                }
                r.resolve_char_ref()
                    .map_err(|e| format!("reference at byte {at}: {e}"))?;
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {
                return Err(format!("{event:?} at byte {at}"))
            }
            Event::Eof if depth > 0 => return Err("not closed".to_owned()),
            Event::Eof => return Err("no element".to_owned()),
        }
        if depth == 0 && !matches!(event, Event::Text(_) | Event::CData(_)) {
            // The element ended (it was empty, or this was its end tag): nothing may follow.
            let end = reader.buffer_position();
            return if end == bytes.len() as u64 {
                Ok(())
            } else {
                Err(format!(
                    "{} bytes after the element",
                    bytes.len() as u64 - end
                ))
            };
        }
    }
}

/// Checks that `out`, made from `input` by `what`, is one element on its own and one Stanza frame again
/// under `header` (the StreamOpen frame the input came under).
fn check_element(what: &str, out: &[u8], input: &[u8], header: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let out_text = match std::str::from_utf8(out) {
        Ok(out) => out,
        Err(e) => panic!(
            "{what}: not UTF-8 ({e}): {:?} from {text:?}",
            String::from_utf8_lossy(out)
        ),
    };
    if let Err(e) = one_element(out) {
        panic!("{what}: not one element: {e}: {out_text:?} from {text:?}");
    }
    let mut stream = header.to_vec();
    stream.extend_from_slice(out);
    let (frames, outcome) = frame_in_chunks(&stream, &[stream.len()], Limits::default());
    let ok = frames.len() == 2
        && frames[1].kind == FrameKind::Stanza
        && frames[1].bytes == out
        && outcome == (Outcome::NeedMore { rest: Vec::new() });
    assert!(
        ok,
        "{what}: not one frame ({:?}, {outcome:?}): {out_text:?} from {text:?}",
        frames.iter().map(|f| f.kind).collect::<Vec<_>>()
    );
}

fn check_rewrite(
    name: &str,
    spec: &RewriteSpec,
    frame: &Framed,
    stream: &StreamHeader,
    header: &[u8],
) {
    let bytes = frame.bytes.as_slice();
    let text = String::from_utf8_lossy(bytes);
    let what = format!("rule {name}: rewrite");
    let out = match rewrite(bytes, stream, spec) {
        Ok(Some(out)) => out,
        // Not rewritten: the relay forwards the original.
        Ok(None) | Err(EditError::Element(_)) => return,
        Err(e @ (EditError::Spec(_) | EditError::NotUtf8)) => {
            panic!("{what}: {e} on a framed element: {text:?}")
        }
    };
    check_element(&what, &out, bytes, header);
    if spec.replace_with.is_some() {
        return;
    }
    let out_text = String::from_utf8_lossy(&out);
    if let Ok(before) = ElementHead::parse(bytes, stream) {
        match ElementHead::parse(&out, stream) {
            Ok(after) => assert_eq!(
                before.name, after.name,
                "{what}: renamed: {out_text:?} from {text:?}"
            ),
            Err(e) => panic!("{what}: the head no longer parses ({e}): {out_text:?} from {text:?}"),
        }
    }
    let present = attributes(&out)
        .unwrap_or_else(|e| panic!("{what}: attributes: {e}: {out_text:?} from {text:?}"));
    for (key, value) in &spec.set {
        let found: Vec<&String> = present
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            found,
            [value],
            "{what}: {key} not set: {out_text:?} from {text:?}"
        );
    }
    for key in &spec.remove {
        assert!(
            present.iter().all(|(k, _)| k != key),
            "{what}: {key} not removed: {out_text:?} from {text:?}"
        );
    }
    if spec.replace_text.is_none() {
        assert_ne!(out, bytes, "{what}: Some without a change: {text:?}");
        match rewrite(&out, stream, spec) {
            Ok(None) => {}
            again => panic!(
                "{what}: rewriting the output again gives {:?}: {out_text:?} from {text:?}",
                again.map(|o| o.map(|o| String::from_utf8_lossy(&o).into_owned()))
            ),
        }
    }
}

fn check_dialback_invalid(frame: &Framed, stream: &StreamHeader, header: &[u8]) {
    let bytes = frame.bytes.as_slice();
    let text = String::from_utf8_lossy(bytes);
    let before = Dialback::parse(bytes, stream);
    let valid = before
        .as_ref()
        .is_ok_and(|d| d.kind.as_deref() == Some("valid"));
    let Some(out) = dialback_invalid(bytes, stream) else {
        assert!(
            !valid,
            "dialback_invalid: a valid answer was left valid: {text:?}"
        );
        return;
    };
    let out_text = String::from_utf8_lossy(&out);
    assert!(valid, "dialback_invalid: changed what is not a valid answer ({before:?}): {out_text:?} from {text:?}");
    check_element("dialback_invalid", &out, bytes, header);
    let types: Vec<String> = attributes(&out)
        .unwrap_or_else(|e| panic!("dialback_invalid: attributes: {e}: {out_text:?} from {text:?}"))
        .into_iter()
        .filter(|(key, _)| key == "type")
        .map(|(_, value)| value)
        .collect();
    assert_eq!(
        types,
        ["invalid"],
        "dialback_invalid: no type='invalid': {out_text:?} from {text:?}"
    );
    let after = Dialback::parse(&out, stream)
        .unwrap_or_else(|e| panic!("dialback_invalid: {e}: {out_text:?} from {text:?}"));
    let expected = Dialback {
        kind: Some("invalid".to_owned()),
        ..before.expect("valid above")
    };
    assert_eq!(
        after, expected,
        "dialback_invalid: {out_text:?} from {text:?}"
    );
}

/// `xml` with each `{from}`, `{to}` and `{id}` replaced, in one pass, by that attribute of `head`, escaped.
fn filled_once(xml: &str, head: Option<&ElementHead>) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(brace) = rest.find('{') {
        out.push_str(&rest[..brace]);
        rest = &rest[brace..];
        let placeholders: [(&str, Option<&str>); 3] = [
            ("{from}", head.and_then(|h| h.from.as_deref())),
            ("{to}", head.and_then(|h| h.to.as_deref())),
            ("{id}", head.and_then(|h| h.id.as_deref())),
        ];
        match placeholders.iter().find(|(p, _)| rest.starts_with(p)) {
            Some((placeholder, value)) => {
                out.push_str(&escape(value.unwrap_or_default()));
                rest = &rest[placeholder.len()..];
            }
            None => {
                out.push('{');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn check_injected(name: &str, xml: &str, frame: &Framed, stream: &StreamHeader, header: &[u8]) {
    let bytes = frame.bytes.as_slice();
    let text = String::from_utf8_lossy(bytes);
    let what = format!("rule {name}: inject");
    let out = injected(xml, bytes, stream);
    let head = ElementHead::parse(bytes, stream).ok();
    let expected = filled_once(xml, head.as_ref());
    assert!(
        out == expected.as_bytes(),
        "{what}: placeholders filled as {:?}, not {expected:?}, from {text:?}",
        String::from_utf8_lossy(&out)
    );
    check_element(&what, &out, bytes, header);
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let sets = rule_sets();
    let rules = &sets[usize::from(choice & 7)];
    let dir = if choice & 8 == 0 {
        Direction::Up
    } else {
        Direction::Down
    };
    let c2s = choice & 16 != 0;
    let listener = if c2s {
        ListenerKind::C2s
    } else {
        ListenerKind::S2s
    };
    let (header, initiator, receiver) =
        HEADERS[usize::from(c2s) * 2 + usize::from(dir == Direction::Down)];

    let mut input = header.to_vec();
    input.extend_from_slice(rest);
    let (frames, _) = frame_in_chunks(&input, &[input.len()], Limits::default());

    let mut state = RuleState::default();
    let mut stream = StreamHeader::default();
    let mut stream_frame: &[u8] = header;
    for frame in &frames {
        match frame.kind {
            FrameKind::Stanza => {}
            FrameKind::StreamOpen => {
                // As the relay does: a header that does not parse leaves the stream without one.
                stream = StreamHeader::parse(&frame.head).unwrap_or_default();
                stream_frame = &frame.bytes;
                continue;
            }
            FrameKind::Whitespace | FrameKind::StreamClose => continue,
        }
        let text = String::from_utf8_lossy(&frame.bytes);
        // What the relay matches on: the head, parsed from the head bytes. The whole frame reads the same.
        if let Ok(head) = ElementHead::parse(&frame.head, &stream) {
            match ElementHead::parse(&frame.bytes, &stream) {
                Ok(whole) => assert_eq!(head, whole, "heads differ: {text:?}"),
                Err(e) => panic!("the head parses, the whole frame not ({e}): {text:?}"),
            }
            let subject = Subject {
                listener,
                dir,
                initiator,
                receiver,
                head: &head,
                tag: &frame.head,
                bytes: &frame.bytes,
            };
            let decision = rules.decide(&subject, &mut state, &mut || ROLL);
            if let Some(decision) = decision {
                assert!(
                    rules.rules().iter().any(|r| std::ptr::eq(r, decision.rule)),
                    "a decision outside the rule set"
                );
            }
        }
        for rule in rules.rules() {
            match &rule.action {
                Action::Rewrite(spec) => {
                    check_rewrite(&rule.name, spec, frame, &stream, stream_frame)
                }
                Action::DialbackInvalid => check_dialback_invalid(frame, &stream, stream_frame),
                Action::Inject { xml, .. } => {
                    check_injected(&rule.name, xml, frame, &stream, stream_frame)
                }
                _ => {}
            }
        }
    }
});
