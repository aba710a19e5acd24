//! Authorization, Proxy-Authorization, WWW-Authenticate, Proxy-Authenticate.
//!
//! sipward never rewrites these (the digest is computed over the request URI as the
//! client saw it); it reads the scheme, user name and realm for registration-hijack
//! accounting.

use super::unquote;
use crate::defect::DefectKind;
use crate::header::eq_lower_name;
use crate::scan::{is_token, Cursor};

/// Scheme and the parameters sipward cares about, for credentials and challenges alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub scheme: &'a [u8],
    /// `username` without quotes (credentials only).
    pub username: Option<&'a [u8]>,
    /// `realm` without quotes.
    pub realm: Option<&'a [u8]>,
    /// Everything after the scheme, as written.
    pub params: &'a [u8],
}

impl Credentials<'_> {
    pub fn is_digest(&self) -> bool {
        self.scheme.eq_ignore_ascii_case(b"Digest")
    }
}

/// `scheme LWS auth-param *(COMMA auth-param)`, or `scheme LWS token68` for schemes
/// that carry one opaque blob.
pub(crate) fn parse_credentials(value: &[u8]) -> Result<Credentials<'_>, DefectKind> {
    let mut c = Cursor::new(value);
    let scheme = c.token().ok_or(DefectKind::MalformedHeader)?;
    let mut creds = Credentials {
        scheme,
        username: None,
        realm: None,
        params: &[],
    };
    if c.at_end() {
        return Ok(creds);
    }
    if !c.skip_lws() {
        return Err(DefectKind::MalformedHeader);
    }
    let params_start = c.pos();
    creds.params = c.rest();
    let is_token68 = |b: u8| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
    };
    let save = c.pos();
    loop {
        let name = match c.token() {
            Some(n) => n,
            None => return Err(DefectKind::MalformedHeader),
        };
        if !c.eat_sep(b'=') {
            // Not an auth-param: accept a lone token68 blob (e.g. a Basic credential).
            c.set_pos(save);
            let blob = c.take_while(is_token68);
            c.skip_lws();
            return if !blob.is_empty() && c.at_end() {
                Ok(creds)
            } else {
                Err(DefectKind::MalformedHeader)
            };
        }
        let v = match c.peek() {
            Some(b'"') => c.quoted_string().ok_or(DefectKind::MalformedHeader)?,
            _ => c.take_while(is_token),
        };
        if v.is_empty() {
            return Err(DefectKind::MalformedHeader);
        }
        if name.len() == 8 && eq_lower_name(name, b"username") {
            if creds.username.is_some() {
                return Err(DefectKind::MalformedHeader);
            }
            creds.username = Some(unquote(v));
        } else if name.len() == 5 && eq_lower_name(name, b"realm") {
            if creds.realm.is_some() {
                return Err(DefectKind::MalformedHeader);
            }
            creds.realm = Some(unquote(v));
        }
        c.skip_lws();
        if c.at_end() {
            creds.params = c.slice_from(params_start);
            return Ok(creds);
        }
        if !c.eat(b',') {
            return Err(DefectKind::MalformedHeader);
        }
        c.skip_lws();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_credentials() {
        let c = parse_credentials(
            b"Digest username=\"100\", realm=\"example.com\",\r\n nonce=\"abc\", uri=\"sip:example.com\", response=\"0123\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"x\"",
        )
        .unwrap();
        assert!(c.is_digest());
        assert_eq!(c.username, Some(&b"100"[..]));
        assert_eq!(c.realm, Some(&b"example.com"[..]));
    }

    #[test]
    fn other_schemes() {
        let c = parse_credentials(b"NoOneKnowsThisScheme opaque-data=here").unwrap();
        assert_eq!(c.scheme, b"NoOneKnowsThisScheme");
        assert!(parse_credentials(b"Basic dXNlcjpwYXNz").is_ok());
    }

    #[test]
    fn defects() {
        assert!(parse_credentials(b"Digest username=\"a").is_err());
        assert!(parse_credentials(b"Digest username=\"a\" realm=\"b\"").is_err());
        assert!(parse_credentials(b"Digest username=\"a\", username=\"b\"").is_err());
        assert!(parse_credentials(b"Digest ,").is_err());
    }
}
