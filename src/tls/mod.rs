//! TLS with rustls (ring provider, no OpenSSL): from Nomad's `tls { ... }` settings (owned by
//! `config`), the server configuration the HTTPS listener hands each new connection, the client
//! configuration the agent's own outbound calls (and the CLI) dial with, and their reload on
//! SIGHUP (the reload step itself lives in `reload`).
//!
//! `server` builds a `ServerConfig` (the agent's certificate; with `verify_https_client`, a
//! client certificate signed by `ca_file` is required); `client` builds `ClientConfig`s (the
//! agent's: peers verified against `ca_file`, and with `verify_server_hostname` their
//! certificate must name `server.<region>.nomad` or `client.<region>.nomad`; the CLI's, from
//! `NOMAD_CACERT` and friends) and dials. [`AgentTls`] holds the current pair and swaps both
//! on [`AgentTls::reload`]: connections already open keep the configuration they started with.
//! Cluster RPC (`tls.rpc`): the RPC listener takes [`RpcTls`] (mutual TLS always), and every
//! connection an agent opens to another's RPC port (Raft, the client link, forwarding,
//! tunnels) dials with [`rpc_connector`] or the same client configuration.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use crate::config::{MinVersion, TlsSettings};

pub mod client;
pub mod server;
#[cfg(test)]
mod tests;

/// A PEM file (certificate chain, key, CA bundle) larger than this is refused unread.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// `tls_min_version = "tls13"`.
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The protocol versions rustls may speak for a `tls_min_version`.
fn versions(min: MinVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match min {
        MinVersion::Tls12 => rustls::ALL_VERSIONS,
        MinVersion::Tls13 => TLS13_ONLY,
    }
}

/// Why a TLS configuration could not be built. Paths are the operator's own config; no key
/// material is ever part of a message.
#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read.
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file held no usable PEM item of the kind wanted (or was malformed).
    Pem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// A setting is missing for what was asked.
    Missing(&'static str),
    /// rustls refused the material (e.g. a key that does not match the certificate).
    Rustls(rustls::Error),
    /// The certificate verifier could not be built from the CA.
    Verifier(rustls::server::VerifierBuilderError),
    /// Dialing or the handshake failed.
    Io(std::io::Error),
    /// A server name that is neither a DNS name nor an IP address.
    ServerName(String),
    /// The settings do not hold together (see [`TlsSettings::validate`]).
    Invalid(crate::config::ConfigError),
    /// A reload asked to turn TLS on or off.
    Restart,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { what, path, source } => {
                write!(f, "tls: cannot read {what} {}: {source}", path.display())
            }
            TlsError::Pem { what, path, detail } => {
                write!(f, "tls: {what} {}: {detail}", path.display())
            }
            TlsError::Missing(what) => write!(f, "tls: {what} is not set"),
            TlsError::Rustls(e) => write!(f, "tls: {e}"),
            TlsError::Verifier(e) => write!(f, "tls: cannot verify with ca_file: {e}"),
            TlsError::Io(e) => write!(f, "{e}"),
            TlsError::ServerName(n) => write!(f, "tls: {n:?} is not a valid server name"),
            TlsError::Invalid(e) => write!(f, "{e}"),
            TlsError::Restart => {
                f.write_str("tls: turning tls.http or tls.rpc on or off needs a restart")
            }
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            TlsError::Rustls(e) => Some(e),
            TlsError::Io(e) => Some(e),
            TlsError::Invalid(e) => Some(e),
            TlsError::Verifier(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

/// The one crypto provider: ring (no C build beyond ring's own, no aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM file's bytes, at most [`MAX_PEM_BYTES`].
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Pem {
            what,
            path: path.to_path_buf(),
            detail: format!("larger than {MAX_PEM_BYTES} bytes"),
        });
    }
    Ok(bytes)
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(what, path)?;
    let pem_err = |detail: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(what, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        detail: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key in it".into(),
            other => other.to_string(),
        },
    })
}

/// The CA certificates to trust, from a PEM bundle.
pub fn load_roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The agent's TLS state: the current settings and the server and client configurations
/// built from their files, swapped together by [`AgentTls::reload`]. Readers clone an `Arc`
/// under a read lock held for that clone only (never across I/O).
pub struct AgentTls {
    region: String,
    current: RwLock<Current>,
}

struct Current {
    settings: TlsSettings,
    server: Arc<ServerConfig>,
    /// The RPC port's configuration: a client certificate signed by `ca_file` is always
    /// required there (Nomad's RPC is mutual TLS). `None` without `tls.rpc` or `ca_file`.
    rpc_server: Option<Arc<ServerConfig>>,
    /// `None` without `ca_file`: peers cannot be verified, so outbound HTTPS is refused.
    client: Option<Arc<ClientConfig>>,
}

