//! Config mistakes: each is reported with its key path (and line), all at once.

mod common;

use std::path::Path;

use common::{config, ec_pair, p256_pair, problems_in, rsa_pair};
use openssl::nid::Nid;
use serde_saphyr::Spanned;
use tollgate_auth::AuthPlugin;

const SECRET: &str = "hs256-test-secret-0123456789abcdefghijkl";

fn problems(yaml: &str) -> Vec<String> {
    problems_in(yaml, Path::new("."))
}

fn has(problems: &[String], wanted: &str) {
    assert!(
        problems.iter().any(|p| p.contains(wanted)),
        "no problem like {wanted:?} in {problems:#?}"
    );
}

#[test]
fn key_mistakes_are_all_reported_with_their_paths() {
    let p = problems(
        r#"
keys:
  - id: a
    secret: sk-aaaaaaaaaaaaaaaaaaaa
  - id: a
    secret: sk-bbbbbbbbbbbbbbbbbbbb
  - id: c
    sha256: "abc"
  - id: d
  - id: e
    secret: sk-eeeeeeeeeeeeeeeeeeeeee
    sha256: "0000000000000000000000000000000000000000000000000000000000000000"
  - id: f
    secret: sk-ffffffffffffffffffff
    models: ["[oops"]
  - id: g
    secret: sk-gggggggggggggggggggg
    expires: next tuesday
  - id: h
    secret: sk-aaaaaaaaaaaaaaaaaaaa
  - id: ""
    secret: sk-iiiiiiiiiiiiiiiiiiii
  - id: j
    secret: sk-jjjjjjjjjjjjjjjjjjjj
    models: []
  - id: k
    secret: ""
"#,
    );
    has(
        &p,
        "auth.keys[1].id: duplicate id `a` (also auth.keys[0].id)",
    );
    has(&p, "auth.keys[2].sha256: must be 64 hex digits");
    has(&p, "auth.keys[3]: needs `secret` or `sha256`");
    has(
        &p,
        "auth.keys[4]: give either `secret` or `sha256`, not both",
    );
    has(&p, "auth.keys[5].models: bad glob `[oops`");
    has(&p, "auth.keys[6].expires: not an RFC 3339 timestamp");
    has(&p, "auth.keys[7]: the same key as auth.keys[0] (`a`)");
    has(&p, "auth.keys[8].id: must not be empty");
    has(&p, "auth.keys[9].models: lists no model");
    has(&p, "auth.keys[10].secret: must not be empty");
    assert_eq!(p.len(), 10, "{p:#?}");
}

#[test]
fn problems_carry_their_line() {
    let yaml = "keys:\n  - id: a\n    sha256: nothex\n";
    let problems = AuthPlugin::build(&config(yaml), Path::new("."))
        .err()
        .unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "auth.keys[0].sha256");
    assert_eq!(problems[0].line, 3);
    assert_eq!(
        problems[0].to_string(),
        "3:13: auth.keys[0].sha256: must be 64 hex digits"
    );
}

#[test]
fn unknown_keys_and_algorithms_are_parse_errors() {
    let err = |yaml: &str| serde_saphyr::from_str::<tollgate_auth::AuthConfig>(yaml).is_err();
    assert!(err("keys:\n  - id: a\n    secret: x\n    colour: blue\n"));
    assert!(err("jwt:\n  algorithms: [none]\n"));
    assert!(err("jwt:\n  algorithms: [HS512]\n"));
    assert!(err(
        "jwt:\n  algorithms: [HS256]\n  claims:\n    email: mail\n"
    ));
    assert!(
        err("jwt:\n  hs256_secret: x\n"),
        "algorithms has no default"
    );
    assert!(err("verbose: true\n"));
}

#[test]
fn an_empty_section_is_a_problem() {
    has(
        &problems("required: true\n"),
        "auth: configures neither `keys` nor `jwt`",
    );
}

