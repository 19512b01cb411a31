//! `xmpptap probe c2s JID`: log in as a client and check what a user would.
//!
//! After the shared phases ([`super::establish`]): SASL ([`super::sasl`]: SCRAM-SHA-256/-1, with `-PLUS` when the
//! server announces a channel binding type this TLS session can provide, XEP-0440; PLAIN only over TLS unless
//! `--dangerous-plain-over-plaintext`), the restarted stream, resource binding (and legacy session establishment
//! when a server still requires it), then `--roster`, `--message` and `--ping`, each a check of its own.

use std::time::Duration;

use tokio::time::Instant;

use crate::cli::ProbeC2sArgs;
use crate::upstream::route::Service;
use crate::xml::element::{NS_CLIENT, NS_SASL};

use super::conn::{Conn, ConnError, Received};
use super::dom::Element;
use super::establish::{
    self, conn_failure, wait_for, Established, Plan, StreamSpec, NS_BIND, NS_SESSION,
};
use super::report::{
    BindReport, Contact, FailureKind, MessageReport, PingReport, Report, RosterReport, SaslReport,
};
use super::s2s::stanza_error_condition;
use super::sasl::{self, ChannelBinding, Gs2Flag, Mechanism, Scram, Secret};
use super::tls::TlsSession;
use super::{random_id, xml_escape, Common, SetupError};

/// The roster namespace (RFC 6121 2).
const NS_ROSTER: &str = "jabber:iq:roster";
/// The XEP-0199 namespace.
const NS_PING: &str = "urn:xmpp:ping";

/// What the C2S probe does, checked.
#[derive(Debug)]
struct Settings {
    common: Common,
    local: String,
    domain: String,
    password: Option<Secret>,
    mechanism: Option<Mechanism>,
    plain_over_plaintext: bool,
    resource: String,
    roster: bool,
    message: Option<(String, String)>,
    message_wait: Duration,
    ping: bool,
}

