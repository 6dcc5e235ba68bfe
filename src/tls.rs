//! Mutual TLS: certificates, the rustls configurations, and the peer-identity
//! check. The transport uses it between peers; the HTTP server and the CLI use
//! the configurations at the bottom.
//!
//! - **Names.** Node `N` of cluster `C` holds a certificate whose DNS SAN is
//!   `node-N.C` ([`node_name`]), signed by the cluster's CA. The CLI's client
//!   certificate names `client.C`. Certificates made by [`generate`] also carry
//!   the IP addresses of the node's `addr` and `admin`, so that `curl --cacert`
//!   works against an address; identity never rests on an IP (every node of a
//!   loopback cluster shares 127.0.0.1).
//! - **Peers.** Both sides present their certificate and verify the other's
//!   chain against the CA ([`PeerTls`]). The dialer checks that the listener's
//!   certificate names the node it dialed; the listener checks, once it has
//!   read the `Hello`, that the dialer's certificate names the id the `Hello`
//!   claims ([`cert_names`]). A node holding node 3's key cannot pose as node 2.
//! - **Crypto.** rustls with the ring provider, TLS 1.3 only (both ends are
//!   ours, and it keeps the binary small).
//! - **Validity.** Certificates from [`generate`] are valid from 1975 to 4096:
//!   edge boxes often boot without a real-time clock, and a node must not lose
//!   its cluster because its clock reads 1970. Replace a compromised key by
//!   generating a new CA.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_rustls::{TlsAcceptor, TlsConnector};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ClusterConfig, TlsFiles};
use crate::error::{Error, Result};

/// The DNS name node `id` of `cluster` must hold: `node-<id>.<cluster>`.
pub fn node_name(cluster: &str, id: u64) -> String {
    format!("node-{id}.{cluster}")
}

