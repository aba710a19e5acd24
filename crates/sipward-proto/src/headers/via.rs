//! Via (RFC 3261 section 20.42, rport from RFC 3581).

use smallvec::SmallVec;

use super::{parse_params_with, Params};
use crate::defect::DefectKind;
use crate::header::eq_lower_name;
use crate::limits::Limits;
use crate::scan::{is_token, Cursor};
use crate::uri::{parse_host, parse_host_port, parse_ipv4, parse_ipv4_prefix, parse_port, Host};

/// One Via entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// The whole entry as written (one comma-separated element, trimmed).
    pub raw: &'a [u8],
    /// Transport, e.g. `UDP`, as written.
    pub transport: &'a [u8],
    /// `host[:port]` as written.
    pub sent_by: &'a [u8],
    pub host: Host<'a>,
    pub port: Option<u16>,
    pub params: Params<'a>,
    pub branch: Option<&'a [u8]>,
    pub received: Option<&'a [u8]>,
    /// `None`: no rport; `Some(None)`: rport without value; `Some(Some(p))`: filled in.
    pub rport: Option<Option<u16>>,
    pub maddr: Option<&'a [u8]>,
}

impl Via<'_> {
    /// The address in `received`, when there is one.
    pub fn received_ip(&self) -> Option<std::net::IpAddr> {
        self.received.and_then(|r| received_ip(r).ok())
    }
}

/// A `received` value: `via-received = IPv4address / IPv6address` (RFC 3261), so an
/// IPv6 address is written without brackets (RFC 5118 section 4.5); the bracketed form
/// that many stacks write is accepted too.
pub(crate) fn received_ip(v: &[u8]) -> Result<std::net::IpAddr, DefectKind> {
    if v.contains(&b':') && v.first() != Some(&b'[') {
        return std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok())
            .map(std::net::IpAddr::V6)
            .ok_or(DefectKind::InvalidIp);
    }
    parse_host(v)?.ip().ok_or(DefectKind::InvalidIp)
}

/// Parses every entry of one Via header value into `out`, respecting `max`.
pub(crate) fn parse_vias<'a>(
    value: &'a [u8],
    limits: &Limits,
    out: &mut SmallVec<[Via<'a>; 2]>,
) -> Result<(), DefectKind> {
    let mut c = Cursor::new(value);
    loop {
        if out.len() >= limits.max_vias {
            return Err(DefectKind::TooManyVias);
        }
        c.skip_lws();
        out.push(parse_one(&mut c, limits)?);
        c.skip_lws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return Err(DefectKind::MalformedHeader);
        }
    }
}

fn parse_one<'a>(c: &mut Cursor<'a>, limits: &Limits) -> Result<Via<'a>, DefectKind> {
    let start = c.pos();
    let rest = c.rest();
    let transport = if let (Some(b"SIP/2.0/"), Some(t @ (b"UDP " | b"TCP " | b"TLS "))) =
        (rest.get(..8), rest.get(8..12))
    {
        // As nearly always written: two compares instead of three tokens and their
        // separators (which end at the same places; the space after the transport is
        // the white space that must follow it).
        c.set_pos(start + 12);
        c.skip_lws();
        t.get(..3).unwrap_or_default()
    } else {
        if rest.starts_with(b"SIP/2.0/") {
            // One compare instead of two tokens and separators (which end at the same
            // place, white space after the last '/' included).
            c.set_pos(start + 8);
            c.skip_lws();
        } else {
            c.token().ok_or(DefectKind::MalformedHeader)?; // protocol name
            if !c.eat_sep(b'/') {
                return Err(DefectKind::MalformedHeader);
            }
            c.token().ok_or(DefectKind::MalformedHeader)?; // version
            if !c.eat_sep(b'/') {
                return Err(DefectKind::MalformedHeader);
            }
        }
        let transport = c.token().ok_or(DefectKind::MalformedHeader)?;
        if !c.skip_lws() {
            return Err(DefectKind::MalformedHeader);
        }
        transport
    };
    let sent_by_start = c.pos();
    // host, then optional SWS ":" SWS port
    let rest = c.rest();
    let ipv4 = rest
        .first()
        .is_some_and(u8::is_ascii_digit)
        .then(|| parse_ipv4_prefix(rest))
        .flatten()
        .filter(|&(_, len)| !rest.get(len).is_some_and(|&b| is_token(b)));
    let host_text = if let Some((_, len)) = ipv4 {
        // An IPv4 address ending where the token would end (the usual sent-by): the
        // token walk and the host's second parse are spared.
        c.set_pos(sent_by_start + len);
        rest.get(..len).unwrap_or_default()
    } else if c.peek() == Some(b'[') {
        c.take_while(|b| b != b']' && b != b';' && b != b',' && !crate::scan::is_lws(b));
        if !c.eat(b']') {
            return Err(DefectKind::InvalidIp);
        }
        c.slice_from(sent_by_start)
    } else {
        // ':' is not a token character: the token ends at the port's colon.
        c.take_while(is_token)
    };
    let host_end = c.pos();
    let (host, port) = if c.eat_sep(b':') {
        let digits = c.take_while(|b| b.is_ascii_digit());
        let host = match ipv4 {
            Some((addr, _)) => Host::Ipv4(addr, host_text),
            None => parse_host(host_text)?,
        };
        (host, Some(parse_port(digits)?))
    } else {
        c.set_pos(host_end);
        parse_host_port(host_text)?
    };
    let sent_by = c.slice_from(sent_by_start);
    let (params, known) = if let Some((params, known, len)) = plain_params(c.rest(), limits) {
        c.set_pos(c.pos() + len);
        (params, known)
    } else {
        let mut known = ViaParams::default();
        let params = parse_params_with(c, limits, |name, value| known.visit(name, value))?;
        // A syntax error anywhere in the parameters wins over a bad value (as when the
        // values were checked in a second pass), so the value error is reported only now.
        known.error.map_or(Ok(()), Err)?;
        (params, known)
    };
    Ok(Via {
        raw: c.slice_from(start),
        transport,
        sent_by,
        host,
        port,
        params,
        branch: known.branch,
        received: known.received,
        rport: known.rport,
        maddr: known.maddr,
    })
}