pub(super) async fn run(args: &ProbeC2sArgs) -> Result<Report, SetupError> {
    let settings = settings(args)?;
    let bare = format!("{}@{}", settings.local, settings.domain);
    let mut report = Report::new("c2s", &settings.domain, &bare);
    let spec = StreamSpec {
        ns: NS_CLIENT,
        from: Some(bare.clone()),
        from_only_over_tls: true,
        to: settings.domain.clone(),
        dialback: false,
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
    let Some(password) = settings.password.clone() else {
        report.sasl = Some(SaslReport {
            offered: established.features.mechanisms.clone(),
            mechanism: None,
            channel_binding: None,
            result: "skipped",
            condition: None,
            text: None,
            server_signature_verified: None,
            note: Some("no password given (--password-env or --password-file)".into()),
        });
        report.note("no password given: stopped after TLS and the features");
        established.conn.close().await;
        return Ok(report);
    };
    if !authenticate(&mut report, &mut established, &settings, password).await {
        established.conn.close().await;
        return Ok(report);
    }
    let secure = established.tls.is_some();
    let Some((_, tree)) = establish::open(
        &mut report,
        &mut established.conn,
        &spec,
        secure,
        "stream_after_sasl",
        "after_sasl",
    )
    .await
    else {
        return Ok(report);
    };
    let conn = &mut established.conn;
    if !bind(&mut report, conn, &settings, tree.as_ref()).await {
        conn.close().await;
        return Ok(report);
    }
    if settings.roster {
        roster(&mut report, conn).await;
    }
    if let Some((to, body)) = &settings.message {
        message(&mut report, conn, to, body, settings.message_wait).await;
    }
    if settings.ping {
        ping(&mut report, conn, &settings.domain).await;
    }
    established.conn.close().await;
    Ok(report)
}

fn settings(args: &ProbeC2sArgs) -> Result<Settings, SetupError> {
    let (bare, jid_resource) = match args.jid.split_once('/') {
        Some((bare, resource)) => (bare, Some(resource)),
        None => (args.jid.as_str(), None),
    };
    let Some((local, domain)) = bare.split_once('@') else {
        return Err(SetupError::Usage(format!(
            "JID {:?} has no user part: give user@domain",
            args.jid
        )));
    };
    if local.is_empty() {
        return Err(SetupError::Usage(format!(
            "JID {:?} has an empty user part",
            args.jid
        )));
    }
    let domain = super::domain_arg("JID", domain)?;
    let password = match (&args.password_env, &args.password_file) {
        (Some(var), _) => match std::env::var(var) {
            Ok(password) if !password.is_empty() => Some(Secret::new(password)),
            Ok(_) => {
                return Err(SetupError::Password(format!(
                    "environment variable {var} is empty"
                )))
            }
            Err(_) => {
                return Err(SetupError::Password(format!(
                    "environment variable {var} is not set"
                )))
            }
        },
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| SetupError::Password(format!("reading {}: {e}", path.display())))?;
            let line = text.lines().next().unwrap_or("");
            if line.is_empty() {
                return Err(SetupError::Password(format!("{} is empty", path.display())));
            }
            Some(Secret::new(line.to_owned()))
        }
        (None, None) => None,
    };
    let needs_login =
        args.roster || !args.message.is_empty() || args.ping || args.mechanism.is_some();
    if password.is_none() && needs_login {
        return Err(SetupError::Usage(
            "--roster, --message, --ping and --mechanism need a login: add --password-env VAR or \
             --password-file FILE"
                .into(),
        ));
    }
    if !(args.message_wait.is_finite() && (0.0..=600.0).contains(&args.message_wait)) {
        return Err(SetupError::Usage(format!(
            "--message-wait {} must be between 0 and 600 seconds",
            args.message_wait
        )));
    }
    let message = match args.message.as_slice() {
        [to, body] => Some((to.clone(), body.clone())),
        _ => None,
    };
    let resource = args
        .resource
        .clone()
        .or_else(|| jid_resource.filter(|r| !r.is_empty()).map(str::to_owned))
        .unwrap_or_else(|| random_id("xmpptap-probe"));
    Ok(Settings {
        common: Common::new(&args.connect, &domain, Service::Client, None)?,
        local: local.to_owned(),
        domain,
        password,
        mechanism: args.mechanism,
        plain_over_plaintext: args.dangerous_plain_over_plaintext,
        resource,
        roster: args.roster,
        message,
        message_wait: Duration::from_secs_f64(args.message_wait),
        ping: args.ping,
    })
}

/// The mechanism to use, with its channel binding and GS2 flag, or why none can be used.
#[derive(Debug)]
struct Choice {
    mechanism: Mechanism,
    channel_binding: Option<ChannelBinding>,
    flag: Gs2Flag,
    note: String,
}

