//! SDP (RFC 8866): what a SIP ALG needs to find and rewrite media addresses.
//!
//! Parses the session-level origin, name, connection and direction, and every media
//! section's port, protocol, formats, connection, `a=rtcp` (RFC 3605), direction and
//! `a=rtpmap`. Every other line is checked for `x=value` syntax and kept as written.
//! All slices borrow the body, itself a slice of the datagram, so the edit layer can
//! replace them in place.
//!
//! # Two paths
//!
//! Every INVITE and its answers carry SDP, so its parse weighs on the call rate. The
//! general path (`general_line`, here) reads one line of any form, judges it in full and
//! names what is wrong; it is the reference. The fast path (`fast.rs`) reads the usual
//! lines in their usual exact forms (`IN IP4` and a dotted quad, plain ports, `a=rtpmap`
//! as phones write it) a word at a time, and hands every other line, errors included, to
//! the general path, which reads it again from its start. So the verdicts are the general
//! path's alone, and the fast path only has to be right about what it takes; a test here
//! (`fast_path_agrees_with_general_path`) compares the two on usual lines and near misses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smallvec::SmallVec;

use crate::limits::Limits;
use crate::scan::{
    digit_run, find_byte, find_cr_lf_nul, find_non_graphic_or, parse_bounded, space_bytes,
};
use crate::uri::{is_hostname, parse_ipv4};

mod fast;
use fast::fast_lines;

/// Address type of `o=` and `c=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrType {
    Ip4,
    Ip6,
}

/// Media direction attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    pub username: &'a [u8],
    pub session_id: &'a [u8],
    pub session_version: &'a [u8],
    pub net_type: &'a [u8],
    pub addr_type: AddrType,
    pub address: &'a [u8],
}

/// `c=IN IP4 <address>[/ttl[/count]]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    pub addr_type: AddrType,
    /// The address token only, without `/ttl` or `/count`.
    pub address: &'a [u8],
    /// `None` when the address is a host name.
    pub ip: Option<IpAddr>,
    /// The whole line, without its line ending.
    pub line: &'a [u8],
}

/// `a=rtcp:<port> [IN IP4 <address>]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rtcp<'a> {
    pub port: u16,
    pub port_token: &'a [u8],
    pub address: Option<&'a [u8]>,
    pub ip: Option<IpAddr>,
}

/// `a=rtpmap:<payload type> <encoding name>/<clock rate>[/<parameters>]`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpMap<'a> {
    pub payload_type: u8,
    pub encoding: &'a [u8],
    /// Missing in some real offers (RFC 4475's torture messages have `a=rtpmap:31 LPC`).
    pub clock_rate: Option<u32>,
    pub params: Option<&'a [u8]>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media<'a> {
    pub kind: &'a [u8],
    pub port: u16,
    pub port_token: &'a [u8],
    pub port_count: Option<u16>,
    pub proto: &'a [u8],
    pub formats: &'a [u8],
    pub connection: Option<Connection<'a>>,
    pub rtcp: Option<Rtcp<'a>>,
    pub direction: Option<Direction>,
    /// From the `m=` line through the end of the section's last line.
    pub section: &'a [u8],
}

impl<'a> Media<'a> {
    /// The section's `a=rtpmap` attributes, in order. They were checked when the body
    /// was parsed; reading them again here spares every message an allocation.
    pub fn rtpmaps(&self) -> impl Iterator<Item = RtpMap<'a>> {
        lines(self.section).filter_map(|(line, _)| {
            line.strip_prefix(b"a=rtpmap:")
                .and_then(|v| parse_rtpmap(v).ok())
        })
    }

    /// The direction in force: the media's own, else the session's, else sendrecv.
    pub fn effective_direction(&self, session: Option<Direction>) -> Direction {
        self.direction.or(session).unwrap_or(Direction::SendRecv)
    }

    /// Port 0: the stream is declined or removed.
    pub fn is_declined(&self) -> bool {
        self.port == 0
    }
}

/// A parsed SDP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp<'a> {
    pub body: &'a [u8],
    pub origin: Origin<'a>,
    pub session_name: &'a [u8],
    pub connection: Option<Connection<'a>>,
    pub direction: Option<Direction>,
    /// Inline for up to two sections (audio and video); more spill to the heap, up to
    /// `Limits::max_sdp_media`.
    pub media: SmallVec<[Media<'a>; 2]>,
}

impl<'a> Sdp<'a> {
    /// Every address in the SDP that names a host: `o=`, session and media `c=`, and
    /// `a=rtcp` addresses. Topology hiding checks and rewrites these.
    pub fn addresses(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        std::iter::once(self.origin.address)
            .chain(self.connection.map(|c| c.address))
            .chain(self.media.iter().flat_map(|m| {
                m.connection
                    .map(|c| c.address)
                    .into_iter()
                    .chain(m.rtcp.and_then(|r| r.address))
            }))
    }
}

/// What is wrong with an SDP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpError {
    TooLarge,
    TooManyLines,
    TooManyMedia,
    BadLine,
    MissingVersion,
    BadVersion,
    MissingOrigin,
    BadOrigin,
    MissingSessionName,
    MissingTiming,
    BadTiming,
    BadConnection,
    MissingConnection,
    BadMedia,
    BadPort,
    BadAttribute,
    ValueTooLong,
    OutOfOrder,
    RepeatedVersion,
    RepeatedOrigin,
    RepeatedSessionName,
    RepeatedConnection,
}

impl SdpError {
    pub fn as_str(&self) -> &'static str {
        match self {
            SdpError::TooLarge => "SDP body too large",
            SdpError::TooManyLines => "too many SDP lines",
            SdpError::TooManyMedia => "too many SDP media sections",
            SdpError::BadLine => "malformed SDP line",
            SdpError::MissingVersion => "SDP v= line missing",
            SdpError::BadVersion => "SDP version not 0",
            SdpError::MissingOrigin => "SDP o= line missing",
            SdpError::BadOrigin => "SDP o= line malformed",
            SdpError::MissingSessionName => "SDP s= line missing",
            SdpError::MissingTiming => "SDP t= line missing",
            SdpError::BadTiming => "SDP t= line malformed",
            SdpError::BadConnection => "SDP c= line malformed",
            SdpError::MissingConnection => "SDP media without connection address",
            SdpError::BadMedia => "SDP m= line malformed",
            SdpError::BadPort => "SDP port invalid",
            SdpError::BadAttribute => "SDP attribute malformed",
            SdpError::ValueTooLong => "SDP line too long",
            SdpError::OutOfOrder => "SDP session-level line after the first m= line",
            SdpError::RepeatedVersion => "SDP v= line repeated",
            SdpError::RepeatedOrigin => "SDP o= line repeated",
            SdpError::RepeatedSessionName => "SDP s= line repeated",
            SdpError::RepeatedConnection => "SDP c= line repeated in one section",
        }
    }
}

impl fmt::Display for SdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Splits the body into lines (CRLF, or bare LF tolerated), each without its ending.
/// Yields `(line, line_with_ending)`.
fn lines(body: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, full, next) = split_line(rest, memchr::memchr(b'\n', rest));
        rest = next;
        Some((line, full))
    })
}

/// Cuts the first line off `rest`, given where its LF is (none: the rest is the last
/// line): `(line without CR LF, line with its ending, what follows)`.
fn split_line(rest: &[u8], lf: Option<usize>) -> (&[u8], &[u8], &[u8]) {
    match lf {
        Some(i) => {
            let full = rest.get(..i + 1).unwrap_or(rest);
            let line = rest.get(..i).unwrap_or(rest);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (line, full, rest.get(i + 1..).unwrap_or(&[]))
        }
        None => (rest, rest, &[]),
    }
}