/// The parameters as nearly always written: `;name[=value]` with token names and values
/// and no white space, up to the element's end (the end of the value or a comma). Gives
/// the parameters, their known values and their length, as the general walk would;
/// `None` for anything else (white space, a quoted or IPv6 value, a limit reached, a bad
/// value), which that walk then judges from the same place.
#[inline]
fn plain_params<'a>(rest: &'a [u8], limits: &Limits) -> Option<(Params<'a>, ViaParams<'a>, usize)> {
    let token_len = |from: usize| {
        rest.get(from..).map_or(0, |t| {
            t.iter().position(|&b| !is_token(b)).unwrap_or(t.len())
        })
    };
    let mut known = ViaParams::default();
    let mut i = 0usize;
    let mut count = 0usize;
    while let Some(&b) = rest.get(i) {
        if b == b',' {
            break;
        }
        if b != b';' {
            return None;
        }
        let name_start = i + 1;
        // The usual names, written in lower case, are known by one compare (the byte
        // after each is no token byte, so the token ends there too); the value is then
        // stored without the name's second look-up.
        let tail = rest.get(i..).unwrap_or_default();
        let (name_len, usual) = if tail.starts_with(b";branch=") {
            (6, Usual::Branch)
        } else if tail.starts_with(b";received=") {
            (8, Usual::Received)
        } else if tail.starts_with(b";rport") && !tail.get(6).is_some_and(|&b| is_token(b)) {
            (5, Usual::Rport)
        } else {
            (token_len(name_start), Usual::No)
        };
        if name_len == 0 {
            return None;
        }
        let name = rest.get(name_start..name_start + name_len)?;
        i = name_start + name_len;
        let value = if rest.get(i) == Some(&b'=') {
            let value_len = token_len(i + 1);
            if value_len == 0 {
                return None;
            }
            let v = rest.get(i + 1..i + 1 + value_len)?;
            i += 1 + value_len;
            Some(v)
        } else {
            None
        };
        count += 1;
        if i - name_start > limits.max_param_len || count > limits.max_params {
            return None;
        }
        match usual {
            Usual::Branch => known.branch = value,
            Usual::Received => {
                let v = value?;
                // Usually an IPv4 address: read here, without the general host parse.
                if parse_ipv4(v).is_none() {
                    parse_host(v).ok()?.ip()?;
                }
                known.received = Some(v);
            }
            Usual::Rport => known.rport = Some(value.map(parse_port).transpose().ok()?),
            Usual::No => known.take(name, value).ok()?,
        }
    }
    // No parameter at all (the element ends here): the general code's short way.
    let raw = rest.get(1..i)?;
    Some((Params { raw }, known, i))
}

/// Which of the usual Via parameters the plain walk recognized by its literal name.
#[derive(Clone, Copy)]
enum Usual {
    Branch,
    Received,
    Rport,
    No,
}

