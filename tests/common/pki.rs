//! A test certificate authority (rcgen) and the certificate files it issues, in one directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A test CA and the files it issued, in one directory.
pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(tag: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("nomadlet test CA {tag}"));
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        let pki = Pki {
            dir: super::temp_dir(&format!("pki-{tag}")),
            ca,
        };
        std::fs::write(pki.ca_file(), pki.ca.pem()).expect("write ca");
        pki
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issue `<name>.pem` and `<name>-key.pem` for these SANs.
    pub fn issue(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &self.ca)
            .expect("sign");
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}
