//! The STUN Binding exchange that RFC 5626 section 4.4.2 uses as the keepalive over UDP
//! (RFC 8489): a Binding request arriving on the SIP port is answered with a Binding
//! success response carrying XOR-MAPPED-ADDRESS. Nothing else of STUN is spoken: any
//! other STUN message, and any Binding request that is not well formed or asks for
//! something sipward cannot do (authentication, unknown comprehension-required
//! attributes), is dropped.
//!
//! Bounded by construction: a request is read once, attribute by attribute, within its
//! own length; the answer is at most 52 bytes (20 header, 24 XOR-MAPPED-ADDRESS for
//! IPv6, 8 FINGERPRINT), and carries FINGERPRINT only when the request did, so it is
//! never more than about twice the request (44 bytes for a bare 20-byte request).

use std::net::{IpAddr, SocketAddr};

/// RFC 8489 section 5: the fixed value in bytes 4..8 of every STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const FINGERPRINT: u16 = 0x8028;
/// RFC 8489 section 14.7: the CRC-32 of the message is XORed with this.
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// A well-formed Binding request: what its answer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest {
    pub transaction_id: [u8; 12],
    /// The request carried a (valid) FINGERPRINT: the answer carries one too.
    pub fingerprint: bool,
}

/// Why a STUN-looking datagram is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunError {
    /// A STUN message other than a Binding request (indication, response, other method).
    NotBindingRequest,
    /// Length field, padding or attribute framing wrong.
    Malformed,
    /// FINGERPRINT present but wrong, or not the last attribute.
    BadFingerprint,
    /// A comprehension-required attribute sipward does not handle (USERNAME,
    /// MESSAGE-INTEGRITY, ...): RFC 8489 would need a 420 or authentication; dropped.
    UnsupportedAttribute,
}

impl StunError {
    pub fn as_str(self) -> &'static str {
        match self {
            StunError::NotBindingRequest => "STUN message other than a Binding request",
            StunError::Malformed => "malformed STUN message",
            StunError::BadFingerprint => "bad STUN FINGERPRINT",
            StunError::UnsupportedAttribute => "unsupported STUN attribute",
        }
    }
}

/// Whether `buf` is meant as STUN (RFC 7983 demultiplexing: first byte 0..3, plus the
/// magic cookie). No SIP message can look like this: its first byte is a letter or CR
/// and its bytes 4..8 are ASCII, the cookie's third byte is 0xA4.
pub fn looks_like_stun(buf: &[u8]) -> bool {
    buf.len() >= HEADER_LEN
        && buf.first().is_some_and(|&b| b < 4)
        && buf.get(4..8) == Some(&MAGIC_COOKIE.to_be_bytes()[..])
}

fn be16(buf: &[u8], at: usize) -> Option<u16> {
    buf.get(at..)
        .and_then(|r| r.first_chunk::<2>())
        .map(|b| u16::from_be_bytes(*b))
}

/// Reads a Binding request (`looks_like_stun` already said it is STUN).
pub fn parse_binding_request(buf: &[u8]) -> Result<BindingRequest, StunError> {
    let message_type = be16(buf, 0).ok_or(StunError::Malformed)?;
    if message_type != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    let length = usize::from(be16(buf, 2).ok_or(StunError::Malformed)?);
    if length % 4 != 0 || HEADER_LEN + length != buf.len() {
        return Err(StunError::Malformed);
    }
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(buf.get(8..HEADER_LEN).ok_or(StunError::Malformed)?);
    let mut fingerprint = false;
    let mut at = HEADER_LEN;
    while at < buf.len() {
        if fingerprint {
            // RFC 8489 section 14.7: FINGERPRINT is the last attribute.
            return Err(StunError::BadFingerprint);
        }
        let kind = be16(buf, at).ok_or(StunError::Malformed)?;
        let len = usize::from(be16(buf, at + 2).ok_or(StunError::Malformed)?);
        let value_at = at + 4;
        let next = value_at + len.div_ceil(4) * 4;
        if next > buf.len() {
            return Err(StunError::Malformed);
        }
        if kind == FINGERPRINT {
            let value = buf
                .get(value_at..value_at + 4)
                .and_then(|v| v.first_chunk::<4>())
                .filter(|_| len == 4)
                .ok_or(StunError::BadFingerprint)?;
            let covered = buf.get(..at).ok_or(StunError::Malformed)?;
            if u32::from_be_bytes(*value) != crc32fast::hash(covered) ^ FINGERPRINT_XOR {
                return Err(StunError::BadFingerprint);
            }
            fingerprint = true;
        } else if kind < 0x8000 {
            return Err(StunError::UnsupportedAttribute);
        }
        at = next;
    }
    Ok(BindingRequest {
        transaction_id,
        fingerprint,
    })
}

