//! The sans-IO framer on arbitrary bytes, read as one direction of a stream from its first byte.
//!
//! - It never panics.
//! - The frames' bytes, concatenated, are exactly the input it consumed: the input is those bytes followed by
//!   what is left in the buffer (or, after an error, starts with them).
//! - Every frame stands on its own under a fresh quick-xml reader: a Stanza is one balanced element, a
//!   StreamOpen a declaration and a stream start tag, a Whitespace whitespace, a StreamClose one end tag.
//! - Fed in chunks cut at points chosen from the input's hash, and byte by byte, it finds the same frames
//!   (whitespace runs may be cut differently), the same leftover, and an error exactly when fed whole does.
//! - Wherever it records head spans (as the relay's framer does under a tap), they give what `PlainHead` reads
//!   of the start tag.
//!
//! A quarter of the inputs run under small limits (size and depth, chosen from the hash) to reach the limit
//! checks; the others under the defaults.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xmpptap::xml::framer::{FrameKind, Limits};
use xmpptap_fuzz::{check_frame, concat, fnv, frame_in_chunks, Framed, Outcome, Rng};

/// Adjacent whitespace frames merged into one, since whitespace is framed eagerly.
fn merged(frames: &[Framed]) -> Vec<Framed> {
    let mut out: Vec<Framed> = Vec::new();
    for frame in frames {
        match out.last_mut() {
            Some(last)
                if last.kind == FrameKind::Whitespace && frame.kind == FrameKind::Whitespace =>
            {
                last.bytes.extend_from_slice(&frame.bytes);
                last.head.extend_from_slice(&frame.head);
            }
            _ => out.push(frame.clone()),
        }
    }
    out
}

fn non_whitespace(frames: &[Framed]) -> Vec<&Framed> {
    frames
        .iter()
        .filter(|f| f.kind != FrameKind::Whitespace)
        .collect()
}

fn compare(
    input: &[u8],
    whole: &(Vec<Framed>, Outcome),
    other: &(Vec<Framed>, Outcome),
    how: &str,
) {
    let text = String::from_utf8_lossy(input);
    match (&whole.1, &other.1) {
        (Outcome::NeedMore { rest }, Outcome::NeedMore { rest: other_rest }) => {
            assert_eq!(rest, other_rest, "leftover differs {how}: {text:?}");
            assert_eq!(
                merged(&whole.0),
                merged(&other.0),
                "frames differ {how}: {text:?}"
            );
        }
        // Where bytes break two rules, which one is seen first may depend on the split, and whitespace just
        // before the error may or may not have been framed; the frames that did end are the same.
        (Outcome::Error(_), Outcome::Error(_)) => assert_eq!(
            non_whitespace(&whole.0),
            non_whitespace(&other.0),
            "frames before the error differ {how}: {text:?}"
        ),
        (a, b) => panic!("whole: {a:?}, {how}: {b:?}: {text:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rng = Rng::new(fnv(data));
    let limits = if rng.next_u64() & 3 == 0 {
        Limits {
            max_stanza_bytes: rng.range(16, 2048),
            max_depth: rng.range(1, 8),
        }
    } else {
        Limits::default()
    };

    let whole = frame_in_chunks(data, &[data.len()], limits);
    let consumed = concat(&whole.0);
    assert!(
        data.starts_with(&consumed),
        "frames are not the input: {:?}",
        String::from_utf8_lossy(data)
    );
    if let Outcome::NeedMore { rest } = &whole.1 {
        assert_eq!(
            &data[consumed.len()..],
            rest.as_slice(),
            "frames and leftover are not the input"
        );
    }
    for frame in &whole.0 {
        check_frame(frame);
    }

    let sizes: Vec<usize> = (0..rng.range(1, 8)).map(|_| rng.range(1, 64)).collect();
    let chunked = frame_in_chunks(data, &sizes, limits);
    compare(data, &whole, &chunked, &format!("in chunks of {sizes:?}"));
    if data.len() <= 4096 {
        let bytewise = frame_in_chunks(data, &[1], limits);
        compare(data, &whole, &bytewise, "byte by byte");
    }
});
