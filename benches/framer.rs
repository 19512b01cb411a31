//! Framing throughput: the bytes of a busy S2S stream cut into frames, as the relay does per read.
//!
//! `cargo bench --bench framer` prints ns per stanza and GB/s for the loadgen's 200-byte `<message>` and for a
//! larger stanza with attributes and nested children, next to `memchr` over the same bytes (a floor: one
//! vectorized pass that finds every `<`). Each twice: as the relay frames without a tap, and with the head
//! spans the transcript writer takes from the framer (`Framer::record_head_spans`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use xmpptap::xml::framer::{Framer, Limits};

const HEADER: &[u8] =
    b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
    xmlns:db='jabber:server:dialback' to='b.example' from='a.example' id='x1' version='1.0'>";

fn message(size: usize) -> Vec<u8> {
    let mut out = b"<message from='load@a.example/bench' to='echo@b.example' type='chat' id='0000000000000000000000'><body>"
        .to_vec();
    let tail = b"</body></message>";
    let text = b"The quick brown fox jumps over the lazy dog. ";
    let pad = size.saturating_sub(out.len() + tail.len());
    out.extend((0..pad).map(|i| text[i % text.len()]));
    out.extend_from_slice(tail);
    out
}

fn nested() -> Vec<u8> {
    b"<message xmlns='jabber:client' from='juliet@capulet.example/balcony' to='romeo@montague.example' \
      type='chat' id='ktx72v49' xml:lang='en'><thread parent='e0ffe42b28561960c6b12b944a092794b9683a38'>\
      0e3141cd80894871a68e6fe6b1ec56fa</thread><body>Art thou not Romeo, and a Montague? &amp; more</body>\
      <active xmlns='http://jabber.org/protocol/chatstates'/><request xmlns='urn:xmpp:receipts'/>\
      <origin-id xmlns='urn:xmpp:sid:0' id='de305d54-75b4-431b-adb2-eb6b9e546014'/></message>"
        .to_vec()
}

/// Frames `reads` (each a buffer of whole stanzas) `rounds` times, recording head spans or not; returns the
/// time per stanza.
fn run(stanza: &[u8], spans: bool, per_read: usize, rounds: usize) -> (Duration, usize) {
    let read: Vec<u8> = stanza.repeat(per_read);
    let mut framer = Framer::new(Limits::default());
    framer.record_head_spans(spans);
    match framer.next_frame(HEADER) {
        Ok(Some(_)) => {}
        other => panic!("header not framed: {other:?}"),
    }
    let started = Instant::now();
    let mut frames = 0;
    for _ in 0..rounds {
        let mut at = 0;
        while let Ok(Some(frame)) = framer.next_frame(black_box(&read[at..])) {
            at += frame.len;
            frames += 1;
        }
        assert_eq!(at, read.len());
    }
    (started.elapsed(), frames)
}

fn floor(stanza: &[u8], per_read: usize, rounds: usize) -> Duration {
    let read: Vec<u8> = stanza.repeat(per_read);
    let started = Instant::now();
    let mut found = 0usize;
    for _ in 0..rounds {
        found += memchr::memchr_iter(b'<', black_box(&read)).count();
    }
    black_box(found);
    started.elapsed()
}

fn main() {
    let trials: usize = std::env::var("FRAMER_BENCH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(7)
        .max(1);
    let cases = [
        ("200-byte <message>", message(200), false),
        ("200-byte <message>, head spans", message(200), true),
        ("nested <message>", nested(), false),
        ("nested <message>, head spans", nested(), true),
    ];
    println!("| stanza | bytes | framer ns/stanza | framer GB/s | memchr('<') GB/s |");
    println!("|---|---:|---:|---:|---:|");
    for (name, stanza, spans) in cases {
        let per_read = 65_536 / stanza.len();
        let rounds = 20_000_000 / (per_read * stanza.len());
        // The fastest of several trials: this is a VM whose speed swings, and noise only ever adds time. Under
        // valgrind (instruction counts, which do not swing) one trial is enough: FRAMER_BENCH_TRIALS=1.
        let (took, frames) = (0..trials)
            .map(|_| run(&stanza, spans, per_read, rounds))
            .min()
            .expect("at least one trial");
        let bytes = (frames * stanza.len()) as f64;
        let floor = (0..7)
            .map(|_| floor(&stanza, per_read, rounds))
            .min()
            .expect("at least one trial");
        println!(
            "| {name} | {} | {:.1} | {:.2} | {:.2} |",
            stanza.len(),
            took.as_nanos() as f64 / frames as f64,
            bytes / took.as_nanos() as f64,
            bytes / floor.as_nanos() as f64,
        );
    }
}
