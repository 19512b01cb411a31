//! `rewrite_features` on arbitrary bytes, and on the `<stream:features>` frames of arbitrary streams.
//!
//! The input is one direction of a stream, as for the framer target. First the whole input goes to
//! `rewrite_features` as if it were a frame (it must not panic, whatever it is). Then the input is framed; the
//! stream header parsed from its StreamOpen frame resolves prefixes, and every Stanza frame whose head is
//! `<stream:features>` is rewritten under every policy that removes one kind of thing, the policy that removes
//! everything, and one chosen from the input's hash. When something is removed:
//!
//! - the output is one well-formed frame again, and it still reads as features: rewriting it again under the
//!   same policy succeeds and removes nothing (no removed item remains);
//! - `Features::parse` accepts the output whenever it accepted the input;
//! - the output is the input with whole elements cut out (children of `<stream:features>`, or children of
//!   those, each with the whitespace right before it), everything else byte-identical and in order.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quick_xml::events::Event;
use quick_xml::Reader;
use std::collections::HashSet;
use std::ops::Range;
use xmpptap::xml::element::{ElementHead, Features, StreamHeader, NS_STREAM};
use xmpptap::xml::framer::{FrameKind, Limits};
use xmpptap::xml::rewrite::{rewrite_features, RewritePolicy};
use xmpptap_fuzz::{fnv, frame_in_chunks, Framed, S2S_HEADER};

fn policy(bits: u64) -> RewritePolicy {
    RewritePolicy {
        strip_channel_binding: bits & 1 != 0,
        strip_compression: bits & 2 != 0,
        strip_external: bits & 4 != 0,
        strip_starttls: bits & 8 != 0,
    }
}

/// The byte ranges that may be cut: each element at depth 1 or 2 below the root, from the start of the
/// whitespace before it to its end.
fn cuttable(frame: &[u8]) -> Vec<Range<usize>> {
    let mut reader = Reader::from_reader(frame);
    reader.config_mut().trim_text(false);
    let mut units = Vec::new();
    // Start offsets of the open elements.
    let mut open: Vec<usize> = Vec::new();
    loop {
        let start = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(Event::Eof) | Err(_) => break,
            Ok(event) => event,
        };
        let end = reader.buffer_position() as usize;
        let unit = |start: usize, depth: usize, units: &mut Vec<Range<usize>>| {
            if depth == 1 || depth == 2 {
                let indent = frame[..start]
                    .iter()
                    .rev()
                    .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                    .count();
                units.push(start - indent..end);
            }
        };
        match event {
            Event::Start(_) => open.push(start),
            Event::Empty(_) => unit(start, open.len(), &mut units),
            Event::End(_) => {
                if let Some(start) = open.pop() {
                    unit(start, open.len(), &mut units);
                }
            }
            _ => {}
        }
    }
    units.sort_by_key(|u| (u.start, u.end));
    units
}

/// Whether `output` is `input[i..]` with some of `units` (all starting at or after `i`) cut out, mapping onto
/// `output[j..]`.
fn is_cut(
    input: &[u8],
    output: &[u8],
    units: &[Range<usize>],
    i: usize,
    j: usize,
    failed: &mut HashSet<(usize, usize)>,
) -> bool {
    if failed.contains(&(i, j)) {
        return false;
    }
    let common = input[i..]
        .iter()
        .zip(&output[j..])
        .take_while(|(a, b)| a == b)
        .count();
    if i + common == input.len() && j + common == output.len() {
        return true;
    }
    for unit in units {
        if unit.start >= i
            && unit.start <= i + common
            && is_cut(input, output, units, unit.end, j + (unit.start - i), failed)
        {
            return true;
        }
    }
    failed.insert((i, j));
    false
}

fn check(frame: &Framed, stream: &StreamHeader, policy: &RewritePolicy) {
    let text = String::from_utf8_lossy(&frame.bytes);
    let Ok(Some((output, removed))) = rewrite_features(&frame.bytes, stream, policy) else {
        return;
    };
    let out_text = String::from_utf8_lossy(&output);
    assert!(!removed.is_empty(), "rewritten without a removal: {text:?}");
    assert!(output.len() < frame.bytes.len(), "nothing cut: {text:?}");

    // One well-formed frame again.
    let mut framed_again = S2S_HEADER.to_vec();
    framed_again.extend_from_slice(&output);
    let (frames, _) = frame_in_chunks(&framed_again, &[framed_again.len()], Limits::default());
    assert!(
        frames.len() == 2 && frames[1].kind == FrameKind::Stanza && frames[1].bytes == output,
        "output is not one frame: {out_text:?} from {text:?}"
    );
    // Still features, with nothing left to remove.
    match rewrite_features(&output, stream, policy) {
        Ok(None) => {}
        Ok(Some((_, again))) => {
            panic!("{again:?} still there after {removed:?}: {out_text:?} from {text:?}")
        }
        Err(e) => panic!("output no longer reads as features ({e}): {out_text:?} from {text:?}"),
    }
    if Features::parse(&frame.bytes).is_ok() {
        if let Err(e) = Features::parse(&output) {
            panic!("Features::parse refuses the output ({e}): {out_text:?} from {text:?}");
        }
    }
    // Only whole elements went; the rest is byte-identical and in order.
    let units = cuttable(&frame.bytes);
    assert!(
        is_cut(&frame.bytes, &output, &units, 0, 0, &mut HashSet::new()),
        "output is not the input minus whole elements: {out_text:?} from {text:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let seed = fnv(data);
    // Anything at all, as if it were a frame: no panic.
    if let Ok(stream) = StreamHeader::parse(S2S_HEADER) {
        let _ = rewrite_features(data, &stream, &policy(seed));
        let _ = rewrite_features(data, &stream, &policy(0xf));
    }

    let (frames, _) = frame_in_chunks(data, &[data.len()], Limits::default());
    let mut stream: Option<StreamHeader> = None;
    for frame in &frames {
        match frame.kind {
            FrameKind::StreamOpen => stream = StreamHeader::parse(&frame.head).ok(),
            FrameKind::Stanza => {
                let Some(stream) = &stream else { continue };
                // As the session does: only a head that is `<stream:features>` is rewritten.
                if !ElementHead::parse(&frame.head, stream)
                    .is_ok_and(|head| head.is(NS_STREAM, "features"))
                {
                    continue;
                }
                for bits in [1, 2, 4, 8, 0xf, seed >> 8] {
                    check(frame, stream, &policy(bits));
                }
            }
            _ => {}
        }
    }
});
