//! A small HTTP/1.1 client for the admin API: hyper's client on async-std
//! sockets, one request per connection, every step under a timeout. The
//! command line uses it (`quorumd status`, `kv`, `member`), and so does a
//! node forwarding a membership change to the leader.
//!
//! With `[tls]` in the cluster file it speaks HTTPS only ([`AdminClient`]):
//! the node's certificate must be signed by the cluster's CA and name the
//! node asked, `node-<id>.<cluster>` (see [`crate::tls::node_name`]), and
//! the client presents a certificate of the CA, which the admin API requires
//! for everything but `/health`, `/ready` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_std::net::TcpStream;
use futures_rustls::TlsConnector;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, CONTENT_LENGTH, HOST};
use hyper::{Method, Request};
use rustls::pki_types::ServerName;
use smol_hyper::rt::FuturesIo;

use crate::config::ClusterConfig;
use crate::error::Result;

/// `--token`, else `$QUORUMD_TOKEN`: the ACL token a command presents.
/// Shared by every command that talks to the admin API.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenArg {
    /// The ACL token (its SecretID) to present [default: $QUORUMD_TOKEN].
    #[arg(long, value_name = "SECRET")]
    token: Option<String>,
}

impl TokenArg {
    /// The token given, if any.
    pub fn secret(&self) -> Option<String> {
        self.token
            .clone()
            .or_else(|| std::env::var(TOKEN_ENV).ok())
            .filter(|t| !t.is_empty())
    }
}

/// The variable that holds the CLI's ACL token.
pub const TOKEN_ENV: &str = "QUORUMD_TOKEN";

/// How long connecting may take, TLS handshake included.
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

    /// The `error` of a JSON body (`{"error": ...}`), else the body as text:
    /// the sentence to show a user for an answer that is not a success.
    pub fn error_text(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| self.text())
    }
}

/// How to reach the nodes' admin APIs: plain HTTP, or HTTPS with the
/// cluster's CA and a client certificate; and the ACL token to present, if
/// any. Cheap to clone.
#[derive(Clone)]
pub struct AdminClient {
    transport: Transport,
    /// Sent as `X-Consul-Token` with every request.
    token: Option<String>,
}

#[derive(Clone)]
enum Transport {
    /// Plain HTTP (the cluster file has no `[tls]`).
    Plain,
    /// HTTPS; node `N`'s certificate must name `node-N.<cluster>`.
    Tls {
        /// Verifies the node against the CA and presents the client
        /// certificate, if any.
        connector: TlsConnector,
        /// The cluster name, for the node's certificate name.
        cluster: String,
    },
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.token.as_ref().map(|_| "<redacted>");
        match &self.transport {
            Transport::Plain => f
                .debug_struct("AdminClient::Plain")
                .field("token", &token)
                .finish(),
            Transport::Tls { cluster, .. } => f
                .debug_struct("AdminClient::Tls")
                .field("cluster", cluster)
                .field("token", &token)
                .finish_non_exhaustive(),
        }
    }
}

/// A connection to an admin API, plain or TLS. One type for both, so that
/// hyper's client is compiled once.
trait Io: futures_lite::AsyncRead + futures_lite::AsyncWrite + Send + Unpin {}
impl<T: futures_lite::AsyncRead + futures_lite::AsyncWrite + Send + Unpin> Io for T {}

impl AdminClient {
    /// The command line's client: with `[tls]`, it presents the file's
    /// `client_cert` (or no certificate, if the file names none).
    pub fn for_cli(config: &ClusterConfig) -> Result<AdminClient> {
        Ok(Self::with(
            crate::tls::cli_client_config(config)?,
            &config.name,
        ))
    }

    /// Node `node_id`'s client towards other nodes: with `[tls]`, it
    /// presents the node's own certificate.
    pub fn for_node(config: &ClusterConfig, node_id: u64) -> Result<AdminClient> {
        Ok(Self::with(
            crate::tls::node_client_config(config, node_id)?,
            &config.name,
        ))
    }

    /// Plain HTTP, without a token.
    pub fn plain() -> AdminClient {
        AdminClient {
            transport: Transport::Plain,
            token: None,
        }
    }

    fn with(tls: Option<Arc<rustls::ClientConfig>>, cluster: &str) -> AdminClient {
        let transport = match tls {
            None => Transport::Plain,
            Some(config) => Transport::Tls {
                connector: TlsConnector::from(config),
                cluster: cluster.to_string(),
            },
        };
        AdminClient {
            transport,
            token: None,
        }
    }

    /// The same client, presenting ACL token `token` (`None`: no token).
    pub fn with_token(mut self, token: Option<String>) -> AdminClient {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        match self.transport {
            Transport::Plain => "http",
            Transport::Tls { .. } => "https",
        }
    }

