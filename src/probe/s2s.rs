//! `xmpptap probe s2s DOMAIN --from FROM`: the receiving server as an originating server meets it.
//!
//! After the shared phases ([`super::establish`]): SASL EXTERNAL (`--sasl-external`), dialback (`--dialback`,
//! with the listener of [`super::dialback`] when `--dialback-listen` is given) and a ping (`--ping`), whose
//! answer comes back on the receiving server's own connection to FROM (S2S streams are one-way), so the probe
//! watches its listener for it too.

use tokio::time::Instant;

use crate::cli::ProbeS2sArgs;
use crate::upstream::route::Service;
use crate::xml::element::{Dialback, NS_DIALBACK, NS_SASL, NS_SERVER};

use super::conn::{Conn, ConnError, Incoming, Received};
use super::dialback::{self, Listener, ListenerEvent};
use super::establish::{self, conn_failure, Plan, StreamSpec};
use super::report::{DialbackReport, FailureKind, PingReport, Report, SaslReport};
use super::sasl::{self, Mechanism, Secret};
use super::{random_id, xml_escape, Common, SetupError};

/// The XEP-0199 namespace.
const NS_PING: &str = "urn:xmpp:ping";

/// What the S2S probe does, checked.
#[derive(Debug)]
struct Settings {
    common: Common,
    domain: String,
    from: String,
    dialback: bool,
    secret: Secret,
    secret_given: bool,
    ping: bool,
    sasl_external: bool,
}

pub(super) async fn run(args: &ProbeS2sArgs) -> Result<Report, SetupError> {
    let settings = settings(args)?;
    let mut listener = match args.dialback_listen {
        Some(addr) => {
            let acceptor = super::tls::listener_acceptor(&settings.from)?;
            let listener = Listener::start(
                addr,
                &settings.from,
                settings.secret.clone(),
                acceptor,
                settings.common.timeout,
            )
            .await
            .map_err(|source| SetupError::Listen { addr, source })?;
            Some(listener)
        }
        None => None,
    };
    let mut report = Report::new("s2s", &settings.domain, &settings.from);
    let spec = StreamSpec {
        ns: NS_SERVER,
        from: Some(settings.from.clone()),
        from_only_over_tls: false,
        to: settings.domain.clone(),
        dialback: true,
    };
    let plan = Plan {
        target: &settings.common.target,
        spec: &spec,
        tls: &settings.common.tls,
        starttls: settings.common.starttls,
        timeout: settings.common.timeout,
    };
    let Some(mut established) = establish::establish(&mut report, &plan).await else {
        return Ok(report);
    };
    let mut authenticated = false;

    if settings.sasl_external {
        match external(
            &mut report,
            &mut established.conn,
            &established.features.mechanisms,
            &spec,
        )
        .await
        {
            Some(features) => {
                established.features = features;
                authenticated = true;
            }
            None => return Ok(report),
        }
    }

    // Stanzas the listener passed on (the answer to the ping may come before the probe asks for it).
    let mut from_listener: Vec<Received> = Vec::new();
    if settings.dialback {
        let valid = run_dialback(
            &mut report,
            &mut established.conn,
            &settings,
            listener.as_mut(),
            &mut from_listener,
        )
        .await;
        if !valid {
            established.conn.close().await;
            return Ok(report);
        }
        authenticated = true;
    }

    if settings.ping {
        if authenticated {
            ping(
                &mut report,
                &mut established.conn,
                &settings,
                listener.as_mut(),
                &mut from_listener,
            )
            .await;
        } else {
            let phase = report.start("ping");
            report.fail(phase, FailureKind::Check, "not authenticated, so no ping");
        }
    }
    if report.ok && !authenticated {
        report.note(
            "the stream was not authenticated (no --dialback or --sasl-external): a server accepts \
             stanzas only after that",
        );
    }
    established.conn.close().await;
    Ok(report)
}

fn settings(args: &ProbeS2sArgs) -> Result<Settings, SetupError> {
    let domain = super::domain_arg("DOMAIN", &args.domain)?;
    let from = super::domain_arg("--from", &args.from)?;
    if args.ping && !args.dialback && !args.sasl_external {
        return Err(SetupError::Usage(
            "--ping needs an authenticated stream: add --dialback or --sasl-external".into(),
        ));
    }
    let (secret, secret_given) = match (&args.dialback_secret, &args.dialback_secret_env) {
        (Some(secret), _) => (secret.clone(), true),
        (None, Some(var)) => match std::env::var(var) {
            Ok(secret) if !secret.is_empty() => (secret, true),
            _ => {
                return Err(SetupError::Usage(format!(
                    "--dialback-secret-env {var}: the variable is not set or empty"
                )))
            }
        },
        (None, None) => {
            let mut bytes = [0u8; 16];
            super::random_bytes(&mut bytes);
            (dialback::hex(&bytes), false)
        }
    };
    let client_cert = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    Ok(Settings {
        common: Common::new(&args.connect, &domain, Service::Server, client_cert)?,
        domain,
        from,
        dialback: args.dialback,
        secret: Secret::new(secret),
        secret_given,
        ping: args.ping,
        sasl_external: args.sasl_external,
    })
}

