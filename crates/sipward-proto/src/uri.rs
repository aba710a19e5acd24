//! URIs: sip, sips and tel typed; any other well-formed absolute URI kept opaque.
//!
//! The caller hands in exactly the URI's bytes (the Request-URI token, the inside of
//! `<...>`, or an addr-spec cut at its header parameters); this module checks the RFC 3261
//! and RFC 3966 grammar, including `%HH` escapes, user and password characters, host
//! names, IP addresses and ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::defect::DefectKind;
use crate::limits::Limits;
use crate::scan::{
    all_host_chars, all_user_chars, find_byte, find_byte2, find_byte3_sse2, find_byte_sse2,
    is_alnum, is_digit, is_escaped_run, is_hex, is_param_char, UriClass,
};

/// A host: a domain name or an IP address, with the bytes it was written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    Domain(&'a [u8]),
    Ipv4(Ipv4Addr, &'a [u8]),
    /// Written with its brackets, e.g. `[2001:db8::1]`.
    Ipv6(Ipv6Addr, &'a [u8]),
}

impl<'a> Host<'a> {
    /// The host as written in the message.
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Host::Domain(s) | Host::Ipv4(_, s) | Host::Ipv6(_, s) => s,
        }
    }

    /// The IP address, when the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Host::Domain(_) => None,
            Host::Ipv4(a, _) => Some(IpAddr::V4(a)),
            Host::Ipv6(a, _) => Some(IpAddr::V6(a)),
        }
    }
}

/// Parses a host: an IPv6 reference, an IPv4 address or a host name.
#[inline]
pub fn parse_host(s: &[u8]) -> Result<Host<'_>, DefectKind> {
    if s.first() == Some(&b'[') {
        return parse_ipv6_reference(s);
    }
    // Digits and dots only: an IPv4 address or nothing. Only such a host can start
    // with a digit or a dot and still be an address, so a name skips this.
    if s.first().is_some_and(|&b| is_digit(b) || b == b'.') {
        if let Some(addr) = parse_ipv4(s) {
            return Ok(Host::Ipv4(addr, s));
        }
        if s.iter().all(|&b| is_digit(b) || b == b'.') {
            return Err(DefectKind::InvalidIp);
        }
    }
    if is_hostname(s) {
        Ok(Host::Domain(s))
    } else {
        Err(DefectKind::InvalidHost)
    }
}

/// `[IPv6address]`. Out of line: rare, and its text parse would weigh on every host.
#[inline(never)]
fn parse_ipv6_reference(s: &[u8]) -> Result<Host<'_>, DefectKind> {
    let inner = s
        .strip_prefix(b"[")
        .and_then(|inner| inner.strip_suffix(b"]"))
        .ok_or(DefectKind::InvalidIp)?;
    let addr = std::str::from_utf8(inner)
        .ok()
        .and_then(|t| t.parse::<Ipv6Addr>().ok())
        .ok_or(DefectKind::InvalidIp)?;
    Ok(Host::Ipv6(addr, s))
}

/// Dotted-quad IPv4 address: four decimal octets, no leading zeros (as the standard
/// library's parser, without its UTF-8 round trip), octet by octet.
#[inline]
pub(crate) fn parse_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    let (addr, len) = parse_ipv4_prefix(s)?;
    (len == s.len()).then_some(addr)
}

/// The IPv4 address at the start of `s`, and its length; what follows is not looked
/// at (but a fourth digit of an octet fails it, as in [`parse_ipv4`]). Always inlined:
/// left to itself the compiler called it out of line, at more cost than its code.
#[inline(always)]
pub(crate) fn parse_ipv4_prefix(s: &[u8]) -> Option<(Ipv4Addr, usize)> {
    let mut octets = [0u8; 4];
    let mut rest = s;
    for (k, octet) in octets.iter_mut().enumerate() {
        let (value, len) = parse_octet(rest)?;
        *octet = value;
        rest = rest.get(len..)?;
        if k < 3 {
            rest = rest.strip_prefix(b".")?;
        }
    }
    Some((Ipv4Addr::from(octets), s.len() - rest.len()))
}

