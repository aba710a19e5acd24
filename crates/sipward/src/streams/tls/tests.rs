//! Handshakes between the built configurations over in-memory pipes, with certificates
//! made by `sipward cert`'s generator.

use super::*;
use crate::cert::TestCa;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A directory of PEM files: a CA, a server, a client, an expired certificate and one from
/// another CA.
pub(crate) struct Fixture {
    pub dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Fixture {
    pub(crate) fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sipward-tls-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let ca = TestCa::generate(10).unwrap_or_else(|e| panic!("CA: {e}"));
        let other =
            TestCa::generate_named("some other CA", 10).unwrap_or_else(|e| panic!("CA: {e}"));
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
        };
        write("ca.crt", &ca.cert_pem);
        write("other-ca.crt", &other.cert_pem);
        let now = OffsetDateTime::now_utc();
        let issue =
            |ca: &TestCa, n: &[&str], from: OffsetDateTime, to: OffsetDateTime, file: &str| {
                let issued = ca
                    .issue_between(&names(n), from, to)
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                write(&format!("{file}.crt"), &issued.cert_pem);
                write(&format!("{file}.key"), &issued.key_pem);
            };
        let day = Duration::from_secs(86_400);
        issue(
            &ca,
            &["sip.example.test", "127.0.0.1", "::1"],
            now - day,
            now + day,
            "server",
        );
        issue(&ca, &["phone.example.test"], now - day, now + day, "client");
        issue(
            &ca,
            &["sip.example.test"],
            now - 3 * day,
            now - day,
            "expired",
        );
        issue(
            &other,
            &["sip.example.test"],
            now - day,
            now + day,
            "stranger",
        );
        Self { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The settings of an interface using `who`.crt/key and this CA.
    pub(crate) fn settings(&self, who: &str, verify_client: VerifyClient) -> TlsSettings {
        TlsSettings {
            certificate: self.path(&format!("{who}.crt")),
            private_key: self.path(&format!("{who}.key")),
            ca: Some(self.path("ca.crt")),
            verify_client,
        }
    }

    pub(crate) fn material(&self, who: &str, verify_client: VerifyClient) -> TlsMaterial {
        build(&self.settings(who, verify_client), SystemTime::now())
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

fn client_of(material: &TlsMaterial) -> Arc<ClientConfig> {
    material
        .client
        .clone()
        .unwrap_or_else(|| panic!("no client configuration"))
}

/// A client configuration trusting the fixture's CA and presenting no certificate.
fn anonymous_client(fixture: &Fixture) -> Arc<ClientConfig> {
    let roots = load_roots(&fixture.path("ca.crt")).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// What each side saw of one handshake, then an exchange of one message each way.
pub(crate) struct Outcome {
    pub server: Result<
        (
            Option<rustls::ProtocolVersion>,
            Option<rustls::HandshakeKind>,
            bool,
        ),
        String,
    >,
    pub client: Result<
        (
            Option<rustls::ProtocolVersion>,
            Option<rustls::HandshakeKind>,
        ),
        String,
    >,
}

pub(crate) async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
) -> Outcome {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server);
    let connector = TlsConnector::from(client);
    let name = server_name(name).unwrap_or_else(|e| panic!("{e}"));
    let server_side = async move {
        let mut tls = acceptor.accept(a).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        Ok((
            conn.protocol_version(),
            conn.handshake_kind(),
            conn.peer_certificates().is_some(),
        ))
    };
    let client_side = async move {
        let mut tls = connector
            .connect(name, b)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        Ok((conn.protocol_version(), conn.handshake_kind()))
    };
    let (server, client) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(server_side, client_side)
    })
    .await
    .unwrap_or_else(|_| panic!("handshake hung"));
    Outcome { server, client }
}

#[test]
fn offers_exactly_tls_1_3_and_1_2() {
    let versions: Vec<_> = PROTOCOL_VERSIONS.iter().map(|v| v.version).collect();
    assert_eq!(
        versions,
        vec![
            rustls::ProtocolVersion::TLSv1_3,
            rustls::ProtocolVersion::TLSv1_2
        ]
    );
}