/// Picks a mechanism. See the [module docs](self).
fn choose(
    offered: &[String],
    cb_types: &[String],
    tls: Option<&TlsSession>,
    forced: Option<Mechanism>,
    plain_over_plaintext: bool,
) -> Result<Choice, String> {
    let is_offered = |m: Mechanism| offered.iter().any(|o| o.eq_ignore_ascii_case(m.name()));
    let bindings = tls.map(|t| t.channel_bindings.as_slice()).unwrap_or(&[]);
    // A binding both sides support (XEP-0440 list); without a list, none is known to work.
    let agreed = bindings
        .iter()
        .find(|b| cb_types.iter().any(|t| t == &b.kind))
        .cloned();
    let plus_offered = offered.iter().any(|o| o.ends_with("-PLUS"));
    let flag = if tls.is_some() && !plus_offered {
        Gs2Flag::ClientOnly
    } else {
        Gs2Flag::No
    };
    let plain_allowed = tls.is_some() || plain_over_plaintext;
    let candidates: Vec<Mechanism> = match forced {
        Some(m) => vec![m],
        None => Mechanism::PREFERENCE.to_vec(),
    };
    let mut reasons = Vec::new();
    for mechanism in candidates {
        if !is_offered(mechanism) {
            reasons.push(format!("{mechanism} is not offered"));
            continue;
        }
        if mechanism == Mechanism::Plain && !plain_allowed {
            reasons.push(
                "PLAIN would send the password readable over a plaintext stream \
                 (--dangerous-plain-over-plaintext allows it)"
                    .to_owned(),
            );
            continue;
        }
        if mechanism.is_plus() {
            let binding = match (&agreed, forced) {
                (Some(binding), _) => Some(binding.clone()),
                // Forced -PLUS without an XEP-0440 list: try the strongest binding the session has.
                (None, Some(_)) => bindings.first().cloned(),
                (None, None) => None,
            };
            let Some(binding) = binding else {
                let announced = if cb_types.is_empty() {
                    "none (XEP-0440), which means tls-unique".to_owned()
                } else {
                    cb_types.join(", ")
                };
                let available: Vec<&str> = bindings.iter().map(|b| b.kind.as_str()).collect();
                let available = if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(", ")
                };
                reasons.push(format!(
                    "{mechanism} needs a channel binding type both sides support (the server announces \
                     {announced}; this session has {available})"
                ));
                continue;
            };
            return Ok(Choice {
                mechanism,
                note: format!("channel binding {}", binding.kind),
                channel_binding: Some(binding),
                flag: Gs2Flag::No,
            });
        }
        let note = match (forced, mechanism) {
            (Some(_), _) => "chosen with --mechanism".to_owned(),
            (None, Mechanism::Plain) => "the only mechanism both sides support".to_owned(),
            (None, _) if plus_offered => {
                "the server offers -PLUS, but with no channel binding type this session can provide"
                    .to_owned()
            }
            (None, _) => "the strongest mechanism both sides support".to_owned(),
        };
        return Ok(Choice {
            mechanism,
            channel_binding: None,
            flag,
            note,
        });
    }
    Err(if reasons.is_empty() {
        "no usable mechanism".to_owned()
    } else {
        reasons.join("; ")
    })
}

/// The `sasl` phase; whether it succeeded.
async fn authenticate(
    report: &mut Report,
    established: &mut Established,
    settings: &Settings,
    password: Secret,
) -> bool {
    let phase = report.start("sasl");
    let offered = established.features.mechanisms.clone();
    let cb_types: Vec<String> = report
        .streams
        .last()
        .and_then(|s| s.features.as_ref())
        .map(|f| f.channel_binding.clone())
        .unwrap_or_default();
    let mut sasl = SaslReport {
        offered: offered.clone(),
        mechanism: None,
        channel_binding: None,
        result: "error",
        condition: None,
        text: None,
        server_signature_verified: None,
        note: None,
    };
    let choice = match choose(
        &offered,
        &cb_types,
        established.tls.as_ref(),
        settings.mechanism,
        settings.plain_over_plaintext,
    ) {
        Ok(choice) => choice,
        Err(why) => {
            sasl.result = "skipped";
            sasl.note = Some(why.clone());
            report.sasl = Some(sasl);
            report.fail(
                phase,
                FailureKind::Auth,
                format!("no SASL mechanism to use: {why}"),
            );
            return false;
        }
    };
    sasl.mechanism = Some(choice.mechanism.name().to_owned());
    sasl.channel_binding = choice.channel_binding.as_ref().map(|b| b.kind.clone());
    sasl.note = Some(choice.note.clone());
    let conn = &mut established.conn;
    let mut scram = choice.mechanism.scram_hash().map(|hash| {
        Scram::new(
            hash,
            &settings.local,
            password.clone(),
            sasl::nonce(),
            choice.channel_binding.clone(),
            choice.flag,
        )
    });
    let initial = match &scram {
        Some(scram) => scram.client_first(),
        None => sasl::plain_message(&settings.local, &password),
    };
    let name = choice.mechanism.name();
    let outcome = exchange(conn, name, &initial, scram.as_mut()).await;
    // Whether the server proved it knows the password: known once it answered the exchange to the end.
    let finished = matches!(
        outcome,
        Ok(Outcome::Success) | Err(ExchangeError::Sasl(sasl::SaslError::ServerSignature))
    );
    sasl.server_signature_verified = scram.as_ref().filter(|_| finished).map(Scram::is_verified);
    match outcome {
        Ok(Outcome::Success) => {
            if let Some(scram) = &scram {
                if !scram.is_verified() {
                    sasl.result = "error";
                    sasl.text = Some(
                        "the server said success without proving it knows the password".into(),
                    );
                    report.sasl = Some(sasl);
                    report.fail(
                        phase,
                        FailureKind::Auth,
                        format!(
                            "{name}: the server did not send its signature (RFC 5802: the client must \
                             verify it)"
                        ),
                    );
                    return false;
                }
            }
            sasl.result = "success";
            report.sasl = Some(sasl);
            report.pass(phase, format!("{name}: success"));
            true
        }
        Ok(Outcome::Failure { condition, text }) => {
            sasl.result = "failure";
            sasl.condition = condition.clone();
            sasl.text = text.clone();
            report.sasl = Some(sasl);
            report.fail(
                phase,
                FailureKind::Auth,
                format!(
                    "{name} failed: <{}/>{}",
                    condition.as_deref().unwrap_or("?"),
                    text.map(|t| format!(": {t}")).unwrap_or_default()
                ),
            );
            false
        }
        Err(ExchangeError::Sasl(e)) => {
            sasl.text = Some(e.to_string());
            report.sasl = Some(sasl);
            report.fail(phase, FailureKind::Auth, format!("{name}: {e}"));
            false
        }
        Err(ExchangeError::Conn(e)) => {
            sasl.text = Some(e.to_string());
            report.sasl = Some(sasl);
            conn_failure(report, phase, FailureKind::Auth, e);
            false
        }
    }
}