/// The decimal octet at the start of `s` and its length: one to three digits, no
/// leading zero, at most 255, not followed by a fourth digit. Slice patterns: a few
/// compares per octet instead of a loop.
#[inline]
fn parse_octet(s: &[u8]) -> Option<(u8, usize)> {
    let d = |b: u8| b.wrapping_sub(b'0');
    match *s {
        [x, y, z, ..] if d(x) <= 9 && d(y) <= 9 && d(z) <= 9 => {
            if x == b'0' || s.get(3).is_some_and(|&b| d(b) <= 9) {
                return None;
            }
            let v = u32::from(d(x)) * 100 + u32::from(d(y)) * 10 + u32::from(d(z));
            Some((u8::try_from(v).ok()?, 3))
        }
        [x, y, ..] if d(x) <= 9 && d(y) <= 9 => (x != b'0').then(|| (d(x) * 10 + d(y), 2)),
        [x, ..] if d(x) <= 9 => Some((d(x), 1)),
        _ => None,
    }
}

/// RFC 3261 hostname: dot-separated labels of alphanumerics and inner hyphens, the last
/// starting with a letter, an optional trailing dot; at most 63 bytes a label, 255 in all.
#[inline]
pub fn is_hostname(s: &[u8]) -> bool {
    let s = s.strip_suffix(b".").unwrap_or(s);
    // Characters first, in a loop with no branch per byte; then the label rules, which
    // only look at the dots.
    if s.is_empty() || s.len() > 255 || !all_host_chars(s) {
        return false;
    }
    let mut rest = s;
    loop {
        let dot = find_byte(rest, b'.');
        let label = dot.and_then(|i| rest.get(..i)).unwrap_or(rest);
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-');
        if !ok {
            return false;
        }
        match dot {
            Some(i) => rest = rest.get(i + 1..).unwrap_or_default(),
            None => return label.first().is_some_and(|b| b.is_ascii_alphabetic()),
        }
    }
}

/// Parses a port: 1 to 65535, at most five digits.
#[inline]
pub fn parse_port(s: &[u8]) -> Result<u16, DefectKind> {
    if s.is_empty() || s.len() > 5 {
        return Err(DefectKind::InvalidPort);
    }
    // Checked and summed in one walk.
    let mut v = 0u32;
    for &b in s {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return Err(DefectKind::InvalidPort);
        }
        v = v * 10 + u32::from(d);
    }
    match u16::try_from(v) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(DefectKind::InvalidPort),
    }
}

/// Splits `host[:port]`, where host may be an IPv6 reference.
#[inline]
pub(crate) fn parse_host_port(s: &[u8]) -> Result<(Host<'_>, Option<u16>), DefectKind> {
    let (host, port) = if s.first() == Some(&b'[') {
        split_ipv6_reference(s)?
    } else {
        match find_byte(s, b':') {
            Some(i) => (s.get(..i).unwrap_or(&[]), s.get(i + 1..)),
            None => (s, None),
        }
    };
    let host = parse_host(host)?;
    let port = port.map(parse_port).transpose()?;
    Ok((host, port))
}

/// `[IPv6address]` and what follows its colon, if anything does.
fn split_ipv6_reference(s: &[u8]) -> Result<(&[u8], Option<&[u8]>), DefectKind> {
    let close = s
        .iter()
        .position(|&b| b == b']')
        .ok_or(DefectKind::InvalidIp)?;
    let (h, rest) = s.split_at(close + 1);
    match rest {
        [] => Ok((h, None)),
        [b':', p @ ..] => Ok((h, Some(p))),
        _ => Err(DefectKind::InvalidHost),
    }
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// The whole URI.
    pub raw: &'a [u8],
    pub secure: bool,
    pub user: Option<&'a [u8]>,
    pub password: Option<&'a [u8]>,
    pub host: Host<'a>,
    pub port: Option<u16>,
    /// `host[:port]` as written: the piece topology hiding replaces.
    pub host_port: &'a [u8],
    /// URI parameters without the leading `;` (empty if none).
    pub params: &'a [u8],
    /// URI headers without the leading `?`.
    pub headers: Option<&'a [u8]>,
}

impl<'a> SipUri<'a> {
    /// URI parameters as (name, value) pairs.
    pub fn params(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
        split_params(self.params)
    }

    /// The value of a URI parameter, matched case-insensitively. `Some(None)` for a
    /// parameter without value (such as `lr`).
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// A `tel:` URI (RFC 3966).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelUri<'a> {
    pub raw: &'a [u8],
    pub number: &'a [u8],
    pub params: &'a [u8],
}