/// The DNS name of the CLI's client certificate: `client.<cluster>`.
pub fn client_name(cluster: &str) -> String {
    format!("client.{cluster}")
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(file: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Tls {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads every certificate of a PEM file; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = fs::read(path).map_err(|e| tls_error(path, format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = fs::read(path).map_err(|e| tls_error(path, format!("cannot read: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| tls_error(path, format!("holds no usable PEM private key: {e}")))
}

fn load_roots(files: &TlsFiles) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&files.ca)? {
        roots
            .add(cert)
            .map_err(|e| tls_error(&files.ca, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its key, checked to belong together.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn load_identity(cert: &Path, key: &Path) -> Result<Identity> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let certified = CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider())
        .map_err(|e| {
            tls_error(
                key,
                format!("does not fit certificate {}: {e}", cert.display()),
            )
        })?;
    certified.keys_match().map_err(|e| {
        tls_error(
            key,
            format!("does not fit certificate {}: {e}", cert.display()),
        )
    })?;
    Ok(Identity {
        chain,
        key: key_der,
    })
}

/// True if `cert` (an end-entity certificate) is valid for the DNS name `name`.
/// Chain and validity are checked by the TLS handshake; this is the identity.
pub fn cert_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .and_then(|ee| ee.verify_is_valid_for_subject_name(&server_name))
        .is_ok()
}

/// A node's TLS between peers: it accepts only clients signed by the CA, and
/// dials presenting its own certificate.
#[derive(Clone)]
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    cluster: String,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Loads node `node_id`'s certificate and key and the CA from the file's
    /// `[tls]` table. `Ok(None)` if the file has none.
    pub fn load(config: &ClusterConfig, node_id: u64) -> Result<Option<PeerTls>> {
        let Some(files) = &config.tls else {
            return Ok(None);
        };
        let roots = load_roots(files)?;
        let me = load_identity(&files.cert(node_id), &files.key(node_id))?;
        let name = node_name(&config.name, node_id);
        if !cert_names(&me.chain[0], &name) {
            return Err(tls_error(
                &files.cert(node_id),
                format!("does not name this node: it must hold the DNS name {name}"),
            ));
        }
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| tls_error(&files.ca, e))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error(&files.ca, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(me.chain.clone(), me.key.clone_key())
            .map_err(|e| tls_error(&files.cert(node_id), e))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error(&files.ca, e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(me.chain, me.key)
            .map_err(|e| tls_error(&files.cert(node_id), e))?;
        Ok(Some(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            cluster: config.name.clone(),
        }))
    }

    /// Accepts TLS from peers; the client's chain is verified against the CA.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Dials peers; the server's chain is verified and must name the peer
    /// given by [`PeerTls::server_name`].
    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    /// The name peer `id`'s certificate must hold, as rustls takes it.
    pub fn server_name(&self, id: u64) -> ServerName<'static> {
        // A cluster name with [tls] is a DNS label (config.rs checks), so
        // this always parses; an unparsable name would fail the handshake.
        ServerName::try_from(node_name(&self.cluster, id))
            .unwrap_or_else(|_| ServerName::IpAddress(IpAddr::from([0, 0, 0, 0]).into()))
    }

    /// True if `certs` (a verified peer chain) names node `id` of this cluster.
    pub fn names_node(&self, certs: Option<&[CertificateDer<'_>]>, id: u64) -> bool {
        certs
            .and_then(<[_]>::first)
            .is_some_and(|ee| cert_names(ee, &node_name(&self.cluster, id)))
    }
}

/// The admin API's TLS: the node's own certificate, and client certificates
/// requested but not required. A client that sends one must be signed by the
/// CA (else the handshake fails); whether it did is [`has_client_cert`], which
/// the HTTP layer uses to answer 401 on the routes that need one.
pub fn admin_server_config(
    config: &ClusterConfig,
    node_id: u64,
) -> Result<Option<Arc<ServerConfig>>> {
    let Some(files) = &config.tls else {
        return Ok(None);
    };
    let roots = load_roots(files)?;
    let me = load_identity(&files.cert(node_id), &files.key(node_id))?;
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_error(&files.ca, e))?;
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&files.ca, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(me.chain, me.key)
        .map_err(|e| tls_error(&files.cert(node_id), e))?;
    Ok(Some(Arc::new(server)))
}

/// True if the client of this connection presented a certificate. With
/// [`admin_server_config`] a presented certificate has been verified against
/// the CA during the handshake, so this means "an authenticated client".
pub fn has_client_cert(conn: &rustls::ServerConnection) -> bool {
    conn.peer_certificates().is_some_and(|c| !c.is_empty())
}

/// The CLI's TLS towards the admin API: verifies the node's certificate
/// against the CA (it must name the node queried, see [`node_name`]) and
/// presents `client_cert` when the file names one.
pub fn cli_client_config(config: &ClusterConfig) -> Result<Option<Arc<ClientConfig>>> {
    let Some(files) = &config.tls else {
        return Ok(None);
    };
    admin_client_config(files, files.client.clone()).map(Some)
}

/// A node's TLS towards another node's admin API (a follower forwarding a
/// membership change to the leader): as [`cli_client_config`], presenting
/// the node's own certificate, which the admin API accepts like any client
/// certificate signed by the CA.
pub fn node_client_config(
    config: &ClusterConfig,
    node_id: u64,
) -> Result<Option<Arc<ClientConfig>>> {
    let Some(files) = &config.tls else {
        return Ok(None);
    };
    admin_client_config(files, Some((files.cert(node_id), files.key(node_id)))).map(Some)
}

fn admin_client_config(
    files: &TlsFiles,
    identity: Option<(PathBuf, PathBuf)>,
) -> Result<Arc<ClientConfig>> {
    let roots = load_roots(files)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&files.ca, e))?
        .with_root_certificates(roots);
    let client = match identity {
        Some((cert, key)) => {
            let me = load_identity(&cert, &key)?;
            builder
                .with_client_auth_cert(me.chain, me.key)
                .map_err(|e| tls_error(&cert, e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(client))
}

/// What `quorumd check` verifies of a `[tls]` table: every file exists and
/// parses, every key fits its certificate, and each node's certificate is
/// signed by the CA and names that node (for both server and client use).
/// Returns one line per file checked.
pub fn check(config: &ClusterConfig) -> Result<Vec<String>> {
    let Some(files) = &config.tls else {
        return Ok(vec![
            "tls: none; warning: peers are not authenticated, and the admin API and the KV \
             store are open to anyone who can reach the admin port (add a [tls] table, see \
             `quorumd certs`)"
                .to_string(),
        ]);
    };
    let roots = load_roots(files)?;
    let provider = provider();
    let servers = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| tls_error(&files.ca, e))?;
    let clients = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| tls_error(&files.ca, e))?;
    let now = UnixTime::now();
    let mut lines = vec![format!("tls: CA {}", files.ca.display())];
    for node in &config.nodes {
        let (cert, key) = (files.cert(node.id), files.key(node.id));
        let me = load_identity(&cert, &key)?;
        let name = node_name(&config.name, node.id);
        let server_name = ServerName::try_from(name.clone()).map_err(|e| tls_error(&cert, e))?;
        servers
            .verify_server_cert(&me.chain[0], &me.chain[1..], &server_name, &[], now)
            .map_err(|e| {
                tls_error(
                    &cert,
                    format!("is not a valid certificate of {name} signed by the CA: {e}"),
                )
            })?;
        clients
            .verify_client_cert(&me.chain[0], &me.chain[1..], now)
            .map_err(|e| {
                tls_error(
                    &cert,
                    format!("cannot serve as a client certificate of the CA: {e}"),
                )
            })?;
        lines.push(format!(
            "  node {}: {} names {name}, signed by the CA; key {} fits",
            node.id,
            cert.display(),
            key.display()
        ));
    }
    if let Some((cert, key)) = &files.client {
        let me = load_identity(cert, key)?;
        clients
            .verify_client_cert(&me.chain[0], &me.chain[1..], now)
            .map_err(|e| tls_error(cert, format!("is not a client certificate of the CA: {e}")))?;
        lines.push(format!(
            "  client: {} signed by the CA; key {} fits",
            cert.display(),
            key.display()
        ));
    }
    Ok(lines)
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Every file written, CA first.
    pub files: Vec<PathBuf>,
    /// The CA's private key: in a directory of its own ([`ca_key_dir`]),
    /// never among the files copied to nodes.
    pub ca_key: PathBuf,
    /// A `[tls]` table that uses them, with paths relative to the cluster file
    /// where possible.
    pub table: String,
}

/// Where `quorumd certs --out <out>` keeps the CA's private key: the sibling
/// directory `<out>-ca`, so that copying `out` to the nodes never copies the
/// key that signs members.
pub fn ca_key_dir(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "certs".into());
    name.push("-ca");
    match out.parent() {
        Some(parent) => parent.join(name),
        None => PathBuf::from(name),
    }
}

/// `quorumd certs`: writes a new CA certificate (`ca.pem`), a certificate
/// and key for each node (`node-<id>.pem`, `node-<id>.key`) and one client
/// pair (`client.pem`, `client.key`) into `out`, and the CA's key
/// (`ca.key`) into [`ca_key_dir`], a directory of mode 0700. Keys are
/// written with mode 0600. Existing files are refused unless `overwrite`.
pub fn generate(
    config: &ClusterConfig,
    cluster_file: &Path,
    out: &Path,
    overwrite: bool,
) -> Result<Generated> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let gen_error = |what: &str, e: rcgen::Error| {
        Error::Internal(format!("cannot generate the {what} certificate: {e}"))
    };
    if config.name.len() > 63
        || !config
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::Usage(format!(
            "cluster name {:?} cannot name certificates: it must be one DNS label (letters, digits and '-')",
            config.name
        )));
    }
    let ca_dir = ca_key_dir(out);
    let mut planned = vec![out.join("ca.pem"), ca_dir.join("ca.key")];
    for n in &config.nodes {
        planned.push(out.join(format!("node-{}.pem", n.id)));
        planned.push(out.join(format!("node-{}.key", n.id)));
    }
    planned.push(out.join("client.pem"));
    planned.push(out.join("client.key"));
    if !overwrite {
        if let Some(existing) = planned.iter().find(|p| p.exists()) {
            return Err(Error::Usage(format!(
                "{} exists already; pass --force to replace every certificate in {}",
                existing.display(),
                out.display()
            )));
        }
    }
    fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("cannot create {}", out.display()), e))?;
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&ca_dir)
            .and_then(|()| fs::set_permissions(&ca_dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| Error::io(format!("cannot create {}", ca_dir.display()), e))?;
    }

    let ca_key = KeyPair::generate().map_err(|e| gen_error("CA", e))?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| gen_error("CA", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("quorumd CA of {}", config.name));
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| gen_error("CA", e))?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let leaf = |what: &str, names: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().map_err(|e| gen_error(what, e))?;
        let mut params = CertificateParams::new(names.clone()).map_err(|e| gen_error(what, e))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| gen_error(what, e))?;
        Ok::<_, Error>((cert.pem(), key.serialize_pem()))
    };

    let mut written = Vec::new();
    let mut write = |path: PathBuf, text: &str, secret: bool| -> Result<()> {
        write_file(&path, text.as_bytes(), secret)?;
        written.push(path);
        Ok(())
    };
    write(out.join("ca.pem"), &ca_cert.pem(), false)?;
    write(ca_dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    for n in &config.nodes {
        let mut names = vec![node_name(&config.name, n.id)];
        for ip in [n.addr.ip(), n.admin.ip()] {
            if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
                names.push(ip.to_string());
            }
        }
        // A node on loopback is a local cluster: `curl https://localhost:…`
        // and browsers name it so.
        let local = [n.addr.ip(), n.admin.ip()]
            .iter()
            .any(|ip| ip.is_loopback());
        if local {
            names.push("localhost".to_string());
        }
        let (cert, key) = leaf(
            &format!("node {}", n.id),
            names,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        write(out.join(format!("node-{}.pem", n.id)), &cert, false)?;
        write(out.join(format!("node-{}.key", n.id)), &key, true)?;
    }
    let (cert, key) = leaf(
        "client",
        vec![client_name(&config.name)],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    write(out.join("client.pem"), &cert, false)?;
    write(out.join("client.key"), &key, true)?;

    let base = cluster_file
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .unwrap_or_default();
    let out_abs = out.canonicalize().unwrap_or_else(|_| out.to_path_buf());
    let dir = relative_to(&out_abs, &base);
    let p = |f: &str| dir.join(f).display().to_string();
    let table = format!(
        "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\nclient_cert = {:?}\nclient_key = {:?}\n",
        p("ca.pem"),
        p("node-{id}.pem"),
        p("node-{id}.key"),
        p("client.pem"),
        p("client.key"),
    );
    Ok(Generated {
        files: written,
        ca_key: ca_dir.join("ca.key"),
        table,
    })
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    #[cfg(unix)]
    if secret {
        // A key that existed with wider permissions keeps them on open.
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(fs::Permissions::from_mode(0o600));
    }
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}

/// `path` relative to `base` when both are absolute and `path` lies below
/// a common ancestor; `path` itself otherwise.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    if !path.is_absolute() || !base.is_absolute() {
        return path.to_path_buf();
    }
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &p[common..] {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        assert_eq!(
            relative_to(Path::new("/r/target/c/certs"), Path::new("/r/clusters")),
            PathBuf::from("../target/c/certs")
        );
        assert_eq!(
            relative_to(Path::new("/r/clusters"), Path::new("/r/clusters")),
            PathBuf::from(".")
        );
        assert_eq!(
            relative_to(Path::new("rel"), Path::new("/x")),
            PathBuf::from("rel")
        );
    }

    fn cluster(dir: &Path, name: &str) -> (ClusterConfig, PathBuf) {
        let file = dir.join("c.toml");
        let text = format!(
            "[cluster]\nname = \"{name}\"\n\
             [[node]]\nid = 1\naddr = \"127.0.0.1:7001\"\nadmin = \"127.0.0.1:8001\"\n\
             [[node]]\nid = 2\naddr = \"127.0.0.1:7002\"\nadmin = \"127.0.0.1:8002\"\n"
        );
        let config = ClusterConfig::parse(&text, &file).unwrap();
        std::fs::write(&file, text).unwrap();
        (config, file)
    }

    #[test]
    fn generated_certificates_pass_check_and_name_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, file) = cluster(dir.path(), "c2");
        let out = dir.path().join("certs");
        let generated = generate(&plain, &file, &out, false).unwrap();
        assert_eq!(generated.files.len(), 8);
        assert!(
            generated.table.contains("cert = \"certs/node-{id}.pem\""),
            "{}",
            generated.table
        );

        let text = format!(
            "{}\n{}",
            std::fs::read_to_string(&file).unwrap(),
            generated.table
        );
        let config = ClusterConfig::parse(&text, &file).unwrap();
        let lines = check(&config).unwrap();
        assert_eq!(lines.len(), 4, "{lines:?}");

        let node2 = load_certs(&out.join("node-2.pem")).unwrap();
        assert!(cert_names(&node2[0], "node-2.c2"));
        assert!(!cert_names(&node2[0], "node-1.c2"));
        assert!(!cert_names(&node2[0], "node-2.other"));
        // The cluster is on loopback: localhost is named too.
        assert!(cert_names(&node2[0], "localhost"));
        let tls = PeerTls::load(&config, 1).unwrap().unwrap();
        assert!(tls.names_node(Some(&node2), 2));
        assert!(!tls.names_node(Some(&node2), 1));
        assert!(!tls.names_node(None, 2));
        assert!(admin_server_config(&config, 2).unwrap().is_some());
        assert!(cli_client_config(&config).unwrap().is_some());
        assert!(node_client_config(&config, 1).unwrap().is_some());
        assert!(node_client_config(&plain, 1).unwrap().is_none());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(out.join("node-1.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // A second run refuses to overwrite, naming a file.
        let err = generate(&plain, &file, &out, false).unwrap_err();
        assert!(err.to_string().contains("exists already"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn check_names_a_certificate_of_another_node_or_ca() {
        let dir = tempfile::tempdir().unwrap();
        let (plain, file) = cluster(dir.path(), "c2");
        let out = dir.path().join("certs");
        let generated = generate(&plain, &file, &out, false).unwrap();
        let text = format!(
            "{}\n{}",
            std::fs::read_to_string(&file).unwrap(),
            generated.table
        );
        let config = ClusterConfig::parse(&text, &file).unwrap();

        // Node 2's files hold node 1's pair: signed by the CA, wrong name.
        std::fs::copy(out.join("node-1.pem"), out.join("node-2.pem")).unwrap();
        std::fs::copy(out.join("node-1.key"), out.join("node-2.key")).unwrap();
        let err = check(&config).unwrap_err().to_string();
        assert!(
            err.contains("node-2.pem") && err.contains("node-2.c2"),
            "{err}"
        );
        assert!(PeerTls::load(&config, 2)
            .unwrap_err()
            .to_string()
            .contains("node-2.c2"));

        // Node 2's files come from another CA.
        let other = dir.path().join("other");
        generate(&plain, &file, &other, false).unwrap();
        std::fs::copy(other.join("node-2.pem"), out.join("node-2.pem")).unwrap();
        std::fs::copy(other.join("node-2.key"), out.join("node-2.key")).unwrap();
        let err = check(&config).unwrap_err().to_string();
        assert!(
            err.contains("node-2.pem") && err.contains("signed by the CA"),
            "{err}"
        );

        // A key that does not fit its certificate.
        std::fs::copy(out.join("node-1.key"), out.join("node-2.key")).unwrap();
        let err = check(&config).unwrap_err().to_string();
        assert!(
            err.contains("node-2.key") && err.contains("does not fit"),
            "{err}"
        );

        // A missing file.
        std::fs::remove_file(out.join("ca.pem")).unwrap();
        let err = check(&config).unwrap_err();
        assert!(err.to_string().contains("ca.pem"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }
}
