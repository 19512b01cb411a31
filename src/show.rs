//! `xmpptap show`: a JSON Lines transcript printed for people, and the same view live for `xmpptap proxy --log -`
//! on a terminal ([`ShowSink`]).
//!
//! Each record becomes one block: the time (`HH:MM:SS.mmm`, UTC), the connection, an arrow with the connection's
//! domains (`a.test -> b.test` for bytes going up from the initiator, `a.test <- b.test` coming down,
//! `a.test -- b.test` for the connection as a whole), a one-line summary, and for records carrying XML the
//! element pretty-printed (nested elements indented, text kept), coloured when the output is a terminal.
//!
//! The domains come from the record's `pair` (added by the proxy, see [`crate::tap::correlate`]) or, for
//! records without one (connection-level events, older transcripts), from the stream headers seen so far on
//! that connection. Filters select which records are printed; every record is still read, so that domain
//! pairs stay known.

use crate::cli::{ColorWhen, DirFilter, ShowArgs};
use crate::tap::correlate::{domain, Correlator, Pair};
use crate::tap::stage::record_view;
use crate::tap::{Event, EventKind, Sink};
use quick_xml::events::{BytesStart, Event as XmlEvent};
use quick_xml::Reader;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often `--follow` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Why `xmpptap show` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    /// The transcript could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing to stdout failed (other than the reader going away).
    #[error("cannot write: {0}")]
    Write(#[source] io::Error),
}

/// Which records to print. Repeated values of one filter are alternatives; different filters must all match.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Connection ids.
    pub conns: Vec<u64>,
    /// Domains, matched against either side of the pair and the `from`/`to`/`domain` of the record.
    pub domains: Vec<String>,
    /// Direction.
    pub dir: Option<DirFilter>,
    /// Element names (`message`, `db:result` or `result`, `stream:features` or `features`).
    pub elements: Vec<String>,
    /// Event kinds (`stanza`, `dialback`, `tls_established`...) or stanza types (`chat`, `get`, `result`...).
    pub types: Vec<String>,
    /// Substrings of the raw JSON line.
    pub grep: Vec<String>,
}

impl Filter {
    /// The filters given on the command line.
    pub fn from_args(args: &ShowArgs) -> Self {
        Filter {
            conns: args.conn.clone(),
            domains: args.domain.iter().map(|d| d.to_ascii_lowercase()).collect(),
            dir: args.dir,
            elements: args.element.clone(),
            types: args.kind.clone(),
            grep: args.grep.clone(),
        }
    }

    fn matches(&self, line: &str, record: &Map<String, Value>, pair: Option<&Pair>) -> bool {
        let text = |key: &str| record.get(key).and_then(Value::as_str);
        if !self.conns.is_empty() {
            let conn = record.get("conn").and_then(Value::as_u64);
            if !conn.is_some_and(|c| self.conns.contains(&c)) {
                return false;
            }
        }
        if let Some(dir) = self.dir {
            let wanted = match dir {
                DirFilter::Up => "up",
                DirFilter::Down => "down",
            };
            if text("dir") != Some(wanted) {
                return false;
            }
        }
        if !self.domains.is_empty() {
            let mut domains: Vec<String> = ["from", "to", "domain"]
                .iter()
                .filter_map(|k| text(k))
                .map(domain)
                .collect();
            if let Some(pair) = pair {
                domains.extend(pair.from.iter().chain(pair.to.iter()).map(|d| domain(d)));
            }
            if !self.domains.iter().any(|d| domains.contains(d)) {
                return false;
            }
        }
        if !self.elements.is_empty() {
            let Some(qname) = text("xml").and_then(root_name) else {
                return false;
            };
            let local = qname.rsplit(':').next().unwrap_or(&qname);
            if !self.elements.iter().any(|e| *e == qname || e == local) {
                return false;
            }
        }
        if !self.types.is_empty() {
            let (event, kind) = (text("event"), text("type"));
            if !self
                .types
                .iter()
                .any(|t| Some(t.as_str()) == event || Some(t.as_str()) == kind)
            {
                return false;
            }
        }
        self.grep.iter().all(|g| line.contains(g.as_str()))
    }
}

/// Turns records into readable blocks.
#[derive(Debug)]
pub struct Viewer {
    color: bool,
    filter: Filter,
    correlator: Correlator,
}

impl Viewer {
    /// A viewer printing the records `filter` selects, coloured or not.
    pub fn new(color: bool, filter: Filter) -> Self {
        Viewer {
            color,
            filter,
            correlator: Correlator::new(),
        }
    }