/// How a SASL exchange ended.
#[derive(Debug)]
enum Outcome {
    Success,
    Failure {
        condition: Option<String>,
        text: Option<String>,
    },
}

/// Why a SASL exchange broke.
#[derive(Debug)]
enum ExchangeError {
    Sasl(sasl::SaslError),
    Conn(ConnError),
}

impl From<ConnError> for ExchangeError {
    fn from(e: ConnError) -> Self {
        ExchangeError::Conn(e)
    }
}

impl From<sasl::SaslError> for ExchangeError {
    fn from(e: sasl::SaslError) -> Self {
        ExchangeError::Sasl(e)
    }
}

/// `<auth>`, challenges and responses, until `<success>` or `<failure>`. Payloads never reach the log.
async fn exchange(
    conn: &mut Conn,
    mechanism: &str,
    initial: &[u8],
    mut scram: Option<&mut Scram>,
) -> Result<Outcome, ExchangeError> {
    conn.send_secret(
        &format!(
            "<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>{}</auth>",
            sasl::encode_payload(initial)
        ),
        &format!("<auth xmlns='{NS_SASL}' mechanism='{mechanism}'>[payload]</auth>"),
    )
    .await?;
    loop {
        let received = conn.next_element("the SASL exchange").await?;
        let payload = || sasl::decode_payload(&received.tree.text);
        if received.head.is(NS_SASL, "challenge") {
            let response = match scram.as_deref_mut() {
                Some(scram) if scram.awaits_server_final() => {
                    scram.verify_server_final(&payload()?)?;
                    Vec::new()
                }
                Some(scram) => scram.client_final(&payload()?)?,
                None => return Err(sasl::SaslError::OutOfOrder("challenge").into()),
            };
            let body = if response.is_empty() {
                String::new()
            } else {
                sasl::encode_payload(&response)
            };
            conn.send_secret(
                &format!("<response xmlns='{NS_SASL}'>{body}</response>"),
                &format!("<response xmlns='{NS_SASL}'>[payload]</response>"),
            )
            .await?;
        } else if received.head.is(NS_SASL, "success") {
            let data = payload()?;
            if let Some(scram) = scram.as_deref_mut() {
                if !data.is_empty() && !scram.is_verified() {
                    scram.verify_server_final(&data)?;
                }
            }
            return Ok(Outcome::Success);
        } else if received.head.is(NS_SASL, "failure") {
            let condition = received
                .tree
                .children
                .iter()
                .find(|c| c.name != "text")
                .map(|c| c.name.clone());
            let text = received.tree.child_text(NS_SASL, "text").map(str::to_owned);
            return Ok(Outcome::Failure { condition, text });
        } else {
            return Err(ConnError::Unexpected {
                expected: "a SASL challenge, success or failure".into(),
                got: super::conn::describe(&received),
            }
            .into());
        }
    }
}