/// Space-separated fields; a run of spaces is one separator, and leading or trailing
/// spaces yield no empty field.
fn fields(v: &[u8]) -> Fields<'_> {
    Fields(v)
}

struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.0.iter().position(|&b| b != b' ')?;
        let s = self.0.get(start..).unwrap_or_default();
        let (field, rest) = split_at_byte(s, b' ');
        self.0 = rest;
        Some(field)
    }
}

/// Exactly `N` space-separated fields (as [`fields`] splits them), or `None` for fewer
/// or more. The spaces are found eight bytes at a time (all of a word's at once); a field
/// is what lies between two of them, when not empty.
#[inline]
fn exact_fields<const N: usize>(v: &[u8]) -> Option<[&[u8]; N]> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut n = 0;
    let mut start = 0;
    let mut field_ends_at = |end: usize| -> Option<()> {
        if end > start {
            *out.get_mut(n)? = v.get(start..end).unwrap_or_default();
            n += 1;
        }
        start = end + 1;
        Some(())
    };
    let mut chunks = v.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut spaces = space_bytes(chunk);
        while spaces != 0 {
            field_ends_at(base + spaces.trailing_zeros() as usize / 8)?;
            spaces &= spaces - 1;
        }
        base += 8;
    }
    for (i, &b) in chunks.remainder().iter().enumerate() {
        if b == b' ' {
            field_ends_at(base + i)?;
        }
    }
    field_ends_at(v.len())?;
    (n == N).then_some(out)
}

/// `(before, from)`: `s` split at the first `sep`, which stays at the start of the
/// second part; `(s, [])` when there is none.
fn split_at_byte(s: &[u8], sep: u8) -> (&[u8], &[u8]) {
    let end = s.iter().position(|&b| b == sep).unwrap_or(s.len());
    s.split_at_checked(end).unwrap_or((s, &[]))
}

fn digits(s: &[u8]) -> bool {
    !s.is_empty() && digit_run(s) == s.len()
}

#[inline]
fn parse_u16(s: &[u8]) -> Option<u16> {
    // At most five digits: a port, not a number padded with zeros.
    if s.len() > 5 {
        return None;
    }
    parse_bounded(s, u64::from(u16::MAX)).and_then(|v| u16::try_from(v).ok())
}

/// The value of at most nine decimal digits (checked by the caller), without a UTF-8
/// round trip through `str::parse`.
fn decimal(s: &[u8]) -> u32 {
    s.iter().fold(0u32, |v, &b| {
        v.wrapping_mul(10).wrapping_add(u32::from(b - b'0'))
    })
}

fn addr_type(s: &[u8]) -> Option<AddrType> {
    match s {
        b"IP4" => Some(AddrType::Ip4),
        b"IP6" => Some(AddrType::Ip6),
        _ => None,
    }
}

/// Checks an address token for its type; returns the IP if it is one.
#[inline]
fn check_address(t: AddrType, a: &[u8]) -> Result<Option<IpAddr>, ()> {
    match t {
        AddrType::Ip4 => {
            if let Some(ip) = parse_ipv4(a) {
                return Ok(Some(IpAddr::V4(ip)));
            }
        }
        AddrType::Ip6 => {
            let text = std::str::from_utf8(a).map_err(|_| ())?;
            if let Ok(ip) = text.parse::<Ipv6Addr>() {
                return Ok(Some(IpAddr::V6(ip)));
            }
        }
    }
    if !a.iter().all(|&b| b.is_ascii_digit() || b == b'.') && is_hostname(a) {
        Ok(None)
    } else {
        Err(())
    }
}

fn parse_connection<'a>(line: &'a [u8], v: &'a [u8]) -> Result<Connection<'a>, SdpError> {
    // The usual line, "IN IP4 a.b.c.d": an address made of digits and dots only has
    // no space, slash or anything else the general path below looks for.
    if let Some(ip) = v.strip_prefix(b"IN IP4 ").and_then(|addr| {
        let ip = parse_ipv4(addr)?;
        Some((addr, ip))
    }) {
        return Ok(Connection {
            addr_type: AddrType::Ip4,
            address: ip.0,
            ip: Some(IpAddr::V4(ip.1)),
            line,
        });
    }
    // Nearly always "IN IP4 <address>" with single spaces: then the address is the
    // rest, if it is one field (non-empty, no space), as the general split finds.
    let usual = v
        .strip_prefix(b"IN IP4 ")
        .filter(|addr| !addr.is_empty() && find_byte(addr, b' ').is_none());
    let (t, addr) = match usual {
        Some(addr) => (AddrType::Ip4, addr),
        None => {
            let Some([b"IN", t, addr]) = exact_fields::<3>(v) else {
                return Err(SdpError::BadConnection);
            };
            (addr_type(t).ok_or(SdpError::BadConnection)?, addr)
        }
    };
    // Optional /ttl (IP4 multicast) and /count: numbers only, at most two. Usually
    // there is neither, which one search says.
    let address = match find_byte(addr, b'/') {
        None => addr,
        Some(_) => {
            let mut parts = addr.split(|&b| b == b'/');
            let address = parts.next().unwrap_or_default();
            for (i, p) in parts.enumerate() {
                if i >= 2 || !digits(p) || p.len() > 5 {
                    return Err(SdpError::BadConnection);
                }
            }
            address
        }
    };
    let ip = check_address(t, address).map_err(|()| SdpError::BadConnection)?;
    Ok(Connection {
        addr_type: t,
        address,
        ip,
        line,
    })
}

fn parse_origin(v: &[u8]) -> Result<Origin<'_>, SdpError> {
    let Some([username, session_id, session_version, net_type, t, address]) = exact_fields::<6>(v)
    else {
        return Err(SdpError::BadOrigin);
    };
    if !digits(session_id) || !digits(session_version) || net_type != b"IN" {
        return Err(SdpError::BadOrigin);
    }
    let addr_type = addr_type(t).ok_or(SdpError::BadOrigin)?;
    check_address(addr_type, address).map_err(|()| SdpError::BadOrigin)?;
    Ok(Origin {
        username,
        session_id,
        session_version,
        net_type,
        addr_type,
        address,
    })
}

/// An `m=` line, as a media section of one line, written into `out` (a media section
/// is some 200 bytes: built where it is kept instead of moved there). On an error `out`
/// is left part written.
fn parse_media_line<'a>(v: &'a [u8], full: &'a [u8], out: &mut Media<'a>) -> Result<(), SdpError> {
    // `kind port proto formats`, split at single spaces (formats keeps the rest), by
    // word searches rather than a splitting iterator.
    let split = |s: &'a [u8]| {
        let i = find_byte(s, b' ')?;
        Some((s.get(..i)?, s.get(i + 1..)?))
    };
    let Some((kind, rest)) = split(v) else {
        return Err(SdpError::BadMedia);
    };
    let Some((port_part, rest)) = split(rest) else {
        return Err(SdpError::BadMedia);
    };
    let Some((proto, formats)) = split(rest) else {
        return Err(SdpError::BadMedia);
    };
    // Non-empty and all ASCII graphic (the space is not graphic: it stands in for no
    // extra byte).
    let token_ok = |s: &[u8]| !s.is_empty() && find_non_graphic_or(s, b' ').is_none();
    if !token_ok(kind) || !token_ok(proto) || formats.iter().all(u8::is_ascii_whitespace) {
        return Err(SdpError::BadMedia);
    }
    let (port_token, count) = match find_byte(port_part, b'/') {
        Some(i) => (
            port_part.get(..i).unwrap_or_default(),
            port_part.get(i + 1..),
        ),
        None => (port_part, None),
    };
    let port = parse_u16(port_token).ok_or(SdpError::BadPort)?;
    let count = match count {
        Some(c) => Some(parse_u16(c).filter(|&c| c > 0).ok_or(SdpError::BadPort)?),
        None => None,
    };
    *out = Media {
        kind,
        port,
        port_token,
        port_count: count,
        proto,
        formats,
        connection: None,
        rtcp: None,
        direction: None,
        section: full,
    };
    Ok(())
}