#[test]
fn jwt_mistakes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa_private, rsa_public) = rsa_pair();
    let (_, ec_public) = p256_pair();
    let (_, p384_public) = ec_pair(Nid::SECP384R1);
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
    write("rsa.pem", &rsa_public);
    write("rsa-private.pem", &rsa_private);
    write("ec.pem", &ec_public);
    write("p384.pem", &p384_public);
    write(
        "garbage.pem",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    );
    write("bad.json", b"{\"keys\": 3}");
    write(
        "oct.json",
        br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
    );
    let p = |yaml: &str| problems_in(yaml, dir.path());

    has(
        &p("jwt:\n  algorithms: []\n"),
        "auth.jwt.algorithms: lists no algorithm",
    );
    has(
        &p("jwt:\n  algorithms: [HS256, RS256]\n"),
        "auth.jwt.algorithms: HS256 has no key",
    );
    has(
        &p("jwt:\n  algorithms: [HS256, RS256]\n"),
        "auth.jwt.algorithms: RS256 has no key",
    );
    has(
        &p("jwt:\n  algorithms: [HS256]\n  hs256_secret: short\n"),
        "auth.jwt.hs256_secret: must be at least 32 bytes",
    );
    has(
        &p(&format!(
            "jwt:\n  algorithms: [RS256]\n  public_key_file: rsa.pem\n  hs256_secret: {SECRET}\n"
        )),
        "auth.jwt.hs256_secret: HS256 is not in auth.jwt.algorithms",
    );
    has(
        &p("jwt:\n  algorithms: [ES256]\n  public_key_file: rsa.pem\n"),
        "auth.jwt.public_key_file: holds a key for RS256, which is not in auth.jwt.algorithms",
    );
    has(
        &p("jwt:\n  algorithms: [RS256]\n  public_key_file: missing.pem\n"),
        "auth.jwt.public_key_file: cannot read file `missing.pem`",
    );
    has(
        &p("jwt:\n  algorithms: [RS256]\n  public_key_file: rsa-private.pem\n"),
        "auth.jwt.public_key_file: holds a private key",
    );
    has(
        &p("jwt:\n  algorithms: [RS256]\n  public_key_file: garbage.pem\n"),
        "auth.jwt.public_key_file: not a PEM RSA or EC public key",
    );
    has(
        &p("jwt:\n  algorithms: [ES256]\n  public_key_file: p384.pem\n"),
        "auth.jwt.public_key_file: not a usable ES256 key",
    );
    has(
        &p("jwt:\n  algorithms: [RS256]\n  jwks_file: bad.json\n"),
        "auth.jwt.jwks_file: not a JWKS file",
    );
    has(
        &p("jwt:\n  algorithms: [RS256]\n  jwks_file: oct.json\n"),
        "auth.jwt.jwks_file: keys[0] is a symmetric key",
    );
    has(
        &p(
            "jwt:\n  algorithms: [ES256]\n  public_key_file: ec.pem\n  audience: []\n  issuer: \"\"\n",
        ),
        "auth.jwt.audience: must name at least one audience",
    );
    has(
        &p("jwt:\n  algorithms: [ES256]\n  public_key_file: ec.pem\n  issuer: \"\"\n"),
        "auth.jwt.issuer: must not be empty",
    );
    assert!(p("jwt:\n  algorithms: [ES256]\n  public_key_file: ec.pem\n").is_empty());
}

#[test]
fn key_files_are_found_relative_to_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (_, rsa_public) = rsa_pair();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/rsa.pem"), rsa_public).unwrap();
    assert!(
        problems_in(
            "jwt:\n  algorithms: [RS256]\n  public_key_file: keys/rsa.pem\n",
            dir.path()
        )
        .is_empty()
    );
}

#[test]
fn expand_secrets_rewrites_every_secret_with_its_path() {
    let mut c = config(
        "keys:\n  - id: a\n    secret: ${KEY_A}\n  - id: b\n    sha256: \"00\"\njwt:\n  algorithms: [HS256]\n  hs256_secret: ${JWT_SECRET}\n",
    );
    let mut seen = Vec::new();
    c.expand_secrets(|raw: &Spanned<String>, path: &str| {
        seen.push((path.to_owned(), raw.value.clone(), raw.referenced.line()));
        Some(format!("expanded-{}", raw.value.len()))
    });
    assert_eq!(
        seen,
        [
            ("auth.keys[0].secret".to_owned(), "${KEY_A}".to_owned(), 3),
            (
                "auth.jwt.hs256_secret".to_owned(),
                "${JWT_SECRET}".to_owned(),
                8
            ),
        ]
    );
    assert_eq!(
        c.keys[0].value.secret.as_ref().unwrap().value.expose(),
        "expanded-8"
    );
}
