//! The routes of the control API: JSON in and out, errors as `{"error": "..."}`.
//!
//! Handlers read requests defensively (bodies as bytes parsed here, so that every refusal is JSON with a
//! fitting status) and act only through the [`Registry`], the [`super::Metrics`] and the rules'
//! [`crate::rules::SharedRules`]. The bearer token check and the request log wrap every route, the unknown
//! ones included. The API never panics on what a client sends: every input error is an answer.

use super::registry::{CloseRequest, ConnEntry, InjectError, Registry};
use super::Control;
use crate::rules::{Rule, RuleSet};
use crate::side::Direction;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use quick_xml::events::Event;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

/// The routes, for `GET /` to list: method, path, what it does.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/", "this index"),
    ("GET", "/metrics", "Prometheus metrics (text format 0.0.4)"),
    ("GET", "/connections", "the live connections"),
    ("GET", "/connections/{id}", "one live connection"),
    (
        "POST",
        "/connections/{id}/close",
        "close it; body optional: {\"condition\": \"policy-violation\", \"text\": \"...\"}",
    ),
    ("DELETE", "/connections/{id}", "close it cleanly"),
    (
        "POST",
        "/connections/{id}/inject",
        "send a stanza: {\"direction\": \"up\"|\"down\", \"xml\": \"<message .../>\"}",
    ),
    ("GET", "/rules", "the rules in force; ?format=toml for TOML"),
    (
        "POST",
        "/rules",
        "add rules: a JSON rule (or array), or TOML [[rule]] tables with Content-Type: application/toml",
    ),
    ("DELETE", "/rules/{name}", "remove a rule"),
    ("POST", "/rules/reload", "read the rules file again"),
    (
        "POST",
        "/reset",
        "drop the rules added here and read the rules file again",
    ),
];

/// The API's router, every route behind the token check and the request log.
pub(super) fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/connections", get(connections))
        .route("/connections/{id}", get(connection).delete(close_clean))
        .route("/connections/{id}/close", post(close))
        .route("/connections/{id}/inject", post(inject))
        .route("/rules", get(rules).post(add_rules))
        .route("/rules/{name}", delete(remove_rule))
        .route("/rules/reload", post(reload_rules))
        .route("/reset", post(reset))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(Arc::clone(&control), guard))
        .with_state(control)
}

/// A refusal: its status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Checks the bearer token, then logs the request at debug with its outcome.
async fn guard(State(control): State<Arc<Control>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match control.token.as_deref() {
        Some(token) if !bearer_matches(request.headers(), token) => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer <the --control-token>",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        _ => next.run(request).await,
    };
    tracing::debug!(
        %method,
        ?path,
        status = response.status().as_u16(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "control request"
    );
    response
}

/// Whether `headers` carry `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, given)| given.trim())
    else {
        return false;
    };
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// Compares digests of `a` and `b` so that the time taken says nothing about where they differ, nor about
/// the token's length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, a);
    let b = ring::digest::digest(&ring::digest::SHA256, b);
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {method} {}; GET / lists them", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}; GET / lists the routes",
            uri.path()
        ),
    )
}

async fn index(State(control): State<Arc<Control>>) -> Json<Value> {
    let routes: Vec<Value> = ROUTES
        .iter()
        .map(|(method, path, does)| json!({ "method": method, "path": path, "does": does }))
        .collect();
    Json(json!({
        "service": "xmpptap control API",
        "version": env!("CARGO_PKG_VERSION"),
        "auth": control.token.as_ref().map(|_| "Authorization: Bearer <token>"),
        "routes": routes,
    }))
}

async fn metrics(State(control): State<Arc<Control>>) -> Response {
    let text = control
        .metrics
        .render(&control.registry, (control.tap_dropped)());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn connections(State(control): State<Arc<Control>>) -> Response {
    Json(control.registry.list()).into_response()
}

/// The connection of a path's `{id}`: 400 if it is not a number, 404 if no such connection is live.
fn lookup(registry: &Registry, id: &str) -> ApiResult<Arc<ConnEntry>> {
    let conn: u64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("a connection id is a number, not {id:?}")))?;
    registry
        .get(conn)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no live connection {conn}")))
}

async fn connection(
    State(control): State<Arc<Control>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    Ok(Json(lookup(&control.registry, &id)?.info()).into_response())
}

