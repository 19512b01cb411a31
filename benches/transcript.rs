//! The transcript writer's throughput: runs of relayed stanzas (as the relay hands them over, one event per
//! read) redacted, correlated and written as JSON Lines, on the writer thread, to `/dev/null`.
//!
//! `cargo bench --bench transcript` prints stanza records written per second and ns per record: the rate the
//! writer keeps up with before it drops events (`tap_dropped`). Events are sent in bursts the channel can hold,
//! so none are dropped and each is written. `TRANSCRIPT_BENCH_RUNS` sets how many runs of 40 stanzas are sent
//! (default 50,000; fewer under valgrind, whose instruction counts do not swing as this VM's speed does).

use std::time::Instant;

use bytes::Bytes;
use xmpptap::side::Direction;
use xmpptap::tap::event::{Origin, StanzaAt, Xml};
use xmpptap::tap::jsonl::JsonlSink;
use xmpptap::tap::redact::Redaction;
use xmpptap::tap::{spawn_writer_with, Event, EventKind, Tap, TapOptions};
use xmpptap::xml::framer::HeadSpans;

const HEADER: &str =
    "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' \
    xmlns:db='jabber:server:dialback' to='b.example' from='a.example' version='1.0'>";
const PER_RUN: usize = 40;

/// One read's worth of 200-byte messages, as the relay's observer describes it.
fn run(conn: u64) -> Event {
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    for n in 0..PER_RUN {
        let head = format!(
            "<message from='load@a.example/bench' to='echo@b.example' type='chat' id='{n:022}'>"
        );
        let at = bytes.len();
        bytes.extend_from_slice(head.as_bytes());
        bytes.extend_from_slice(b"<body>");
        while bytes.len() - at < 200 - 17 {
            bytes.push(b'x');
        }
        bytes.extend_from_slice(b"</body></message>");
        frames.push(StanzaAt {
            at,
            len: bytes.len() - at,
            head_end: head.len(),
            // What the relay's framer finds in the start tag.
            spans: HeadSpans::find(&bytes[at..]),
        });
    }
    Event::now(
        conn,
        Some(Direction::Up),
        EventKind::Stanzas {
            frames,
            bytes: Xml(Bytes::from(bytes)),
        },
    )
}

fn main() -> std::io::Result<()> {
    let runs: usize = std::env::var("TRANSCRIPT_BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    for (name, redaction) in [
        ("default redaction", Redaction::default()),
        ("--redact", Redaction::redact()),
    ] {
        let (tap, rx) = Tap::channel(TapOptions::default());
        let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        let sink = JsonlSink::new(Box::new(null), String::from("/dev/null"));
        let writer = spawn_writer_with(rx, vec![Box::new(sink)], redaction)?;
        let started = Instant::now();
        tap.emit(Event::now(
            1,
            Some(Direction::Up),
            EventKind::StreamOpened {
                stream: 0,
                from: Some(String::from("a.example")),
                to: Some(String::from("b.example")),
                id: None,
                version: Some(String::from("1.0")),
                origin: Origin::Peer,
                xml: Xml(Bytes::from_static(HEADER.as_bytes())),
            },
        ));
        let template = run(1);
        for sent in 0..runs {
            // Bursts the channel holds (its byte budget is 32 MiB): wait for the writer between them.
            if sent % 1000 == 999 {
                while tap.queued_bytes() > 0 {
                    std::thread::yield_now();
                }
            }
            let EventKind::Stanzas { frames, bytes } = &template.kind else {
                unreachable!("a run");
            };
            tap.emit(Event::now(
                1,
                Some(Direction::Up),
                EventKind::Stanzas {
                    frames: frames.clone(),
                    bytes: bytes.clone(),
                },
            ));
        }
        let dropped = tap.dropped();
        drop(tap);
        writer
            .join()
            .map_err(|_| std::io::Error::other("the writer panicked"))?;
        let took = started.elapsed();
        let records = (runs * PER_RUN) as f64;
        println!(
            "{name}: {:.0} stanza records/s, {:.0} ns per record ({dropped} events dropped)",
            records / took.as_secs_f64(),
            took.as_nanos() as f64 / records
        );
    }
    Ok(())
}
