//! `KeepAlive`: one persistent HTTP/1.1 connection to one address, for the
//! callers that must not pay a TCP handshake per request: the benches' load
//! generators and their 1-5 ms status pollers (a fresh connection each time
//! would measure connecting, and pile sockets up in TIME_WAIT).
//!
//! It connects on first use and again after any failure, and follows
//! `Connection: close`. Bodies are read by `Content-Length` or chunked
//! encoding, so it speaks to etcd's gateway as well as to quorumd. With
//! [`KeepAlive::https`] it speaks HTTPS (a TLS cluster's admin API).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use super::http::{connect, Conn, Https};

/// How long `connect` may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Read and write timeout unless the caller sets one (a blocking query or a
/// loaded leader may take a while).
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive connection to `addr`.
pub struct KeepAlive {
    addr: SocketAddr,
    connect_timeout: Duration,
    io_timeout: Duration,
    tls: Option<Https>,
    conn: Option<BufReader<Box<dyn Conn>>>,
}

impl KeepAlive {
    /// Connect timeout 2 s, read/write timeout 30 s.
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive {
            addr,
            connect_timeout: CONNECT_TIMEOUT,
            io_timeout: IO_TIMEOUT,
            tls: None,
            conn: None,
        }
    }

    /// Over HTTPS (`None`: plain HTTP).
    pub fn https(mut self, tls: Option<Https>) -> KeepAlive {
        self.tls = tls;
        self.conn = None;
        self
    }

    /// Connect, read and write each within `timeout`.
    pub fn within(addr: SocketAddr, timeout: Duration) -> KeepAlive {
        KeepAlive {
            connect_timeout: timeout,
            io_timeout: timeout,
            ..KeepAlive::new(addr)
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One request and its answer `(status, body)`, on the open connection or
    /// a new one. No retry: a failure is the caller's to count. After one, the
    /// next call connects afresh.
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        if self.conn.is_none() {
            let s = connect(
                self.addr,
                self.tls.as_ref(),
                self.connect_timeout,
                self.io_timeout,
            )
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
            self.conn = Some(BufReader::new(s));
        }
        match self.exchange(method, path, body) {
            Ok(answer) => Ok(answer),
            Err(e) => {
                self.conn = None;
                Err(format!("{method} {path} on {}: {e}", self.addr))
            }
        }
    }

    /// GET `path`; the body of a 200 answer, else `HTTP <code>: <body>`. A
    /// connection kept from before may have been closed by the server while
    /// idle: then it asks once more on a new one.
    pub fn get(&mut self, path: &str) -> Result<String, String> {
        let reused = self.conn.is_some();
        let (status, body) = match self.call("GET", path, b"") {
            Err(_) if reused => self.call("GET", path, b""),
            r => r,
        }?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if status == 200 {
            Ok(body)
        } else {
            Err(format!("HTTP {status}: {body}"))
        }
    }

    fn exchange(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let addr = self.addr;
        let conn = self.conn.as_mut().expect("connected by call");
        let length = if body.is_empty() && (method == "GET" || method == "HEAD") {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{length}\r\n"
        )
        .into_bytes();
        req.extend_from_slice(body);
        conn.get_mut().write_all(&req)?;

        let mut line = String::new();
        read_line(conn, &mut line, "connection closed")?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            read_line(conn, &mut line, "connection closed in headers")?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header {header:?}")))?;
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    let n = value.parse();
                    length = Some(n.map_err(|_| bad(format!("bad Content-Length {value:?}")))?);
                }
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                read_line(conn, &mut line, "connection closed in a chunk size")?;
                let size = line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size, 16)
                    .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
                // The chunk and its CRLF; the last (empty) chunk has only the CRLF.
                let mut chunk = vec![0; size + 2];
                conn.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(n) = length {
            out.resize(n, 0);
            conn.read_exact(&mut out)?;
        } else if close {
            conn.read_to_end(&mut out)?;
        }
        if close {
            self.conn = None;
        }
        Ok((status, out))
    }
}

/// Reads one line into `line` (cleared first); end of stream is an error.
fn read_line(conn: &mut BufReader<Box<dyn Conn>>, line: &mut String, eof: &str) -> io::Result<()> {
    line.clear();
    if conn.read_line(line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, eof));
    }
    Ok(())
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