/// Sends an iq and waits for its answer (result or error); other stanzas are skipped.
async fn iq(conn: &mut Conn, id: &str, xml: &str, what: &str) -> Result<Received, ConnError> {
    conn.send(xml).await?;
    let deadline = Instant::now() + conn.timeout();
    wait_for(
        conn,
        deadline,
        what,
        |r| {
            r.head.local == "iq"
                && r.head.id.as_deref() == Some(id)
                && matches!(r.head.kind.as_deref(), Some("result" | "error"))
        },
        |_| {},
    )
    .await
}

/// The text of an iq error: `<condition/>: text`.
fn iq_error(received: &Received) -> String {
    let condition = stanza_error_condition(received).unwrap_or_else(|| "?".into());
    let text = received
        .tree
        .children
        .iter()
        .find(|c| c.name == "error")
        .and_then(|e| e.children.iter().find(|c| c.name == "text"))
        .map(|t| format!(": {}", t.text))
        .unwrap_or_default();
    format!("<{condition}/>{text}")
}

/// The `bind` phase (and `session` when required); whether it worked.
async fn bind(
    report: &mut Report,
    conn: &mut Conn,
    settings: &Settings,
    tree: Option<&Element>,
) -> bool {
    let phase = report.start("bind");
    let mut bind = BindReport {
        resource: settings.resource.clone(),
        jid: None,
        error: None,
    };
    if tree.and_then(|t| t.child(NS_BIND, "bind")).is_none() {
        bind.error = Some("the server offers no resource binding".into());
        report.bind = Some(bind);
        report.fail(
            phase,
            FailureKind::Check,
            "the server offers no resource binding after SASL",
        );
        return false;
    }
    let id = random_id("bind");
    let xml = format!(
        "<iq type='set' id='{id}'><bind xmlns='{NS_BIND}'><resource>{}</resource></bind></iq>",
        xml_escape(&settings.resource)
    );
    match iq(conn, &id, &xml, "the bind result").await {
        Ok(received) if received.head.kind.as_deref() == Some("result") => {
            let jid = received
                .tree
                .child(NS_BIND, "bind")
                .and_then(|b| b.child_text(NS_BIND, "jid"))
                .map(str::to_owned);
            bind.jid = jid.clone();
            report.bind = Some(bind);
            report.pass(
                phase,
                jid.unwrap_or_else(|| "(no JID in the result)".into()),
            );
        }
        Ok(received) => {
            let error = iq_error(&received);
            bind.error = Some(error.clone());
            report.bind = Some(bind);
            report.fail(phase, FailureKind::Check, format!("bind failed: {error}"));
            return false;
        }
        Err(e) => {
            bind.error = Some(e.to_string());
            report.bind = Some(bind);
            conn_failure(report, phase, FailureKind::Check, e);
            return false;
        }
    }
    let session_required = tree
        .and_then(|t| t.child(NS_SESSION, "session"))
        .is_some_and(|s| !s.children.iter().any(|c| c.name == "optional"));
    if session_required {
        let phase = report.start("session");
        let id = random_id("session");
        let xml = format!("<iq type='set' id='{id}'><session xmlns='{NS_SESSION}'/></iq>");
        match iq(conn, &id, &xml, "the session result").await {
            Ok(received) if received.head.kind.as_deref() == Some("result") => {
                report.pass(phase, "session established (RFC 3921)")
            }
            Ok(received) => {
                let error = iq_error(&received);
                report.fail(
                    phase,
                    FailureKind::Check,
                    format!("session failed: {error}"),
                );
                return false;
            }
            Err(e) => {
                conn_failure(report, phase, FailureKind::Check, e);
                return false;
            }
        }
    }
    true
}