/// Any URI sipward may meet in a SIP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uri<'a> {
    Sip(SipUri<'a>),
    Tel(TelUri<'a>),
    /// A well-formed absolute URI of another scheme, kept opaque.
    Other {
        scheme: &'a [u8],
        raw: &'a [u8],
    },
}

impl<'a> Uri<'a> {
    pub fn raw(&self) -> &'a [u8] {
        match *self {
            Uri::Sip(u) => u.raw,
            Uri::Tel(u) => u.raw,
            Uri::Other { raw, .. } => raw,
        }
    }

    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }
}

fn split_params(s: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    s.split(|&b| b == b';').filter(|p| !p.is_empty()).map(|p| {
        match p.iter().position(|&b| b == b'=') {
            Some(i) => (p.get(..i).unwrap_or(&[]), p.get(i + 1..)),
            None => (p, None),
        }
    })
}

fn is_scheme(s: &[u8]) -> bool {
    match s.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphabetic()
                && rest
                    .iter()
                    .all(|&b| is_alnum(b) || matches!(b, b'+' | b'-' | b'.'))
        }
        None => false,
    }
}

/// Parses a URI. A well-formed URI of a scheme other than sip, sips or tel parses to
/// [`Uri::Other`]: the caller decides whether that is acceptable where it stands.
pub fn parse_uri<'a>(s: &'a [u8], limits: &Limits) -> Result<Uri<'a>, DefectKind> {
    let mut uri = Uri::Other {
        scheme: &[],
        raw: s,
    };
    parse_uri_into(s, limits, &mut uri)?;
    Ok(uri)
}

/// [`parse_uri`] into `out`, so that an address header builds its URI where it is kept
/// (a URI is some 150 bytes; returning it through each layer copies it each time). On
/// an error `out` is left as it was or part written.
pub(crate) fn parse_uri_into<'a>(
    s: &'a [u8],
    limits: &Limits,
    out: &mut Uri<'a>,
) -> Result<(), DefectKind> {
    // Nearly every URI is sip: say so without searching for the colon.
    // One load: the letters compared without case (OR 0x20 maps only their upper case
    // onto them), the colon exactly.
    let sip = u32::from_le_bytes(*b"sip:");
    if let Some(rest) = s
        .first_chunk::<4>()
        .filter(|p| u32::from_le_bytes(**p) | 0x0020_2020 == sip)
        .and_then(|_| s.get(4..))
    {
        return parse_sip(s, rest, false, limits, out);
    }
    let colon = s
        .iter()
        .position(|&b| b == b':')
        .ok_or(DefectKind::MalformedUri)?;
    let scheme = s.get(..colon).unwrap_or(&[]);
    let rest = s.get(colon + 1..).unwrap_or(&[]);
    if !is_scheme(scheme) {
        return Err(DefectKind::MalformedUri);
    }
    if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
        parse_sip(s, rest, scheme.len() == 4, limits, out)
    } else if scheme.eq_ignore_ascii_case(b"tel") {
        *out = Uri::Tel(parse_tel(s, rest, limits)?);
        Ok(())
    } else {
        // Opaque absolute URI: visible ASCII without the delimiters that would end it.
        let ok = !rest.is_empty()
            && rest
                .iter()
                .all(|&b| b > 0x20 && b < 0x7f && !matches!(b, b'<' | b'>' | b'"'))
            && s.len() <= limits.max_param_len;
        if ok {
            *out = Uri::Other { scheme, raw: s };
            Ok(())
        } else {
            Err(DefectKind::MalformedUri)
        }
    }
}

