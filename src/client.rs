//! A small HTTP/1.1 client for the command line (`quorumd kv`): hyper's
//! client on async-std sockets, one request per connection, every step under
//! a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use async_std::net::TcpStream;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, CONTENT_LENGTH, HOST};
use hyper::{Method, Request};
use smol_hyper::rt::FuturesIo;

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }
}

/// Sends `method path` with `body` to `addr` and reads the answer; the whole
/// exchange must finish within `timeout`. `Err` says what failed.
pub fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Response, String> {
    crate::runtime::block_on(async {
        futures_lite::future::or(exchange(addr, method, path, body), async {
            async_io::Timer::after(timeout).await;
            Err(format!(
                "no answer within {}",
                humantime::format_duration(timeout)
            ))
        })
        .await
    })
}

/// [`request`] as a future, for callers on the executor.
pub async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Response, String> {
    let stream = futures_lite::future::or(
        async { TcpStream::connect(addr).await.map_err(|e| e.to_string()) },
        async {
            async_io::Timer::after(CONNECT_TIMEOUT).await;
            Err("connect timed out".to_string())
        },
    )
    .await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(FuturesIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = crate::runtime::spawn(async move {
        let _ = conn.await;
    });
    let len = body.len();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONTENT_LENGTH, len)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    drop(driver);
    Ok(Response {
        status,
        headers,
        body,
    })
}
