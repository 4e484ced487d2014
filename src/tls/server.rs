//! The server side: the `ServerConfig` the HTTPS listener (and, later, cluster RPC) hands
//! each new connection: the agent's certificate chain and key, and with
//! `verify_https_client` a client certificate signed by `ca_file` required (mutual TLS).

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use super::{load_certs, load_key, load_roots, provider, TlsError, TlsSettings};

/// The one application protocol spoken: HTTP/1.1 (a client offering only h2 is refused).
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A server configuration from the settings' files.
pub fn server_config(settings: &TlsSettings) -> Result<ServerConfig, TlsError> {
    let cert_file = settings
        .cert_file
        .as_deref()
        .ok_or(TlsError::Missing("tls.cert_file"))?;
    let key_file = settings
        .key_file
        .as_deref()
        .ok_or(TlsError::Missing("tls.key_file"))?;
    let certs = load_certs("cert_file", cert_file)?;
    let key = load_key("key_file", key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(super::versions(settings.min_version))?;
    let builder = if settings.verify_https_client {
        let ca_file = settings
            .ca_file
            .as_deref()
            .ok_or(TlsError::Missing("tls.ca_file"))?;
        let roots = load_roots("ca_file", ca_file)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
            .build()
            .map_err(TlsError::Verifier)?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(config)
}