    /// Prints one JSON line if the filter selects it. A line that is not a JSON object is reported on stderr
    /// and skipped.
    pub fn line(&mut self, line: &str, out: &mut dyn Write) -> io::Result<()> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return Ok(());
        }
        match serde_json::from_str::<Map<String, Value>>(line) {
            Ok(record) => self.record(&record, line, out),
            Err(e) => {
                eprintln!(
                    "xmpptap: skipping a line that is not a transcript record ({e}): {line:.80}"
                );
                Ok(())
            }
        }
    }

    /// Prints one record if the filter selects it; `line` is its JSON text, for `--grep`.
    pub fn record(
        &mut self,
        record: &Map<String, Value>,
        line: &str,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let conn = record.get("conn").and_then(Value::as_u64).unwrap_or(0);
        // Known before the record (a `closed` record makes the correlator forget the connection) or after it (a
        // stream header makes it known).
        let known = self.correlator.pair(conn).cloned();
        let notes = record_view(record).map(|view| self.correlator.note(&view));
        let pair = record
            .get("pair")
            .and_then(Value::as_str)
            .and_then(Pair::parse)
            .or_else(|| self.correlator.pair(conn).cloned())
            .or(known);
        if !self.filter.matches(line, record, pair.as_ref()) {
            return Ok(());
        }
        // Links a transcript does not carry (written without correlation) are shown as computed here.
        let missing = |key: &str| !record.contains_key(key);
        let block = match notes {
            Some(notes)
                if (notes.verifies.is_some() && missing("verifies"))
                    || (notes.reply_to.is_some() && missing("reply_to")) =>
            {
                let mut record = record.clone();
                if let Ok(Value::Object(computed)) = serde_json::to_value(&notes) {
                    for (key, value) in computed {
                        record.entry(key).or_insert(value);
                    }
                }
                self.block(&record, pair.as_ref())
            }
            _ => self.block(record, pair.as_ref()),
        };
        out.write_all(block.as_bytes())
    }

    /// The text printed for one record.
    fn block(&self, record: &Map<String, Value>, pair: Option<&Pair>) -> String {
        let p = Paint(self.color);
        let text = |key: &str| record.get(key).and_then(Value::as_str);
        let ts = text("ts").unwrap_or_default();
        let time = ts.get(11..23).filter(|_| ts.len() >= 23).unwrap_or(ts);
        let conn = record.get("conn").and_then(Value::as_u64).unwrap_or(0);
        let mut out = String::new();
        let _ = write!(
            out,
            "{} {}",
            p.dim(time),
            p.magenta(&format!("conn {conn}"))
        );
        if let Some(arrow) = arrow(text("dir"), pair) {
            let _ = write!(out, "  {}", p.bold(&arrow));
        }
        let _ = writeln!(out, "  {}", summary(record, &p));
        if let Some(xml) = text("xml") {
            pretty_xml(xml, &p, &mut out);
        }
        out
    }
}

/// `a.test -> b.test` (up), `a.test <- b.test` (down), `a.test -- b.test` (connection), initiator on the left.
fn arrow(dir: Option<&str>, pair: Option<&Pair>) -> Option<String> {
    let (from, to) = match pair {
        Some(pair) => (
            pair.from.as_deref().unwrap_or("?"),
            pair.to.as_deref().unwrap_or("?"),
        ),
        None if dir.is_some() => ("initiator", "receiver"),
        None => return None,
    };
    let arrow = match dir {
        Some("up") => "->",
        Some("down") => "<-",
        _ => "--",
    };
    Some(format!("{from} {arrow} {to}"))
}