fn parse_sip<'a>(
    raw: &'a [u8],
    rest: &'a [u8],
    secure: bool,
    limits: &Limits,
    out: &mut Uri<'a>,
) -> Result<(), DefectKind> {
    // The user part may hold ';', '?' and ':', but never a raw '@'; neither may
    // anything after the host. So the first '@' ends the userinfo.
    let (userinfo, after) = match find_byte_sse2(rest, b'@') {
        Some(i) => (rest.get(..i), rest.get(i + 1..).unwrap_or(&[])),
        None => (None, rest),
    };
    let (user, password) = match userinfo {
        // Usually plain user characters: no password (':' is not one) and no escape.
        Some(ui) if ui.len() <= limits.max_param_len && all_user_chars(ui) => (Some(ui), None),
        Some(ui) => {
            let (user, password) = match ui.iter().position(|&b| b == b':') {
                Some(i) => (ui.get(..i).unwrap_or(&[]), ui.get(i + 1..)),
                None => (ui, None),
            };
            if user.len() > limits.max_param_len || !is_escaped_run(user, UriClass::User, false) {
                return Err(DefectKind::InvalidUser);
            }
            if let Some(pw) = password {
                if pw.len() > limits.max_param_len || !is_escaped_run(pw, UriClass::Password, true)
                {
                    return Err(DefectKind::InvalidUser);
                }
            }
            (Some(user), password)
        }
        None => (None, None),
    };
    // The host ends at the first ';' or '?'. One search finds the first of those and
    // ':', which (outside an IPv6 reference) starts the port.
    let (host_end, colon) = match find_byte3_sse2(after, b';', b'?', b':') {
        Some(i) if after.get(i) == Some(&b':') => {
            let port_on = after.get(i + 1..).unwrap_or_default();
            let end = find_byte2(port_on, b';', b'?').unwrap_or(port_on.len());
            (i + 1 + end, Some(i))
        }
        Some(i) => (i, None),
        None => (after.len(), None),
    };
    let host_port = after.get(..host_end).unwrap_or(&[]);
    if host_port.len() > limits.max_param_len {
        return Err(DefectKind::ParamTooLong);
    }
    let (host, port) = match colon {
        // The colon of an IPv6 reference is not the port's.
        _ if host_port.first() == Some(&b'[') => split_ipv6_reference(host_port)?,
        Some(i) => (
            host_port.get(..i).unwrap_or_default(),
            host_port.get(i + 1..),
        ),
        None => (host_port, None),
    };
    let host = parse_host(host)?;
    let port = port.map(parse_port).transpose()?;
    let tail = after.get(host_end..).unwrap_or(&[]);
    // Usually the URI ends at its host or port: then there is nothing more to check.
    let (params, headers) = if tail.is_empty() {
        (tail, None)
    } else {
        let (params, headers) = match find_byte(tail, b'?') {
            Some(i) => (tail.get(..i).unwrap_or(&[]), tail.get(i + 1..)),
            None => (tail, None),
        };
        let params = params.strip_prefix(b";").unwrap_or(params);
        check_uri_params(params, limits)?;
        if let Some(h) = headers {
            check_uri_headers(h, limits)?;
        }
        (params, headers)
    };
    // Written straight into place: wrapping a finished `SipUri` would copy it.
    *out = Uri::Sip(SipUri {
        raw,
        secure,
        user,
        password,
        host,
        port,
        host_port,
        params,
        headers,
    });
    Ok(())
}

// Out of line: most URIs have no parameters, and the parser around the call is leaner
// without its code (measured).
#[inline(never)]
fn check_uri_params(params: &[u8], limits: &Limits) -> Result<(), DefectKind> {
    if params.is_empty() || plain_uri_params(params, limits) {
        return Ok(());
    }
    check_uri_params_walk(params, limits)
}

/// [`check_uri_params`] for any parameters: escapes, and the verdict on bad ones.
// Out of line: the exception, kept from weighing on the URI parser around it.
#[inline(never)]
fn check_uri_params_walk(params: &[u8], limits: &Limits) -> Result<(), DefectKind> {
    // Each ';'-separated parameter in turn (an empty one included), found by word-at-a-
    // time searches: slice iterators cost more than the search itself on these few bytes.
    let mut count = 0usize;
    let mut rest = params;
    loop {
        let end = find_byte(rest, b';');
        let p = rest.get(..end.unwrap_or(rest.len())).unwrap_or_default();
        count += 1;
        if count > limits.max_params {
            return Err(DefectKind::TooManyParams);
        }
        if p.len() > limits.max_param_len {
            return Err(DefectKind::ParamTooLong);
        }
        let (name, value) = match find_byte(p, b'=') {
            Some(i) => (p.get(..i).unwrap_or(&[]), p.get(i + 1..)),
            None => (p, None),
        };
        if !is_escaped_run(name, UriClass::Param, false) {
            return Err(DefectKind::MalformedUri);
        }
        if let Some(v) = value {
            if !is_escaped_run(v, UriClass::Param, false) {
                return Err(DefectKind::MalformedUri);
            }
        }
        match end {
            Some(i) => rest = rest.get(i + 1..).unwrap_or_default(),
            None => return Ok(()),
        }
    }
}

