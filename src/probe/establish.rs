//! The phases every probe shares: DNS, TCP, Direct TLS or the first stream and STARTTLS, and the stream after
//! TLS. [`establish`] runs them and leaves an open stream with its latest features, or records where it stopped.

use std::time::Duration;

use tokio::time::Instant;

use crate::upstream::route::Service;
use crate::xml::element::{Features, NS_STREAM, NS_TLS};

use super::conn::{BoxIo, Conn, ConnError, Incoming, Received};
use super::dns::{self, Target};
use super::dom::Element;
use super::report::{FailureKind, FeaturesReport, Report, Running, StreamReport};
use super::tls::{ProbeTls, TlsSession};
use super::{xml_escape, StartTls};

/// The resource-binding namespace (RFC 6120 7).
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
/// The legacy session namespace (RFC 3921 3).
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
/// XEP-0440 SASL channel-binding type capability.
pub const NS_SASL_CB: &str = "urn:xmpp:sasl-cb:0";

/// How the probe opens its streams.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// `jabber:server` or `jabber:client`.
    pub ns: &'static str,
    /// The `from` to send: always for S2S; for C2S only once TLS protects it (RFC 6120 4.7.1).
    pub from: Option<String>,
    /// Send `from` only over TLS.
    pub from_only_over_tls: bool,
    /// The domain (`to`).
    pub to: String,
    /// Declare the dialback namespace (S2S).
    pub dialback: bool,
}

/// An open stream.
#[derive(Debug)]
pub struct Established {
    /// The stream.
    pub conn: Conn,
    /// The latest features (empty for a pre-1.0 stream).
    pub features: Features,
    /// The TLS session, if TLS is up.
    pub tls: Option<TlsSession>,
}

/// What [`establish`] needs.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Where.
    pub target: &'a Target,
    /// The stream headers.
    pub spec: &'a StreamSpec,
    /// TLS settings.
    pub tls: &'a ProbeTls,
    /// `--starttls`.
    pub starttls: StartTls,
    /// Per-step timeout.
    pub timeout: Duration,
}

/// DNS, connect, (Direct TLS), stream, (STARTTLS, TLS, stream again). `None` when a phase failed; the report
/// says which.
pub async fn establish(report: &mut Report, plan: &Plan<'_>) -> Option<Established> {
    let candidates = dns::resolve(report, plan.target, plan.timeout).await?;
    let (stream, candidate) = dns::connect(report, candidates, plan.timeout).await?;
    let mut io: BoxIo = Box::new(stream);
    let mut tls = None;
    if candidate.direct_tls {
        let phase = report.start("tls");
        let (session_io, session) = handshake(report, phase, plan, io, true).await?;
        io = session_io;
        tls = Some(session);
    }
    let mut conn = Conn::new(io, plan.timeout, "probe");
    let (features, _) = open(
        report,
        &mut conn,
        plan.spec,
        tls.is_some(),
        "stream",
        "initial",
    )
    .await?;
    if tls.is_some() {
        return Some(Established {
            conn,
            features,
            tls,
        });
    }
    let offered = features.starttls;
    let use_starttls = match (plan.starttls, offered) {
        (StartTls::Off, Some(true)) => {
            report.note(format!(
                "{} requires STARTTLS, but --starttls off: expect it to refuse what comes next",
                plan.spec.to
            ));
            false
        }
        (StartTls::Off, _) => false,
        (_, Some(_)) => true,
        (StartTls::Require, None) => {
            let phase = report.start("starttls");
            report.fail(
                phase,
                FailureKind::Tls,
                format!(
                    "{} does not offer STARTTLS (--starttls require)",
                    plan.spec.to
                ),
            );
            return None;
        }
        (StartTls::Auto, None) => {
            report.note(format!(
                "{} offers no STARTTLS: the stream stays in plaintext",
                plan.spec.to
            ));
            false
        }
    };
    if !use_starttls {
        return Some(Established {
            conn,
            features,
            tls: None,
        });
    }

    let phase = report.start("starttls");
    let answer = async {
        conn.send(&format!("<starttls xmlns='{NS_TLS}'/>")).await?;
        conn.next_element("<proceed/> or <failure/>").await
    };
    match answer.await {
        Ok(received) if received.head.is(NS_TLS, "proceed") => {
            report.pass(phase, "<proceed/>");
        }
        Ok(received) if received.head.is(NS_TLS, "failure") => {
            report.fail(
                phase,
                FailureKind::Tls,
                "the server answered <failure/> to <starttls/>",
            );
            return None;
        }
        Ok(received) => {
            report.fail(
                phase,
                FailureKind::Tls,
                format!(
                    "expected <proceed/>, got {}",
                    super::conn::describe(&received)
                ),
            );
            return None;
        }
        Err(e) => {
            conn_failure(report, phase, FailureKind::Tls, e);
            return None;
        }
    }
    let phase = report.start("tls");
    let io = match conn.into_io() {
        Ok(io) => io,
        Err(e) => {
            report.fail(phase, FailureKind::Tls, e.to_string());
            return None;
        }
    };
    let (io, session) = handshake(report, phase, plan, io, false).await?;
    let mut conn = Conn::new(io, plan.timeout, "probe");
    let (features, _) = open(
        report,
        &mut conn,
        plan.spec,
        true,
        "stream_after_tls",
        "after_tls",
    )
    .await?;
    Some(Established {
        conn,
        features,
        tls: Some(session),
    })
}