async fn close(
    State(control): State<Arc<Control>>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let body = body?;
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        CloseRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad_request(format!("bad close request: {error}")))?
    };
    check_close(&request)?;
    let entry = lookup(&control.registry, &id)?;
    entry.request_close(request);
    Ok(closing(entry.conn))
}

async fn close_clean(
    State(control): State<Arc<Control>>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let entry = lookup(&control.registry, &id)?;
    entry.request_close(CloseRequest::default());
    Ok(closing(entry.conn))
}

fn closing(conn: u64) -> Response {
    (StatusCode::ACCEPTED, Json(json!({ "closing": conn }))).into_response()
}

/// A close request's condition must be an RFC 6120 condition and its text must be writable as XML.
fn check_close(request: &CloseRequest) -> ApiResult<()> {
    if let Some(condition) = &request.condition {
        if crate::xml::element::stream_condition(condition).is_none() {
            return Err(ApiError::bad_request(format!(
                "{condition:?} is not a stream error condition (RFC 6120 4.9.3), e.g. policy-violation"
            )));
        }
    }
    if let Some(text) = &request.text {
        if request.condition.is_none() {
            return Err(ApiError::bad_request(
                "a text goes with a stream error: give a condition too",
            ));
        }
        if let Some(c) = text.chars().find(|c| !is_xml_char(*c)) {
            return Err(ApiError::bad_request(format!(
                "the text holds {c:?}, which XML cannot carry"
            )));
        }
    }
    Ok(())
}

/// The direction of an injection, as the API spells it.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DirectionArg {
    Up,
    Down,
}

impl From<DirectionArg> for Direction {
    fn from(arg: DirectionArg) -> Self {
        match arg {
            DirectionArg::Up => Direction::Up,
            DirectionArg::Down => Direction::Down,
        }
    }
}

/// The body of `POST /connections/{id}/inject`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectBody {
    direction: DirectionArg,
    xml: String,
}

async fn inject(
    State(control): State<Arc<Control>>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let Path(id) = id?;
    let body: InjectBody = serde_json::from_slice(&body?)
        .map_err(|error| ApiError::bad_request(format!("bad inject request: {error}")))?;
    let entry = lookup(&control.registry, &id)?;
    let xml = body.xml.trim();
    check_element(xml).map_err(|why| ApiError::bad_request(format!("xml: {why}")))?;
    let direction = Direction::from(body.direction);
    let len = xml.len();
    entry
        .inject(direction, Bytes::copy_from_slice(xml.as_bytes()))
        .map_err(|error| {
            let status = match error {
                InjectError::NotRelaying => StatusCode::CONFLICT,
                InjectError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            };
            ApiError::new(status, format!("connection {}: {error}", entry.conn))
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "injected": entry.conn, "direction": direction, "bytes": len })),
    )
        .into_response())
}

/// Whether `c` may appear in an XML 1.0 document (the Char production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Checks that `xml` is exactly one well-formed element, as XMPP allows it on a stream: no XML declaration,
/// processing instruction, DTD or comment; only predefined entities and character references; nothing but
/// whitespace around the element. Namespace prefixes are not resolved (the stream header may declare them).
pub(super) fn check_element(xml: &str) -> Result<(), String> {
    if let Some(c) = xml.chars().find(|c| !is_xml_char(*c)) {
        return Err(format!("{c:?} is not allowed in XML"));
    }
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut seen = false;
    loop {
        let event = reader.read_event().map_err(|error| {
            format!(
                "not well-formed at byte {}: {error}",
                reader.error_position()
            )
        })?;
        match event {
            Event::Start(ref tag) | Event::Empty(ref tag) => {
                if depth == 0 {
                    if seen {
                        return Err("more than one element".into());
                    }
                    seen = true;
                }
                for attribute in tag.attributes() {
                    let attribute = attribute.map_err(|error| format!("bad attribute: {error}"))?;
                    if attribute.value.contains('<') {
                        return Err("'<' in an attribute value".into());
                    }
                    attribute
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|error| format!("bad attribute value: {error}"))?;
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| String::from("end tag without a start tag"))?;
            }
            Event::Text(ref text) => {
                if depth == 0 && !text.trim().is_empty() {
                    return Err("text outside the element".into());
                }
            }
            Event::CData(_) if depth == 0 => return Err("CDATA outside the element".into()),
            Event::CData(_) => {}
            Event::GeneralRef(ref reference) => {
                if depth == 0 {
                    return Err("text outside the element".into());
                }
                match reference.resolve_char_ref() {
                    Ok(Some(c)) if is_xml_char(c) => {}
                    Ok(Some(c)) => return Err(format!("character reference to {c:?}")),
                    Ok(None) => {
                        if quick_xml::escape::resolve_predefined_entity(reference).is_none() {
                            return Err(format!("unknown entity &{};", reference.xml10_content()));
                        }
                    }
                    Err(error) => return Err(format!("bad character reference: {error}")),
                }
            }
            Event::Comment(_) => return Err("comments are not allowed (RFC 6120 11.1)".into()),
            Event::PI(_) | Event::Decl(_) => {
                return Err("processing instructions are not allowed (RFC 6120 11.1)".into())
            }
            Event::DocType(_) => return Err("DTDs are not allowed (RFC 6120 11.1)".into()),
            Event::Eof => break,
        }
    }
    if depth > 0 {
        return Err("element not closed".into());
    }
    if !seen {
        return Err("no element".into());
    }
    Ok(())
}

