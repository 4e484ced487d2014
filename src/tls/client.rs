//! The client side: `ClientConfig`s for the agent's own outbound calls (peers verified against
//! `ca_file`; with `verify_server_hostname` their certificate must name
//! `server.<region>.nomad` or `client.<region>.nomad`; the agent's certificate is presented
//! for mutual TLS) and for the CLI (`NOMAD_CACERT`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`,
//! `NOMAD_TLS_SERVER_NAME`, `NOMAD_SKIP_VERIFY`), and [`dial`]: a TCP connection, with TLS
//! when asked, handshaken before a deadline, as one [`Stream`] to speak HTTP over.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme, StreamOwned,
};

use super::{load_certs, load_key, load_roots, provider, MinVersion, TlsError, TlsSettings};

/// CA bundles the CLI trusts when `NOMAD_CACERT` is not set (Debian's, then Fedora's).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// Nomad's certificate name for an agent role in a region: `server.global.nomad`.
pub fn nomad_name(role: &str, region: &str) -> String {
    format!("{role}.{region}.nomad")
}

/// What a peer's certificate is checked for.
#[derive(Debug)]
enum Check {
    /// Signed by a trusted CA and valid for the name dialed (the usual web check).
    NameDialed,
    /// Signed by a trusted CA and valid for one of these names (Nomad's role names).
    Names(Vec<ServerName<'static>>),
    /// Signed by a trusted CA, whatever names it carries (Nomad without
    /// `verify_server_hostname`).
    ChainOnly,
    /// Nothing but the handshake signature (`NOMAD_SKIP_VERIFY`).
    Nothing,
}

/// Verifies a server certificate as [`Check`] says; handshake signatures always.
#[derive(Debug)]
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    check: Check,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if matches!(self.check, Check::Nothing) {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        match &self.check {
            Check::NameDialed => verify_server_name(&cert, server_name)?,
            Check::Names(names) => {
                if !names.iter().any(|n| verify_server_name(&cert, n).is_ok()) {
                    return Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName,
                    ));
                }
            }
            Check::ChainOnly | Check::Nothing => {}
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn client_config(
    roots: RootCertStore,
    check: Check,
    min_version: MinVersion,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PeerVerifier {
        roots: Arc::new(roots),
        check,
        algs: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(super::versions(min_version))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs("cert_file", cert)?, load_key("key_file", key)?)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The agent's outbound configuration: peers verified against `ca_file` (with
/// `verify_server_hostname`, for Nomad's role names in `region`), the agent's own
/// certificate presented to peers that ask for one.
pub fn agent_client_config(settings: &TlsSettings, region: &str) -> Result<ClientConfig, TlsError> {
    let ca_file = settings
        .ca_file
        .as_deref()
        .ok_or(TlsError::Missing("tls.ca_file"))?;
    let roots = load_roots("ca_file", ca_file)?;
    let check = if settings.verify_server_hostname {
        let mut names = Vec::new();
        for role in ["server", "client"] {
            let name = nomad_name(role, region);
            names.push(ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))?);
        }
        Check::Names(names)
    } else {
        Check::ChainOnly
    };
    let identity = settings
        .cert_file
        .as_deref()
        .zip(settings.key_file.as_deref());
    client_config(roots, check, settings.min_version, identity)
}

/// The CLI's TLS settings, as the `nomad` CLI reads them from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliTls {
    /// `NOMAD_CACERT`: the CA bundle to verify the agent with (else the system's).
    pub ca_cert: Option<PathBuf>,
    /// `NOMAD_CLIENT_CERT` and `NOMAD_CLIENT_KEY`: the CLI's certificate for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `NOMAD_TLS_SERVER_NAME`: the name to verify instead of the address's host.
    pub server_name: Option<String>,
    /// `NOMAD_SKIP_VERIFY`: do not verify the agent's certificate at all.
    pub skip_verify: bool,
}

impl CliTls {
    /// From `NOMAD_CACERT`, `NOMAD_CLIENT_CERT`, `NOMAD_CLIENT_KEY`, `NOMAD_TLS_SERVER_NAME`
    /// and `NOMAD_SKIP_VERIFY` (a Go bool: `1`, `t`, `true`, ...).
    pub fn from_env() -> CliTls {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        CliTls {
            ca_cert: var("NOMAD_CACERT").map(PathBuf::from),
            client_cert: var("NOMAD_CLIENT_CERT").map(PathBuf::from),
            client_key: var("NOMAD_CLIENT_KEY").map(PathBuf::from),
            server_name: var("NOMAD_TLS_SERVER_NAME"),
            skip_verify: var("NOMAD_SKIP_VERIFY")
                .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True")),
        }
    }

