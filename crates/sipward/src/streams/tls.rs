//! TLS for SIP over TLS (RFC 3261 §26.3, RFC 5922): an interface's certificate, key and
//! trusted CAs turned into a rustls server configuration (incoming connections) and a
//! client configuration (connections the gateway opens), on the aws-lc-rs provider with
//! TLS 1.2 and 1.3 only.
//!
//! The configurations are held in a [`TlsHolder`] so a reload rotates the certificate for
//! new handshakes while established connections keep theirs; a reload that cannot read a
//! file keeps what was there and says `file: what is wrong`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// TLS 1.2 and 1.3 only: rustls has no older version, and this list is the one place
/// that says which of its versions the gateway offers.
pub(crate) static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Sessions the server remembers for stateful resumption (TLS 1.2 session ids); TLS 1.3
/// resumes with stateless tickets.
const SERVER_SESSION_CACHE: usize = 4096;

/// Whether an incoming connection must present a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum VerifyClient {
    /// No certificate is asked for (phones).
    #[default]
    None,
    /// A certificate is asked for and, if presented, must chain to `ca`.
    Optional,
    /// A certificate chaining to `ca` is required (mutual TLS with a trunk or proxy).
    Require,
}

/// An interface's `tls = { ... }` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSettings {
    /// PEM: the interface's certificate first, then its intermediates.
    pub certificate: PathBuf,
    /// PEM: the private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// PEM: the CAs trusted for peers (servers the gateway connects to, and clients
    /// when `verify_client` asks for a certificate).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub verify_client: VerifyClient,
}

/// A file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsError {
    pub file: PathBuf,
    pub what: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.what)
    }
}

impl std::error::Error for TlsError {}

fn error(file: &Path, what: impl Into<String>) -> TlsError {
    TlsError {
        file: file.to_path_buf(),
        what: what.into(),
    }
}

/// The configurations built from one interface's settings.
pub(crate) struct TlsMaterial {
    pub server: Arc<ServerConfig>,
    /// `None` without `ca`: the gateway cannot verify a server it would connect to.
    pub client: Option<Arc<ClientConfig>>,
    /// Usable but worth telling (an expired certificate): `file: what`.
    pub warnings: Vec<String>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("client", &self.client.is_some())
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// The crypto provider, always aws-lc-rs, named here once.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The path that names the built-in test certificate (and, with `.key`, its key): what
/// the embedded default configuration's TLS service uses, so that `sipward run` needs no
/// file. FOR TESTING ONLY: its private key is public (it is in the source).
pub(crate) const BUILTIN_TEST_CERTIFICATE: &str = "builtin:sipward-test.crt";
pub(crate) const BUILTIN_TEST_KEY: &str = "builtin:sipward-test.key";
/// Made with `sipward cert --name sipward.test --ip 127.0.1.1 --ip 127.0.2.1 --days 3650`;
/// its CA (`test-tls/ca.crt`) is there for clients that want to verify it.
const BUILTIN_CERTIFICATE_PEM: &[u8] = include_bytes!("test-tls/sipward.test.crt");
const BUILTIN_KEY_PEM: &[u8] = include_bytes!("test-tls/sipward.test.key");

fn read(file: &Path) -> Result<Vec<u8>, TlsError> {
    if file == Path::new(BUILTIN_TEST_CERTIFICATE) {
        return Ok(BUILTIN_CERTIFICATE_PEM.to_vec());
    }
    if file == Path::new(BUILTIN_TEST_KEY) {
        return Ok(BUILTIN_KEY_PEM.to_vec());
    }
    std::fs::read(file).map_err(|e| error(file, format!("cannot read: {e}")))
}

/// The line (1-based) at a byte offset, so a broken PEM block can be pointed at.
fn line_at(bytes: &[u8], offset: usize) -> usize {
    bytes
        .get(..offset)
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
        + 1
}

/// Every certificate in a PEM file, in order; at least one.
pub(crate) fn load_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(file)?;
    let mut iter = CertificateDer::pem_slice_iter(&bytes);
    let mut certificates = Vec::new();
    loop {
        let before = bytes.len() - iter.remainder().len();
        match iter.next() {
            None => break,
            Some(Ok(c)) => certificates.push(c),
            Some(Err(e)) => {
                let line = line_at(&bytes, before);
                return Err(error(
                    file,
                    format!("line {line}: not a readable PEM certificate ({e})"),
                ));
            }
        }
    }
    if certificates.is_empty() {
        return Err(error(
            file,
            "no certificate in it (expected a PEM \"CERTIFICATE\" block)",
        ));
    }
    Ok(certificates)
}

