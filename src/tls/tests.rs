//! Unit tests of the TLS configurations: certificates made here with rcgen, handshakes run in
//! memory between our client and server configurations.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::client::CliTls;
use super::*;
use crate::http::TlsAcceptor;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A leaf certificate for `names`: (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "nomadlet-tls-unit-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Settings with `tls.http` on, files for a server certificate of `names` from `ca`.
fn settings(dir: &Path, ca: &Ca, names: &[&str]) -> TlsSettings {
    let (cert, key) = ca.leaf(names);
    TlsSettings {
        http: true,
        ca_file: Some(write(dir, "ca.pem", &ca.issuer.pem())),
        cert_file: Some(write(dir, "cert.pem", &cert)),
        key_file: Some(write(dir, "key.pem", &key)),
        ..TlsSettings::default()
    }
}

/// Run a handshake in memory; the certificate the client saw, or the first error.
fn handshake(
    client: Arc<ClientConfig>,
    name: &str,
    server: Arc<ServerConfig>,
) -> Result<Vec<u8>, rustls::Error> {
    let mut c = ClientConnection::new(client, ServerName::try_from(name.to_string()).unwrap())?;
    let mut s = ServerConnection::new(server)?;
    for _ in 0..20 {
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
        }
    }
    assert!(!c.is_handshaking(), "handshake did not finish");
    Ok(c.peer_certificates().unwrap()[0].to_vec())
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn reload_serves_new_certificates_to_new_connections_and_keeps_them_on_error() {
    let dir = tempdir();
    let ca = Ca::new("reload CA");
    let s = settings(&dir, &ca, &["server.global.nomad", "127.0.0.1"]);
    let tls = AgentTls::load(&s, "global").unwrap();
    let first = std::fs::read_to_string(s.cert_file.as_ref().unwrap()).unwrap();
    let client = tls.client_config().unwrap();
    let seen = handshake(client.clone(), "server.global.nomad", tls.server_config()).unwrap();
    assert_eq!(seen, der_of(&first));

    // Rotate: a new certificate and key under the same names.
    let (cert, key) = ca.leaf(&["server.global.nomad"]);
    write(&dir, "cert.pem", &cert);
    write(&dir, "key.pem", &key);
    let old_config = tls.server_config();
    tls.reload().unwrap();
    let seen = handshake(client.clone(), "server.global.nomad", tls.server_config()).unwrap();
    assert_eq!(seen, der_of(&cert));
    assert_ne!(seen, der_of(&first));
    // A connection that began before the reload keeps the configuration it was given.
    let seen = handshake(client, "server.global.nomad", old_config).unwrap();
    assert_eq!(seen, der_of(&first));

    // A broken key: the reload fails and the rotated certificate stays in use.
    write(&dir, "key.pem", "not a key");
    let err = tls.reload().unwrap_err();
    assert!(err.to_string().contains("key_file"), "{err}");
    let seen = handshake(
        tls.client_config().unwrap(),
        "server.global.nomad",
        tls.server_config(),
    )
    .unwrap();
    assert_eq!(seen, der_of(&cert));

    // Turning TLS off is a restart, not a reload.
    let off = TlsSettings {
        http: false,
        ..tls.settings()
    };
    assert!(matches!(tls.reload_with(&off), Err(TlsError::Restart)));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn verify_server_hostname_checks_nomads_role_names() {
    let dir = tempdir();
    let ca = Ca::new("names CA");
    let mut s = settings(&dir, &ca, &["server.global.nomad"]);
    s.verify_server_hostname = true;
    let named = AgentTls::load(&s, "global").unwrap();
    let client = named.client_config().unwrap();
    // The server's own name and the client role name both pass.
    handshake(client.clone(), "server.global.nomad", named.server_config()).unwrap();
    let (cert, key) = ca.leaf(&["client.global.nomad"]);
    let mut c = s.clone();
    c.cert_file = Some(write(&dir, "client.pem", &cert));
    c.key_file = Some(write(&dir, "client-key.pem", &key));
    let client_role = AgentTls::load(&c, "global").unwrap();
    handshake(
        client.clone(),
        "server.global.nomad",
        client_role.server_config(),
    )
    .unwrap();

    // A certificate of the same CA for another name, or another region, fails the check...
    for names in [&["localhost"][..], &["server.eu.nomad"][..]] {
        let (cert, key) = ca.leaf(names);
        let mut other = s.clone();
        other.cert_file = Some(write(&dir, "other.pem", &cert));
        other.key_file = Some(write(&dir, "other-key.pem", &key));
        let other = AgentTls::load(&other, "global").unwrap();
        let err =
            handshake(client.clone(), "server.global.nomad", other.server_config()).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            ),
            "{names:?}: {err}"
        );
        // ... and passes without verify_server_hostname (the chain alone is checked).
        let chain_only = TlsSettings {
            verify_server_hostname: false,
            ..s.clone()
        };
        let lax = client::agent_client_config(&chain_only, "global").unwrap();
        handshake(Arc::new(lax), "server.global.nomad", other.server_config()).unwrap();
    }

    // A certificate from another CA fails either way.
    let stranger = Ca::new("stranger CA");
    let foreign = AgentTls::load(
        &settings(&tempdir(), &stranger, &["server.global.nomad"]),
        "global",
    )
    .unwrap();
    let err = handshake(client, "server.global.nomad", foreign.server_config()).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{err}"
    );
    let chain_only = TlsSettings {
        verify_server_hostname: false,
        ..s
    };
    let lax = client::agent_client_config(&chain_only, "global").unwrap();
    assert!(handshake(
        Arc::new(lax),
        "server.global.nomad",
        foreign.server_config()
    )
    .is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn verify_https_client_requires_a_certificate_from_the_ca() {
    let dir = tempdir();
    let ca = Ca::new("mtls CA");
    let mut s = settings(&dir, &ca, &["server.global.nomad"]);
    s.verify_https_client = true;
    let server = AgentTls::load(&s, "global").unwrap();
    // The agent's own client configuration presents its certificate: accepted.
    handshake(
        server.client_config().unwrap(),
        "server.global.nomad",
        server.server_config(),
    )
    .unwrap();
    // A CLI without a client certificate is refused by the server.
    let cli = CliTls {
        ca_cert: s.ca_file.clone(),
        ..CliTls::default()
    };
    let err = handshake(
        Arc::new(cli.client_config().unwrap()),
        "server.global.nomad",
        server.server_config(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::NoCertificatesPresented | rustls::Error::AlertReceived(_)
        ),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cli_settings_verify_the_name_dialed_unless_told_to_skip() {
    let dir = tempdir();
    let ca = Ca::new("cli CA");
    let s = settings(&dir, &ca, &["localhost", "127.0.0.1"]);
    let server = AgentTls::load(&s, "global").unwrap();
    let cli = CliTls {
        ca_cert: s.ca_file.clone(),
        ..CliTls::default()
    };
    let config = Arc::new(cli.client_config().unwrap());
    handshake(config.clone(), "localhost", server.server_config()).unwrap();
    handshake(config.clone(), "127.0.0.1", server.server_config()).unwrap();
    assert!(handshake(config, "server.global.nomad", server.server_config()).is_err());
    let skip = CliTls {
        skip_verify: true,
        ..CliTls::default()
    };
    let config = Arc::new(skip.client_config().unwrap());
    handshake(config, "anything.example", server.server_config()).unwrap();
    let half = CliTls {
        ca_cert: s.ca_file.clone(),
        client_cert: s.cert_file.clone(),
        ..CliTls::default()
    };
    assert!(matches!(half.client_config(), Err(TlsError::Missing(_))));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn settings_are_checked_and_files_bounded() {
    let dir = tempdir();
    let ca = Ca::new("check CA");
    let good = settings(&dir, &ca, &["server.global.nomad"]);
    assert!(good.validate().is_ok());
    let no_key = TlsSettings {
        key_file: None,
        ..good.clone()
    };
    assert!(no_key.validate().is_err());
    let no_ca = TlsSettings {
        ca_file: None,
        verify_https_client: true,
        ..good.clone()
    };
    assert!(no_ca.validate().is_err());
    assert!(TlsSettings::default().validate().is_ok());
    let big = dir.join("big.pem");
    std::fs::write(&big, vec![b'a'; MAX_PEM_BYTES as usize + 1]).unwrap();
    let err = load_certs("cert_file", &big).unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    let missing = load_key("key_file", &dir.join("nope.pem")).unwrap_err();
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    let empty = write(&dir, "empty.pem", "");
    assert!(load_certs("cert_file", &empty).is_err());
    assert_eq!(MinVersion::parse("tls13"), Some(MinVersion::Tls13));
    assert_eq!(MinVersion::parse("tls10"), Some(MinVersion::Tls12));
    assert_eq!(MinVersion::parse("ssl3"), None);
    let _ = std::fs::remove_dir_all(dir);
}

/// A one-connection TLS server on loopback for [`AgentTls::dial_rpc`]: it accepts, handshakes
/// (asking for a client certificate from `ca`), runs `serve` on the session, and closes.
fn tls_peer(
    settings: &TlsSettings,
    serve: impl FnOnce(&mut rustls::StreamOwned<ServerConnection, std::net::TcpStream>) + Send + 'static,
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let mutual = TlsSettings {
        verify_https_client: true,
        ..settings.clone()
    };
    let config = Arc::new(server::server_config(&mutual).unwrap());
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let join = std::thread::spawn(move || {
        let (tcp, _) = l.accept().unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let conn = ServerConnection::new(config).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        serve(&mut s);
    });
    (addr, join)
}

#[test]
fn rpc_dials_speak_mutual_tls_and_see_what_rustls_holds() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let dir = tempdir();
    let ca = Ca::new("rpc ca");
    let mut s = settings(&dir, &ca, &["server.global.nomad"]);
    s.http = false;
    s.rpc = true;
    s.verify_server_hostname = true;
    let tls = AgentTls::load(&s, "global").unwrap();

    // A request and its reply over the dialed session, the reply read by the proxy's reader
    // (session tickets arrive first: reads with no plaintext in them are retried).
    let (addr, peer) = tls_peer(&s, |s| {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.starts_with(b"GET /v1/x HTTP/1.1\r\n"));
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        s.flush().unwrap();
    });
    let mut stream = tls.dial_rpc(&addr, Duration::from_secs(5)).unwrap();
    assert!(matches!(stream, crate::http::RawStream::Tls(_)));
    let deadline = Instant::now() + Duration::from_secs(5);
    crate::http::outbound::write_request(&mut stream, "GET", "/v1/x", "h", &[], b"", deadline)
        .unwrap();
    let r = crate::http::outbound::read_reply(stream, deadline, false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.read_body(10, deadline).unwrap(), b"ok");
    peer.join().unwrap();

    // Plaintext rustls holds (read from the socket, not yet by us) and a close_notify make
    // an idle stream not quiet, though its socket has nothing more to read.
    let (addr, peer) = tls_peer(&s, |s| {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        s.write_all(b"xy").unwrap();
        s.flush().unwrap();
        s.read_exact(&mut b).unwrap();
        s.conn.send_close_notify();
        s.flush().unwrap();
        // Held open until the client is done looking.
        let _ = s.read(&mut b);
    });
    let mut stream = tls.dial_rpc(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"1").unwrap();
    let mut one = [0u8; 1];
    let read_one = |stream: &mut crate::http::RawStream, one: &mut [u8; 1]| loop {
        match stream.read(one) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.unwrap(),
        }
    };
    assert_eq!(read_one(&mut stream, &mut one), 1);
    assert_eq!(&one, b"x");
    assert!(stream.has_buffered(), "the `y` is in rustls");
    assert!(!stream.is_quiet());
    assert_eq!(read_one(&mut stream, &mut one), 1);
    assert!(!stream.has_buffered());
    stream.write_all(b"2").unwrap();
    let start = Instant::now();
    while stream.is_quiet() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "close_notify unseen"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        read_one(&mut stream, &mut one),
        0,
        "close_notify reads as the end"
    );
    assert!(stream.has_buffered(), "and stays seen");
    drop(stream);
    peer.join().unwrap();

    // A peer that wants a certificate from another CA: the first read fails, it never hangs.
    let other = Ca::new("other ca");
    let other_dir = tempdir();
    let os = settings(&other_dir, &other, &["server.global.nomad"]);
    let os = TlsSettings { rpc: true, ..os };
    let (addr, peer) = tls_peer(&os, |s| {
        let mut b = [0u8; 1];
        let _ = s.read(&mut b);
    });
    let foreign = AgentTls::load(
        &TlsSettings {
            ca_file: os.ca_file.clone(),
            ..s.clone()
        },
        "global",
    )
    .unwrap();
    let failed = foreign
        .dial_rpc(&addr, Duration::from_secs(5))
        .and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
            let mut b = [0u8; 16];
            loop {
                match stream.read(&mut b) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                    other => return other.map(|_| ()),
                }
            }
        });
    assert!(
        failed.is_err(),
        "a peer that refused our certificate answered"
    );
    peer.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(other_dir);
}