/// The Binding success response to `request`, telling the sender the address it was
/// seen from (`source`) in XOR-MAPPED-ADDRESS (RFC 8489 section 14.2).
pub fn binding_success(request: &BindingRequest, source: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // length, set below
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&request.transaction_id);
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = source.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let (family, address): (u8, Vec<u8>) = match source.ip() {
        IpAddr::V4(ip) => (
            1,
            ip.octets()
                .iter()
                .zip(cookie.iter())
                .map(|(a, c)| a ^ c)
                .collect(),
        ),
        IpAddr::V6(ip) => (
            2,
            ip.octets()
                .iter()
                .zip(cookie.iter().chain(request.transaction_id.iter()))
                .map(|(a, c)| a ^ c)
                .collect(),
        ),
    };
    out.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&(4 + address.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, family]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&address);
    if request.fingerprint {
        // The length counts the FINGERPRINT before its CRC is taken (section 14.7).
        let length = out.len() - HEADER_LEN + 8;
        set_length(&mut out, length);
        let crc = crc32fast::hash(&out) ^ FINGERPRINT_XOR;
        out.extend_from_slice(&FINGERPRINT.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&crc.to_be_bytes());
    } else {
        let length = out.len() - HEADER_LEN;
        set_length(&mut out, length);
    }
    out
}

fn set_length(out: &mut [u8], length: usize) {
    if let Some(field) = out.get_mut(2..4) {
        field.copy_from_slice(&(length as u16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attributes: &[u8]) -> Vec<u8> {
        let mut r = vec![0x00, 0x01];
        r.extend_from_slice(&(attributes.len() as u16).to_be_bytes());
        r.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        r.extend_from_slice(b"0123456789ab");
        r.extend_from_slice(attributes);
        r
    }

    fn with_fingerprint(mut r: Vec<u8>) -> Vec<u8> {
        let length = r.len() - HEADER_LEN + 8;
        r[2..4].copy_from_slice(&(length as u16).to_be_bytes());
        let crc = crc32fast::hash(&r) ^ FINGERPRINT_XOR;
        r.extend_from_slice(&[0x80, 0x28, 0, 4]);
        r.extend_from_slice(&crc.to_be_bytes());
        r
    }

    #[test]
    fn bare_binding_request_is_answered_with_the_xored_address() {
        let r = request(&[]);
        assert!(looks_like_stun(&r));
        let req = parse_binding_request(&r).unwrap();
        assert!(!req.fingerprint);
        let answer = binding_success(&req, "192.0.2.1:32853".parse().unwrap());
        // Decoded by hand: type, length 12, cookie, the request's id, then
        // XOR-MAPPED-ADDRESS: family 1, port 32853 ^ 0x2112 = 0xa147,
        // 192.0.2.1 ^ 21 12 a4 42 = e1 12 a6 43.
        let mut expected = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        expected.extend_from_slice(b"0123456789ab");
        expected.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47]);
        expected.extend_from_slice(&[0xe1, 0x12, 0xa6, 0x43]);
        assert_eq!(answer, expected);
        assert!(answer.len() <= 2 * r.len() + 4);
    }

    #[test]
    fn ipv6_address_is_xored_with_cookie_and_transaction_id() {
        let req = parse_binding_request(&request(&[])).unwrap();
        let source: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        let answer = binding_success(&req, source);
        assert_eq!(answer.len(), 20 + 24);
        assert_eq!(&answer[20..26], &[0x00, 0x20, 0x00, 0x14, 0x00, 0x02]);
        let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
        key.extend_from_slice(b"0123456789ab");
        let decoded: Vec<u8> = answer[28..44]
            .iter()
            .zip(&key)
            .map(|(a, k)| a ^ k)
            .collect();
        let IpAddr::V6(ip) = source.ip() else {
            unreachable!()
        };
        assert_eq!(decoded, ip.octets());
    }

    #[test]
    fn fingerprint_is_checked_and_echoed() {
        let software = [0x80, 0x22, 0x00, 0x03, b'a', b'b', b'c', 0x00];
        let r = with_fingerprint(request(&software));
        let req = parse_binding_request(&r).unwrap();
        assert!(req.fingerprint);
        let answer = binding_success(&req, "10.0.0.1:1".parse().unwrap());
        assert_eq!(answer.len(), 20 + 12 + 8);
        assert_eq!(u16::from_be_bytes([answer[2], answer[3]]), 20);
        let crc = crc32fast::hash(&answer[..32]) ^ FINGERPRINT_XOR;
        assert_eq!(&answer[36..40], &crc.to_be_bytes());
        let mut broken = r.clone();
        *broken.last_mut().unwrap() ^= 1;
        assert_eq!(
            parse_binding_request(&broken),
            Err(StunError::BadFingerprint)
        );
    }

    #[test]
    fn everything_else_is_refused() {
        let mut indication = request(&[]);
        indication[1] = 0x11;
        assert_eq!(
            parse_binding_request(&indication),
            Err(StunError::NotBindingRequest)
        );
        let mut short = request(&[]);
        short[3] = 4;
        assert_eq!(parse_binding_request(&short), Err(StunError::Malformed));
        // An attribute running past the message.
        let overrun = request(&[0x80, 0x22, 0x00, 0x10, 0, 0, 0, 0]);
        assert_eq!(parse_binding_request(&overrun), Err(StunError::Malformed));
        // USERNAME (comprehension-required): authentication sipward cannot do.
        let username = request(&[0x00, 0x06, 0x00, 0x04, b'u', b's', b'e', b'r']);
        assert_eq!(
            parse_binding_request(&username),
            Err(StunError::UnsupportedAttribute)
        );
        assert!(!looks_like_stun(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n"));
        assert!(!looks_like_stun(&request(&[])[..19]));
    }
}
