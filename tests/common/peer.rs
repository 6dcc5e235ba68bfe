//! A fake peer: speaks the wire format (quorumd's own `Frame` codec) over a
//! blocking `std::net::TcpStream`, or over TLS with a certificate of the
//! test's choosing, so tests can send what a hostile or broken node would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quorumd::transport::wire::{Frame, GroupId, Purpose};
use raft::prelude::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Timeout of every read and write of the fake peer.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// Anything a fake peer can talk through.
pub trait Conn: Read + Write + Send {}
impl<T: Read + Write + Send> Conn for T {}

/// A connection to a node's peer port.
pub struct FakePeer {
    pub stream: Box<dyn Conn>,
    /// The TCP socket underneath, to see whether the node closed it.
    tcp: TcpStream,
}

impl FakePeer {
    /// Plain TCP to `addr`.
    pub fn plain(addr: SocketAddr) -> std::io::Result<FakePeer> {
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(FakePeer {
            stream: Box::new(tcp.try_clone()?),
            tcp,
        })
    }

    /// TLS to `addr`, trusting `ca`, presenting `cert`/`key`, and expecting
    /// the server to be `server_name`.
    pub fn tls(
        addr: SocketAddr,
        ca: &Path,
        cert: &Path,
        key: &Path,
        server_name: &str,
    ) -> std::io::Result<FakePeer> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("ca") {
            roots.add(c.expect("ca cert")).expect("add ca");
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("cert")
            .map(|c| c.expect("cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client cert");
        let name = ServerName::try_from(server_name.to_string()).expect("server name");
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(FakePeer {
            stream: Box::new(rustls::StreamOwned::new(conn, tcp.try_clone()?)),
            tcp,
        })
    }

    /// Whether the node still holds this connection open: a read finds
    /// neither the end of the stream nor a reset within 50 ms.
    pub fn is_open(&self) -> bool {
        let mut byte = [0u8; 1];
        let _ = self.tcp.set_read_timeout(Some(Duration::from_millis(50)));
        let open = match (&self.tcp).read(&mut byte) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        let _ = self.tcp.set_read_timeout(Some(IO_TIMEOUT));
        open
    }

    /// Sends one frame.
    pub fn send(&mut self, frame: &Frame) -> std::io::Result<()> {
        self.stream.write_all(&frame.encode())?;
        self.stream.flush()
    }

    /// Reads one frame (at most 1 MiB).
    pub fn recv(&mut self) -> std::io::Result<Frame> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > 1 << 20 {
            return Err(std::io::Error::other(format!("frame of {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload)?;
        Frame::decode(&payload).map_err(|e| std::io::Error::other(e.to_string()))
    }

    /// Sends a `Hello` claiming to be node `from` of `cluster`, dialing node
    /// `to`, and returns the answer (`Ack` or `Reject`).
    pub fn hello(
        &mut self,
        cluster: &str,
        from: u64,
        to: u64,
        purpose: Purpose,
    ) -> std::io::Result<Frame> {
        self.send(&Frame::Hello {
            purpose,
            from,
            to,
            cluster: cluster.to_string(),
            // Claims to hold state: a member that says it has none is
            // refused once the cluster formed.
            cluster_id: String::new(),
            has_state: true,
        })?;
        self.recv()
    }

    /// Sends a Raft message of `__meta/0`.
    pub fn raft(&mut self, message: Message) -> std::io::Result<()> {
        self.send(&Frame::Raft {
            group: GroupId::meta(),
            message,
        })
    }
}
