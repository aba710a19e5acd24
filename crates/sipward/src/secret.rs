//! The hiding secret: the key of the keyed hashes that name the gateway's branches,
//! hidden Call-IDs and Contact tokens. A restarted process, or the other node of a pair,
//! recognises the names in stored state only under the same key, so the key comes from
//! configuration: `[state] secret_file` (generated if absent) or `[gateway] secret`.
//! Both go through HKDF-SHA256 (RFC 5869). The secret's public id, stored with the
//! state so that state written under another secret is refused, is the core's
//! (`Gateway::secret_id`, a keyed hash under the derived key).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use hkdf::Hkdf;
use sha2::Sha256;

/// Bytes of secret material a generated file holds (written as hex).
const GENERATED_BYTES: usize = 32;
/// The least material a file must hold: 16 bytes (32 hex digits).
const MIN_FILE_BYTES: usize = 16;

/// The hiding key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Secret {
    pub(crate) key: [u8; 16],
}

impl Secret {
    /// Derives the key from secret material.
    pub(crate) fn derive(material: &[u8]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"sipward"), material);
        let mut key = [0u8; 16];
        // An output far below 255 * 32 bytes: expand cannot fail.
        let _ = hk.expand(b"sipward hiding key v1", &mut key);
        Self { key }
    }

    /// A secret for this process only (no file, no `secret`): what it names is not
    /// recognised after a restart.
    pub(crate) fn random() -> Result<Self> {
        let mut material = [0u8; GENERATED_BYTES];
        getrandom::fill(&mut material).context("reading the system's randomness")?;
        Ok(Self::derive(&material))
    }

    /// Reads the secret file, or creates it (mode 0600, random material) when absent.
    pub(crate) fn from_file(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path)?,
            Err(e) => return Err(e).context("cannot be read"),
        };
        let hex = text.trim();
        let material = decode_hex(hex)?;
        if material.len() < MIN_FILE_BYTES {
            bail!(
                "holds {} bytes: at least {MIN_FILE_BYTES} are needed ({} hex digits)",
                material.len(),
                MIN_FILE_BYTES * 2
            );
        }
        Ok(Self::derive(&material))
    }
}

fn create(path: &Path) -> Result<String> {
    let mut material = [0u8; GENERATED_BYTES];
    getrandom::fill(&mut material).context("reading the system's randomness")?;
    let hex: String = material.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            writeln!(file, "{hex}").context("cannot be written")?;
            file.sync_all().context("cannot be written")?;
            Ok(hex)
        }
        // Another process created it first: its secret is the one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read_to_string(path).context("cannot be read")
        }
        Err(e) => Err(e).context("is absent and cannot be created"),
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        bail!("must hold hex digits, an even number of them");
    }
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .context("must hold hex digits only")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sipward-secret-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_absent_file_is_created_private_and_gives_the_same_key_when_read_again() {
        let d = dir("create");
        let path = d.join("secret");
        let first = Secret::from_file(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap().trim().len(), 64);
        let again = Secret::from_file(&path).unwrap();
        assert_eq!(first, again, "a restart recognises its own names");
        let other = Secret::from_file(&d.join("other")).unwrap();
        assert_ne!(first.key, other.key);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bad_file_is_refused_with_the_reason() {
        let d = dir("bad");
        for (text, why) in [
            ("xyz\n", "hex"),
            ("abc\n", "even"),
            ("00112233\n", "at least 16"),
        ] {
            let path = d.join("secret");
            std::fs::write(&path, text).unwrap();
            let e = format!("{:#}", Secret::from_file(&path).unwrap_err());
            assert!(e.contains(why), "{text:?}: {e}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_key_is_a_derivation_not_the_material() {
        let material = b"0123456789abcdef0123456789abcdef";
        let s = Secret::derive(material);
        assert_ne!(&s.key[..], &material[..16]);
        assert_eq!(s, Secret::derive(material));
        assert_ne!(s, Secret::derive(b"0123456789abcdef0123456789abcdeF"));
    }
}