/// Whether `params` is good as [`check_uri_params`] judges it, in one walk, for the
/// usual parameters: `name` or `name=value` of plain parameter characters (no escape).
/// `false` for anything else, which the general check then judges (an escape, an
/// empty name or value, a limit crossed, a bad byte).
#[inline]
fn plain_uri_params(params: &[u8], limits: &Limits) -> bool {
    let mut count = 0usize;
    let mut start = 0;
    // Where the current parameter's '=' is, if it has one.
    let mut eq = None;
    let mut i = 0;
    loop {
        match params.get(i).copied() {
            Some(b) if is_param_char(b) => {}
            Some(b'=') if eq.is_none() && i > start => eq = Some(i),
            end @ (Some(b';') | None) => {
                count += 1;
                if i == start
                    || eq == Some(i - 1)
                    || count > limits.max_params
                    || i - start > limits.max_param_len
                {
                    return false;
                }
                if end.is_none() {
                    return true;
                }
                start = i + 1;
                eq = None;
            }
            _ => return false,
        }
        i += 1;
    }
}

fn check_uri_headers(headers: &[u8], limits: &Limits) -> Result<(), DefectKind> {
    let mut count = 0usize;
    for h in headers.split(|&b| b == b'&') {
        count += 1;
        if count > limits.max_params {
            return Err(DefectKind::TooManyParams);
        }
        if h.len() > limits.max_param_len {
            return Err(DefectKind::ParamTooLong);
        }
        let i = h
            .iter()
            .position(|&b| b == b'=')
            .ok_or(DefectKind::MalformedUri)?;
        let (name, value) = (h.get(..i).unwrap_or(&[]), h.get(i + 1..).unwrap_or(&[]));
        if !is_escaped_run(name, UriClass::HeaderPart, false)
            || !is_escaped_run(value, UriClass::HeaderPart, true)
        {
            return Err(DefectKind::MalformedUri);
        }
    }
    Ok(())
}