/// The private key in a PEM file.
pub(crate) fn load_private_key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(file)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => error(
            file,
            "no private key in it (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
        ),
        e => error(file, format!("not a readable PEM private key ({e})")),
    })
}

/// The trusted CAs of a PEM file; each must parse as a trust anchor.
pub(crate) fn load_roots(file: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, certificate) in load_certificates(file)?.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| {
            error(
                file,
                format!("certificate {} is not a usable CA: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

/// Builds the server and client configurations of one interface. `now` judges expiry,
/// which only warns: the peers decide whether to accept it.
pub(crate) fn build(settings: &TlsSettings, now: SystemTime) -> Result<TlsMaterial, TlsError> {
    let provider = provider();
    let chain = load_certificates(&settings.certificate)?;
    let key = load_private_key(&settings.private_key)?;
    let mut warnings = Vec::new();
    if let Some(leaf) = chain.first() {
        match not_after(leaf) {
            Some(end) if end < now => warnings.push(format!(
                "{}: the certificate expired {} s ago; peers will refuse it",
                settings.certificate.display(),
                now.duration_since(end).map_or(0, |d| d.as_secs())
            )),
            Some(_) => {}
            None => {
                return Err(error(
                    &settings.certificate,
                    "the first certificate is not a readable X.509 certificate",
                ))
            }
        }
    }
    // Checked here rather than left to the builders so the error names both files.
    let certified = rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => error(
                &settings.private_key,
                format!(
                    "the key does not match the certificate in {}",
                    settings.certificate.display()
                ),
            ),
            e => error(&settings.private_key, format!("unusable private key: {e}")),
        })?;
    drop(certified);

    let roots = match &settings.ca {
        Some(ca) => Some(Arc::new(load_roots(ca)?)),
        None => None,
    };

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| error(&settings.certificate, format!("TLS versions: {e}")))?;
    let builder = match (settings.verify_client, &roots) {
        (VerifyClient::None, _) => builder.with_no_client_auth(),
        (mode, Some(roots)) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
            let verifier = if mode == VerifyClient::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|e| {
                error(
                    settings.ca.as_deref().unwrap_or(Path::new("ca")),
                    e.to_string(),
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        (_, None) => {
            return Err(error(
                &settings.certificate,
                "verify_client asks for client certificates but no `ca` is set to verify them",
            ))
        }
    };
    let mut server = builder
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| error(&settings.certificate, e.to_string()))?;
    server.session_storage = ServerSessionMemoryCache::new(SERVER_SESSION_CACHE);
    server.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| error(&settings.certificate, format!("session tickets: {e}")))?;

    let client = match roots {
        Some(roots) => {
            let verifier: Arc<dyn ServerCertVerifier> =
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| {
                        error(
                            settings.ca.as_deref().unwrap_or(Path::new("ca")),
                            e.to_string(),
                        )
                    })?;
            let client = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(PROTOCOL_VERSIONS)
                .map_err(|e| error(&settings.certificate, format!("TLS versions: {e}")))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                // Mutual TLS: trunks and proxies may ask for the gateway's certificate.
                .with_client_auth_cert(chain, key)
                .map_err(|e| error(&settings.certificate, e.to_string()))?;
            Some(Arc::new(client))
        }
        None => None,
    };
    Ok(TlsMaterial {
        server: Arc::new(server),
        client,
        warnings,
    })
}