fn parse_rtcp(v: &[u8]) -> Result<Rtcp<'_>, SdpError> {
    let mut f = fields(v);
    let port_token = f.next().ok_or(SdpError::BadAttribute)?;
    let port = parse_u16(port_token).ok_or(SdpError::BadAttribute)?;
    match (f.next(), f.next(), f.next(), f.next()) {
        (None, ..) => Ok(Rtcp {
            port,
            port_token,
            address: None,
            ip: None,
        }),
        (Some(b"IN"), Some(t), Some(a), None) => {
            let t = addr_type(t).ok_or(SdpError::BadAttribute)?;
            let ip = check_address(t, a).map_err(|()| SdpError::BadAttribute)?;
            Ok(Rtcp {
                port,
                port_token,
                address: Some(a),
                ip,
            })
        }
        _ => Err(SdpError::BadAttribute),
    }
}

// Always inlined into the body parser, which only wants the verdict: the fields it
// would build are then never materialized.
#[inline(always)]
fn parse_rtpmap(v: &[u8]) -> Result<RtpMap<'_>, SdpError> {
    let bad = SdpError::BadAttribute;
    // payload type: one to five digits (leading zeros allowed), at most 127, then a
    // space.
    let (pt, after_pt) = leading_digits(v);
    if pt.is_empty() || pt.len() > 5 {
        return Err(bad);
    }
    let Some((b' ', rest)) = after_pt.split_first() else {
        return Err(bad);
    };
    let payload_type = u8::try_from(decimal(pt))
        .ok()
        .filter(|&p| p <= 127)
        .ok_or(bad)?;
    // encoding "/" clock-rate [ "/" parameters ]; the parameters may hold more slashes.
    let rest = trim_ascii_whitespace(rest);
    let e = find_non_graphic_or(rest, b'/').unwrap_or(rest.len());
    let (encoding, after_encoding) = rest.split_at_checked(e).unwrap_or((rest, &[]));
    if encoding.is_empty() {
        return Err(bad);
    }
    let (clock_rate, params) = match after_encoding.split_first() {
        None => (None, None),
        Some((b'/', clock)) => {
            let (clock, after_clock) = leading_digits(clock);
            if clock.is_empty() || clock.len() > 9 {
                return Err(bad);
            }
            match after_clock.split_first() {
                None => (Some(decimal(clock)), None),
                Some((b'/', params)) => (Some(decimal(clock)), Some(params)),
                Some(_) => return Err(bad),
            }
        }
        Some(_) => return Err(bad),
    };
    Ok(RtpMap {
        payload_type,
        encoding,
        clock_rate,
        params,
    })
}

/// `s` split after its leading run of ASCII digits (which may be empty).
#[inline]
fn leading_digits(s: &[u8]) -> (&[u8], &[u8]) {
    // A byte walk: these runs (payload types, clock rates) are shorter than a word.
    let n = s
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    s.split_at_checked(n).unwrap_or((s, &[]))
}

/// `trim_ascii`, with the usual case (nothing to trim) settled by two byte tests.
#[inline]
fn trim_ascii_whitespace(s: &[u8]) -> &[u8] {
    let untrimmed = |b: Option<&u8>| b.is_none_or(|b| !b.is_ascii_whitespace());
    if untrimmed(s.first()) && untrimmed(s.last()) {
        s
    } else {
        s.trim_ascii()
    }
}

/// The attributes the body parser reads; the value is what follows the name's colon.
enum Attribute<'a> {
    Direction(Direction),
    Rtcp(Option<&'a [u8]>),
    RtpMap(Option<&'a [u8]>),
    Other,
}

/// Which attribute an `a=` line's value (`name[:value]`) is. The known names hold no
/// colon, so a name is one of them exactly when the value is that name alone or that
/// name and a colon: compared at the start, without searching for the colon first.
#[inline]
fn known_attribute(value: &[u8]) -> Attribute<'_> {
    // (name, what follows it): the name is exact when nothing or a colon follows.
    let after = |name: &[u8]| match value.strip_prefix(name)? {
        [] => Some(None),
        [b':', attr_value @ ..] => Some(Some(attr_value)),
        _ => None,
    };
    let direction = |name: &[u8], d| after(name).map(|_| Attribute::Direction(d));
    let found = match value.first() {
        Some(b'r') => after(b"rtpmap")
            .map(Attribute::RtpMap)
            .or_else(|| after(b"rtcp").map(Attribute::Rtcp))
            .or_else(|| direction(b"recvonly", Direction::RecvOnly)),
        Some(b's') => direction(b"sendrecv", Direction::SendRecv)
            .or_else(|| direction(b"sendonly", Direction::SendOnly)),
        Some(b'i') => direction(b"inactive", Direction::Inactive),
        _ => None,
    };
    found.unwrap_or(Attribute::Other)
}

/// Parses and checks an SDP body against `limits`.
pub fn parse<'a>(body: &'a [u8], limits: &Limits) -> Result<Sdp<'a>, SdpError> {
    let mut sdp = Sdp::empty(body);
    parse_into(body, limits, &mut sdp)?;
    Ok(sdp)
}

impl<'a> Sdp<'a> {
    /// A placeholder that [`parse_into`] fills.
    pub(crate) fn empty(body: &'a [u8]) -> Self {
        Sdp {
            body,
            origin: Origin {
                username: &[],
                session_id: &[],
                session_version: &[],
                net_type: &[],
                addr_type: AddrType::Ip4,
                address: &[],
            },
            session_name: &[],
            connection: None,
            direction: None,
            media: SmallVec::new(),
        }
    }
}

const SEEN_V: u8 = 1;
const SEEN_O: u8 = 2;
const SEEN_S: u8 = 4;
const SEEN_ALL: u8 = SEEN_V | SEEN_O | SEEN_S;

/// The first session-level line missing, once the session level is over (at the first
/// m= line or the end of the body).
fn missing_session_line(st: &Progress) -> Result<(), SdpError> {
    if st.seen & SEEN_V == 0 {
        Err(SdpError::MissingVersion)
    } else if st.seen & SEEN_O == 0 {
        Err(SdpError::MissingOrigin)
    } else if st.seen & SEEN_S == 0 {
        Err(SdpError::MissingSessionName)
    } else if !st.timing {
        Err(SdpError::MissingTiming)
    } else {
        Ok(())
    }
}

/// Where the body parse stands between lines.
struct Progress {
    /// Offset of the next line.
    pos: usize,
    /// Lines so far, blank ones not counted.
    count: usize,
    /// Which of v=, o= and s= were seen (`SEEN_V`, `SEEN_O`, `SEEN_S`). They may come
    /// in any order, with other session-level lines among them, before the first m=.
    seen: u8,
    /// A t= line was seen.
    timing: bool,
    /// Offsets of the last media section: its m= line through the last line extended
    /// over. Stored into the section itself when the next m= line or the body ends.
    section: std::ops::Range<usize>,
    /// The origin's address, when the fast path read it as a dotted quad: a c= line
    /// nearly always repeats it.
    origin_ip: Option<Ipv4Addr>,
}

impl Progress {
    /// Before the body's first line.
    fn start() -> Self {
        Self {
            pos: 0,
            count: 0,
            seen: 0,
            timing: false,
            section: 0..0,
            origin_ip: None,
        }
    }
}