fn parse_tel<'a>(raw: &'a [u8], rest: &'a [u8], limits: &Limits) -> Result<TelUri<'a>, DefectKind> {
    let end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
    let number = rest.get(..end).unwrap_or(&[]);
    let params = rest.get(end..).unwrap_or(&[]);
    let params = params.strip_prefix(b";").unwrap_or(params);
    let visual = |b: u8| matches!(b, b'-' | b'.' | b'(' | b')');
    let valid = match number.split_first() {
        Some((b'+', digits)) => {
            digits.iter().any(|&b| is_digit(b)) && digits.iter().all(|&b| is_digit(b) || visual(b))
        }
        Some(_) => {
            number.iter().any(|&b| is_hex(b) || b == b'*' || b == b'#')
                && number
                    .iter()
                    .all(|&b| is_hex(b) || b == b'*' || b == b'#' || visual(b))
        }
        None => false,
    };
    if !valid || number.len() > limits.max_param_len {
        return Err(DefectKind::MalformedUri);
    }
    check_uri_params(params, limits)?;
    Ok(TelUri {
        raw,
        number,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri<'_> {
        match parse_uri(s.as_bytes(), &Limits::default()) {
            Ok(Uri::Sip(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn err(s: &str) -> DefectKind {
        match parse_uri(s.as_bytes(), &Limits::default()) {
            Err(e) => e,
            Ok(u) => panic!("{s} parsed: {u:?}"),
        }
    }

    #[test]
    fn ipv4_parser_agrees_with_std() {
        for text in [
            "0.0.0.0",
            "255.255.255.255",
            "192.168.1.20",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "01.2.3.4",
            "1..2.3",
            "1.2.3.",
            "",
            "1.2.3.4a",
            "1000.1.1.1",
            "10.0.0.0",
            "1.2.3.04",
            "0.0.0.00",
            "255.255.255.256",
            "1.2.3.4.",
            ".1.2.3",
            "1.2.3.4 ",
        ] {
            assert_eq!(
                parse_ipv4(text.as_bytes()),
                text.parse::<Ipv4Addr>().ok(),
                "{text}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn ipv4_parser_matches_std_on_digits_and_dots(s in "[0-9.]{0,17}") {
            proptest::prop_assert_eq!(parse_ipv4(s.as_bytes()), s.parse::<Ipv4Addr>().ok());
        }
    }

    #[test]
    fn full_sip_uri() {
        let u = sip("sips:alice:secret@[2001:db8::1]:5061;transport=tls;lr?subject=hi&x=");
        assert!(u.secure);
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.password, Some(&b"secret"[..]));
        assert_eq!(u.host.ip(), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.host_port, b"[2001:db8::1]:5061");
        assert_eq!(u.param("TRANSPORT"), Some(Some(&b"tls"[..])));
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(u.headers, Some(&b"subject=hi&x="[..]));
    }

    #[test]
    fn torture_user_parts() {
        let u = sip("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com");
        assert_eq!(
            u.user,
            Some(&b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..])
        );
        assert_eq!(u.host, Host::Domain(b"example.com"));
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        let u = sip("sip:null-%00-null@example.com");
        assert_eq!(u.user, Some(&b"null-%00-null"[..]));
    }

    #[test]
    fn defects() {
        assert_eq!(err("sip:al ice@example.com"), DefectKind::InvalidUser);
        assert_eq!(err("sip:al%zzice@example.com"), DefectKind::InvalidUser);
        assert_eq!(err("sip:alice@-bad-.com"), DefectKind::InvalidHost);
        assert_eq!(err("sip:alice@example.123"), DefectKind::InvalidHost);
        assert_eq!(err("sip:alice@256.1.1.1"), DefectKind::InvalidIp);
        assert_eq!(err("sip:alice@[::g]"), DefectKind::InvalidIp);
        assert_eq!(err("sip:alice@example.com:0"), DefectKind::InvalidPort);
        assert_eq!(err("sip:alice@example.com:65536"), DefectKind::InvalidPort);
        assert_eq!(err("sip:alice@example.com:"), DefectKind::InvalidPort);
        assert_eq!(err("sip:alice@example.com;;lr"), DefectKind::MalformedUri);
        assert_eq!(err("<sip:alice@example.com>"), DefectKind::MalformedUri);
        assert_eq!(err("sip:"), DefectKind::InvalidHost);
        assert_eq!(err("tel:"), DefectKind::MalformedUri);
    }

    #[test]
    fn plain_uri_params_agree_with_the_walk() {
        let alphabet = [b'a', b'=', b';', b'%', b'2', b'[', b' '];
        let tight = Limits {
            max_param_len: 3,
            max_params: 2,
            ..Limits::default()
        };
        for limits in [Limits::default(), tight] {
            let mut v: Vec<u8> = Vec::new();
            // Every string of up to six bytes over the alphabet.
            for n in 0..=6u32 {
                for k in 0..alphabet.len().pow(n) {
                    v.clear();
                    let mut k = k;
                    for _ in 0..n {
                        v.push(alphabet[k % alphabet.len()]);
                        k /= alphabet.len();
                    }
                    if plain_uri_params(&v, &limits) {
                        assert_eq!(check_uri_params_walk(&v, &limits), Ok(()), "{v:?}");
                    } else if !v.is_empty() && !v.contains(&b'%') {
                        assert!(check_uri_params_walk(&v, &limits).is_err(), "{v:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn port_bounds() {
        assert_eq!(sip("sip:h.example:65535").port, Some(65535));
        assert_eq!(sip("sip:h.example:1").port, Some(1));
    }

    #[test]
    fn parameter_length_boundary() {
        let limits = Limits::default();
        let at = format!("sip:h.example;p={}", "v".repeat(limits.max_param_len - 2));
        assert!(parse_uri(at.as_bytes(), &limits).is_ok());
        let over = format!("sip:h.example;p={}", "v".repeat(limits.max_param_len - 1));
        assert_eq!(
            parse_uri(over.as_bytes(), &limits),
            Err(DefectKind::ParamTooLong)
        );
    }

    #[test]
    fn tel_and_other_schemes() {
        assert!(matches!(
            parse_uri(
                b"tel:+1-201-555-0123;phone-context=example.com",
                &Limits::default()
            ),
            Ok(Uri::Tel(_))
        ));
        assert!(matches!(
            parse_uri(b"http://www.example.com", &Limits::default()),
            Ok(Uri::Other { .. })
        ));
        assert!(matches!(
            parse_uri(b"isbn:2983792873", &Limits::default()),
            Ok(Uri::Other { .. })
        ));
    }

    #[test]
    fn hostnames() {
        assert!(is_hostname(b"example.com."));
        assert!(is_hostname(b"a-b.example"));
        assert!(!is_hostname(b"a_b.example"));
        assert!(!is_hostname(&[b'a'; 64]));
        assert!(is_hostname(&[b'a'; 63]));
        assert!(!is_hostname(b"a.-b.example"));
        assert!(!is_hostname(b"a-.example"));
        assert!(!is_hostname(b"a..example"));
        assert!(!is_hostname(b".example"));
        assert!(!is_hostname(b"example.9com"));
        assert!(is_hostname(b"9.example.com"));
        assert!(!is_hostname(b"example.com.."));
    }
}