/// The `sasl` phase with EXTERNAL, then the restarted stream; the new features on success.
async fn external(
    report: &mut Report,
    conn: &mut Conn,
    offered: &[String],
    spec: &StreamSpec,
) -> Option<crate::xml::element::Features> {
    let phase = report.start("sasl");
    let mut sasl = SaslReport {
        offered: offered.to_vec(),
        mechanism: Some(Mechanism::External.name().to_owned()),
        channel_binding: None,
        result: "error",
        condition: None,
        text: None,
        server_signature_verified: None,
        note: None,
    };
    if !offered.iter().any(|m| m == "EXTERNAL") {
        sasl.result = "skipped";
        sasl.note = Some("the server does not offer EXTERNAL here".into());
        report.sasl = Some(sasl);
        report.fail(
            phase,
            FailureKind::Auth,
            "the server does not offer SASL EXTERNAL (it may not trust the client certificate's issuer, \
             or TLS is not up)",
        );
        return None;
    }
    let exchange = async {
        conn.send(&format!(
            "<auth xmlns='{NS_SASL}' mechanism='EXTERNAL'>{}</auth>",
            sasl::encode_payload(&[])
        ))
        .await?;
        loop {
            let received = conn.next_element("the SASL outcome").await?;
            if received.head.is(NS_SASL, "challenge") {
                conn.send(&format!("<response xmlns='{NS_SASL}'/>")).await?;
                continue;
            }
            return Ok::<_, ConnError>(received);
        }
    };
    match exchange.await {
        Ok(received) if received.head.is(NS_SASL, "success") => {
            sasl.result = "success";
            report.sasl = Some(sasl);
            report.pass(phase, "EXTERNAL: success");
        }
        Ok(received) if received.head.is(NS_SASL, "failure") => {
            let condition = received.tree.children.first().map(|c| c.name.clone());
            let text = received.tree.child_text(NS_SASL, "text").map(str::to_owned);
            sasl.result = "failure";
            sasl.condition = condition.clone();
            sasl.text = text.clone();
            report.sasl = Some(sasl);
            report.fail(
                phase,
                FailureKind::Auth,
                format!(
                    "EXTERNAL failed: <{}/>{}",
                    condition.as_deref().unwrap_or("?"),
                    text.map(|t| format!(": {t}")).unwrap_or_default()
                ),
            );
            return None;
        }
        Ok(received) => {
            sasl.text = Some(format!("unexpected {}", super::conn::describe(&received)));
            report.sasl = Some(sasl);
            report.fail(
                phase,
                FailureKind::Stream,
                format!(
                    "expected the SASL outcome, got {}",
                    super::conn::describe(&received)
                ),
            );
            return None;
        }
        Err(e) => {
            sasl.text = Some(e.to_string());
            report.sasl = Some(sasl);
            conn_failure(report, phase, FailureKind::Auth, e);
            return None;
        }
    }
    let (features, _) =
        establish::open(report, conn, spec, true, "stream_after_sasl", "after_sasl").await?;
    Some(features)
}

/// Waits for the listener's next event, or forever without a listener. Cancel-safe.
async fn listener_event(listener: &mut Option<&mut Listener>) -> ListenerEvent {
    match listener {
        Some(listener) => listener.next_event().await,
        None => std::future::pending().await,
    }
}

/// Takes what the listener reported into the report and the stanza list.
fn absorb(
    event: ListenerEvent,
    verify: &mut Vec<dialback::VerifyRequest>,
    stanzas: &mut Vec<Received>,
    report: &mut Report,
) {
    match event {
        ListenerEvent::Verify(request) => verify.push(request),
        ListenerEvent::Stanza(received) => stanzas.push(*received),
        ListenerEvent::Trouble { peer, error } => report.note(format!(
            "dialback listener: connection from {peer}: {error}"
        )),
    }
}