/// [`parse`] into `out` (made by [`Sdp::empty`] for this body), so that the message can
/// hold the SDP where it is built instead of copying some 600 bytes into place. On an
/// error `out` is left part filled.
pub(crate) fn parse_into<'a>(
    body: &'a [u8],
    limits: &Limits,
    out: &mut Sdp<'a>,
) -> Result<(), SdpError> {
    if body.len() > limits.max_sdp_len {
        return Err(SdpError::TooLarge);
    }
    let mut st = Progress::start();
    loop {
        fast_lines(body, limits, out, &mut st);
        if st.pos >= body.len() {
            break;
        }
        general_line(body, limits, out, &mut st)?;
    }
    finish(body, out, st)
}

/// The checks on the whole body, once every line has passed.
fn finish<'a>(body: &'a [u8], out: &mut Sdp<'a>, st: Progress) -> Result<(), SdpError> {
    let media = &mut out.media;
    if let Some(m) = media.last_mut() {
        m.section = body.get(st.section.clone()).unwrap_or(m.section);
    }
    missing_session_line(&st)?;
    if out.connection.is_none()
        && media
            .iter()
            .any(|m| m.connection.is_none() && !m.is_declined())
    {
        return Err(SdpError::MissingConnection);
    }
    Ok(())
}

/// The general path: one line, whatever it holds, judged in full. The fast path leaves
/// it every line it does not take, errors included.
fn general_line<'a>(
    body: &'a [u8],
    limits: &Limits,
    out: &mut Sdp<'a>,
    st: &mut Progress,
) -> Result<(), SdpError> {
    let media = &mut out.media;
    let rest = body.get(st.pos..).unwrap_or_default();
    // The line (CRLF, or bare LF tolerated) and whether it is clean: a NUL, or a
    // CR that is not part of its ending, makes it malformed. One search for the
    // three bytes finds the end of a clean line and proves it clean at once.
    let (line_len, full_len, clean) = match find_cr_lf_nul(rest) {
        Some(i) => match (rest.get(i), rest.get(i + 1)) {
            (Some(b'\n'), _) => (i, i + 1, true),
            (Some(b'\r'), Some(b'\n')) => (i, i + 2, true),
            _ => match find_byte(rest.get(i..).unwrap_or_default(), b'\n') {
                Some(j) => {
                    let lf = i + j;
                    let cr = lf > 0 && rest.get(lf - 1) == Some(&b'\r');
                    (lf - usize::from(cr), lf + 1, false)
                }
                None => (rest.len(), rest.len(), false),
            },
        },
        None => (rest.len(), rest.len(), true),
    };
    let line = rest.get(..line_len).unwrap_or_default();
    let full = rest.get(..full_len).unwrap_or_default();
    st.pos += full_len;
    let pos = st.pos;
    if line.is_empty() {
        return Ok(()); // tolerate blank lines (trailing ones above all)
    }
    st.count += 1;
    if st.count > limits.max_sdp_lines {
        return Err(SdpError::TooManyLines);
    }
    if line.len() > limits.max_param_len {
        return Err(SdpError::ValueTooLong);
    }
    let (Some(&kind), Some(b'=')) = (line.first(), line.get(1).copied()) else {
        return Err(SdpError::BadLine);
    };
    if !kind.is_ascii_lowercase() {
        return Err(SdpError::BadLine);
    }
    let value = line.get(2..).unwrap_or_default();
    if !clean {
        return Err(SdpError::BadLine);
    }
    // v, o and s once each, in any order, at session level (RFC 8866 orders them, but
    // user agents accept other orders, so a gateway should pass them).
    if let b'v' | b'o' | b's' = kind {
        if !media.is_empty() {
            return Err(SdpError::OutOfOrder);
        }
        let (bit, repeated) = match kind {
            b'v' => (SEEN_V, SdpError::RepeatedVersion),
            b'o' => (SEEN_O, SdpError::RepeatedOrigin),
            _ => (SEEN_S, SdpError::RepeatedSessionName),
        };
        if st.seen & bit != 0 {
            return Err(repeated);
        }
        match kind {
            b'v' if value != b"0" => return Err(SdpError::BadVersion),
            b'o' => out.origin = parse_origin(value)?,
            // Empty is allowed: real phones send `s=` (RFC 5118 section 4.8).
            b's' => out.session_name = value,
            _ => {}
        }
        st.seen |= bit;
        return Ok(());
    }
    // Extend the current media section over this line; an m= line starts the next.
    if kind != b'm' {
        st.section.end = pos;
    }
    match kind {
        b'm' => {
            // A session line still missing here is reported at the end, unless it
            // turns up after this m= (then misplaced, not missing, is the defect).
            if media.len() >= limits.max_sdp_media {
                return Err(SdpError::TooManyMedia);
            }
            if let Some(m) = media.last_mut() {
                m.section = body.get(st.section.clone()).unwrap_or(m.section);
            }
            media.push(Media {
                kind: &[],
                port: 0,
                port_token: &[],
                port_count: None,
                proto: &[],
                formats: &[],
                connection: None,
                rtcp: None,
                direction: None,
                section: full,
            });
            if let Some(m) = media.last_mut() {
                parse_media_line(value, full, m)?;
            }
            st.section = pos - full.len()..pos;
        }
        b'c' => {
            let c = parse_connection(line, value)?;
            match media.last_mut() {
                Some(m) if m.connection.is_none() => m.connection = Some(c),
                None if out.connection.is_none() => out.connection = Some(c),
                _ => return Err(SdpError::RepeatedConnection),
            }
        }
        b't' => {
            if !media.is_empty() {
                return Err(SdpError::OutOfOrder);
            }
            // Nearly always "t=0 0" (unbounded): that is two numbers.
            if value != b"0 0" {
                let Some([a, b]) = exact_fields::<2>(value) else {
                    return Err(SdpError::BadTiming);
                };
                if !digits(a) || !digits(b) {
                    return Err(SdpError::BadTiming);
                }
            }
            st.timing = true;
        }
        b'a' => match known_attribute(value) {
            Attribute::Direction(d) => match media.last_mut() {
                Some(m) => m.direction = Some(d),
                None => out.direction = Some(d),
            },
            Attribute::Rtcp(attr_value) => {
                let r = parse_rtcp(attr_value.ok_or(SdpError::BadAttribute)?)?;
                if let Some(m) = media.last_mut() {
                    m.rtcp = Some(r);
                }
            }
            Attribute::RtpMap(attr_value) => {
                parse_rtpmap(attr_value.ok_or(SdpError::BadAttribute)?)?;
            }
            Attribute::Other => {}
        },
        b'i' | b'b' | b'k' => {}
        b'u' | b'e' | b'p' | b'r' | b'z' => {
            if !media.is_empty() {
                return Err(SdpError::OutOfOrder);
            }
        }
        _ => return Err(SdpError::BadLine),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    static OFFER: &[u8] = b"v=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp:49171 IN IP4 10.0.0.6\r\na=sendrecv\r\nm=video 51372 RTP/AVP 31\r\nc=IN IP4 10.0.0.7\r\na=rtpmap:31 H261/90000\r\na=sendonly\r\n";

    fn sdp(b: &[u8]) -> Result<Sdp<'_>, SdpError> {
        parse(b, &Limits::default())
    }

    fn within(outer: &[u8], inner: &[u8]) -> bool {
        let o = outer.as_ptr() as usize;
        let i = inner.as_ptr() as usize;
        i >= o && i + inner.len() <= o + outer.len()
    }

    #[test]
    fn audio_and_video_offer() {
        let s = sdp(OFFER).unwrap();
        assert_eq!(s.origin.address, b"10.0.0.5");
        assert_eq!(s.connection.unwrap().ip, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(s.media.len(), 2);
        let a = &s.media[0];
        assert_eq!(
            (a.kind, a.port, a.proto, a.formats),
            (&b"audio"[..], 49170, &b"RTP/AVP"[..], &b"0 8 101"[..])
        );
        let rtpmaps: Vec<_> = a.rtpmaps().collect();
        assert_eq!(rtpmaps.len(), 2);
        assert_eq!(rtpmaps[1].encoding, b"telephone-event");
        let rtcp = a.rtcp.unwrap();
        assert_eq!((rtcp.port, rtcp.address), (49171, Some(&b"10.0.0.6"[..])));
        assert_eq!(a.effective_direction(s.direction), Direction::SendRecv);
        let v = &s.media[1];
        assert_eq!(v.connection.unwrap().address, b"10.0.0.7");
        assert_eq!(v.effective_direction(s.direction), Direction::SendOnly);
        assert!(v.section.starts_with(b"m=video") && v.section.ends_with(b"a=sendonly\r\n"));
        // The audio section ends with its own last line, before the video m= line.
        assert!(a.section.starts_with(b"m=audio") && a.section.ends_with(b"\r\n"));
        assert!(!a.section.windows(3).any(|w| w == b"\nm="));
        let addrs: Vec<&[u8]> = s.addresses().collect();
        assert_eq!(
            addrs,
            vec![&b"10.0.0.5"[..], b"10.0.0.5", b"10.0.0.6", b"10.0.0.7"]
        );
        assert!(addrs.iter().all(|a| within(OFFER, a)));
        assert!(within(OFFER, a.port_token) && a.port_token == b"49170");
    }

    #[test]
    fn hold_variants_and_declined_streams() {
        let s = sdp(b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns= \r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=inactive\r\nm=audio 0 RTP/AVP 0\r\n").unwrap();
        assert_eq!(s.connection.unwrap().ip, Some("0.0.0.0".parse().unwrap()));
        assert_eq!(
            s.media[0].effective_direction(s.direction),
            Direction::Inactive
        );
        assert!(s.media[0].is_declined());
        // A declined stream needs no connection.
        assert!(
            sdp(b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n")
                .is_ok()
        );
    }

    #[test]
    fn ipv6_fqdn_and_bare_lf() {
        let s = sdp(b"v=0\no=- 1 2 IN IP6 2001:db8::1\ns=-\nc=IN IP6 2001:db8::2\nt=0 0\nm=audio 5004/2 RTP/AVP 0").unwrap();
        assert_eq!(s.media[0].port_count, Some(2));
        assert_eq!(
            s.connection.unwrap().ip,
            Some("2001:db8::2".parse().unwrap())
        );
        let s = sdp(b"v=0\r\no=- 1 2 IN IP4 host.example.com\r\ns=-\r\nc=IN IP4 media.example.com\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n").unwrap();
        assert_eq!(s.connection.unwrap().ip, None);
        assert!(sdp(b"v=0\r\no=- 1 2 IN IP4 224.2.1.1\r\ns=-\r\nc=IN IP4 224.2.1.1/127/3\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n").is_ok());
    }

    #[test]
    fn session_lines_in_any_order_and_an_empty_session_name() {
        // The issue's example: o= after s=.
        let s = sdp(b"v=0\r\ns=-\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n").unwrap();
        assert_eq!(s.origin.address, b"1.2.3.4");
        assert_eq!(s.session_name, b"-");
        // Every session line before v=, c= and t= among them.
        let s = sdp(b"t=0 0\r\nc=IN IP4 1.2.3.4\r\ns=x\r\no=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\nm=audio 5004 RTP/AVP 0\r\n").unwrap();
        assert_eq!(
            (s.origin.address, s.session_name),
            (&b"1.2.3.4"[..], &b"x"[..])
        );
        assert_eq!(s.media.len(), 1);
        // RFC 5118 section 4.8: an empty s= (and c= per media section, one of them IPv6).
        let body = b"v=0\r\no=bob 280744730 28977631 IN IP4 host.example.com\r\ns=\r\nt=0 0\r\nm=audio 22334 RTP/AVP 0\r\nc=IN IP4 192.0.2.1\r\nm=video 6024 RTP/AVP 107\r\nc=IN IP6 2001:db8::1\r\na=rtpmap:107 H263-1998/90000\r\n";
        let s = sdp(body).unwrap();
        assert_eq!(s.session_name, b"");
        assert_eq!(s.media.len(), 2);
        assert_eq!(
            s.media[1].connection.unwrap().ip,
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn each_defect() {
        let cases: &[(&[u8], SdpError)] = &[
            (b"o=- 1 1 IN IP4 1.2.3.4\r\n", SdpError::MissingVersion),
            (b"v=1\r\n", SdpError::BadVersion),
            (b"v=0\r\ns=-\r\n", SdpError::MissingOrigin),
            (b"v=0\r\no=- x 1 IN IP4 1.2.3.4\r\n", SdpError::BadOrigin),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nt=0 0\r\n", SdpError::MissingSessionName),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n", SdpError::MissingTiming),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0\r\n", SdpError::BadTiming),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.400\r\nt=0 0\r\n", SdpError::BadConnection),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n", SdpError::MissingConnection),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5004 RTP/AVP\r\n", SdpError::BadMedia),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 65536 RTP/AVP 0\r\n", SdpError::BadPort),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\na=rtcp:x\r\n", SdpError::BadAttribute),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\na=rtpmap:300 X/8000\r\n", SdpError::BadAttribute),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nX=1\r\n", SdpError::BadLine),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\nt=0 0\r\n", SdpError::OutOfOrder),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\ns=-\r\n", SdpError::RepeatedSessionName),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nv=0\r\n", SdpError::RepeatedVersion),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\no=- 1 1 IN IP4 1.2.3.4\r\n", SdpError::RepeatedOrigin),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n", SdpError::RepeatedConnection),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\ns=-\r\n", SdpError::OutOfOrder),
            // The session level ends at the first m=: a session line after it is
            // misplaced (not missing), one nowhere is missing.
            (b"v=0\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\no=- 1 1 IN IP4 1.2.3.4\r\n", SdpError::OutOfOrder),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 5004 RTP/AVP 0\r\nt=0 0\r\n", SdpError::OutOfOrder),
            (b"v=0\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n", SdpError::MissingOrigin),
            (b"s=-\r\no=- 1 1 IN IP4 1.2.3.4\r\nt=0 0\r\n", SdpError::MissingVersion),
        ];
        for (body, expected) in cases {
            assert_eq!(
                sdp(body).unwrap_err(),
                *expected,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn limits_are_exact() {
        let limits = Limits {
            max_sdp_len: OFFER.len(),
            ..Limits::default()
        };
        assert!(parse(OFFER, &limits).is_ok());
        let limits = Limits {
            max_sdp_len: OFFER.len() - 1,
            ..Limits::default()
        };
        assert_eq!(parse(OFFER, &limits).unwrap_err(), SdpError::TooLarge);
        let limits = Limits {
            max_sdp_media: 2,
            ..Limits::default()
        };
        assert!(parse(OFFER, &limits).is_ok());
        let limits = Limits {
            max_sdp_media: 1,
            ..Limits::default()
        };
        assert_eq!(parse(OFFER, &limits).unwrap_err(), SdpError::TooManyMedia);
        let lines = OFFER
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let limits = Limits {
            max_sdp_lines: lines,
            ..Limits::default()
        };
        assert!(parse(OFFER, &limits).is_ok());
        let limits = Limits {
            max_sdp_lines: lines - 1,
            ..Limits::default()
        };
        assert_eq!(parse(OFFER, &limits).unwrap_err(), SdpError::TooManyLines);
    }

    #[test]
    fn attribute_names_are_exact() {
        // What the name before the first colon says, as a search for the colon finds it.
        let reference = |value: &[u8]| {
            let (name, attr_value) = match value.iter().position(|&b| b == b':') {
                Some(i) => (&value[..i], Some(&value[i + 1..])),
                None => (value, None),
            };
            match name {
                b"sendrecv" => format!("dir {:?}", Direction::SendRecv),
                b"sendonly" => format!("dir {:?}", Direction::SendOnly),
                b"recvonly" => format!("dir {:?}", Direction::RecvOnly),
                b"inactive" => format!("dir {:?}", Direction::Inactive),
                b"rtcp" => format!("rtcp {attr_value:?}"),
                b"rtpmap" => format!("rtpmap {attr_value:?}"),
                _ => "other".to_string(),
            }
        };
        let fast = |value: &[u8]| match known_attribute(value) {
            Attribute::Direction(d) => format!("dir {d:?}"),
            Attribute::Rtcp(v) => format!("rtcp {v:?}"),
            Attribute::RtpMap(v) => format!("rtpmap {v:?}"),
            Attribute::Other => "other".to_string(),
        };
        for name in [
            "sendrecv", "sendonly", "recvonly", "inactive", "rtcp", "rtpmap",
        ] {
            for tail in ["", ":", ":x", "x", "x:y", " ", "::", ":0 PCMU/8000"] {
                for cut in 0..=name.len() {
                    let value = format!("{}{tail}", &name[..cut]);
                    assert_eq!(
                        fast(value.as_bytes()),
                        reference(value.as_bytes()),
                        "{value}"
                    );
                }
            }
        }
    }

    /// The body parsed by the general path alone, as before the fast path existed.
    fn parse_general<'a>(body: &'a [u8], limits: &Limits) -> Result<Sdp<'a>, SdpError> {
        let mut out = Sdp::empty(body);
        if body.len() > limits.max_sdp_len {
            return Err(SdpError::TooLarge);
        }
        let mut st = Progress::start();
        while st.pos < body.len() {
            general_line(body, limits, &mut out, &mut st)?;
        }
        finish(body, &mut out, st)?;
        Ok(out)
    }

    /// Every slice of a parse result as an offset into the body, with the Debug text.
    fn signature(body: &[u8], r: &Result<Sdp<'_>, SdpError>) -> String {
        let at = |s: &[u8]| {
            format!(
                "|{}+{}",
                s.as_ptr() as usize - body.as_ptr() as usize,
                s.len()
            )
        };
        let mut sig = format!("{r:?}");
        if let Ok(s) = r {
            let o = &s.origin;
            for x in [
                o.username,
                o.session_id,
                o.session_version,
                o.net_type,
                o.address,
            ] {
                sig += &at(x);
            }
            sig += &at(s.session_name);
            for c in s
                .connection
                .iter()
                .chain(s.media.iter().filter_map(|m| m.connection.as_ref()))
            {
                sig += &at(c.line);
                sig += &at(c.address);
            }
            for m in &s.media {
                for x in [m.kind, m.port_token, m.proto, m.formats, m.section] {
                    sig += &at(x);
                }
            }
        }
        sig
    }

    #[test]
    fn fast_path_agrees_with_general_path() {
        // Each line of the usual kinds, and near misses the fast path must leave to the
        // general one, in every position after the session header and with each ending.
        let lines: &[&[u8]] = &[
            b"c=IN IP4 192.168.1.20",
            b"c=IN IP4 0.0.0.0",
            b"c=IN IP4 255.255.255.255",
            b"c=IN IP4 256.1.1.1",
            b"c=IN IP4 01.2.3.4",
            b"c=IN IP4 1.2.3",
            b"c=IN IP4 1.2.3.4.",
            b"c=IN IP4 1.2.3.4 ",
            b"c=IN IP4 1.2.3.4/5",
            b"c=IN IP4 host.example",
            b"c=IN  IP4 1.2.3.4",
            b"c=IN IP4 1.2.3.1000",
            b"c=IN IP6 ::1",
            b"c=IN IP4 1.2.3.45",
            b"c=IN IP4 1.2.3.4.5",
            b"c=IN IP4 192.168.1.200",
            b"c=IN IP4 192.168.1.2",
            b"c=IN IP4 192.168.1.20x",
            b"m=audio 3456 RTP/AVP 0 8 101",
            b"m=audio 0 RTP/AVP 0",
            b"m=audio 65535 RTP/AVP 0",
            b"m=audio 65536 RTP/AVP 0",
            b"m=audio 000000 RTP/AVP 0",
            b"m=audio 00001 RTP/AVP 0",
            b"m=audio 5004/2 RTP/AVP 0",
            b"m=audio 5004 RTP/AVP ",
            b"m=audio 5004 RTP/AVP  0",
            b"m=audio  5004 RTP/AVP 0",
            b"m=audio 5004 RTP/AVP 0\t8",
            b"m=audio 5004 RTP/AVP",
            b"a=rtpmap:0 PCMU/8000",
            b"a=rtpmap:127 X/1",
            b"a=rtpmap:128 X/1",
            b"a=rtpmap:00127 X/1",
            b"a=rtpmap:000127 X/1",
            b"a=rtpmap:96 opus/48000/2",
            b"a=rtpmap:96 opus/48000/",
            b"a=rtpmap:31 LPC",
            b"a=rtpmap:0  PCMU/8000",
            b"a=rtpmap:0 PCMU/8000 ",
            b"a=rtpmap:0 PCMU/1234567890",
            b"a=rtpmap:0 PCMU/123456789",
            b"a=rtpmap:0 /8000",
            b"a=rtpmap:0 PCMU/",
            b"a=rtpmap:0 PCMU/8000x",
            b"a=rtpmap:x",
            b"a=sendrecv",
            b"a=sendonly",
            b"a=recvonly",
            b"a=inactive",
            b"a=sendrecv:x",
            b"a=sendrecvx",
            b"a=rtcp:9",
            b"a=rtcp:x",
            b"a=fmtp:101 0-15",
            b"a=",
            b"t=0 0",
            b"t=0  0",
            b"t=1 2",
            b"b=AS:64",
            b"i=",
            b"k=x",
            b"z=0",
            b"x=1",
            b"s=again",
            b"a=ptime:20\x00",
            b"a=x\ry",
        ];
        let endings: &[&[u8]] = &[b"\r\n", b"\n", b"", b"\r", b"\r\r\n", b"\r\n\r\n"];
        let heads: &[&[u8]] = &[
            b"v=0\r\no=bob 2808844564 2808844564 IN IP4 192.168.1.20\r\ns=call\r\nt=0 0\r\n",
            b"v=0\r\no=- 1 2 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=audio 5 RTP/AVP 0\r\n",
            b"v=0\no=- 01 2 IN IP4 1.2.3.4\ns= \nt=0 0\nm=audio 5 RTP/AVP 0\nc=IN IP4 1.1.1.1\n",
            b"v=0\r\no=a  1 2 IN IP4 1.2.3.4\r\ns=x\r\n",
            b"v=0\r\no=a 1 2 IN IP4 1.2.3.04\r\ns=x\r\n",
            b"v=0\r\no=a 1 2 IN IP6 ::1\r\ns=x\r\n",
            b"v=0\r\n\r\no=a 1 2 IN IP4 host\r\ns=x\r\n",
            b"v=0\r\no=a\tb 1 2 IN IP4 1.2.3.4\r\ns=x\r\n",
            b"v=0\r\no=a 1 2x IN IP4 1.2.3.4\r\ns=x\r\n",
            b"v=0\r\no=a 1 2 IN IP4 1.2.3.4 \r\ns=x\r\n",
            b"v=0\r\no=a 1 2 IN IP41.2.3.4\r\ns=x\r\n",
            b"v=0\r\no=a 1  IN IP4 1.2.3.4\r\ns=x\r\n",
            b"v=0\r\no= 1 2 IN IP4 1.2.3.4\r\ns=x\r\n",
        ];
        let limits = [
            Limits::default(),
            Limits {
                max_param_len: 22,
                max_sdp_lines: 7,
                max_sdp_media: 1,
                ..Limits::default()
            },
        ];
        for head in heads {
            for (i, a) in lines.iter().enumerate() {
                for b in [
                    lines[(i * 7 + 3) % lines.len()],
                    b"a=sendonly",
                    b"m=video 0 RTP/AVP 31",
                    b"",
                ] {
                    for end in endings {
                        let mut body = head.to_vec();
                        body.extend_from_slice(a);
                        body.extend_from_slice(end);
                        body.extend_from_slice(b);
                        for limits in &limits {
                            let fast = parse(&body, limits);
                            let general = parse_general(&body, limits);
                            assert_eq!(
                                signature(&body, &fast),
                                signature(&body, &general),
                                "{}",
                                String::from_utf8_lossy(&body)
                            );
                        }
                    }
                }
            }
        }
    }

    /// Where every slice of a parse result lies in the body: a cheaper [`signature`].
    fn ranges(body: &[u8], r: &Result<Sdp<'_>, SdpError>) -> Vec<(usize, usize)> {
        let at = |s: &[u8]| (s.as_ptr() as usize - body.as_ptr() as usize, s.len());
        let mut out = Vec::new();
        if let Ok(s) = r {
            let o = &s.origin;
            out.extend(
                [
                    o.username,
                    o.session_id,
                    o.session_version,
                    o.net_type,
                    o.address,
                ]
                .map(at),
            );
            out.push(at(s.session_name));
            for c in s
                .connection
                .iter()
                .chain(s.media.iter().filter_map(|m| m.connection.as_ref()))
            {
                out.extend([at(c.line), at(c.address)]);
            }
            for m in &s.media {
                out.extend([m.kind, m.port_token, m.proto, m.formats, m.section].map(at));
                if let Some(r) = &m.rtcp {
                    out.push(at(r.port_token));
                    out.extend(r.address.map(at));
                }
            }
        }
        out
    }

    /// `parse` and `parse_general` give the same result, ranges included.
    fn assert_same(body: &[u8], limits: &Limits) {
        let fast = parse(body, limits);
        let general = parse_general(body, limits);
        if fast == general && ranges(body, &fast) == ranges(body, &general) {
            return;
        }
        assert_eq!(
            signature(body, &fast),
            signature(body, &general),
            "{:?} {limits:?}",
            String::from_utf8_lossy(body)
        );
    }

    /// Limits around a body: each SDP limit at, just below and just above what the body
    /// needs, one at a time.
    fn limits_around(body: &[u8]) -> Vec<Limits> {
        let longest = body
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
            .max()
            .unwrap_or(0);
        let lines = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty() && *l != b"\r")
            .count();
        let media = body.windows(3).filter(|w| w == b"\nm=").count();
        let mut out = vec![Limits::default()];
        for d in 0..3 {
            let near = |x: usize| (x + 1).saturating_sub(d);
            out.push(Limits {
                max_param_len: near(longest),
                ..Limits::default()
            });
            out.push(Limits {
                max_sdp_lines: near(lines),
                ..Limits::default()
            });
            out.push(Limits {
                max_sdp_media: near(media),
                ..Limits::default()
            });
            out.push(Limits {
                max_sdp_len: near(body.len()),
                ..Limits::default()
            });
        }
        out.push(Limits {
            max_param_len: 0,
            max_sdp_lines: 0,
            max_sdp_media: 0,
            max_sdp_len: 0,
            ..Limits::default()
        });
        out
    }

    /// Bodies of usual lines, in CRLF and in bare LF, for the sweeps below.
    fn usual_bodies() -> Vec<Vec<u8>> {
        let mut out = vec![OFFER.to_vec()];
        out.push(
            b"v=0\r\no=- 0 0 IN IP4 10.1.2.3\r\ns=-\r\nc=IN IP4 10.1.2.3\r\nt=0 0\r\na=sendrecv\r\nm=audio 0 RTP/AVP 0\r\nm=audio 00009 RTP/AVP 96\r\nc=IN IP4 10.1.2.34\r\na=rtpmap:096 opus/48000/2\r\ni=x\r\nb=AS:64\r\nk=clear:x\r\na=inactive\r\n"
                .to_vec(),
        );
        out.push(
            b"v=0\r\no=user 1 1 IN IP4 255.255.255.255\r\ns=session\r\nc=IN IP4 255.255.255.255\r\nt=0 0\r\nm=video 65535 RTP/AVP 127\r\na=rtpmap:127 H264/90000\r\na=recvonly\r\n"
                .to_vec(),
        );
        let lf: Vec<Vec<u8>> = out
            .iter()
            .map(|b| {
                b.iter()
                    .copied()
                    .filter(|&c| c != b'\r')
                    .collect::<Vec<u8>>()
            })
            .collect();
        out.extend(lf);
        out
    }

    #[test]
    fn every_prefix_agrees() {
        // The body cut anywhere: no final newline, a CR without its LF, half a number
        // or address at the end.
        for body in usual_bodies() {
            for cut in 0..=body.len() {
                let b = &body[..cut];
                for limits in limits_around(b) {
                    assert_same(b, &limits);
                }
            }
        }
    }

    #[test]
    fn every_limit_agrees() {
        for body in usual_bodies() {
            for param in 0..=45 {
                for lines in 0..=16 {
                    for media in 0..=3 {
                        let limits = Limits {
                            max_param_len: param,
                            max_sdp_lines: lines,
                            max_sdp_media: media,
                            ..Limits::default()
                        };
                        assert_same(&body, &limits);
                    }
                }
            }
        }
    }

    #[test]
    fn every_single_byte_edit_agrees() {
        // Each byte replaced by every byte value, deleted, or preceded by an odd byte,
        // under the default limits and ones the body just meets.
        let odd: &[u8] = b"\0\t\r\n \x0b\x0c\x0e\x7f\x80\xb0\xb9\xff0123456789./:=-aAsrim";
        let all: Vec<u8> = (0..=255).collect();
        for (k, body) in usual_bodies().into_iter().enumerate() {
            let tight = limits_around(&body);
            let tight = [Limits::default(), tight[1].clone(), tight[2].clone()];
            // Every byte value in the first two bodies; the odd ones in the others.
            let replacements = if k < 2 { &all[..] } else { odd };
            for pos in 0..body.len() {
                for &byte in replacements {
                    let mut b = body.clone();
                    b[pos] = byte;
                    assert_same(&b, &Limits::default());
                }
                let mut b = body.clone();
                b.remove(pos);
                for limits in &tight {
                    assert_same(&b, limits);
                }
                for &byte in odd {
                    let mut b = body.clone();
                    b.insert(pos, byte);
                    for limits in &tight {
                        assert_same(&b, limits);
                    }
                }
            }
        }
    }

    #[test]
    fn every_line_moved_or_repeated_agrees() {
        // Line order (v, o, s first; t before any m; c once per level) and duplicates:
        // each line moved to, or copied to, every other place.
        for body in usual_bodies() {
            let lines: Vec<&[u8]> = body.split_inclusive(|&b| b == b'\n').collect();
            for from in 0..lines.len() {
                for to in 0..=lines.len() {
                    for copy in [false, true] {
                        let mut l = lines.clone();
                        let line = l[from];
                        if !copy {
                            l.remove(from);
                        }
                        l.insert(to.min(l.len()), line);
                        let b = l.concat();
                        for limits in limits_around(&b) {
                            assert_same(&b, &limits);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn long_lines_and_runs_agree() {
        // Lines around max_param_len, padded with a run of one byte at a place where the
        // fast path reads a word at a time (names, numbers, free text, the line's end).
        let head = b"v=0\r\no=- 1 2 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n";
        let templates: &[(&[u8], &[u8])] = &[
            (b"s=", b""),
            (b"i=", b""),
            (b"a=x", b""),
            (b"a=rtpmap:0 ", b"/8000"),
            (b"a=rtpmap:0 PCMU/8000/", b""),
            (b"a=rtpmap:", b"0 PCMU/8000"),
            (b"a=rtpmap:0 PCMU/", b""),
            (b"m=audio ", b"5004 RTP/AVP 0"),
            (b"m=", b" 5004 RTP/AVP 0"),
            (b"m=audio 5004 RTP/AVP ", b""),
            (b"o=", b" 1 2 IN IP4 10.0.0.5"),
            (b"o=- ", b" 2 IN IP4 10.0.0.5"),
            (b"o=- 1 ", b" IN IP4 10.0.0.5"),
            (b"c=IN IP4 10.0.0.5", b""),
            (b"c=IN IP4 ", b"10.0.0.5"),
        ];
        let limits = [
            Limits::default(),
            Limits {
                max_param_len: 40,
                ..Limits::default()
            },
        ];
        for &(before, after) in templates {
            for fill in [b'a', b'0', b'1', b'9', b' ', b'\t', b'.', b'/', 0x80, 0xff] {
                for len in (0..=20).chain(30..=42).chain(1015..=1030) {
                    let mut line = before.to_vec();
                    line.resize(before.len() + len, fill);
                    line.extend_from_slice(after);
                    // The header lines before and after the line, by its type.
                    let (prefix, suffix): (&[u8], &[u8]) = match &line[..2] {
                        b"o=" => (b"v=0\r\n", b"s=-\r\nt=0 0\r\n"),
                        b"s=" => (b"v=0\r\no=- 1 2 IN IP4 10.0.0.5\r\n", b"t=0 0\r\n"),
                        _ => (head, b""),
                    };
                    for end in [&b"\r\n"[..], b"\n", b"", b"\r"] {
                        let body = [prefix, &line, end, suffix].concat();
                        for limits in &limits {
                            assert_same(&body, limits);
                        }
                    }
                }
            }
        }
    }

    /// The usual lines after the session header, for the randomized comparison.
    const USUAL: &[&[u8]] = &[
        b"c=IN IP4 10.0.0.5",
        b"c=IN IP4 192.168.100.200",
        b"m=audio 49170 RTP/AVP 0 8 101",
        b"m=video 0 RTP/AVP 31",
        b"m=audio 00009 RTP/AVP 96",
        b"a=rtpmap:0 PCMU/8000",
        b"a=rtpmap:101 telephone-event/8000",
        b"a=rtpmap:96 opus/48000/2",
        b"a=sendrecv",
        b"a=sendonly",
        b"a=recvonly",
        b"a=inactive",
        b"a=fmtp:101 0-15",
        b"a=ptime:20",
        b"b=AS:64",
        b"i=info",
        b"k=prompt",
    ];

    /// Near misses and lines only the general path reads.
    const ODD: &[&[u8]] = &[
        b"v=0",
        b"o=- 1 2 IN IP4 10.0.0.5",
        b"s=-",
        b"s=",
        b"t=0 0",
        b"t=1 2",
        b"c=IN IP4 10.0.0.50",
        b"c=IN IP4 10.0.0.5/127",
        b"c=IN IP4 10.0.0.255",
        b"c=IN IP4 10.0.0.256",
        b"c=IN IP6 ::1",
        b"c=IN IP4 host.example",
        b"m=audio 5004/2 RTP/AVP 0",
        b"m=audio 65535 RTP/AVP 0",
        b"m=audio 65536 RTP/AVP 0",
        b"m=audio 99999 RTP/AVP 0",
        b"a=rtpmap:31 LPC",
        b"a=rtpmap:127 X/1",
        b"a=rtpmap:128 X/1",
        b"a=rtpmap:00127 X/123456789/",
        b"a=rtpmap:0 PCMU/1234567890",
        b"a=rtcp:49171 IN IP4 10.0.0.6",
        b"a=rtcp:9",
        b"a=sendrecv:x",
        b"z=0 0",
        b"",
    ];

    /// Bytes an edit puts in.
    const EDIT_BYTES: &[u8] = b"\0\t\r\n \x0b\x0c\x7f\x80\xff0123456789./:=-aIrsm";

    /// A body from random picks: mostly a good session header (its origin address
    /// repeated or not) and usual lines with CRLF, sometimes odd lines and endings, then
    /// a few byte edits.
    fn body_from(lines: &[(usize, usize)], edits: &[(usize, usize, usize)]) -> Vec<u8> {
        let header: [&[u8]; 4] = [
            b"v=0",
            b"o=alice 2890844526 2890844526 IN IP4 10.0.0.5",
            b"s=-",
            b"t=0 0",
        ];
        let mut body = Vec::new();
        for (i, &(line, end)) in lines.iter().enumerate() {
            let line = match (i, line % 10) {
                (0..=3, _) if line % 40 != 0 => header[i],
                (_, 0..=7) => USUAL[line / 10 % USUAL.len()],
                _ => ODD[line / 10 % ODD.len()],
            };
            body.extend_from_slice(line);
            body.extend_from_slice(match end % 64 {
                0..=49 => b"\r\n",
                50..=60 => b"\n",
                61 => b"",
                62 => b"\r",
                _ => b"\r\n\r\n",
            });
        }
        for &(pos, op, byte) in edits {
            let byte = EDIT_BYTES[byte % EDIT_BYTES.len()];
            if body.is_empty() {
                body.push(byte);
                continue;
            }
            let pos = pos % body.len();
            match op % 3 {
                0 => body[pos] = byte,
                1 => body.insert(pos, byte),
                _ => {
                    body.remove(pos);
                }
            }
        }
        body
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5000))]
        #[test]
        fn random_bodies_agree(
            lines in proptest::collection::vec((0usize..1000, 0usize..1000), 3..18),
            edits in proptest::collection::vec((0usize..10_000, 0usize..3, 0usize..1000), 0..3),
            param in 16usize..64,
            lines_limit in 0usize..16,
            media in 0usize..4,
            len_slack in 0usize..4,
            which in 0usize..10,
        ) {
            let body = body_from(&lines, &edits);
            let tight = Limits {
                max_param_len: param,
                max_sdp_lines: lines_limit,
                max_sdp_media: media,
                max_sdp_len: (body.len() + 1).saturating_sub(len_slack),
                ..Limits::default()
            };
            // One limit tight at a time, or all, or none.
            let d = Limits::default();
            let limits = match which {
                0 => Limits { max_param_len: param, ..d },
                1 => Limits { max_sdp_lines: lines_limit, ..d },
                2 => Limits { max_sdp_media: media, ..d },
                3 => Limits { max_sdp_len: tight.max_sdp_len, ..d },
                4 => tight,
                _ => d,
            };
            assert_same(&body, &limits);
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = sdp(&bytes);
        }

        #[test]
        fn mutated_offers_never_panic(pos in 0usize..OFFER.len(), byte in proptest::prelude::any::<u8>()) {
            let mut b = OFFER.to_vec();
            b[pos] = byte;
            let _ = sdp(&b);
        }
    }
}
