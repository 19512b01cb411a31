//! A tiny HTTP/1.1 client for xmpptap's control API (`--control ADDR`): one request per connection
//! (`Connection: close`), the answer read to EOF and returned as `(status, body)`.
//!
//! Test support only: no TLS, no redirects, no keep-alive. Bodies in `Content-Length` and in `chunked`
//! framing are both understood. Every call has a timeout and panics naming the request on any failure.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Limit for one whole request and its answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, None).await
}

/// `POST path` with a JSON body (`Content-Type: application/json`), or an empty body.
pub async fn post(addr: SocketAddr, path: &str, json: &str) -> (u16, String) {
    request(addr, "POST", path, Some(("application/json", json))).await
}

/// `POST path` with a body of the given content type (e.g. `application/toml`).
pub async fn post_as(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    request(addr, "POST", path, Some((content_type, body))).await
}

/// `DELETE path`.
pub async fn delete(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "DELETE", path, None).await
}

/// `GET path`, asserting a 200 answer, parsed as JSON.
pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// Sends one request and reads the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> (u16, String) {
    let what = format!("{method} http://{addr}{path}");
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n"
        );
        let payload = match body {
            Some((content_type, text)) => {
                head.push_str(&format!("Content-Type: {content_type}\r\n"));
                text
            }
            None => "",
        };
        head.push_str(&format!("Content-Length: {}\r\n\r\n", payload.len()));
        stream
            .write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{what}: write: {e}"));
        stream
            .write_all(payload.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{what}: write: {e}"));
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        answer
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no complete answer within {TIMEOUT:?}"));
    parse(&answer).unwrap_or_else(|why| {
        panic!(
            "{what}: {why}; answer: {:?}",
            String::from_utf8_lossy(&answer)
        )
    })
}

/// Splits an HTTP/1.1 answer into its status and its (de-chunked) body.
fn parse(answer: &[u8]) -> Result<(u16, String), String> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the header block")?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let body = &answer[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    // "HTTP/1.1 200 OK"
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let body = String::from_utf8(body).map_err(|e| format!("body not UTF-8: {e}"))?;
    Ok((status, body))
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_line = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|e| format!("bad chunk size {size_line:?}: {e}"))?;
        if size == 0 {
            return Ok(body);
        }
        let data = &rest[line_end + 2..];
        body.extend_from_slice(data.get(..size).ok_or("truncated chunk")?);
        rest = data
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("chunk without its CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(plain), Ok((201, String::from("{}"))));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse(chunked), Ok((200, String::from("abcde"))));
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