/// The `tls` phase: handshake and certificate judgement.
async fn handshake(
    report: &mut Report,
    phase: Running,
    plan: &Plan<'_>,
    io: BoxIo,
    direct_tls: bool,
) -> Option<(BoxIo, TlsSession)> {
    let service = if plan.spec.ns == crate::xml::element::NS_SERVER {
        Service::Server
    } else {
        Service::Client
    };
    let (tls_report, result) = plan
        .tls
        .handshake(io, &plan.target.domain, service, direct_tls, plan.timeout)
        .await;
    let detail = match (&tls_report.version, &tls_report.cipher, tls_report.verified) {
        (Some(version), Some(cipher), verified) => format!(
            "{version} {cipher}, certificate {}",
            match verified {
                Some(true) => "verified",
                Some(false) => "NOT verified (accepted: --dangerous-accept-any-cert)",
                None => "not seen",
            }
        ),
        _ => tls_report.error.clone().unwrap_or_default(),
    };
    let error = tls_report.error.clone();
    let verification = tls_report.verification.clone();
    report.tls = Some(tls_report);
    match result {
        Some(ok) => {
            report.pass(phase, detail);
            Some(ok)
        }
        None => {
            let error = error.unwrap_or_else(|| "TLS failed".into());
            let error = if error.contains("certificate") || error.contains("Certificate") {
                format!("{error}; the certificate {verification}")
            } else {
                error
            };
            report.fail(phase, FailureKind::Tls, error);
            None
        }
    }
}