    /// Sends `method path` with `body` to node `node` at `addr` and reads the
    /// answer; the whole exchange must finish within `timeout`. `Err` says
    /// what failed.
    pub fn request(
        &self,
        node: u64,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> std::result::Result<Response, String> {
        crate::runtime::block_on(async {
            futures_lite::future::or(self.exchange(node, addr, method, path, body), async {
                async_io::Timer::after(timeout).await;
                Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                ))
            })
            .await
        })
    }

    /// [`AdminClient::request`] to each of `nodes` in turn until one answers
    /// (any status); `Err` is one sentence naming where none answered (see
    /// [`no_answer`]).
    pub fn first_answer(
        &self,
        cluster: &str,
        nodes: &[crate::config::NodeConfig],
        method: Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> std::result::Result<Response, String> {
        let mut failures = Vec::new();
        for node in nodes {
            match self.request(
                node.id,
                node.admin,
                method.clone(),
                path,
                body.clone(),
                timeout,
            ) {
                Ok(r) => return Ok(r),
                Err(e) => failures.push((node.id, node.admin, e)),
            }
        }
        Err(no_answer(cluster, &failures))
    }

    /// [`AdminClient::request`] as a future, for callers on the executor.
    /// Connecting (and the TLS handshake) is bounded by [`CONNECT_TIMEOUT`];
    /// the rest is the caller's to bound.
    pub async fn exchange(
        &self,
        node: u64,
        addr: SocketAddr,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> std::result::Result<Response, String> {
        let stream = futures_lite::future::or(self.connect(node, addr), async {
            async_io::Timer::after(CONNECT_TIMEOUT).await;
            Err(format!(
                "connecting timed out after {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            ))
        })
        .await?;
        send(stream, addr, method, path, body, self.token.as_deref())
            .await
            .map_err(|e| self.explain(e))
    }

    async fn connect(
        &self,
        node: u64,
        addr: SocketAddr,
    ) -> std::result::Result<Box<dyn Io>, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        match &self.transport {
            Transport::Plain => Ok(Box::new(tcp)),
            Transport::Tls { connector, cluster } => {
                let name = crate::tls::node_name(cluster, node);
                let server_name = ServerName::try_from(name.clone())
                    .map_err(|e| format!("{name} is not a DNS name: {e}"))?;
                let tls = connector
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake failed (expecting {name}): {e}"))?;
                Ok(Box::new(tls))
            }
        }
    }

    /// An error after the handshake. With TLS 1.3 a server that refuses
    /// the client's certificate says so only after the client's side of the
    /// handshake is done, so its refusal surfaces as the first read failing.
    fn explain(&self, e: String) -> String {
        match (&self.transport, e.find("received fatal alert")) {
            (Transport::Tls { .. }, Some(at)) => format!(
                "the node refused the TLS connection ({}): is the client certificate signed by the cluster's CA?",
                &e[at..]
            ),
            _ => e,
        }
    }
}

/// The sentence for a cluster of which no node answered: where it was
/// asked, and whether it runs. The reasons are added unless every node
/// simply refused the connection (nothing listens: it is not running).
pub fn no_answer(cluster: &str, failures: &[(u64, SocketAddr, String)]) -> String {
    let at: Vec<String> = failures.iter().map(|(_, a, _)| a.to_string()).collect();
    let local = failures.iter().all(|(_, a, _)| a.ip().is_loopback());
    let hint = if local {
        " `make cluster3` starts a local one"
    } else {
        ""
    };
    let mut sentence = format!(
        "no node of cluster '{cluster}' answered at {}: is it running?{hint}",
        at.join(", ")
    );
    let refused = |e: &str| e.contains("Connection refused") || e.contains("os error 111");
    if !failures.iter().all(|(_, _, e)| refused(e)) {
        let why: Vec<String> = failures
            .iter()
            .map(|(id, _, e)| format!("node {id}: {e}"))
            .collect();
        sentence.push_str(&format!(" ({})", why.join("; ")));
    }
    sentence
}

async fn send(
    stream: Box<dyn Io>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> std::result::Result<Response, String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(FuturesIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = crate::runtime::spawn(async move {
        let _ = conn.await;
    });
    let len = body.len();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONTENT_LENGTH, len);
    if let Some(token) = token {
        req = req.header("x-consul-token", token);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(error_chain)?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(error_chain)?
        .to_bytes();
    drop(driver);
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// hyper's error and its causes, so that a TLS alert under an I/O error
/// under hyper's "connection error" is shown.
fn error_chain(e: hyper::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_answer_is_one_sentence() {
        let a: SocketAddr = "127.0.0.1:8101".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:8102".parse().unwrap();
        let refused = "Connection refused (os error 111)".to_string();
        assert_eq!(
            no_answer("c", &[(1, a, refused.clone()), (2, b, refused.clone())]),
            "no node of cluster 'c' answered at 127.0.0.1:8101, 127.0.0.1:8102: is it running? \
             `make cluster3` starts a local one"
        );
        let s = no_answer(
            "c",
            &[(1, a, refused), (2, b, "no answer within 2s".into())],
        );
        assert!(
            s.ends_with("(node 1: Connection refused (os error 111); node 2: no answer within 2s)"),
            "{s}"
        );
        let far: SocketAddr = "10.0.0.1:8101".parse().unwrap();
        let s = no_answer("c", &[(1, far, "Connection refused".into())]);
        assert!(s.ends_with("is it running?"), "{s}");
    }
}
