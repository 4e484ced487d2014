//! Nomad's `tls { ... }` block as plain, checked settings. `config` owns them so that
//! `tls` (which builds rustls configurations from them) points down at `config`, never back.

use std::path::PathBuf;

use super::ConfigError;

/// The oldest protocol version accepted, from Nomad's `tls_min_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// TLS 1.2 or 1.3 (Nomad's default `tls12`; `tls10`/`tls11` also land here: rustls
    /// speaks nothing older than 1.2).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl MinVersion {
    /// Nomad's spelling: `tls10`, `tls11`, `tls12`, `tls13`.
    pub fn parse(s: &str) -> Option<MinVersion> {
        match s {
            "tls10" | "tls11" | "tls12" => Some(MinVersion::Tls12),
            "tls13" => Some(MinVersion::Tls13),
            _ => None,
        }
    }
}

/// The agent's `tls { ... }` block, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// The HTTP API (TCP listener) speaks HTTPS only, and outbound calls to other agents'
    /// HTTP APIs use HTTPS.
    pub http: bool,
    /// Cluster RPC is to use TLS (stored; there is no RPC yet).
    pub rpc: bool,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub verify_server_hostname: bool,
    pub verify_https_client: bool,
    pub min_version: MinVersion,
}

impl TlsSettings {
    /// Whether any TLS is on (the certificate files must then load at start).
    pub fn enabled(&self) -> bool {
        self.http || self.rpc
    }

    /// The checks Nomad makes at start: TLS needs a certificate and key, and client
    /// verification needs the CA to verify against.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.cert_file.is_none() || self.key_file.is_none() {
            return Err(ConfigError::Invalid(
                "tls: cert_file and key_file are required when tls.http or tls.rpc is on".into(),
            ));
        }
        if (self.verify_https_client || self.verify_server_hostname) && self.ca_file.is_none() {
            return Err(ConfigError::Invalid(
                "tls: ca_file is required with verify_https_client or verify_server_hostname"
                    .into(),
            ));
        }
        Ok(())
    }
}
