//! Counters for `/metrics`, in the Prometheus text exposition format 0.0.4, written by hand.
//!
//! Sessions, the TLS layer, rules and the pinger bump the counters of a shared [`Metrics`] as things happen;
//! [`Metrics::render`] writes them out together with what only the [`Registry`] knows: the live connections
//! and the traffic per domain pair.
//!
//! Label values coming from peers or operators (domains, domain pairs, rule names, error conditions) are
//! open-ended, so every family holds at most [`MAX_SERIES`] label sets: beyond that, those labels read
//! `other`. Bounded labels (listener, side, direction, ...) keep their values. This module owns the counters
//! and the text format; it decides nothing and reads no sockets.

use super::registry::Registry;
use crate::side::Side;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The most label sets one family holds before open-ended labels fold into `other`. Each costs a line per
/// scrape and a few dozen bytes of memory; 10,000 keeps a scrape under a megabyte even when a peer sends a
/// new domain on every connection.
pub const MAX_SERIES: usize = 10_000;

/// The value open-ended labels take once a family is full.
const OTHER: &str = "other";

/// Upper bounds of the `xmpptap_ping_rtt_seconds` buckets, as written in `le` (the `+Inf` bucket follows).
const RTT_BUCKETS: [(f64, &str); 13] = [
    (0.001, "0.001"),
    (0.0025, "0.0025"),
    (0.005, "0.005"),
    (0.01, "0.01"),
    (0.025, "0.025"),
    (0.05, "0.05"),
    (0.1, "0.1"),
    (0.25, "0.25"),
    (0.5, "0.5"),
    (1.0, "1"),
    (2.5, "2.5"),
    (5.0, "5"),
    (10.0, "10"),
];

/// Locks `mutex`, ignoring poisoning: every critical section here only inserts or adds, so nothing is left
/// half done by a panic elsewhere.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A label of a family, and whether its values are open-ended (folded into `other` when the family is full).
#[derive(Debug)]
struct Label {
    name: &'static str,
    open: bool,
}

const fn bounded(name: &'static str) -> Label {
    Label { name, open: false }
}

const fn open(name: &'static str) -> Label {
    Label { name, open: true }
}

const LISTENER: Label = bounded("listener");
const SIDE: Label = bounded("side");
const DIRECTION: Label = bounded("direction");
const REASON: Label = bounded("reason");
const DOMAIN: Label = open("domain");
const PAIR: Label = open("pair");
const RESULT: Label = open("result");
const CONDITION: Label = open("condition");
const RULE: Label = open("rule");
const ACTION: Label = open("action");

/// The name, help and labels of a family.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    labels: &'static [Label],
}

impl Family {
    /// Writes `# HELP` and `# TYPE`.
    fn header(&self, out: &mut String, kind: &str) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
    }

    /// The key for `values` in `map`: the values themselves, or with open labels as `other` when the map is
    /// full and does not hold them yet.
    fn key<V>(&self, map: &BTreeMap<Vec<String>, V>, values: &[&str]) -> Vec<String> {
        debug_assert_eq!(values.len(), self.labels.len(), "labels of {}", self.name);
        let key: Vec<String> = values.iter().map(|value| (*value).to_owned()).collect();
        if map.len() < MAX_SERIES || map.contains_key(&key) {
            return key;
        }
        self.labels
            .iter()
            .zip(key)
            .map(|(label, value)| if label.open { OTHER.to_owned() } else { value })
            .collect()
    }
}

