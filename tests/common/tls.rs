//! A throwaway certificate authority made at run time with rcgen, and the OpenSSL
//! acceptor the TLS mock upstream uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openssl::pkey::PKey;
use openssl::ssl::{AlpnError, SslAcceptor, SslMethod};
use openssl::x509::X509;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// A test CA whose certificate is written to a temp file, so configs can trust it.
/// The files live as long as the `TestCa`.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: TempDir,
    ca_pem_path: PathBuf,
}

/// A leaf certificate issued by a [`TestCa`], as PEM text and as files.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Tollgate Test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let dir = tempfile::tempdir().expect("temp dir for CA");
        let ca_pem_path = dir.path().join("ca.pem");
        std::fs::write(&ca_pem_path, cert.pem()).expect("write CA pem");
        TestCa {
            cert,
            key,
            dir,
            ca_pem_path,
        }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// File holding the CA certificate (PEM), e.g. for an upstream `ca_file` setting.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA,
    /// written to `<name>.pem` / `<name>.key` next to the CA file.
    pub fn issue(&self, file_stem: &str, names: &[&str]) -> IssuedCert {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        let cert_path = self.dir.path().join(format!("{file_stem}.pem"));
        let key_path = self.dir.path().join(format!("{file_stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write leaf cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write leaf key");
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path,
            key_path,
        }
    }

    /// A certificate for `localhost` and `127.0.0.1`.
    pub fn issue_localhost(&self) -> IssuedCert {
        self.issue("localhost", &["localhost", "127.0.0.1"])
    }

    /// A reqwest client that trusts this CA (and only the built-in roots besides).
    pub fn reqwest_client(&self) -> reqwest::Client {
        let root =
            reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).expect("CA for reqwest");
        reqwest::Client::builder()
            .add_root_certificate(root)
            .build()
            .expect("reqwest client")
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// An OpenSSL acceptor serving `cert`, negotiating HTTP/1.1 when the client uses ALPN.
pub fn acceptor_for(cert: &IssuedCert) -> Arc<SslAcceptor> {
    let mut builder =
        SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("SslAcceptor");
    let x509 = X509::from_pem(cert.cert_pem.as_bytes()).expect("parse leaf cert");
    let key = PKey::private_key_from_pem(cert.key_pem.as_bytes()).expect("parse leaf key");
    builder.set_certificate(&x509).expect("set certificate");
    builder.set_private_key(&key).expect("set private key");
    builder
        .check_private_key()
        .expect("key matches certificate");
    builder.set_alpn_select_callback(|_, offered| {
        openssl::ssl::select_next_proto(b"\x08http/1.1", offered).ok_or(AlpnError::NOACK)
    });
    Arc::new(builder.build())
}
