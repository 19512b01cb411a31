//! What fake peers and xmpptap say on the wire, for the tests that write and read literal bytes: the usual
//! stream-level elements, S2S stream headers, and checks of what a peer got when xmpptap ended its stream.

pub const DECL: &str = "<?xml version='1.0'?>";
pub const STREAM_NS: &str = "xmlns:stream='http://etherx.jabber.org/streams'";
pub const STARTTLS: &str = "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
pub const PROCEED: &str = "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
/// Features offering STARTTLS (required) and dialback with error support.
pub const FEATURES_TLS: &str =
    "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/>\
    </starttls><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";
/// Features offering dialback only: the stream stays plaintext.
pub const FEATURES_PLAIN: &str =
    "<stream:features><dialback xmlns='urn:xmpp:features:dialback'><errors/></dialback></stream:features>";
pub const CLOSE: &str = "</stream:stream>";

/// An S2S stream header from `from` to `to`, as an initiating server sends it.
pub fn header(from: &str, to: &str) -> String {
    format!(
        "{DECL}<stream:stream xmlns='jabber:server' {STREAM_NS} xmlns:db='jabber:server:dialback' \
         from='{from}' to='{to}' version='1.0'>"
    )
}

/// The receiving server's answer: its header from `from` to `to` with stream id `id`.
pub fn answer(from: &str, to: &str, id: &str) -> String {
    format!(
        "{DECL}<stream:stream xmlns='jabber:server' {STREAM_NS} xmlns:db='jabber:server:dialback' \
         id='{id}' from='{from}' to='{to}' version='1.0'>"
    )
}

/// The initiator's (a.test) stream header toward b.test.
pub fn ini_header() -> String {
    header("a.test", "b.test")
}

/// The receiver's (b.test) stream header with stream id `id`.
pub fn rec_header(id: &str) -> String {
    answer("b.test", "a.test", id)
}

/// What the culprit must get: `<stream:error>` with `condition`, then the stream's end.
pub fn assert_stream_error(got: &str, condition: &str) {
    let element =
        format!("<stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>");
    assert!(got.contains(&element), "expected {element} in {got:?}");
    assert!(got.ends_with("</stream:error></stream:stream>"), "{got:?}");
}

/// xmpptap answered on a stream it opened itself (RFC 6120 4.9.1.2): its own header comes first.
pub fn assert_own_header_then_error(got: &str, condition: &str) {
    assert!(
        got.starts_with("<?xml version='1.0'?><stream:stream"),
        "expected xmpptap's own stream header first: {got:?}"
    );
    assert!(got.contains(STREAM_NS), "{got:?}");
    assert_stream_error(got, condition);
}