/// A family of counters.
#[derive(Debug)]
struct Counter {
    family: Family,
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str, labels: &'static [Label]) -> Self {
        Counter {
            family: Family { name, help, labels },
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn inc(&self, values: &[&str]) {
        let mut series = lock(&self.series);
        let key = self.family.key(&series, values);
        let count = series.entry(key).or_default();
        *count = count.saturating_add(1);
    }

    fn render(&self, out: &mut String) {
        self.family.header(out, "counter");
        for (values, count) in lock(&self.series).iter() {
            sample(
                out,
                self.family.name,
                self.family.labels,
                values,
                None,
                *count,
            );
        }
    }
}

/// One histogram series.
#[derive(Clone, Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative), the last one for those above every bound.
    buckets: [u64; RTT_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

/// A family of histograms over [`RTT_BUCKETS`].
#[derive(Debug)]
struct Histograms {
    family: Family,
    series: Mutex<BTreeMap<Vec<String>, Histogram>>,
}

impl Histograms {
    const fn new(name: &'static str, help: &'static str, labels: &'static [Label]) -> Self {
        Histograms {
            family: Family { name, help, labels },
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn observe(&self, values: &[&str], value: f64) {
        let bucket = RTT_BUCKETS
            .iter()
            .position(|(bound, _)| value <= *bound)
            .unwrap_or(RTT_BUCKETS.len());
        let mut series = lock(&self.series);
        let key = self.family.key(&series, values);
        let histogram = series.entry(key).or_default();
        histogram.buckets[bucket] = histogram.buckets[bucket].saturating_add(1);
        histogram.sum += value;
        histogram.count = histogram.count.saturating_add(1);
    }

    fn render(&self, out: &mut String) {
        let Family { name, labels, .. } = self.family;
        self.family.header(out, "histogram");
        for (values, histogram) in lock(&self.series).iter() {
            let bucket = format!("{name}_bucket");
            let mut cumulative = 0u64;
            for (i, (_, le)) in RTT_BUCKETS.iter().enumerate() {
                cumulative = cumulative.saturating_add(histogram.buckets[i]);
                sample(out, &bucket, labels, values, Some(le), cumulative);
            }
            sample(out, &bucket, labels, values, Some("+Inf"), histogram.count);
            let _ = write!(out, "{name}_sum");
            label_set(out, labels, values, None);
            let _ = writeln!(out, " {}", histogram.sum);
            sample(
                out,
                &format!("{name}_count"),
                labels,
                values,
                None,
                histogram.count,
            );
        }
    }
}

/// Writes one sample line: `name{labels} value`.
fn sample(
    out: &mut String,
    name: &str,
    labels: &[Label],
    values: &[String],
    le: Option<&str>,
    value: u64,
) {
    out.push_str(name);
    label_set(out, labels, values, le);
    let _ = writeln!(out, " {value}");
}

/// Writes `{a="x",b="y"}` (nothing when there are no labels), with `le` last for histogram buckets.
fn label_set(out: &mut String, labels: &[Label], values: &[String], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let le = le.map(|le| ("le", le));
    let pairs = labels
        .iter()
        .map(|label| label.name)
        .zip(values.iter().map(String::as_str))
        .chain(le);
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape_label(out, value);
        out.push('"');
    }
    out.push('}');
}

/// Escapes a label value: `\` `"` and newline (exposition format 0.0.4).
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes a help text: `\` and newline.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The counters behind `/metrics`, shared as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    connections: Counter,
    domains: Counter,
    tls_handshakes: Counter,
    tls_failures: Counter,
    dialback: Counter,
    errors: Counter,
    ping_rtt: Histograms,
    ping_timeouts: Counter,
    rule_actions: Counter,
    policy_refusals: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counters all at zero.
    pub const fn new() -> Self {
        Metrics {
            connections: Counter::new(
                "xmpptap_connections_total",
                "Connections accepted, per listener.",
                &[LISTENER],
            ),
            domains: Counter::new(
                "xmpptap_domain_connections_total",
                "Connections per listener and initiating domain, once the domain is known.",
                &[LISTENER, DOMAIN],
            ),
            tls_handshakes: Counter::new(
                "xmpptap_tls_handshakes_total",
                "TLS handshakes attempted, per leg (initiator: xmpptap as server; receiver: as client).",
                &[SIDE],
            ),
            tls_failures: Counter::new(
                "xmpptap_tls_failures_total",
                "TLS handshakes that failed, per leg.",
                &[SIDE],
            ),
            dialback: Counter::new(
                "xmpptap_dialback_total",
                "Server Dialback results seen: valid, invalid or error.",
                &[RESULT],
            ),
            errors: Counter::new(
                "xmpptap_errors_total",
                "Stream errors, per condition.",
                &[CONDITION],
            ),
            ping_rtt: Histograms::new(
                "xmpptap_ping_rtt_seconds",
                "Round trip of xmpptap's XEP-0199 pings, per domain pair.",
                &[PAIR],
            ),
            ping_timeouts: Counter::new(
                "xmpptap_ping_timeouts_total",
                "Pings that got no answer in time, per domain pair.",
                &[PAIR],
            ),
            rule_actions: Counter::new(
                "xmpptap_rule_actions_total",
                "Actions rules took, per rule and action.",
                &[RULE, ACTION],
            ),
            policy_refusals: Counter::new(
                "xmpptap_policy_refusals_total",
                "Connections refused by admission policy, per domain and reason.",
                &[DOMAIN, REASON],
            ),
        }
    }

    /// A connection was accepted by `listener` (`s2s` or `c2s`).
    pub fn connection_opened(&self, listener: &'static str) {
        self.connections.inc(&[listener]);
    }

    /// The initiator of a connection on `listener` said it is `domain`.
    pub fn domain_connected(&self, listener: &'static str, domain: &str) {
        self.domains.inc(&[listener, domain]);
    }

    /// A TLS handshake on the leg to `side` ended, successfully or not.
    pub fn tls_handshake(&self, side: Side, ok: bool) {
        let side = match side {
            Side::Initiator => "initiator",
            Side::Receiver => "receiver",
        };
        self.tls_handshakes.inc(&[side]);
        if !ok {
            self.tls_failures.inc(&[side]);
        }
    }

    /// A dialback verification ended with `result`: `valid`, `invalid` or `error`.
    pub fn dialback(&self, result: &str) {
        self.dialback.inc(&[result]);
    }

    /// A stream error with `condition` was seen or sent.
    pub fn error(&self, condition: &str) {
        self.errors.inc(&[condition]);
    }

    /// A ping between the domains of `pair` came back after `rtt`.
    pub fn ping_rtt(&self, pair: &str, rtt: Duration) {
        self.ping_rtt.observe(&[pair], rtt.as_secs_f64());
    }

    /// A ping between the domains of `pair` got no answer in time.
    pub fn ping_timeout(&self, pair: &str) {
        self.ping_timeouts.inc(&[pair]);
    }

    /// Rule `rule` took `action` on a stanza.
    pub fn rule_action(&self, rule: &str, action: &str) {
        self.rule_actions.inc(&[rule, action]);
    }

    /// A connection for `domain` was refused, for `reason`.
    pub fn policy_refused(&self, domain: &str, reason: &'static str) {
        self.policy_refusals.inc(&[domain, reason]);
    }

    /// The whole exposition: the counters above, the live connections per listener
    /// (`xmpptap_connections_active`) and the stanzas and bytes relayed per direction and domain pair
    /// (`xmpptap_stanzas_total`, `xmpptap_bytes_total`: live connections plus those that have ended) from
    /// `registry`, and `tap_dropped`, the transcript events dropped so far.
    pub fn render(&self, registry: &Registry, tap_dropped: u64) -> String {
        let snapshot = registry.snapshot();
        let mut out = String::with_capacity(4096);
        self.connections.render(&mut out);

        let active = Family {
            name: "xmpptap_connections_active",
            help: "Connections open now, per listener.",
            labels: &[LISTENER],
        };
        active.header(&mut out, "gauge");
        for (listener, count) in &snapshot.active {
            sample(
                &mut out,
                active.name,
                active.labels,
                &[(*listener).to_owned()],
                None,
                *count,
            );
        }

        self.domains.render(&mut out);
        self.tls_handshakes.render(&mut out);
        self.tls_failures.render(&mut out);
        self.dialback.render(&mut out);
        self.errors.render(&mut out);
        self.policy_refusals.render(&mut out);
        self.rule_actions.render(&mut out);

        for (name, help, bytes) in [
            (
                "xmpptap_stanzas_total",
                "Stanzas relayed, per direction (up: initiator to receiver) and domain pair.",
                false,
            ),
            (
                "xmpptap_bytes_total",
                "Bytes relayed, per direction (up: initiator to receiver) and domain pair.",
                true,
            ),
        ] {
            let family = Family {
                name,
                help,
                labels: &[DIRECTION, PAIR],
            };
            family.header(&mut out, "counter");
            for (pair, traffic) in &snapshot.traffic {
                for (direction, traffic) in ["up", "down"].into_iter().zip(traffic) {
                    let values = [direction.to_owned(), pair.clone()];
                    let value = if bytes {
                        traffic.bytes
                    } else {
                        traffic.stanzas
                    };
                    sample(&mut out, name, family.labels, &values, None, value);
                }
            }
        }

        self.ping_rtt.render(&mut out);
        self.ping_timeouts.render(&mut out);

        let dropped = Family {
            name: "xmpptap_tap_dropped_events_total",
            help: "Transcript events dropped because the writers fell behind.",
            labels: &[],
        };
        dropped.header(&mut out, "counter");
        sample(&mut out, dropped.name, &[], &[], None, tap_dropped);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;

    #[test]
    fn every_family_has_help_and_type() {
        let metrics = Metrics::new();
        let text = metrics.render(&Registry::new(), 0);
        let mut helps = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helps += 1;
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(
                    text.contains(&format!("# TYPE {name} ")),
                    "no TYPE for {name}"
                );
            }
        }
        assert_eq!(helps, 14, "{text}");
        assert!(text.contains("\nxmpptap_tap_dropped_events_total 0\n"));
    }

    #[test]
    fn counters_and_labels() {
        let metrics = Metrics::new();
        metrics.connection_opened("s2s");
        metrics.connection_opened("s2s");
        metrics.domain_connected("s2s", "we\"ird\\do\nmain");
        metrics.tls_handshake(Side::Receiver, false);
        metrics.tls_handshake(Side::Initiator, true);
        metrics.policy_refused("x.example", "blocked");
        metrics.rule_action("drop-pings", "drop");
        let text = metrics.render(&Registry::new(), 3);
        for line in [
            "xmpptap_connections_total{listener=\"s2s\"} 2",
            r#"xmpptap_domain_connections_total{listener="s2s",domain="we\"ird\\do\nmain"} 1"#,
            "xmpptap_tls_handshakes_total{side=\"receiver\"} 1",
            "xmpptap_tls_handshakes_total{side=\"initiator\"} 1",
            "xmpptap_tls_failures_total{side=\"receiver\"} 1",
            "xmpptap_policy_refusals_total{domain=\"x.example\",reason=\"blocked\"} 1",
            "xmpptap_rule_actions_total{rule=\"drop-pings\",action=\"drop\"} 1",
            "xmpptap_tap_dropped_events_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("xmpptap_tls_failures_total{side=\"initiator\"}"));
    }

    #[test]
    fn histogram_is_cumulative() {
        let metrics = Metrics::new();
        metrics.ping_rtt("a->b", Duration::from_millis(3));
        metrics.ping_rtt("a->b", Duration::from_millis(200));
        metrics.ping_rtt("a->b", Duration::from_secs(60));
        let text = metrics.render(&Registry::new(), 0);
        for line in [
            "xmpptap_ping_rtt_seconds_bucket{pair=\"a->b\",le=\"0.0025\"} 0",
            "xmpptap_ping_rtt_seconds_bucket{pair=\"a->b\",le=\"0.005\"} 1",
            "xmpptap_ping_rtt_seconds_bucket{pair=\"a->b\",le=\"0.25\"} 2",
            "xmpptap_ping_rtt_seconds_bucket{pair=\"a->b\",le=\"10\"} 2",
            "xmpptap_ping_rtt_seconds_bucket{pair=\"a->b\",le=\"+Inf\"} 3",
            "xmpptap_ping_rtt_seconds_count{pair=\"a->b\"} 3",
            "xmpptap_ping_rtt_seconds_sum{pair=\"a->b\"} 60.203",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn open_labels_overflow_into_other() {
        let metrics = Metrics::new();
        for i in 0..MAX_SERIES + 5 {
            metrics.policy_refused(&format!("d{i}.example"), "blocked");
        }
        metrics.policy_refused("d0.example", "blocked");
        let series = lock(&metrics.policy_refusals.series);
        assert_eq!(series.len(), MAX_SERIES + 1);
        assert_eq!(series[&vec![OTHER.to_owned(), "blocked".to_owned()]], 5);
        assert_eq!(
            series[&vec!["d0.example".to_owned(), "blocked".to_owned()]],
            2
        );
    }

    #[test]
    fn traffic_and_active_from_registry() {
        let registry = Arc::new(Registry::new());
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let handle = registry.open(1, "s2s", peer);
        handle.update(|state| state.initiator = Some("a.example".into()));
        handle.counters[0].add(3, 300);
        let metrics = Metrics::new();
        let text = metrics.render(&registry, 0);
        assert!(text.contains("xmpptap_connections_active{listener=\"s2s\"} 1\n"));
        assert!(text.contains("xmpptap_stanzas_total{direction=\"up\",pair=\"a.example->?\"} 3\n"));
        assert!(text.contains("xmpptap_bytes_total{direction=\"down\",pair=\"a.example->?\"} 0\n"));
        drop(handle);
        let text = metrics.render(&registry, 0);
        assert!(text.contains("xmpptap_connections_active{listener=\"s2s\"} 0\n"));
        assert!(text.contains("xmpptap_bytes_total{direction=\"up\",pair=\"a.example->?\"} 300\n"));
    }
}
