//! A small blocking HTTP/1.1 client over `std::net::TcpStream`, one request
//! per connection.
//!
//! A fresh connection per operation is what lets the workload classify
//! outcomes exactly: if the connection could not be made, the request was
//! never sent and had no effect; once it was made, any later failure leaves
//! the outcome unknown.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Headers plus body larger than this is not an answer the store gives.
const MAX_RESPONSE: usize = 4 << 20;

/// One HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text, lossily.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// How a request failed.
#[derive(Debug)]
pub enum Failure {
    /// No connection: nothing was sent.
    NotSent(io::Error),
    /// Connected, then no complete answer: it may have been acted on.
    NoAnswer(io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NotSent(e) => write!(f, "not sent: {}", short(e)),
            Failure::NoAnswer(e) => write!(f, "no answer: {}", short(e)),
        }
    }
}

fn short(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::UnexpectedEof => "connection closed before the answer".into(),
        _ => e.to_string(),
    }
}

/// Sends one request and reads the whole answer, all within `timeout`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, Failure> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(Failure::NotSent)?;
    exchange(&mut s, addr, method, path, body, deadline).map_err(Failure::NoAnswer)
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"))
    } else {
        Ok(left)
    }
}

fn exchange(
    s: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    deadline: Instant,
) -> io::Result<Response> {
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(remaining(deadline)?))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if method != "GET" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)?;

    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        s.set_read_timeout(Some(remaining(deadline)?))?;
        let n = s.read(&mut chunk)?;
        if n > 0 {
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE {
                return Err(invalid("answer too large"));
            }
        }
        if let Some(resp) = parse(&buf, n == 0)? {
            return Ok(resp);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the answer",
            ));
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A complete response from `buf`, or `None` if more bytes are needed.
/// `eof` says the peer closed: a body without a length ends there.
fn parse(buf: &[u8], eof: bool) -> io::Result<Option<Response>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let k = k.trim().to_ascii_lowercase();
        let v = v.trim();
        if k == "content-length" {
            length = Some(v.parse().map_err(|_| invalid("bad content-length"))?);
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &buf[end + 4..];
    if chunked {
        return Ok(dechunk(rest)?.map(|body| Response { status, body }));
    }
    match length {
        Some(n) if rest.len() >= n => Ok(Some(Response {
            status,
            body: rest[..n].to_vec(),
        })),
        Some(_) => Ok(None),
        None if eof => Ok(Some(Response {
            status,
            body: rest.to_vec(),
        })),
        None => Ok(None),
    }
}

/// The body of a chunked message, or `None` if it is not complete yet.
fn dechunk(mut rest: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| invalid("bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_lengths_chunks_and_partial_answers() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntrue", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "true"));
        assert!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntr", false)
                .unwrap()
                .is_none()
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-le", false)
            .unwrap()
            .is_none());
        let r = parse(
            b"HTTP/1.1 500 Internal\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((r.status, r.text().as_str()), (500, "abcde"));
        let r = parse(b"HTTP/1.1 404 Not Found\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 404);
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn refused_is_not_sent_and_silence_is_no_answer() {
        // A port nobody listens on: refused, nothing sent.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = request(addr, "GET", "/", b"", Duration::from_millis(500)).unwrap_err();
        assert!(matches!(e, Failure::NotSent(_)), "{e}");

        // A listener that accepts and never answers: the outcome is unknown.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let e = request(addr, "PUT", "/v1/kv/a", b"1", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, Failure::NoAnswer(_)), "{e}");
        assert!(e.to_string().contains("timed out"), "{e}");
        drop(l);
    }

    #[test]
    fn a_real_exchange() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"42") {
                let n = s.read(&mut b).unwrap();
                got.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntrue")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let r = request(addr, "PUT", "/v1/kv/x?cas=0", b"42", Duration::from_secs(5)).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "true"));
        let sent = server.join().unwrap();
        assert!(
            sent.starts_with("PUT /v1/kv/x?cas=0 HTTP/1.1\r\n"),
            "{sent}"
        );
        assert!(sent.contains("Content-Length: 2\r\n"), "{sent}");
    }
}