/// Sends a stream header, reads the server's and its features (for version 1.0), and records a stream phase
/// named `name` with the stream at `stage`.
pub async fn open(
    report: &mut Report,
    conn: &mut Conn,
    spec: &StreamSpec,
    secure: bool,
    name: &'static str,
    stage: &'static str,
) -> Option<(Features, Option<Element>)> {
    let phase = report.start(name);
    conn.restart();
    let from = match (&spec.from, spec.from_only_over_tls && !secure) {
        (Some(from), false) => format!(" from='{}'", xml_escape(from)),
        _ => String::new(),
    };
    let db = if spec.dialback {
        " xmlns:db='jabber:server:dialback'"
    } else {
        ""
    };
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='{}' xmlns:stream='{NS_STREAM}'{db}{from} to='{}' \
         version='1.0'>",
        spec.ns,
        xml_escape(&spec.to)
    );
    let mut stream: Option<StreamReport> = None;
    let result: Result<Option<Received>, ConnError> = async {
        conn.send(&header).await?;
        let header = conn.expect_header().await?;
        let report = stream.insert(StreamReport {
            stage,
            from: header.from.clone(),
            to: header.to.clone(),
            id: header.id.clone(),
            version: header.version.clone(),
            lang: header.lang.clone(),
            dialback_ns: header.dialback_ns,
            features: None,
        });
        if header.version.as_deref() != Some("1.0") {
            // Pre-RFC 3920 servers send no features.
            return Ok(None);
        }
        let received = conn.next_element("<stream:features>").await?;
        if !received.head.is(NS_STREAM, "features") {
            return Err(ConnError::Unexpected {
                expected: "<stream:features>".into(),
                got: super::conn::describe(&received),
            });
        }
        report.features = Some(features_report(&received)?);
        Ok(Some(received))
    }
    .await;
    match (result, stream) {
        (Ok(features), Some(stream)) => {
            let detail = format!(
                "from {} id {} version {}",
                stream.from.as_deref().unwrap_or("(none)"),
                stream.id.as_deref().unwrap_or("(none)"),
                stream.version.as_deref().unwrap_or("(none)")
            );
            let parsed = stream
                .features
                .as_ref()
                .map(|f| f.features.clone())
                .unwrap_or_default();
            report.streams.push(stream);
            report.pass(phase, detail);
            Some((parsed, features.map(|f| f.tree)))
        }
        (Ok(_), None) => {
            // Cannot happen: a successful exchange always records the header first.
            report.fail(phase, FailureKind::Stream, "no stream header");
            None
        }
        (Err(e), stream) => {
            report.streams.extend(stream);
            conn_failure(report, phase, FailureKind::Stream, e);
            None
        }
    }
}

/// The features report for a `<stream:features>` element.
fn features_report(received: &Received) -> Result<FeaturesReport, ConnError> {
    let features = Features::parse(&received.raw)?;
    let tree = &received.tree;
    let session = tree.child(NS_SESSION, "session").map(|s| {
        if s.children.iter().any(|c| c.name == "optional") {
            "optional"
        } else {
            "required"
        }
    });
    let channel_binding = tree
        .child(NS_SASL_CB, "sasl-channel-binding")
        .map(|cb| {
            cb.children_named(NS_SASL_CB, "channel-binding")
                .filter_map(|c| c.attr("type").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(FeaturesReport {
        features,
        bind: tree.child(NS_BIND, "bind").is_some(),
        session,
        channel_binding,
        xml: String::from_utf8_lossy(&received.raw).into_owned(),
    })
}

/// Records a failed phase from a stream problem: a stream error is kept in the report and makes the failure a
/// stream failure unless the phase says otherwise.
pub fn conn_failure(report: &mut Report, phase: Running, kind: FailureKind, error: ConnError) {
    let message = error.to_string();
    if let ConnError::StreamError(stream_error) = error {
        report.stream_error = Some(stream_error);
    }
    report.fail(phase, kind, message);
}

/// Waits until `deadline` for an element `matches` accepts; others are passed to `other` (which may keep them).
pub async fn wait_for(
    conn: &mut Conn,
    deadline: Instant,
    waiting_for: &str,
    mut matches: impl FnMut(&Received) -> bool,
    mut other: impl FnMut(Received),
) -> Result<Received, ConnError> {
    loop {
        match conn.next_until(deadline, waiting_for).await? {
            Incoming::Element(received) if matches(&received) => return Ok(received),
            Incoming::Element(received) => other(received),
            Incoming::Close => return Err(ConnError::Closed(waiting_for.to_owned())),
            Incoming::Header(_) => {
                return Err(ConnError::Unexpected {
                    expected: waiting_for.to_owned(),
                    got: "a stream header".into(),
                })
            }
        }
    }
}