/// The name a peer's certificate must carry (RFC 5922 §7): the address object's
/// `server_name`, a DNS name or an IP address (matched against the IP SANs).
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|_| format!("{name:?} is not a DNS name or IP address"))
}

/// One interface's TLS configuration, replaced whole by a reload.
pub(crate) struct TlsHolder {
    settings: RwLock<TlsSettings>,
    current: RwLock<Arc<TlsMaterial>>,
}

impl fmt::Debug for TlsHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsHolder").finish_non_exhaustive()
    }
}

impl TlsHolder {
    pub(crate) fn new(settings: TlsSettings, now: SystemTime) -> Result<Self, TlsError> {
        let material = build(&settings, now)?;
        Ok(Self {
            settings: RwLock::new(settings),
            current: RwLock::new(Arc::new(material)),
        })
    }

    /// What new handshakes use.
    pub(crate) fn current(&self) -> Arc<TlsMaterial> {
        // A poisoned lock still holds a complete Arc: the writer only swaps it.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn settings(&self) -> TlsSettings {
        match self.settings.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the files (possibly at new paths). On success new handshakes use the new
    /// certificate and the warnings are returned; on failure the old one stays.
    pub(crate) fn reload(
        &self,
        settings: TlsSettings,
        now: SystemTime,
    ) -> Result<Vec<String>, TlsError> {
        let material = build(&settings, now)?;
        let warnings = material.warnings.clone();
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(material),
            Err(p) => *p.into_inner() = Arc::new(material),
        }
        match self.settings.write() {
            Ok(mut g) => *g = settings,
            Err(p) => *p.into_inner() = settings,
        }
        Ok(warnings)
    }
}

/// The end of a certificate's validity, read from its DER (RFC 5280 §4.1): rustls does
/// not expose it, and a whole X.509 parser is more than one date needs.
pub(crate) fn not_after(certificate: &CertificateDer<'_>) -> Option<SystemTime> {
    let (tag, certificate, _) = der_element(certificate.as_ref())?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = der_element(certificate)?;
    if tag != 0x30 {
        return None;
    }
    let mut next = || -> Option<(u8, &[u8])> {
        let (tag, content, rest) = der_element(tbs)?;
        tbs = rest;
        Some((tag, content))
    };
    let (mut tag, _) = next()?;
    if tag == 0xa0 {
        // [0] version, then the serial number.
        (tag, _) = next()?;
    }
    if tag != 0x02 {
        return None;
    }
    let (_signature, _) = next()?;
    let (_issuer, _) = next()?;
    let (tag, validity) = next()?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = der_element(validity)?;
    let (tag, time, _) = der_element(rest)?;
    der_time(tag, time)
}

/// One DER element: tag, content, what follows. Single-byte tags only (X.509's are).
fn der_element(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, rest) = (rest.get(..n)?, rest.get(n..)?);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, text: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = digits.get(..2)?.parse().ok()?;
            (
                if yy < 50 { 2000 + yy } else { 1900 + yy },
                digits.get(2..)?,
            )
        }
        0x18 => (digits.get(..4)?.parse().ok()?, digits.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |i: usize| -> Option<u8> { rest.get(i..i + 2)?.parse().ok() };
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(field(0)?).ok()?, field(2)?)
            .ok()?;
    let clock = time::Time::from_hms(field(4)?, field(6)?, field(8)?).ok()?;
    let seconds = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp();
    if seconds >= 0 {
        UNIX_EPOCH.checked_add(std::time::Duration::from_secs(seconds.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(std::time::Duration::from_secs(seconds.unsigned_abs()))
    }
}

#[cfg(test)]
pub(crate) mod tests;