/// The `dialback` phase; whether the result was `valid`.
async fn run_dialback(
    report: &mut Report,
    conn: &mut Conn,
    settings: &Settings,
    mut listener: Option<&mut Listener>,
    stanzas: &mut Vec<Received>,
) -> bool {
    let phase = report.start("dialback");
    let Some(stream_id) = conn.header().and_then(|h| h.id.clone()) else {
        report.fail(
            phase,
            FailureKind::Dialback,
            "the server's stream header has no id, which the key must be computed over",
        );
        return false;
    };
    let mut db = DialbackReport {
        from: settings.from.clone(),
        to: settings.domain.clone(),
        stream_id: stream_id.clone(),
        secret: if settings.secret_given {
            "given"
        } else {
            "random"
        },
        result: "no_answer",
        error_condition: None,
        ms: 0.0,
        listener: listener.as_ref().map(|l| l.addr()),
        verify_requests: Vec::new(),
    };
    let key = dialback::key(
        &settings.secret,
        &settings.domain,
        &settings.from,
        &stream_id,
    );
    let (from, to) = (xml_escape(&settings.from), xml_escape(&settings.domain));
    let sent = Instant::now();
    let request = format!("<db:result from='{from}' to='{to}'>{key}</db:result>");
    let shown = format!("<db:result from='{from}' to='{to}'>[key]</db:result>");
    if let Err(e) = conn.send_secret(&request, &shown).await {
        report.dialback = Some(db);
        conn_failure(report, phase, FailureKind::Dialback, e);
        return false;
    }
    let deadline = sent + conn.timeout();
    let mut verify = Vec::new();
    let outcome: Result<Dialback, ConnError> = loop {
        tokio::select! {
            incoming = conn.next_until(deadline, "the dialback result") => match incoming {
                Ok(Incoming::Element(received)) => {
                    if received.head.ns.as_deref() == Some(NS_DIALBACK) {
                        let stream = conn.header().cloned().unwrap_or_default();
                        match Dialback::parse(&received.raw, &stream) {
                            Ok(answer) if !answer.verify && !answer.is_request() => break Ok(answer),
                            Ok(_) => {}
                            Err(e) => break Err(e.into()),
                        }
                    }
                }
                Ok(Incoming::Close) => break Err(ConnError::Closed("the dialback result".into())),
                Ok(Incoming::Header(_)) => {
                    break Err(ConnError::Unexpected {
                        expected: "the dialback result".into(),
                        got: "a stream header".into(),
                    })
                }
                Err(e) => break Err(e),
            },
            event = listener_event(&mut listener) => absorb(event, &mut verify, stanzas, report),
        }
    };
    if let Some(listener) = listener.as_mut() {
        for event in listener.drain() {
            absorb(event, &mut verify, stanzas, report);
        }
    }
    db.verify_requests = verify;
    db.ms = super::report::ms(sent.into_std());
    let listening = listener.is_some();
    match outcome {
        Ok(answer) => {
            let kind = answer.kind.as_deref().unwrap_or("");
            db.result = match kind {
                "valid" => "valid",
                "invalid" => "invalid",
                _ => "error",
            };
            db.error_condition = answer.error_condition.clone();
            let valid = db.result == "valid";
            let hint = dialback_hint(settings, listening, &db, db.result);
            let detail = match db.result {
                "valid" => format!("valid in {:.1} ms", db.ms),
                "invalid" => format!(
                    "invalid: {} did not accept the key for {}{hint}",
                    settings.domain, settings.from
                ),
                _ => format!(
                    "error{}{hint}",
                    answer
                        .error_condition
                        .map(|c| format!(" <{c}/>"))
                        .unwrap_or_default()
                ),
            };
            report.dialback = Some(db);
            if valid {
                report.pass(phase, detail);
            } else {
                report.fail(phase, FailureKind::Dialback, detail);
            }
            valid
        }
        Err(ConnError::Timeout { .. }) => {
            let hint = dialback_hint(settings, listening, &db, "no_answer");
            let message = format!("no answer within {:?}{hint}", conn.timeout());
            report.dialback = Some(db);
            report.fail(phase, FailureKind::Dialback, message);
            false
        }
        Err(e) => {
            db.result = "error";
            if let ConnError::StreamError(error) = &e {
                db.error_condition = Some(error.condition.clone());
            }
            report.dialback = Some(db);
            conn_failure(report, phase, FailureKind::Dialback, e);
            false
        }
    }
}