/// The one-line description of a record.
fn summary(record: &Map<String, Value>, p: &Paint) -> String {
    let text = |key: &str| record.get(key).and_then(Value::as_str);
    let num = |key: &str| record.get(key).and_then(Value::as_u64).unwrap_or(0);
    let event = text("event").unwrap_or("?");
    let origin = if text("origin") == Some("xmpptap") {
        " (by xmpptap)"
    } else {
        ""
    };
    let mut s = match event {
        "accepted" => format!(
            "{} {} from {} on {}",
            p.cyan("accepted"),
            text("listener").unwrap_or("?"),
            text("peer").unwrap_or("?"),
            text("local").unwrap_or("?")
        ),
        "upstream_connected" => {
            let route = record
                .get("route")
                .and_then(|r| r.get("kind"))
                .and_then(Value::as_str)
                .unwrap_or("?");
            let failed = record
                .get("failed")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let mut s = format!(
                "{} {} at {} ({route})",
                p.cyan("upstream"),
                text("domain").unwrap_or("?"),
                text("addr").unwrap_or("?")
            );
            if failed > 0 {
                let _ = write!(s, " after {failed} failed attempts");
            }
            s
        }
        "upstream_failed" => format!(
            "{} {}: {}",
            p.red("upstream failed"),
            text("domain").unwrap_or("?"),
            text("error").unwrap_or("?")
        ),
        "stream_opened" => {
            let mut s = format!(
                "{} {}",
                p.cyan("stream"),
                record.get("stream").and_then(Value::as_u64).unwrap_or(0)
            );
            for key in ["from", "to", "id"] {
                if let Some(value) = text(key).filter(|v| !v.is_empty()) {
                    let _ = write!(s, " {key}={value}");
                }
            }
            s.push_str(origin);
            s
        }
        "features" => {
            let mut parts = vec![p.cyan("features")];
            match record.get("starttls") {
                Some(Value::Bool(true)) => parts.push(String::from("starttls(required)")),
                Some(Value::Bool(false)) => parts.push(String::from("starttls")),
                _ => {}
            }
            let list = |key: &str| -> Vec<String> {
                record
                    .get(key)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|v| match v {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let mechanisms = list("mechanisms");
            if !mechanisms.is_empty() {
                parts.push(format!("sasl[{}]", mechanisms.join(",")));
            }
            for flag in ["dialback", "bidi", "sm"] {
                if record.get(flag) == Some(&Value::Bool(true)) {
                    parts.push(flag.to_owned());
                }
            }
            let compression = list("compression");
            if !compression.is_empty() {
                parts.push(format!("compression[{}]", compression.join(",")));
            }
            parts.join(" ")
        }
        "rewrite" => {
            let removed: Vec<String> = record
                .get("removed")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            let what = r.get("what").and_then(Value::as_str).unwrap_or("?");
                            let why = r.get("why").and_then(Value::as_str).unwrap_or("?");
                            format!("{what} ({why})")
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("{} removed {}", p.yellow("rewrite"), removed.join("; "))
        }
        "sasl" => {
            let mut s = format!("{} {}", p.cyan("SASL"), text("step").unwrap_or("?"));
            for key in ["mechanism", "condition"] {
                if let Some(value) = text(key) {
                    let _ = write!(s, " {value}");
                }
            }
            s
        }
        "sm" => {
            let mut s = format!("{} {}", p.cyan("SM"), text("element").unwrap_or("?"));
            if let Some(h) = record.get("h").and_then(Value::as_u64) {
                let _ = write!(s, " h={h}");
            }
            if let Some(id) = text("id") {
                let _ = write!(s, " id={id}");
            }
            if let Some(conn) = record.get("resumes_conn").and_then(Value::as_u64) {
                let _ = write!(s, " resumes conn {conn}");
            }
            s
        }
        "starttls" => p.cyan("starttls"),
        "proceed" => p.cyan("proceed"),
        "tls_established" => {
            let mut s = format!(
                "{} with {}: {} {}",
                p.green("TLS up"),
                text("side").unwrap_or("?"),
                text("version").unwrap_or("?"),
                text("cipher").unwrap_or("?")
            );
            for key in ["sni", "alpn"] {
                if let Some(value) = text(key) {
                    let _ = write!(s, " {key}={value}");
                }
            }
            s
        }
        "tls_failed" => format!(
            "{} with {}: {}",
            p.red("TLS failed"),
            text("side").unwrap_or("?"),
            text("error").unwrap_or("?")
        ),
        "stanza" => {
            let mut s = p.cyan(text("name").unwrap_or("?"));
            if let Some(kind) = text("type") {
                let _ = write!(s, " {kind}");
            }
            if let Some(id) = text("id") {
                let _ = write!(s, " id={id}");
            }
            if text("from").is_some() || text("to").is_some() {
                let _ = write!(
                    s,
                    "  {} => {}",
                    text("from").unwrap_or("(none)"),
                    text("to").unwrap_or("(none)")
                );
            }
            s
        }
        "dialback" => {
            let result = text("result").unwrap_or("?");
            let result = match result {
                "valid" => p.green(result),
                "invalid" | "error" => p.red(result),
                _ => result.to_owned(),
            };
            let mut s = format!(
                "{} {result}",
                p.cyan(&format!("db:{}", text("element").unwrap_or("?")))
            );
            for key in ["from", "to", "id"] {
                if let Some(value) = text(key) {
                    let _ = write!(s, " {key}={value}");
                }
            }
            s
        }
        "stream_error" => {
            let mut s = format!(
                "{} {}",
                p.red("stream error"),
                text("condition").unwrap_or("?")
            );
            if let Some(t) = text("text") {
                let _ = write!(s, ": {t}");
            }
            s.push_str(origin);
            s
        }
        "stream_closed" => format!("{}{origin}", p.cyan("stream closed")),
        "protocol_error" => format!(
            "{} by {}: {} (answered <{}/>)",
            p.red("protocol error"),
            text("side").unwrap_or("?"),
            text("error").unwrap_or("?"),
            text("condition").unwrap_or("?")
        ),
        "closed" => format!(
            "{} by {}: {} ({}/{} bytes up/down, {}/{} stanzas, {} ms)",
            p.cyan("closed"),
            text("by").unwrap_or("?"),
            text("reason").unwrap_or("?"),
            num("bytes_up"),
            num("bytes_down"),
            num("stanzas_up"),
            num("stanzas_down"),
            num("duration_ms")
        ),
        "rule" => {
            let mut s = format!(
                "{} {} {}",
                p.yellow("rule"),
                text("rule").unwrap_or("?"),
                text("action").unwrap_or("?")
            );
            if let Some(detail) = text("detail") {
                let _ = write!(s, ": {detail}");
            }
            if let Some(refused) = text("refused") {
                let _ = write!(s, " {}", p.red(&format!("refused: {refused}")));
            }
            s
        }
        "injected" => format!(
            "{} by {}",
            p.yellow("injected"),
            text("origin").unwrap_or("?")
        ),
        "ping" => {
            let mut s = format!(
                "{} {} {}",
                p.cyan("ping"),
                text("pair").unwrap_or("?"),
                text("result").unwrap_or("?")
            );
            if let Some(rtt) = record.get("rtt_ms").and_then(Value::as_f64) {
                let _ = write!(s, " in {rtt:.1} ms");
            }
            if let Some(error) = text("error") {
                let _ = write!(s, " ({error})");
            }
            s
        }
        "policy" => format!(
            "{} {} {}: {}",
            p.red("policy"),
            text("action").unwrap_or("?"),
            text("domain").unwrap_or("?"),
            text("detail").unwrap_or("?")
        ),
        "tap_dropped" => p.red(&format!(
            "{} events dropped (the transcript writer fell behind)",
            num("count")
        )),
        "data" | "raw_data" => format!(
            "{} {} bytes {} {}",
            p.cyan(event),
            text("bytes").map_or(0, str::len),
            if record.get("outbound") == Some(&Value::Bool(true)) {
                "to"
            } else {
                "from"
            },
            text("leg").unwrap_or("?")
        ),
        other => p.cyan(other),
    };
    if let Some(conn) = record
        .get("verifies")
        .and_then(|v| v.get("conn"))
        .and_then(Value::as_u64)
    {
        let _ = write!(s, "  {}", p.yellow(&format!("verifies conn {conn}")));
    }
    if let Some(conn) = record
        .get("reply_to")
        .and_then(|v| v.get("conn"))
        .and_then(Value::as_u64)
    {
        let mut note = format!("reply to conn {conn}");
        if let Some(rtt) = record.get("rtt_ms").and_then(Value::as_f64) {
            let _ = write!(note, " after {rtt:.1} ms");
        }
        let _ = write!(s, "  {}", p.yellow(&note));
    }
    if record.get("redacted") == Some(&Value::Bool(true)) {
        let _ = write!(s, "  {}", p.red("[redacted]"));
    }
    s
}

/// The qualified name of the first element in `xml`.
fn root_name(xml: &str) -> Option<String> {
    let mut reader = Reader::from_str(xml);
    loop {
        match reader.read_event().ok()? {
            XmlEvent::Start(tag) | XmlEvent::Empty(tag) => return Some(tag.name().0.to_owned()),
            XmlEvent::Eof => return None,
            _ => {}
        }
    }
}

/// One piece of markup, for printing.
#[derive(Debug)]
enum Token {
    Start { tag: String, empty: bool },
    End(String),
    Text(String),
    Other(String),
}

/// Indentation of XML under a block's first line.
const XML_INDENT: usize = 4;

/// Appends `xml` pretty-printed: one element per line, nested elements indented by two, an element holding only
/// text on one line, text kept as written (only whitespace between elements is dropped). What cannot be read is
/// printed as it is.
pub fn pretty_xml(xml: &str, p: &Paint, out: &mut String) {
    let Some(tokens) = tokenize(xml, p) else {
        for line in xml.lines() {
            let _ = writeln!(out, "{:XML_INDENT$}{line}", "");
        }
        return;
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let pad = XML_INDENT + 2 * depth;
        match &tokens[i] {
            Token::Start { tag, empty: true } => {
                let _ = writeln!(out, "{:pad$}{tag}", "");
            }
            Token::Start { tag, empty: false } => match (tokens.get(i + 1), tokens.get(i + 2)) {
                (Some(Token::Text(text)), Some(Token::End(end))) => {
                    let _ = writeln!(out, "{:pad$}{tag}{}{end}", "", paint_text(text, p));
                    i += 2;
                }
                (Some(Token::End(end)), _) => {
                    let _ = writeln!(out, "{:pad$}{tag}{end}", "");
                    i += 1;
                }
                _ => {
                    let _ = writeln!(out, "{:pad$}{tag}", "");
                    depth += 1;
                }
            },
            Token::End(end) => {
                depth = depth.saturating_sub(1);
                let pad = XML_INDENT + 2 * depth;
                let _ = writeln!(out, "{:pad$}{end}", "");
            }
            Token::Text(text) => {
                let _ = writeln!(out, "{:pad$}{}", "", paint_text(text.trim(), p));
            }
            Token::Other(raw) => {
                let _ = writeln!(out, "{:pad$}{}", "", p.dim(raw));
            }
        }
        i += 1;
    }
}

fn paint_text(text: &str, p: &Paint) -> String {
    if text.starts_with("[redacted:") || (!text.is_empty() && text.bytes().all(|b| b == b'*')) {
        p.red(text)
    } else {
        p.yellow(text)
    }
}

/// The markup of `xml`, tags already rendered (and coloured); `None` when it cannot be read. A byte order mark
/// at the start is left out, as an XML parser leaves it out.
fn tokenize(xml: &str, p: &Paint) -> Option<Vec<Token>> {
    // quick-xml skips a UTF-8 byte order mark at the start of its input without counting it in
    // `buffer_position` (see `Redaction::scan` in `crate::tap::redact`): add its length back to every position
    // before cutting `xml`. The reader gets all of `xml`, so that it skips this mark and only this one; a second
    // mark is text.
    let bom = if xml.starts_with('\u{feff}') {
        '\u{feff}'.len_utf8()
    } else {
        0
    };
    let mut reader = Reader::from_str(xml);
    let config = reader.config_mut();
    config.check_end_names = false;
    config.allow_unmatched_ends = true;
    let mut tokens = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, tokens: &mut Vec<Token>| {
        if !text.trim().is_empty() {
            tokens.push(Token::Text(std::mem::take(text)));
        }
        text.clear();
    };
    loop {
        let before = usize::try_from(reader.buffer_position())
            .ok()?
            .checked_add(bom)?;
        let event = reader.read_event().ok()?;
        let after = usize::try_from(reader.buffer_position())
            .ok()?
            .checked_add(bom)?;
        // `get`, not indexing: a position that is off (past the end, inside a character) makes the whole
        // fragment print as it is rather than panic.
        let raw = xml.get(before..after)?;
        match event {
            XmlEvent::Text(_) | XmlEvent::GeneralRef(_) | XmlEvent::CData(_) => text.push_str(raw),
            XmlEvent::Start(ref tag) | XmlEvent::Empty(ref tag) => {
                flush(&mut text, &mut tokens);
                tokens.push(Token::Start {
                    tag: render_start(tag, matches!(event, XmlEvent::Empty(_)), p)?,
                    empty: matches!(event, XmlEvent::Empty(_)),
                });
            }
            XmlEvent::End(ref tag) => {
                flush(&mut text, &mut tokens);
                tokens.push(Token::End(format!("</{}>", p.blue(tag.name().0))));
            }
            XmlEvent::Eof => {
                flush(&mut text, &mut tokens);
                return Some(tokens);
            }
            XmlEvent::Decl(_) | XmlEvent::Comment(_) | XmlEvent::PI(_) | XmlEvent::DocType(_) => {
                flush(&mut text, &mut tokens);
                tokens.push(Token::Other(raw.to_owned()));
            }
        }
    }
}

/// `<name key='value' ...>` (or `/>`), attribute values as written.
fn render_start(tag: &BytesStart, empty: bool, p: &Paint) -> Option<String> {
    let mut s = format!("<{}", p.blue(tag.name().0));
    for attribute in tag.attributes().with_checks(false) {
        let attribute = attribute.ok()?;
        let quote = if attribute.value.contains('\'') {
            '"'
        } else {
            '\''
        };
        let _ = write!(
            s,
            " {}={quote}{}{quote}",
            p.cyan(attribute.key.0),
            p.green(&attribute.value)
        );
    }
    s.push_str(if empty { "/>" } else { ">" });
    Some(s)
}

/// ANSI colours, or none.
#[derive(Clone, Copy, Debug)]
pub struct Paint(pub bool);

impl Paint {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }
    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
    fn red(&self, text: &str) -> String {
        self.paint("31", text)
    }
    fn green(&self, text: &str) -> String {
        self.paint("32", text)
    }
    fn yellow(&self, text: &str) -> String {
        self.paint("33", text)
    }
    fn blue(&self, text: &str) -> String {
        self.paint("1;34", text)
    }
    fn magenta(&self, text: &str) -> String {
        self.paint("35", text)
    }
    fn cyan(&self, text: &str) -> String {
        self.paint("36", text)
    }
}

/// Whether to colour: `always`, `never`, or (`auto`) when stdout is a terminal and `NO_COLOR` is not set.
pub fn use_color(when: ColorWhen) -> bool {
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => {
            io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    }
}

/// `xmpptap show`: prints the transcript, then (with `--follow`) whatever is appended to it, until interrupted.
pub fn run(args: &ShowArgs) -> Result<(), ShowError> {
    let mut viewer = Viewer::new(use_color(args.color), Filter::from_args(args));
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let read_error = |source| ShowError::Read {
        path: args.file.clone(),
        source,
    };
    let result = if args.file == Path::new("-") {
        read_lines(io::stdin().lock(), false, &mut viewer, &mut out).map_err(read_error)
    } else {
        let file = std::fs::File::open(&args.file).map_err(read_error)?;
        read_lines(file, args.follow, &mut viewer, &mut out).map_err(read_error)
    };
    let result = result.and_then(|()| out.flush().map_err(ShowError::Write));
    match result {
        // `xmpptap show ... | head`: the reader went away; nothing more to do.
        Err(ShowError::Write(e) | ShowError::Read { source: e, .. })
            if e.kind() == io::ErrorKind::BrokenPipe =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Feeds every complete line of `input` to the viewer; at the end, either stops (after a last line without a
/// newline) or, with `follow`, waits for more. A file that shrinks (rotated, truncated) is read again from its
/// start.
fn read_lines<R: Read + MaybeFile>(
    mut input: R,
    follow: bool,
    viewer: &mut Viewer,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset: u64 = 0;
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            if !follow {
                if !pending.is_empty() {
                    viewer.line(&String::from_utf8_lossy(&pending), out)?;
                }
                return Ok(());
            }
            out.flush()?;
            std::thread::sleep(FOLLOW_POLL);
            if input.len().is_some_and(|len| len < offset) {
                input.rewind()?;
                offset = 0;
                pending.clear();
            }
            continue;
        }
        offset += n as u64;
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end];
            viewer.line(&String::from_utf8_lossy(line), out)?;
            start += end + 1;
        }
        pending.drain(..start);
    }
}