/// The `roster` phase.
async fn roster(report: &mut Report, conn: &mut Conn) {
    let phase = report.start("roster");
    let id = random_id("roster");
    let xml = format!("<iq type='get' id='{id}'><query xmlns='{NS_ROSTER}'/></iq>");
    let mut roster = RosterReport {
        contacts: Vec::new(),
        ver: None,
        error: None,
    };
    match iq(conn, &id, &xml, "the roster").await {
        Ok(received) if received.head.kind.as_deref() == Some("result") => {
            if let Some(query) = received.tree.child(NS_ROSTER, "query") {
                roster.ver = query.attr("ver").map(str::to_owned);
                roster.contacts = query
                    .children_named(NS_ROSTER, "item")
                    .map(|item| Contact {
                        jid: item.attr("jid").unwrap_or_default().to_owned(),
                        name: item.attr("name").map(str::to_owned),
                        subscription: item.attr("subscription").unwrap_or("none").to_owned(),
                        ask: item.attr("ask").map(str::to_owned),
                        groups: item
                            .children_named(NS_ROSTER, "group")
                            .map(|g| g.text.clone())
                            .collect(),
                    })
                    .collect();
            }
            let count = roster.contacts.len();
            report.roster = Some(roster);
            report.pass(phase, format!("{count} contact(s)"));
        }
        Ok(received) => {
            let error = iq_error(&received);
            roster.error = Some(error.clone());
            report.roster = Some(roster);
            report.fail(
                phase,
                FailureKind::Check,
                format!("roster request failed: {error}"),
            );
        }
        Err(e) => {
            roster.error = Some(e.to_string());
            report.roster = Some(roster);
            conn_failure(report, phase, FailureKind::Check, e);
        }
    }
}

/// The `message` phase: send, then watch for a bounce for `wait`.
async fn message(report: &mut Report, conn: &mut Conn, to: &str, body: &str, wait: Duration) {
    let phase = report.start("message");
    let id = random_id("msg");
    let mut message = MessageReport {
        to: to.to_owned(),
        id: id.clone(),
        result: "no_error",
        error_condition: None,
        error_text: None,
        waited_ms: 0.0,
    };
    let xml = format!(
        "<message type='chat' to='{}' id='{id}'><body>{}</body></message>",
        xml_escape(to),
        xml_escape(body)
    );
    if let Err(e) = conn.send(&xml).await {
        report.message = Some(message);
        conn_failure(report, phase, FailureKind::Check, e);
        return;
    }
    let started = Instant::now();
    let bounce = wait_for(
        conn,
        started + wait,
        "a bounce",
        |r| {
            r.head.local == "message"
                && r.head.kind.as_deref() == Some("error")
                && r.head.id.as_deref() == Some(id.as_str())
        },
        |_| {},
    )
    .await;
    message.waited_ms = super::report::ms(started.into_std());
    match bounce {
        Ok(received) => {
            message.result = "error";
            message.error_condition = stanza_error_condition(&received);
            message.error_text = received
                .tree
                .children
                .iter()
                .find(|c| c.name == "error")
                .and_then(|e| e.children.iter().find(|c| c.name == "text"))
                .map(|t| t.text.clone());
            let detail = format!(
                "bounced: <{}/>{}",
                message.error_condition.as_deref().unwrap_or("?"),
                message
                    .error_text
                    .as_deref()
                    .map(|t| format!(": {t}"))
                    .unwrap_or_default()
            );
            report.message = Some(message);
            report.fail(phase, FailureKind::Check, detail);
        }
        Err(ConnError::Timeout { .. }) => {
            let detail = format!("sent to {to}, no error within {:.0} ms", message.waited_ms);
            report.message = Some(message);
            report.pass(phase, detail);
        }
        Err(e) => {
            report.message = Some(message);
            conn_failure(report, phase, FailureKind::Check, e);
        }
    }
}