#[tokio::test]
async fn server_with_ip_and_dns_sans_is_verified_by_either_name_and_speaks_tls_1_3() {
    let f = Fixture::new("names");
    let server = f.material("server", VerifyClient::None);
    let client = f.material("client", VerifyClient::None);
    for name in ["sip.example.test", "127.0.0.1", "::1"] {
        let o = handshake(server.server.clone(), client_of(&client), name).await;
        assert_eq!(
            o.client.as_ref().map(|c| c.0),
            Ok(Some(rustls::ProtocolVersion::TLSv1_3)),
            "{name}"
        );
        assert!(o.server.is_ok(), "{name}: {:?}", o.server);
    }
}

#[tokio::test]
async fn a_name_the_certificate_does_not_carry_is_refused() {
    let f = Fixture::new("mismatch");
    let server = f.material("server", VerifyClient::None);
    let client = f.material("client", VerifyClient::None);
    for name in ["other.example.test", "127.0.0.2"] {
        let o = handshake(server.server.clone(), client_of(&client), name).await;
        let err = o.client.err().unwrap_or_default();
        assert!(err.contains("not valid for name"), "{name}: {err}");
    }
}

#[tokio::test]
async fn a_client_limited_to_tls_1_2_is_served_tls_1_2() {
    let f = Fixture::new("tls12");
    let server = f.material("server", VerifyClient::None);
    let roots = load_roots(&f.path("ca.crt")).unwrap_or_else(|e| panic!("{e}"));
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    let o = handshake(server.server.clone(), Arc::new(client), "sip.example.test").await;
    assert_eq!(
        o.client.map(|c| c.0),
        Ok(Some(rustls::ProtocolVersion::TLSv1_2))
    );
}

/// A ClientHello offering at most TLS 1.1 (no supported_versions extension), as an old
/// phone would send it.
fn tls_1_1_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend([7u8; 32]);
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    body.extend([0x01, 0x00]); // null compression
                               // signature_algorithms (rsa_pkcs1_sha256), so the version is what is refused.
    body.extend([0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x01]);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend(u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(handshake.len()).unwrap_or(0).to_be_bytes());
    record.extend(handshake);
    record
}

#[test]
fn a_tls_1_1_client_hello_gets_a_protocol_version_alert() {
    let f = Fixture::new("tls11");
    let server = f.material("server", VerifyClient::None);
    let mut conn =
        rustls::ServerConnection::new(server.server.clone()).unwrap_or_else(|e| panic!("{e}"));
    let hello = tls_1_1_client_hello();
    let read = conn.read_tls(&mut hello.as_slice());
    assert_eq!(read.ok(), Some(hello.len()));
    let error = conn
        .process_new_packets()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("TLS 1.2") || error.contains("Tls12NotOffered"),
        "{error}"
    );
    let mut out = Vec::new();
    let _ = conn.write_tls(&mut out);
    // Alert record: fatal (2), protocol_version (70).
    assert_eq!(out.first().copied(), Some(0x15), "{out:02x?}");
    assert_eq!(out.get(5..7), Some(&[2u8, 70][..]), "{out:02x?}");
}

#[tokio::test]
async fn verify_client_none_does_not_ask_for_a_certificate() {
    let f = Fixture::new("vc-none");
    let server = f.material("server", VerifyClient::None);
    let client = f.material("client", VerifyClient::None);
    let o = handshake(
        server.server.clone(),
        client_of(&client),
        "sip.example.test",
    )
    .await;
    assert_eq!(
        o.server.map(|s| s.2),
        Ok(false),
        "no client certificate was asked for"
    );
}