/// Advice for a dialback result that is not `valid` (`result`: `invalid`, `error` or `no_answer`).
fn dialback_hint(
    settings: &Settings,
    listening: bool,
    db: &DialbackReport,
    result: &str,
) -> String {
    let (domain, from) = (&settings.domain, &settings.from);
    match (result, listening, db.verify_requests.is_empty(), settings.secret_given) {
        (_, true, true, _) => format!(
            " (the listener got no <db:verify>: {domain} must resolve {from} to the listener, e.g. \
             _xmpp-server._tcp.{from}. SRV pointing at it)"
        ),
        ("no_answer", false, _, _) => format!(
            " ({domain} checks the key with {from}'s authoritative server, found through DNS for {from}; \
             no answer usually means it could not reach it)"
        ),
        ("invalid", false, _, false) => format!(
            " (the key was made with a random secret: only a probe answering the check itself can make it \
             valid; use --dialback-listen, or --dialback-secret-env with {from}'s real secret)"
        ),
        ("invalid", false, _, true) => format!(
            " ({from}'s authoritative server, as {domain} resolves it, judged the key with its own secret)"
        ),
        _ => String::new(),
    }
}

/// The `ping` phase: an iq get to the domain, answered on the stream or (one-way S2S) through the listener.
async fn ping(
    report: &mut Report,
    conn: &mut Conn,
    settings: &Settings,
    mut listener: Option<&mut Listener>,
    stanzas: &mut Vec<Received>,
) {
    let phase = report.start("ping");
    let id = random_id("ping");
    let mut ping = PingReport {
        to: settings.domain.clone(),
        result: "no_answer",
        rtt_ms: None,
        error_condition: None,
        via: None,
    };
    let sent = Instant::now();
    if let Err(e) = conn
        .send(&format!(
            "<iq type='get' id='{id}' from='{}' to='{}'><ping xmlns='{NS_PING}'/></iq>",
            xml_escape(&settings.from),
            xml_escape(&settings.domain)
        ))
        .await
    {
        report.ping = Some(ping);
        conn_failure(report, phase, FailureKind::Check, e);
        return;
    }
    let is_answer = |r: &Received| {
        r.head.local == "iq"
            && r.head.id.as_deref() == Some(id.as_str())
            && matches!(r.head.kind.as_deref(), Some("result" | "error"))
    };
    let deadline = sent + conn.timeout();
    let mut verify = Vec::new();
    let answer: Result<(Received, &'static str), ConnError> = loop {
        if let Some(index) = stanzas.iter().position(is_answer) {
            break Ok((stanzas.remove(index), "dialback_listener"));
        }
        tokio::select! {
            incoming = conn.next_until(deadline, "the ping answer") => match incoming {
                Ok(Incoming::Element(received)) if is_answer(&received) => break Ok((received, "stream")),
                Ok(Incoming::Element(_)) => {}
                Ok(Incoming::Close) => break Err(ConnError::Closed("the ping answer".into())),
                Ok(Incoming::Header(_)) => {
                    break Err(ConnError::Unexpected {
                        expected: "the ping answer".into(),
                        got: "a stream header".into(),
                    })
                }
                Err(e) => break Err(e),
            },
            event = listener_event(&mut listener) => absorb(event, &mut verify, stanzas, report),
        }
    };
    let rtt = super::report::ms(sent.into_std());
    match answer {
        Ok((received, via)) => {
            ping.via = Some(via);
            ping.rtt_ms = Some(rtt);
            if received.head.kind.as_deref() == Some("result") {
                ping.result = "pong";
                report.ping = Some(ping);
                report.pass(phase, format!("pong in {rtt:.1} ms (via {via})"));
            } else {
                let condition = stanza_error_condition(&received);
                ping.result = "error";
                ping.error_condition = condition.clone();
                report.ping = Some(ping);
                report.fail(
                    phase,
                    FailureKind::Check,
                    format!("error answer <{}/>", condition.as_deref().unwrap_or("?")),
                );
            }
        }
        Err(ConnError::Timeout { .. }) => {
            let hint = if listener.is_none() {
                format!(
                    " (S2S streams are one-way: {} answers on its own connection to {}, which only \
                     --dialback-listen lets the probe see)",
                    settings.domain, settings.from
                )
            } else {
                String::new()
            };
            report.ping = Some(ping);
            report.fail(
                phase,
                FailureKind::Check,
                format!("no answer within {:?}{hint}", conn.timeout()),
            );
        }
        Err(e) => {
            report.ping = Some(ping);
            conn_failure(report, phase, FailureKind::Check, e);
        }
    }
}

/// The defined condition of a stanza error (`<error><condition xmlns='...stanzas'/></error>`).
pub(super) fn stanza_error_condition(received: &Received) -> Option<String> {
    received
        .tree
        .children
        .iter()
        .find(|c| c.name == "error")
        .and_then(|e| {
            e.children
                .iter()
                .find(|c| {
                    c.ns.as_deref() == Some(crate::xml::element::NS_STANZA_ERRORS)
                        && c.name != "text"
                })
                .map(|c| c.name.clone())
        })
}
