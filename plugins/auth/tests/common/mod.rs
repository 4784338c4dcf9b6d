//! Shared helpers: config from YAML text, headers, and test keys made with OpenSSL.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::path::Path;

use http::{HeaderName, HeaderValue};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use tollgate_auth::{AuthConfig, AuthPlugin, ConfigProblem};
use tollgate_plugin::{HeaderMap, Principal, Rejection};

pub fn config(yaml: &str) -> AuthConfig {
    serde_saphyr::from_str(yaml).expect("test YAML parses")
}

pub fn build_in(yaml: &str, dir: &Path) -> Result<AuthPlugin, Vec<ConfigProblem>> {
    AuthPlugin::build(&config(yaml), dir)
}

pub fn build(yaml: &str) -> AuthPlugin {
    match build_in(yaml, Path::new(".")) {
        Ok(p) => p,
        Err(problems) => panic!("config has problems: {problems:?}"),
    }
}

/// The problems' `path: message` lines.
pub fn problems_in(yaml: &str, dir: &Path) -> Vec<String> {
    match build_in(yaml, dir) {
        Ok(_) => Vec::new(),
        Err(problems) => problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect(),
    }
}

pub fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_bytes(value).expect("header value"),
        );
    }
    h
}

pub fn bearer(token: &str) -> HeaderMap {
    headers(&[("authorization", format!("Bearer {token}").as_bytes())])
}

pub fn accepted(plugin: &AuthPlugin, h: &HeaderMap) -> Principal {
    match plugin.authenticate(h) {
        Ok(Some(p)) => p,
        other => panic!("expected a principal, got {other:?}"),
    }
}

pub fn refused(plugin: &AuthPlugin, h: &HeaderMap) -> Rejection {
    match plugin.authenticate(h) {
        Err(r) => {
            assert_eq!(r.status, 401, "{r:?}");
            assert_eq!(r.reason, "auth");
            r
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// An RSA key pair: (private PEM, public PEM).
pub fn rsa_pair() -> (Vec<u8>, Vec<u8>) {
    let rsa = Rsa::generate(2048).expect("RSA key");
    let pkey = PKey::from_rsa(rsa).expect("pkey");
    (
        pkey.private_key_to_pem_pkcs8().expect("private PEM"),
        pkey.public_key_to_pem().expect("public PEM"),
    )
}

/// An EC key pair on `curve`: (private PKCS#8 PEM, public PEM).
pub fn ec_pair(curve: Nid) -> (Vec<u8>, Vec<u8>) {
    let group = EcGroup::from_curve_name(curve).expect("curve");
    let ec = EcKey::generate(&group).expect("EC key");
    let pkey = PKey::from_ec_key(ec).expect("pkey");
    (
        pkey.private_key_to_pem_pkcs8().expect("private PEM"),
        pkey.public_key_to_pem().expect("public PEM"),
    )
}

pub fn p256_pair() -> (Vec<u8>, Vec<u8>) {
    ec_pair(Nid::X9_62_PRIME256V1)
}
