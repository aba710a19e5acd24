//! Names the gateway makes up: Via branches, hidden Call-IDs and contact tokens.
//!
//! Each is a keyed hash (SipHash-1-3 with the configured secret) of what it stands for, so
//! the same input always gives the same name (retransmissions, CANCEL and ACK match their
//! INVITE's branch, REGISTER refreshes keep their Call-ID) while an outsider can neither
//! invert nor predict it.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// Prefix of every branch the gateway creates; RFC 3261 magic cookie included.
pub(crate) const BRANCH_PREFIX: &str = "z9hG4bKsw";

pub(crate) struct Hider {
    k0: u64,
    k1: u64,
}

impl Hider {
    pub(crate) fn new(secret: &[u8; 16]) -> Self {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(secret.get(..8).unwrap_or(&[0; 8]));
        b.copy_from_slice(secret.get(8..).unwrap_or(&[0; 8]));
        Self {
            k0: u64::from_le_bytes(a),
            k1: u64::from_le_bytes(b),
        }
    }

    pub(crate) fn hash(&self, domain: u8, parts: &[&[u8]]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write_u8(domain);
        for p in parts {
            h.write_usize(p.len());
            h.write(p);
        }
        h.finish()
    }

    pub(crate) fn branch(&self, parts: &[&[u8]]) -> String {
        format!("{BRANCH_PREFIX}{:016x}", self.hash(1, parts))
    }

    pub(crate) fn call_id(&self, inside: &[u8]) -> Vec<u8> {
        format!("sw{:016x}", self.hash(2, &[inside])).into_bytes()
    }

    pub(crate) fn token(&self, parts: &[&[u8]]) -> String {
        format!("{:016x}", self.hash(3, parts))
    }

    /// The secret's public id: stores keep it with the state, and a gateway refuses
    /// state written under another secret (its names would mean nothing here).
    pub(crate) fn secret_id(&self) -> String {
        format!("{:016x}", self.hash(4, &[b"sipward secret id"]))
    }
}