/// The `ping` phase: an iq get to the server.
async fn ping(report: &mut Report, conn: &mut Conn, domain: &str) {
    let phase = report.start("ping");
    let id = random_id("ping");
    let mut ping = PingReport {
        to: domain.to_owned(),
        result: "no_answer",
        rtt_ms: None,
        error_condition: None,
        via: None,
    };
    let xml = format!(
        "<iq type='get' id='{id}' to='{}'><ping xmlns='{NS_PING}'/></iq>",
        xml_escape(domain)
    );
    let sent = Instant::now();
    match iq(conn, &id, &xml, "the ping answer").await {
        Ok(received) => {
            let rtt = super::report::ms(sent.into_std());
            ping.rtt_ms = Some(rtt);
            ping.via = Some("stream");
            if received.head.kind.as_deref() == Some("result") {
                ping.result = "pong";
                report.ping = Some(ping);
                report.pass(phase, format!("pong in {rtt:.1} ms"));
            } else {
                ping.result = "error";
                ping.error_condition = stanza_error_condition(&received);
                let error = iq_error(&received);
                report.ping = Some(ping);
                report.fail(phase, FailureKind::Check, format!("error answer {error}"));
            }
        }
        Err(e) => {
            report.ping = Some(ping);
            conn_failure(report, phase, FailureKind::Check, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn session(kinds: &[&str]) -> TlsSession {
        TlsSession {
            channel_bindings: kinds
                .iter()
                .map(|k| ChannelBinding {
                    kind: (*k).to_owned(),
                    data: vec![0; 32],
                })
                .collect(),
        }
    }

    #[test]
    fn prefers_scram_plus_only_with_an_announced_binding() {
        let offered = names(&[
            "SCRAM-SHA-1",
            "SCRAM-SHA-256",
            "SCRAM-SHA-256-PLUS",
            "PLAIN",
        ]);
        let tls = session(&["tls-exporter", "tls-server-end-point"]);
        let with_list = choose(
            &offered,
            &names(&["tls-server-end-point"]),
            Some(&tls),
            None,
            false,
        )
        .expect("choice");
        assert_eq!(with_list.mechanism, Mechanism::ScramSha256Plus);
        assert_eq!(
            with_list.channel_binding.map(|b| b.kind).as_deref(),
            Some("tls-server-end-point")
        );
        let without = choose(&offered, &[], Some(&tls), None, false).expect("choice");
        assert_eq!(without.mechanism, Mechanism::ScramSha256);
        assert_eq!(without.flag, Gs2Flag::No, "PLUS offered: n, not y");
    }

    #[test]
    fn y_flag_when_tls_and_no_plus_offered_and_plain_only_over_tls() {
        let offered = names(&["SCRAM-SHA-1", "PLAIN"]);
        let choice = choose(
            &offered,
            &[],
            Some(&session(&["tls-exporter"])),
            None,
            false,
        )
        .expect("c");
        assert_eq!(
            (choice.mechanism, choice.flag),
            (Mechanism::ScramSha1, Gs2Flag::ClientOnly)
        );
        let plaintext = choose(&offered, &[], None, None, false).expect("c");
        assert_eq!(
            (plaintext.mechanism, plaintext.flag),
            (Mechanism::ScramSha1, Gs2Flag::No)
        );
        let err = choose(&names(&["PLAIN"]), &[], None, None, false).expect_err("refused");
        assert!(err.contains("--dangerous-plain-over-plaintext"), "{err}");
        assert!(choose(&names(&["PLAIN"]), &[], None, None, true).is_ok());
        let forced =
            choose(&offered, &[], None, Some(Mechanism::ScramSha256), false).expect_err("x");
        assert!(forced.contains("SCRAM-SHA-256 is not offered"), "{forced}");
    }
}