/// What `--follow` needs to notice a truncated file.
trait MaybeFile {
    /// The current length, for files.
    fn len(&self) -> Option<u64>;
    /// Goes back to the start.
    fn rewind(&mut self) -> io::Result<()>;
}

impl MaybeFile for std::fs::File {
    fn len(&self) -> Option<u64> {
        self.metadata().ok().map(|m| m.len())
    }
    fn rewind(&mut self) -> io::Result<()> {
        io::Seek::rewind(self)
    }
}

impl MaybeFile for io::StdinLock<'_> {
    fn len(&self) -> Option<u64> {
        None
    }
    fn rewind(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The live view for `xmpptap proxy --log -` on a terminal: each event as `xmpptap show` prints it.
pub struct ShowSink {
    viewer: Viewer,
    out: BufWriter<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for ShowSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShowSink").finish_non_exhaustive()
    }
}

impl ShowSink {
    /// A live view on stdout, coloured unless `NO_COLOR` is set.
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()), use_color(ColorWhen::Auto))
    }

    /// A live view on `out`.
    pub fn new(out: Box<dyn Write + Send>, color: bool) -> Self {
        ShowSink {
            viewer: Viewer::new(color, Filter::default()),
            out: BufWriter::new(out),
        }
    }
}

impl Sink for ShowSink {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        if matches!(
            event.kind,
            EventKind::Data { .. } | EventKind::RawData { .. } | EventKind::TlsSecrets { .. }
        ) {
            return Ok(());
        }
        let record = match serde_json::to_value(event).map_err(io::Error::other)? {
            Value::Object(record) => record,
            _ => return Ok(()),
        };
        self.viewer.record(&record, "", &mut self.out)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn name(&self) -> String {
        String::from("live view on stdout")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = r#"{"ts":"2026-11-22T02:55:37.424607Z","conn":1,"dir":null,"event":"accepted","listener":"s2s","peer":"127.0.0.1:50598","local":"127.90.1.10:40655"}
{"ts":"2026-11-22T02:55:37.424945Z","conn":1,"dir":"up","event":"stream_opened","stream":0,"from":"a.test","to":"b.test","id":"","version":"1.0","origin":"peer","xml":"<?xml version='1.0'?><stream:stream to='b.test' from='a.test' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"}
{"ts":"2026-11-22T02:55:37.450540Z","conn":1,"dir":"up","event":"stanza","name":"message","ns":"jabber:server","type":"chat","id":"m1","from":"alice@a.test/test","to":"bob@b.test","xml":"<message to='bob@b.test' from='alice@a.test/test' type='chat' id='m1'><body>Hi &amp; bye</body><active xmlns='http://jabber.org/protocol/chatstates'/></message>"}
{"ts":"2026-11-22T02:55:37.460000Z","conn":1,"dir":"down","event":"stanza","name":"iq","type":"result","id":"p1","from":"b.test","to":"a.test","xml":"<iq type='result' id='p1' from='b.test' to='a.test'/>","pair":"a.test->b.test","reply_to":{"conn":2,"ts":"2026-11-22T02:55:37.450000Z"},"rtt_ms":10.0}
not json
"#;

    fn show(filter: Filter, color: bool) -> String {
        let mut viewer = Viewer::new(color, filter);
        let mut out = Vec::new();
        for line in LINES.lines() {
            viewer.line(line, &mut out).expect("writes");
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn blocks() {
        let text = show(Filter::default(), false);
        let expected = "\
02:55:37.424 conn 1  accepted s2s from 127.0.0.1:50598 on 127.90.1.10:40655
02:55:37.424 conn 1  a.test -> b.test  stream 0 from=a.test to=b.test
    <?xml version='1.0'?>
    <stream:stream to='b.test' from='a.test' xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>
02:55:37.450 conn 1  a.test -> b.test  message chat id=m1  alice@a.test/test => bob@b.test
    <message to='bob@b.test' from='alice@a.test/test' type='chat' id='m1'>
      <body>Hi &amp; bye</body>
      <active xmlns='http://jabber.org/protocol/chatstates'/>
    </message>
02:55:37.460 conn 1  a.test <- b.test  iq result id=p1  b.test => a.test  reply to conn 2 after 10.0 ms
    <iq type='result' id='p1' from='b.test' to='a.test'/>
";
        assert_eq!(text, expected);
    }

    #[test]
    fn rules_pings_and_policy() {
        let lines = r#"{"ts":"2026-11-22T02:55:38.000000Z","conn":1,"dir":"up","event":"rule","rule":"slow","action":"delay","detail":"2000 ms","xml":"<message/>"}
{"ts":"2026-11-22T02:55:38.100000Z","conn":1,"dir":"up","event":"rule","rule":"gone","action":"drop","refused":"stream management is enabled","xml":"<message/>"}
{"ts":"2026-11-22T02:55:38.200000Z","conn":2,"dir":"up","event":"ping","id":"x","pair":"a.test->b.test","result":"answered","rtt_ms":12.34,"sent_on":1}
{"ts":"2026-11-22T02:55:38.300000Z","conn":3,"dir":"down","event":"policy","domain":"c.test","reason":"blocked","action":"refused","detail":"c.test is on xmpptap's blocklist"}
{"ts":"2026-11-22T02:55:38.400000Z","conn":1,"dir":"up","event":"injected","origin":"control","xml":"<message/>"}
"#;
        let mut viewer = Viewer::new(false, Filter::default());
        let mut out = Vec::new();
        for line in lines.lines() {
            viewer.line(line, &mut out).expect("writes");
        }
        let text = String::from_utf8(out).expect("utf-8");
        for expected in [
            "rule slow delay: 2000 ms",
            "rule gone drop refused: stream management is enabled",
            "ping a.test->b.test answered in 12.3 ms",
            "policy refused c.test: c.test is on xmpptap's blocklist",
            "injected by control",
        ] {
            assert!(text.contains(expected), "{expected:?} in:\n{text}");
        }
    }

    #[test]
    fn colour_only_when_asked() {
        assert!(!show(Filter::default(), false).contains('\x1b'));
        let coloured = show(Filter::default(), true);
        assert!(coloured.contains("\x1b[1;34mmessage\x1b[0m"), "{coloured}");
        assert!(coloured.contains("\x1b[32mbob@b.test\x1b[0m"), "{coloured}");
    }

    #[test]
    fn filters() {
        let count = |filter: Filter| {
            show(filter, false)
                .lines()
                .filter(|l| l.starts_with("02:"))
                .count()
        };
        assert_eq!(count(Filter::default()), 4);
        assert_eq!(
            count(Filter {
                dir: Some(DirFilter::Down),
                ..Filter::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                elements: vec!["body".into()],
                ..Filter::default()
            }),
            0
        );
        assert_eq!(
            count(Filter {
                elements: vec!["message".into()],
                ..Filter::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                elements: vec!["stream".into()],
                ..Filter::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                types: vec!["result".into(), "accepted".into()],
                ..Filter::default()
            }),
            2
        );
        assert_eq!(
            count(Filter {
                domains: vec!["b.test".into()],
                ..Filter::default()
            }),
            3
        );
        assert_eq!(
            count(Filter {
                conns: vec![2],
                ..Filter::default()
            }),
            0
        );
        assert_eq!(
            count(Filter {
                grep: vec!["bye".into()],
                ..Filter::default()
            }),
            1
        );
        assert_eq!(
            count(Filter {
                grep: vec!["bye".into()],
                dir: Some(DirFilter::Down),
                ..Filter::default()
            }),
            0
        );
    }

    #[test]
    fn live_view_sink() {
        use crate::side::Direction;
        use crate::tap::event::{Origin, Xml};
        let shared = crate::tap::SharedBuf::default();
        let mut sink = ShowSink::new(Box::new(shared.clone()), false);
        let xml = |s: &str| Xml(bytes::Bytes::copy_from_slice(s.as_bytes()));
        let mut opened = Event::now(
            4,
            Some(Direction::Up),
            EventKind::StreamOpened {
                stream: 0,
                from: Some("a.test".into()),
                to: Some("b.test".into()),
                id: None,
                version: Some("1.0".into()),
                origin: Origin::Peer,
                xml: xml("<stream:stream xmlns='jabber:server' from='a.test' to='b.test'>"),
            },
        );
        let mut stage = crate::tap::stage::Stage::new(crate::tap::redact::Redaction::default());
        stage.process(&mut opened);
        sink.event(&opened).expect("writes");
        let mut auth = Event::now(
            4,
            Some(Direction::Up),
            EventKind::Sasl {
                step: "auth".into(),
                mechanism: Some("PLAIN".into()),
                condition: None,
                xml: xml("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGFsaWNlAHNlY3JldA==</auth>"),
            },
        );
        stage.process(&mut auth);
        sink.event(&auth).expect("writes");
        let data = Event::now(
            4,
            Some(Direction::Up),
            EventKind::Data {
                leg: crate::side::Side::Initiator,
                outbound: false,
                bytes: xml("<x/>"),
            },
        );
        sink.event(&data).expect("writes");
        sink.flush().expect("flushes");
        let text =
            String::from_utf8(shared.0.lock().expect("not poisoned").clone()).expect("utf-8");
        assert!(
            text.contains("conn 4  a.test -> b.test  SASL auth PLAIN  [redacted]"),
            "{text}"
        );
        assert!(text.contains("    <auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>[redacted:20]*******</auth>"), "{text}");
        assert!(!text.contains("data"), "{text}");
    }

    /// quick-xml skips a UTF-8 byte order mark at the start of its input without counting it in its positions,
    /// which `tokenize` uses to cut text out of the record's `xml` (the same shift as in
    /// `crate::tap::redact`): text came out three bytes early, or not at all when the cut fell inside a
    /// character. The mark itself is not printed.
    #[test]
    fn byte_order_mark_does_not_shift_text() {
        let mut viewer = Viewer::new(false, Filter::default());
        let mut out = Vec::new();
        let lines = [
            r#"{"ts":"2026-11-22T02:55:37.424945Z","conn":1,"dir":"up","event":"stream_opened","stream":0,"xml":"\ufeff<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"}"#,
            r#"{"ts":"2026-11-22T02:55:37.450540Z","conn":1,"dir":"up","event":"stanza","name":"message","xml":"\ufeff<message to='bob@b.test'><body>hello</body></message>"}"#,
            r#"{"ts":"2026-11-22T02:55:37.450540Z","conn":1,"dir":"up","event":"stanza","name":"message","xml":"\ufeff<message><body>h\u00e9llo w\u00f6rld \u2713</body></message>"}"#,
        ];
        for line in lines {
            viewer.line(line, &mut out).expect("writes");
        }
        let text = String::from_utf8(out).expect("utf-8");
        let expected = "\
02:55:37.424 conn 1  initiator -> receiver  stream 0
    <?xml version='1.0'?>
    <stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>
02:55:37.450 conn 1  initiator -> receiver  message
    <message to='bob@b.test'>
      <body>hello</body>
    </message>
02:55:37.450 conn 1  initiator -> receiver  message
    <message>
      <body>h\u{e9}llo w\u{f6}rld \u{2713}</body>
    </message>
";
        assert_eq!(text, expected);
    }

    /// Only the first mark is skipped (by quick-xml, as by an XML parser); a second one is text.
    #[test]
    fn second_byte_order_mark_is_text() {
        let mut out = String::new();
        pretty_xml("\u{feff}\u{feff}<a>x</a>", &Paint(false), &mut out);
        assert_eq!(out, "    \u{feff}\n    <a>x</a>\n");
    }

    /// Every prefix (cut between characters, as a record's text can be) of fragments with byte order marks,
    /// multi-byte text, CDATA, comments, declarations and references prints without panicking, through the
    /// path `xmpptap show` takes.
    #[test]
    fn odd_fragments_do_not_panic() {
        let fragments = [
            "\u{feff}<?xml version='1.0'?><stream:stream xmlns='jabber:server'><message><body>h\u{e9}llo \u{2713}</body></message>",
            "\u{feff}\u{feff}\u{feff}<a>\u{feff}</a>",
            "\u{feff}<a><![CDATA[\u{e9}\u{2713}]]><!-- \u{1F600} --><?pi \u{e9}?>&amp;&#xe9;</a></b>",
            "\u{feff}\u{1F600}<a x='\u{e9}\"' y=\"'\u{2713}\"/>\u{feff}",
            "\u{feff}",
            "\u{feff} ",
        ];
        for fragment in fragments {
            for (cut, _) in fragment.char_indices().chain([(fragment.len(), ' ')]) {
                let xml = &fragment[..cut];
                for color in [false, true] {
                    let mut viewer = Viewer::new(color, Filter::default());
                    // A timestamp whose byte 11 falls inside a character.
                    let record = serde_json::json!({
                        "ts": "2026-11-22\u{2713}02:55:37.424607Z", "conn": 1, "event": "stanza", "xml": xml,
                    });
                    let record: Map<String, Value> =
                        serde_json::from_value(record).expect("a JSON object");
                    let mut out = Vec::new();
                    viewer.record(&record, "", &mut out).expect("writes");
                }
            }
        }
    }

    #[test]
    fn unreadable_xml_is_printed_as_is() {
        let mut out = String::new();
        pretty_xml("<a><b></a", &Paint(false), &mut out);
        assert_eq!(out, "    <a><b></a\n");
    }

    #[test]
    fn nested_and_mixed_content() {
        let mut out = String::new();
        pretty_xml(
            "<stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism></mechanisms><x a=\"it's\">t<y/>u</x><e></e></stream:features>",
            &Paint(false),
            &mut out,
        );
        assert_eq!(
            out,
            "    <stream:features>
      <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>
        <mechanism>PLAIN</mechanism>
      </mechanisms>
      <x a=\"it's\">
        t
        <y/>
        u
      </x>
      <e></e>
    </stream:features>
"
        );
    }
}