impl AgentTls {
    /// Load the files named by `settings` (which must be [`TlsSettings::validate`]d).
    pub fn load(settings: &TlsSettings, region: &str) -> Result<AgentTls, TlsError> {
        Ok(AgentTls {
            region: region.to_string(),
            current: RwLock::new(build(settings, region)?),
        })
    }

    /// Read the certificate, key and CA files again and use them for every new connection,
    /// inbound and outbound. On any error nothing changes and the old ones stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let settings = self.settings();
        self.reload_with(&settings)
    }

    /// Like [`AgentTls::reload`] with settings read again from the config (file names and
    /// verification may change; turning `http` or `rpc` on or off needs a restart, as the
    /// listener would change).
    pub fn reload_with(&self, settings: &TlsSettings) -> Result<(), TlsError> {
        {
            let now = &self.current.read().settings;
            if (now.http, now.rpc) != (settings.http, settings.rpc) {
                return Err(TlsError::Restart);
            }
        }
        settings.validate().map_err(TlsError::Invalid)?;
        let built = build(settings, &self.region)?;
        *self.current.write() = built;
        Ok(())
    }

    /// The settings in use.
    pub fn settings(&self) -> TlsSettings {
        self.current.read().settings.clone()
    }

    /// Whether the HTTP API (and calls to other agents' APIs) speak HTTPS.
    pub fn http(&self) -> bool {
        self.current.read().settings.http
    }

    /// The configuration outbound HTTPS dials with, if peers can be verified.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        self.current
            .read()
            .client
            .clone()
            .ok_or(TlsError::Missing("tls.ca_file (needed to verify peers)"))
    }

    /// The server name outbound calls to other agents present (SNI) and, with
    /// `verify_server_hostname`, check for (`client.<region>.nomad` is accepted too).
    pub fn peer_server_name(&self) -> String {
        client::nomad_name("server", &self.region)
    }
}

/// How this agent connects to other agents' RPC ports: with `tls` (given when `tls.rpc` is
/// on), mutual TLS with the agent's certificate, the peer verified as [`AgentTls::client_config`]
/// says and named [`AgentTls::peer_server_name`]; else plain TCP. Connect and handshake share
/// the time given.
pub fn rpc_connector(tls: Option<Arc<AgentTls>>) -> crate::http::outbound::Connector {
    match tls {
        None => Arc::new(crate::http::outbound::connect_plain),
        Some(tls) => Arc::new(move |addr, timeout| tls.dial_rpc(addr, timeout)),
    }
}

impl AgentTls {
    /// A TLS connection to another agent's RPC port (see [`rpc_connector`]).
    pub fn dial_rpc(
        &self,
        addr: &std::net::SocketAddr,
        timeout: std::time::Duration,
    ) -> std::io::Result<crate::http::RawStream> {
        let deadline = std::time::Instant::now() + timeout;
        let config = self.client_config().map_err(std::io::Error::other)?;
        let tcp = std::net::TcpStream::connect_timeout(addr, timeout)?;
        let _ = tcp.set_nodelay(true);
        let tls = crate::http::TlsStream::connect(tcp, config, &self.peer_server_name(), deadline)?;
        Ok(crate::http::RawStream::from(tls))
    }
}

/// The RPC port's TLS (`tls.rpc`): the agent's certificate, and a client certificate signed
/// by `ca_file` required of every peer; reloaded with the rest on SIGHUP.
pub struct RpcTls(pub Arc<AgentTls>);

impl crate::http::TlsAcceptor for RpcTls {
    fn server_config(&self) -> Arc<ServerConfig> {
        let current = self.0.current.read();
        current
            .rpc_server
            .clone()
            .unwrap_or_else(|| current.server.clone())
    }
}

impl crate::http::TlsAcceptor for AgentTls {
    fn server_config(&self) -> Arc<ServerConfig> {
        self.current.read().server.clone()
    }
}

fn build(settings: &TlsSettings, region: &str) -> Result<Current, TlsError> {
    let server = Arc::new(server::server_config(settings)?);
    let rpc_server = match (&settings.ca_file, settings.rpc) {
        (Some(_), true) => {
            let mutual = TlsSettings {
                verify_https_client: true,
                ..settings.clone()
            };
            Some(Arc::new(server::server_config(&mutual)?))
        }
        _ => None,
    };
    let client = match &settings.ca_file {
        Some(_) => Some(Arc::new(client::agent_client_config(settings, region)?)),
        None => None,
    };
    Ok(Current {
        settings: settings.clone(),
        server,
        rpc_server,
        client,
    })
}