    /// The client configuration these settings describe.
    pub fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let roots = match &self.ca_cert {
            Some(path) => load_roots("NOMAD_CACERT", path)?,
            None if self.skip_verify => RootCertStore::empty(),
            None => system_roots()?,
        };
        let check = if self.skip_verify {
            Check::Nothing
        } else {
            Check::NameDialed
        };
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => {
                return Err(TlsError::Missing(
                    "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY (both or neither)",
                ))
            }
        };
        client_config(roots, check, MinVersion::Tls12, identity)
    }

    /// Dial `host:port` over TLS, verifying the agent as these settings say (the name is
    /// `NOMAD_TLS_SERVER_NAME`, else `host`), connected and handshaken within
    /// `connect_timeout`; each later read and write may then stall `io_timeout` (`None`:
    /// forever). The stream's socket stays reachable through [`Stream::tcp`].
    pub fn dial(
        &self,
        host: &str,
        port: u16,
        connect_timeout: Duration,
        io_timeout: Option<Duration>,
    ) -> Result<Stream, TlsError> {
        let deadline = Instant::now() + connect_timeout;
        let config = Arc::new(self.client_config()?);
        let addr = resolve(host, port)?;
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let stream = dial(&addr, Some((config, name)), deadline)?;
        stream
            .tcp()
            .set_read_timeout(io_timeout)
            .and_then(|_| stream.tcp().set_write_timeout(io_timeout))
            .map_err(TlsError::Io)?;
        Ok(stream)
    }

    /// [`CliTls::dial`] as a boxed stream, for the CLI's HTTP client.
    pub fn connect(
        &self,
        host: &str,
        port: u16,
        connect_timeout: Duration,
        io_timeout: Option<Duration>,
    ) -> Result<Box<dyn ReadWrite>, TlsError> {
        Ok(Box::new(self.dial(
            host,
            port,
            connect_timeout,
            io_timeout,
        )?))
    }
}

/// The system's CA bundle, for a CLI given no `NOMAD_CACERT`.
fn system_roots() -> Result<RootCertStore, TlsError> {
    for path in SYSTEM_CA_BUNDLES {
        let path = std::path::Path::new(path);
        if path.exists() {
            let mut roots = RootCertStore::empty();
            let certs = load_certs("the system CA bundle", path)?;
            // A bundle may hold a certificate webpki cannot use; skip it, as browsers do.
            let _ = roots.add_parsable_certificates(certs);
            return Ok(roots);
        }
    }
    Err(TlsError::Missing(
        "NOMAD_CACERT (no system CA bundle found)",
    ))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, TlsError> {
    use std::net::ToSocketAddrs;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    (bare, port)
        .to_socket_addrs()
        .map_err(TlsError::Io)?
        .next()
        .ok_or_else(|| TlsError::Io(io::Error::other(format!("lookup {host}: no addresses"))))
}

/// What the CLI's HTTP client reads and writes: any blocking byte stream.
pub trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send + ?Sized> ReadWrite for T {}

/// A dialed connection: plain TCP or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket underneath (for read and write deadlines).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn left(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "i/o timeout"))
}

/// Connect to `addr` before `deadline`; with `tls` (a configuration and the server name to
/// present and verify), complete the handshake before it too, so a peer that fails
/// verification is an error here, not on the first read. The socket is returned with no
/// read or write timeout: the caller sets its own.
pub fn dial(
    addr: &SocketAddr,
    tls: Option<(Arc<ClientConfig>, &str)>,
    deadline: Instant,
) -> Result<Stream, TlsError> {
    let tcp = TcpStream::connect_timeout(addr, left(deadline).map_err(TlsError::Io)?)
        .map_err(TlsError::Io)?;
    let _ = tcp.set_nodelay(true);
    let Some((config, name)) = tls else {
        return Ok(Stream::Plain(tcp));
    };
    let server_name = ServerName::try_from(name.to_string())
        .map_err(|_| TlsError::ServerName(name.to_string()))?;
    let mut conn = ClientConnection::new(config, server_name)?;
    while conn.is_handshaking() {
        let wait = left(deadline).map_err(TlsError::Io)?;
        if conn.wants_write() {
            tcp.set_write_timeout(Some(wait)).map_err(TlsError::Io)?;
            conn.write_tls(&mut &tcp).map_err(TlsError::Io)?;
            continue;
        }
        tcp.set_read_timeout(Some(wait)).map_err(TlsError::Io)?;
        match conn.read_tls(&mut &tcp) {
            Ok(0) => {
                return Err(TlsError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )))
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(TlsError::Io(e)),
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the peer why (the alert rustls queued), then fail with the reason.
            let _ = conn.write_tls(&mut &tcp);
            return Err(TlsError::Rustls(e));
        }
    }
    tcp.set_read_timeout(None).map_err(TlsError::Io)?;
    tcp.set_write_timeout(None).map_err(TlsError::Io)?;
    Ok(Stream::Tls(Box::new(StreamOwned::new(conn, tcp))))
}
