//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream`: one request
//! per connection (`Connection: close`), enough to read the admin API the way
//! `curl` would, without another crate. Over rustls for a TLS cluster's
//! HTTPS API ([`Https`]), as `curl --cacert --cert --key` would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

/// How to speak HTTPS to one node: trust `ca`, present a client certificate
/// (or none), and expect the node's certificate to name `server_name`.
#[derive(Clone)]
pub struct Https {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: String,
}

/// A TLS 1.3 client configuration trusting `ca` and presenting
/// `client = (cert, key)`, if any.
pub fn tls_client(ca: &Path, client: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots.add(c.expect("a CA certificate")).expect("add the CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("read the client certificate")
                .map(|c| c.expect("a certificate"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).expect("read the client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
    };
    Arc::new(config)
}

/// Anything an HTTP exchange can run over: TCP, or TLS over TCP.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A TCP connection to `addr` made within `connect_timeout`, with TLS on
/// top when `tls` says so (its handshake happens on first use), every read
/// and write bounded by `io_timeout`.
pub fn connect(
    addr: SocketAddr,
    tls: Option<&Https>,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> std::io::Result<Box<dyn Conn>> {
    let s = TcpStream::connect_timeout(&addr, connect_timeout)?;
    s.set_read_timeout(Some(io_timeout))?;
    s.set_write_timeout(Some(io_timeout))?;
    let _ = s.set_nodelay(true);
    Ok(match tls {
        None => Box::new(s),
        Some(t) => {
            let name = ServerName::try_from(t.server_name.clone())
                .map_err(|e| bad(format!("server name: {e}")))?;
            let conn = rustls::ClientConnection::new(t.config.clone(), name)
                .map_err(|e| bad(format!("TLS: {e}")))?;
            Box::new(rustls::StreamOwned::new(conn, s))
        }
    })
}

/// Timeout for one admin HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(3);

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Result<Value> {
        serde_json::from_str(&self.body)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD path` with `Connection: close` and reads the whole answer.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<Response> {
    http_within(addr, method, path, HTTP_TIMEOUT)
}

/// [`http`] with its own timeout for connecting, writing and reading each.
pub fn http_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<Response> {
    request(addr, None, method, path, b"", timeout)
}

/// Sends `METHOD path` with a body (a blocking query may take up to 30 s).
pub fn http_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<Response> {
    request(addr, None, method, path, body, Duration::from_secs(30))
}

/// `METHOD path` with a body over HTTPS (or plain HTTP when `tls` is
/// `None`), each step within `timeout`.
pub fn https_within(
    addr: SocketAddr,
    tls: Option<&Https>,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    request(addr, tls, method, path, body, timeout)
}

/// [`https_within`] with more request headers (`(name, value)` pairs).
pub fn request_with_headers(
    addr: SocketAddr,
    tls: Option<&Https>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    request_with(addr, tls, method, path, headers, body, timeout)
}

fn request(
    addr: SocketAddr,
    tls: Option<&Https>,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    request_with(addr, tls, method, path, &[], body, timeout)
}

fn request_with(
    addr: SocketAddr,
    tls: Option<&Https>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut s = connect(addr, tls, timeout, timeout)?;
    let mut body_headers = if (method == "GET" || method == "HEAD") && body.is_empty() {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    for (name, value) in headers {
        body_headers.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{body_headers}Connection: close\r\n\r\n"
    )?;
    s.write_all(body)?;
    s.flush()?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        // A TLS server that closed without close_notify: the answer is
        // whole if it parses.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        other => {
            other?;
        }
    }
    parse_response(&raw)
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            bad(format!(
                "no header end in {:?}",
                String::from_utf8_lossy(raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(len) = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}