/// The Via parameters sipward reads, collected while the parameters are parsed. The
/// first bad value is kept in `error`; later parameters are then ignored.
#[derive(Default, Debug, PartialEq)]
struct ViaParams<'a> {
    branch: Option<&'a [u8]>,
    received: Option<&'a [u8]>,
    rport: Option<Option<u16>>,
    maddr: Option<&'a [u8]>,
    error: Option<DefectKind>,
}

impl<'a> ViaParams<'a> {
    #[inline]
    fn visit(&mut self, name: &'a [u8], value: Option<&'a [u8]>) {
        if self.error.is_none() {
            if let Err(e) = self.take(name, value) {
                self.error = Some(e);
            }
        }
    }

    #[inline]
    fn take(&mut self, name: &'a [u8], value: Option<&'a [u8]>) -> Result<(), DefectKind> {
        // The name is a token: its length picks the one candidate, and a single
        // case-insensitive compare confirms it.
        match name.len() {
            6 if eq_lower_name(name, b"branch") => {
                self.branch = Some(value.ok_or(DefectKind::MalformedHeader)?);
            }
            8 if eq_lower_name(name, b"received") => {
                let v = value.ok_or(DefectKind::MalformedHeader)?;
                received_ip(v)?;
                self.received = Some(v);
            }
            5 if eq_lower_name(name, b"rport") => {
                self.rport = Some(value.map(parse_port).transpose()?);
            }
            5 if eq_lower_name(name, b"maddr") => {
                let v = value.ok_or(DefectKind::MalformedHeader)?;
                parse_host(v)?;
                self.maddr = Some(v);
            }
            3 if eq_lower_name(name, b"ttl") => {
                let v = value.ok_or(DefectKind::MalformedHeader)?;
                crate::scan::parse_bounded(v, 255).ok_or(DefectKind::MalformedHeader)?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vias(v: &[u8]) -> Result<SmallVec<[Via<'_>; 2]>, DefectKind> {
        let mut out = SmallVec::new();
        parse_vias(v, &Limits::default(), &mut out).map(|()| out)
    }

    #[test]
    fn folded_torture_via() {
        let v = vias(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].transport, b"UDP");
        assert_eq!(v[0].sent_by, b"192.0.2.2");
        assert_eq!(v[0].branch, Some(&b"390skdjuw"[..]));
    }

    #[test]
    fn list_with_lws_around_separators() {
        let v = vias(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239",
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].sent_by, b"spindle.example.com");
        assert_eq!(v[0].branch, Some(&b"z9hG4bK9ikj8"[..]));
        assert_eq!(v[1].branch, Some(&b"z9hG4bK30239"[..]));
    }

    #[test]
    fn usual_prefix_and_its_variants_agree() {
        for v in [
            &b"SIP/2.0/UDP 10.0.0.1"[..],
            b"SIP/2.0/\r\n UDP 10.0.0.1",
            b"SIP / 2.0 / UDP 10.0.0.1",
            b"sip/2.0/UDP 10.0.0.1",
        ] {
            let via = vias(v).unwrap();
            assert_eq!(
                (via[0].transport, via[0].sent_by),
                (&b"UDP"[..], &b"10.0.0.1"[..])
            );
        }
        assert!(vias(b"SIP/2.0/").is_err());
        assert!(vias(b"SIP/2.0/ ").is_err());
    }

    #[test]
    fn nat_params() {
        let v = vias(b"SIP/2.0/UDP [2001:db8::9]:5070;rport;received=192.0.2.1;maddr=224.0.0.1;ttl=1;branch=z9hG4bKx").unwrap();
        assert_eq!(v[0].sent_by, b"[2001:db8::9]:5070");
        assert_eq!(v[0].port, Some(5070));
        assert_eq!(v[0].rport, Some(None));
        assert_eq!(v[0].received, Some(&b"192.0.2.1"[..]));
        let v = vias(b"SIP/2.0/UDP 10.0.0.1:5060;rport=5062").unwrap();
        assert_eq!(v[0].rport, Some(Some(5062)));
    }

    /// Wherever the plain walk answers, it answers as the general walk does: same
    /// parameters, values and end. Checked on usual and odd parameter lists, every
    /// prefix of them and every single-byte replacement by a telling byte.
    #[test]
    fn plain_params_as_the_general_walk() {
        type Walked<'a> = Option<(Params<'a>, ViaParams<'a>, usize)>;
        fn general<'a>(v: &'a [u8], limits: &Limits) -> Walked<'a> {
            let mut c = Cursor::new(v);
            let mut known = ViaParams::default();
            let r = parse_params_with(&mut c, limits, |n, v| known.visit(n, v));
            let pos = c.pos();
            r.ok()
                .filter(|_| known.error.is_none())
                .map(|p| (p, known, pos))
        }
        let tight = Limits {
            max_param_len: 12,
            max_params: 2,
            ..Limits::default()
        };
        let mut answered = 0;
        for base in [
            &b";branch=z9hG4bK74bf9a1c;rport=5060;received=198.51.100.7"[..],
            b";branch=z9hG4bKnashds7;rport",
            b";rport;branch=z9hG4bKx,SIP/2.0/UDP h",
            b";BRANCH=a;Received=10.0.0.1;maddr=224.0.0.1;ttl=1;lr",
            b";received=host.example;x",
            b";rport=0;ttl=256;maddr=-a",
            b";a=\"q\";b=[::1]; c = d ;e",
            b";tag=x",
            b";rportx;branchy=1;receivedz=2;Branch=q;rport-=1;RPORT",
            b";received=1.2.3.4x;rport=65536;branch=;received=;rport=",
            b";;,",
        ] {
            for limits in [Limits::default(), tight.clone()] {
                for end in 0..=base.len() {
                    let mut v = base.get(..end).unwrap().to_vec();
                    for at in 0..v.len() {
                        for b in [b';', b'=', b',', b' ', b'"', b'[', b'x', b'1', b'.', 0] {
                            let keep = v[at];
                            v[at] = b;
                            if let Some((p, k, len)) = plain_params(&v, &limits) {
                                answered += 1;
                                assert_eq!(Some((p, k, len)), general(&v, &limits), "{v:?}");
                            }
                            v[at] = keep;
                        }
                    }
                    if let Some((p, k, len)) = plain_params(&v, &limits) {
                        assert_eq!(Some((p, k, len)), general(&v, &limits), "{v:?}");
                    }
                }
            }
        }
        assert!(answered > 1000);
    }

    /// The sent-by read as an IPv4 address up front is the host the token walk and
    /// `parse_host` make of it, and anything else still goes their way.
    #[test]
    fn ipv4_sent_by_as_the_token_walk() {
        for sent_by in [
            &b"192.168.1.20:5060"[..],
            b"1.2.3.4",
            b"1.2.3.4;rport",
            b"1.2.3.4 ; rport",
            b"1.2.3.4 : 5060",
            b"1.2.3.4x:5060",
            b"1.2.3.4.5:5060",
            b"1.2.3.4-a.example",
            b"01.2.3.4:5060",
            b"1.2.3.256:5060",
            b"1.2.3.2555",
            b"1.2.3:5060",
            b"255.255.255.255:65535",
            b"1.2.3.4:0",
            b"1.2.3.4,SIP/2.0/UDP h",
            b"1host.example:5060",
        ] {
            let mut v = b"SIP/2.0/UDP ".to_vec();
            v.extend_from_slice(sent_by);
            let token = sent_by
                .iter()
                .position(|&b| !is_token(b))
                .map_or(sent_by, |n| &sent_by[..n]);
            let got = vias(&v).map(|via| via[0].host.ip());
            match parse_host(token) {
                Ok(host) => {
                    if let Ok(ip) = got {
                        assert_eq!(ip, host.ip(), "{sent_by:?}");
                    }
                }
                Err(e) => assert_eq!(got, Err(e), "{sent_by:?}"),
            }
        }
        let v = vias(b"SIP/2.0/UDP 10.0.0.1 : 5062 ;branch=z9hG4bKx").unwrap();
        assert_eq!(v[0].sent_by, b"10.0.0.1 : 5062");
        assert_eq!(v[0].port, Some(5062));
        assert!(matches!(v[0].host, Host::Ipv4(_, b"10.0.0.1")));
    }

    #[test]
    fn defects() {
        assert!(vias(b"SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert_eq!(
            vias(b"SIP/2.0/UDP 10.0.0.1:99999").unwrap_err(),
            DefectKind::InvalidPort
        );
        assert_eq!(
            vias(b"SIP/2.0/UDP 10.0.0.1;received=host.example").unwrap_err(),
            DefectKind::InvalidIp
        );
        // A syntax error later in the parameters wins over an earlier bad value.
        assert_eq!(
            vias(b"SIP/2.0/UDP 10.0.0.1;received=host.example;;").unwrap_err(),
            DefectKind::MalformedHeader
        );
        assert_eq!(
            vias(b"SIP/2.0/UDP 10.0.0.1;rport=0;received=host.example").unwrap_err(),
            DefectKind::InvalidPort
        );
        assert!(vias(b"SIP/2.0/UDP").is_err());
        assert!(vias(b"SIP/2.0 host").is_err());
    }
}
