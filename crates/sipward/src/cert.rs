//! `sipward cert`: a test CA and certificates signed by it, for trying SIP over TLS and for
//! the tests. FOR TESTING ONLY: the CA key is written next to the certificates, unprotected.
//!
//! A certificate carries both server and client authentication, since an interface's one
//! certificate serves incoming TLS and is presented as the client certificate of the
//! connections the gateway opens (mutual TLS).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// The CA's subject; fixed so a CA key found on disk can sign again for the CA certificate
/// next to it (the issuer name and key identifier come from the name and the key alone).
const CA_NAME: &str = "sipward test CA (not for production)";

/// A CA that signs test certificates.
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A certificate and its key, PEM.
pub(crate) struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params(
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

impl TestCa {
    /// A new CA valid from an hour ago for `days`.
    pub(crate) fn generate(days: u32) -> Result<Self> {
        Self::generate_named(CA_NAME, days)
    }

    /// A new CA with its own name (the tests' "unknown CA").
    pub(crate) fn generate_named(name: &str, days: u32) -> Result<Self> {
        let now = OffsetDateTime::now_utc();
        let params = ca_params(
            name,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(86_400 * u64::from(days)),
        );
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert_pem = params
            .self_signed(&key)
            .context("signing the CA certificate")?
            .pem();
        let key_pem = key.serialize_pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// The CA made earlier by [`TestCa::generate`], from its two files.
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = std::fs::read_to_string(cert)
            .with_context(|| format!("{}: cannot read", cert.display()))?;
        let key_pem = std::fs::read_to_string(key)
            .with_context(|| format!("{}: cannot read", key.display()))?;
        let key_pair = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{}: not a usable private key", key.display()))?;
        let now = OffsetDateTime::now_utc();
        Ok(Self {
            issuer: Issuer::new(ca_params(CA_NAME, now, now), key_pair),
            cert_pem,
            key_pem,
        })
    }

    /// A certificate for `names` (DNS names or IP addresses, all as SANs; the first is
    /// also the common name), valid over the given span.
    pub(crate) fn issue_between(
        &self,
        names: &[String],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Issued> {
        let Some(first) = names.first() else {
            bail!("a certificate needs at least one name");
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, first.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(
                    n.clone()
                        .try_into()
                        .with_context(|| format!("{n:?} is not a DNS name"))?,
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().context("generating the key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate valid from an hour ago for `days`.
    pub(crate) fn issue(&self, names: &[String], days: u32) -> Result<Issued> {
        let now = OffsetDateTime::now_utc();
        self.issue_between(
            names,
            now - Duration::from_secs(3600),
            now + Duration::from_secs(86_400 * u64::from(days)),
        )
    }
}

/// `sipward cert`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct CertArgs {
    /// The DNS name the certificate is for (also its common name).
    #[arg(long)]
    name: String,
    /// An IP address the certificate is also valid for (repeatable).
    #[arg(long)]
    ip: Vec<IpAddr>,
    /// Where NAME.crt and NAME.key are written.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Where the CA's ca.crt and ca.key are; reused when both exist, made otherwise
    /// (default: the --out directory).
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

#[cfg(test)]
impl CertArgs {
    /// `sipward cert --name NAME --ip IP... --out DIR`.
    pub(crate) fn for_test(name: &str, ips: &[&str], out: &Path) -> Self {
        Self {
            name: name.to_string(),
            ip: ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
            out: out.to_path_buf(),
            ca_out: None,
            days: 30,
        }
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("{}: cannot write", path.display()))
}

/// A private key: readable by its owner only, even if the file was there before.
fn write_key(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(text.as_bytes()))
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Writes the certificate and key (and the CA if it was made) and says which files.
pub(crate) fn run(args: &CertArgs) -> Result<Vec<PathBuf>> {
    let ca_dir = args.ca_out.clone().unwrap_or_else(|| args.out.clone());
    for dir in [&args.out, &ca_dir] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    let (ca_cert, ca_key) = (ca_dir.join("ca.crt"), ca_dir.join("ca.key"));
    let mut written = Vec::new();
    let ca = if ca_cert.exists() && ca_key.exists() {
        TestCa::load(&ca_cert, &ca_key)?
    } else {
        let ca = TestCa::generate(args.days.max(3650))?;
        write(&ca_cert, &ca.cert_pem)?;
        write_key(&ca_key, &ca.key_pem)?;
        written.extend([ca_cert, ca_key]);
        ca
    };
    let mut names = vec![args.name.clone()];
    names.extend(args.ip.iter().map(IpAddr::to_string));
    let issued = ca.issue(&names, args.days)?;
    let (cert, key) = (
        args.out.join(format!("{}.crt", args.name)),
        args.out.join(format!("{}.key", args.name)),
    );
    write(&cert, &issued.cert_pem)?;
    write_key(&key, &issued.key_pem)?;
    written.extend([cert, key]);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::tls::tests::handshake;
    use crate::streams::tls::{build, TlsSettings, VerifyClient};

    #[tokio::test]
    async fn writes_a_ca_and_a_certificate_that_load_and_reuses_the_ca() {
        let dir = std::env::temp_dir().join(format!("sipward-cert-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let args = CertArgs {
            name: "gw.example.test".into(),
            ip: vec!["192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))],
            out: dir.join("out"),
            ca_out: Some(dir.join("ca")),
            days: 30,
        };
        let first = run(&args).map_err(|e| e.to_string());
        assert_eq!(
            first.as_ref().map(Vec::len),
            Ok(4),
            "CA and certificate written: {first:?}"
        );
        let ca_before = std::fs::read_to_string(dir.join("ca/ca.crt")).unwrap_or_default();
        let second = run(&CertArgs {
            name: "other.example.test".into(),
            ..args
        });
        assert_eq!(
            second.as_ref().map(Vec::len).ok(),
            Some(2),
            "the CA is reused"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("ca/ca.crt")).unwrap_or_default(),
            ca_before
        );
        let mut materials = Vec::new();
        for name in ["gw.example.test", "other.example.test"] {
            let settings = TlsSettings {
                certificate: dir.join(format!("out/{name}.crt")),
                private_key: dir.join(format!("out/{name}.key")),
                ca: Some(dir.join("ca/ca.crt")),
                verify_client: VerifyClient::Require,
            };
            let material = build(&settings, std::time::SystemTime::now());
            assert!(
                material.as_ref().is_ok_and(|m| m.warnings.is_empty()),
                "{name}: {material:?}"
            );
            materials.push(material.unwrap_or_else(|e| panic!("{e}")));
        }
        // Both chain to the one CA: each verifies the other in a mutual handshake.
        let client = materials[0]
            .client
            .clone()
            .unwrap_or_else(|| panic!("client"));
        let o = handshake(materials[1].server.clone(), client, "other.example.test").await;
        assert!(
            o.client.is_ok() && o.server.is_ok(),
            "{:?} {:?}",
            o.client,
            o.server
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