/// The query of `GET /rules`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesQuery {
    format: Option<String>,
}

async fn rules(
    State(control): State<Arc<Control>>,
    query: Result<Query<RulesQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query?;
    let current = control.rules.current();
    match query.format.as_deref() {
        None | Some("json") => Ok(Json(json!({
            "file": control.rules.path().map(|path| path.display().to_string()),
            "rules": current.rules(),
        }))
        .into_response()),
        Some("toml") => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/toml; charset=utf-8"),
            )],
            current.to_toml(),
        )
            .into_response()),
        Some(other) => Err(ApiError::bad_request(format!(
            "format {other:?}: json or toml"
        ))),
    }
}

/// The names of the rules in force.
fn current_names(control: &Control) -> BTreeSet<String> {
    control
        .rules
        .current()
        .rules()
        .iter()
        .map(|rule| rule.name.clone())
        .collect()
}

/// `error` and its sources, as one line (a source already quoted by its parent is not repeated).
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

async fn add_rules(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body?;
    let toml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.to_ascii_lowercase().contains("toml"));
    let rules: Vec<Rule> = if toml {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("the TOML is not UTF-8"))?;
        RuleSet::parse(text)
            .map_err(|error| ApiError::bad_request(chain(&error)))?
            .rules()
            .to_vec()
    } else {
        let value: Value = serde_json::from_slice(&body).map_err(|error| {
            ApiError::bad_request(format!(
                "not JSON ({error}); send TOML with Content-Type: application/toml"
            ))
        })?;
        match value {
            Value::Array(_) => serde_json::from_value(value),
            _ => serde_json::from_value(value).map(|rule| vec![rule]),
        }
        .map_err(|error| ApiError::bad_request(format!("bad rule: {error}")))?
    };
    if rules.is_empty() {
        return Err(ApiError::bad_request("no rules given"));
    }

    let existing = current_names(&control);
    let mut names = Vec::with_capacity(rules.len());
    for rule in &rules {
        let name = rule.name.clone();
        if existing.contains(&name) || names.contains(&name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("a rule named {name:?} exists; DELETE /rules/{name} first"),
            ));
        }
        names.push(name);
    }

    for (i, rule) in rules.into_iter().enumerate() {
        if let Err(error) = control.rules.add(rule) {
            // All or nothing: take back what this request added.
            for name in &names[..i] {
                control.rules.remove(name);
            }
            let status = if current_names(&control).contains(&names[i]) {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            };
            return Err(ApiError::new(
                status,
                format!("rule {:?}: {}", names[i], chain(&error)),
            ));
        }
    }
    Ok((StatusCode::CREATED, Json(json!({ "added": names }))).into_response())
}

async fn remove_rule(
    State(control): State<Arc<Control>>,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(name) = name?;
    if control.rules.remove(&name) {
        Ok(Json(json!({ "removed": name })).into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no rule named {name:?}"),
        ))
    }
}

async fn reload_rules(State(control): State<Arc<Control>>) -> ApiResult<Response> {
    let count = control
        .rules
        .reload()
        .map_err(|error| ApiError::bad_request(format!("rules kept: {}", chain(&error))))?;
    Ok(Json(json!({ "rules": count })).into_response())
}

async fn reset(State(control): State<Arc<Control>>) -> ApiResult<Response> {
    let count = control
        .rules
        .reset()
        .map_err(|error| ApiError::bad_request(format!("reset: {}", chain(&error))))?;
    Ok(Json(json!({ "rules": count })).into_response())
}