#[tokio::test]
async fn verify_client_optional_takes_a_certificate_or_none_but_not_a_strangers() {
    let f = Fixture::new("vc-optional");
    let server = f.material("server", VerifyClient::Optional);
    let with = handshake(
        server.server.clone(),
        client_of(&f.material("client", VerifyClient::None)),
        "sip.example.test",
    )
    .await;
    assert_eq!(with.server.map(|s| s.2), Ok(true));
    let without = handshake(
        server.server.clone(),
        anonymous_client(&f),
        "sip.example.test",
    )
    .await;
    assert_eq!(without.server.map(|s| s.2), Ok(false));
    let stranger = handshake(
        server.server.clone(),
        client_of(&f.material("stranger", VerifyClient::None)),
        "sip.example.test",
    )
    .await;
    let err = stranger.server.err().unwrap_or_default();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn verify_client_require_refuses_no_certificate_an_unknown_ca_and_an_expired_one() {
    let f = Fixture::new("vc-require");
    let server = f.material("server", VerifyClient::Require);
    let ok = handshake(
        server.server.clone(),
        client_of(&f.material("client", VerifyClient::None)),
        "sip.example.test",
    )
    .await;
    assert_eq!(ok.server.map(|s| s.2), Ok(true));
    let without = handshake(
        server.server.clone(),
        anonymous_client(&f),
        "sip.example.test",
    )
    .await;
    let err = without.server.err().unwrap_or_default();
    assert!(err.contains("no certificates"), "{err}");
    let stranger = handshake(
        server.server.clone(),
        client_of(&f.material("stranger", VerifyClient::None)),
        "sip.example.test",
    )
    .await;
    let err = stranger.server.err().unwrap_or_default();
    assert!(err.contains("UnknownIssuer"), "{err}");
    let expired_material = build(
        &f.settings("expired", VerifyClient::None),
        SystemTime::now(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let expired = handshake(
        server.server.clone(),
        client_of(&expired_material),
        "sip.example.test",
    )
    .await;
    let err = expired.server.err().unwrap_or_default();
    assert!(err.contains("expired"), "{err}");
}

#[tokio::test]
async fn a_server_with_an_expired_or_unknown_certificate_is_refused() {
    let f = Fixture::new("server-bad");
    let client = f.material("client", VerifyClient::None);
    let expired = build(
        &f.settings("expired", VerifyClient::None),
        SystemTime::now(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let o = handshake(
        expired.server.clone(),
        client_of(&client),
        "sip.example.test",
    )
    .await;
    let err = o.client.err().unwrap_or_default();
    assert!(err.contains("expired"), "{err}");
    let stranger = f.material("stranger", VerifyClient::None);
    let o = handshake(
        stranger.server.clone(),
        client_of(&client),
        "sip.example.test",
    )
    .await;
    let err = o.client.err().unwrap_or_default();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn a_second_handshake_is_resumed_over_tls_1_3_and_1_2() {
    let f = Fixture::new("resume");
    let server = f.material("server", VerifyClient::Optional);
    let client = client_of(&f.material("client", VerifyClient::None));
    let first = handshake(server.server.clone(), client.clone(), "sip.example.test").await;
    assert_eq!(
        first.client.map(|c| c.1),
        Ok(Some(rustls::HandshakeKind::Full))
    );
    let second = handshake(server.server.clone(), client, "sip.example.test").await;
    assert_eq!(
        second.client.map(|c| c.1),
        Ok(Some(rustls::HandshakeKind::Resumed))
    );
    assert_eq!(
        second.server.map(|s| s.1),
        Ok(Some(rustls::HandshakeKind::Resumed))
    );

    let roots = load_roots(&f.path("ca.crt")).unwrap_or_else(|e| panic!("{e}"));
    let tls12 = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap_or_else(|e| panic!("{e}"))
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let first = handshake(server.server.clone(), tls12.clone(), "sip.example.test").await;
    assert_eq!(
        first.client.map(|c| c.1),
        Ok(Some(rustls::HandshakeKind::Full))
    );
    let second = handshake(server.server.clone(), tls12, "sip.example.test").await;
    assert_eq!(
        second.client.map(|c| c.1),
        Ok(Some(rustls::HandshakeKind::Resumed))
    );
}

#[test]
fn errors_name_the_file_and_what_is_wrong() {
    let f = Fixture::new("errors");
    let base = f.settings("server", VerifyClient::None);
    let err = |s: TlsSettings| {
        build(&s, SystemTime::now())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };

    let missing = f.path("nope.crt");
    let e = err(TlsSettings {
        certificate: missing.clone(),
        ..base.clone()
    });
    assert!(
        e.starts_with(&format!("{}: cannot read", missing.display())),
        "{e}"
    );

    // A key file given as the certificate: no certificate in it.
    let e = err(TlsSettings {
        certificate: f.path("server.key"),
        ..base.clone()
    });
    assert!(
        e.starts_with(&format!(
            "{}: no certificate in it",
            f.path("server.key").display()
        )),
        "{e}"
    );

    let e = err(TlsSettings {
        private_key: f.path("server.crt"),
        ..base.clone()
    });
    assert!(
        e.starts_with(&format!(
            "{}: no private key in it",
            f.path("server.crt").display()
        )),
        "{e}"
    );

    let e = err(TlsSettings {
        private_key: f.path("client.key"),
        ..base.clone()
    });
    assert!(
        e.starts_with(&format!(
            "{}: the key does not match the certificate in",
            f.path("client.key").display()
        )),
        "{e}"
    );

    let e = err(TlsSettings {
        ca: None,
        verify_client: VerifyClient::Require,
        ..base.clone()
    });
    assert!(e.contains("no `ca`"), "{e}");

    // A broken base64 body: the line of the block is named.
    let broken = f.path("broken.crt");
    let text = std::fs::read_to_string(f.path("server.crt")).unwrap_or_default();
    std::fs::write(
        &broken,
        format!("# comment\n\n{}", text.replacen("MII", "M*I", 1)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = err(TlsSettings {
        certificate: broken.clone(),
        ..base.clone()
    });
    assert!(
        e.starts_with(&format!("{}: line ", broken.display())),
        "{e}"
    );
}

#[test]
fn an_expired_certificate_loads_with_a_warning() {
    let f = Fixture::new("expired-warn");
    let m = build(
        &f.settings("expired", VerifyClient::None),
        SystemTime::now(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    assert!(m.warnings[0].contains("expired"), "{:?}", m.warnings);
    assert!(f.material("server", VerifyClient::None).warnings.is_empty());
}

#[test]
fn not_after_reads_the_validity_end() {
    let ca = TestCa::generate(1).unwrap_or_else(|e| panic!("{e}"));
    let end = OffsetDateTime::from_unix_timestamp(4_102_444_800).unwrap_or_else(|e| panic!("{e}")); // 2100-01-01, GeneralizedTime
    let mid = OffsetDateTime::from_unix_timestamp(1_893_456_000).unwrap_or_else(|e| panic!("{e}")); // 2030-01-01, UTCTime
    for (when, secs) in [(end, 4_102_444_800u64), (mid, 1_893_456_000)] {
        let issued = ca
            .issue_between(&names(&["a.test"]), mid - Duration::from_secs(10), when)
            .unwrap_or_else(|e| panic!("{e}"));
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            not_after(&der),
            UNIX_EPOCH.checked_add(Duration::from_secs(secs))
        );
    }
    assert_eq!(
        not_after(&CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])),
        None
    );
}

#[tokio::test]
async fn a_reload_rotates_the_certificate_and_a_bad_file_keeps_the_old_one() {
    let f = Fixture::new("reload");
    let holder = TlsHolder::new(f.settings("server", VerifyClient::None), SystemTime::now())
        .unwrap_or_else(|e| panic!("{e}"));
    let client = client_of(&f.material("client", VerifyClient::None));
    let before = holder.current();
    let o = handshake(before.server.clone(), client.clone(), "127.0.0.1").await;
    assert!(o.client.is_ok());

    // A key that does not match: refused, the old configuration stays.
    let bad = TlsSettings {
        private_key: f.path("client.key"),
        ..f.settings("server", VerifyClient::None)
    };
    let e = holder
        .reload(bad, SystemTime::now())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.starts_with(&f.path("client.key").display().to_string()),
        "{e}"
    );
    assert!(Arc::ptr_eq(&before, &holder.current()));
    assert_eq!(holder.settings(), f.settings("server", VerifyClient::None));

    // Rotated to a certificate for another name: new handshakes see it.
    let rotated = holder.reload(f.settings("client", VerifyClient::None), SystemTime::now());
    assert_eq!(rotated, Ok(vec![]));
    let o = handshake(holder.current().server.clone(), client.clone(), "127.0.0.1").await;
    assert!(o
        .client
        .err()
        .unwrap_or_default()
        .contains("not valid for name"));
    let o = handshake(
        holder.current().server.clone(),
        client,
        "phone.example.test",
    )
    .await;
    assert!(o.client.is_ok(), "{:?}", o.client);
}
