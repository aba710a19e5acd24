//! Inside addresses in the headers and bodies the typed paths do not know, and the last
//! line of defence: a scan of every datagram leaving by an outside interface.
//!
//! The paths in `gateway.rs` rewrite what they understand (Via, Request-URI, From, To,
//! Contact, Call-ID, the SDP's media addresses). Everything else a phone writes may name
//! its address too: P-Asserted-/P-Preferred-Identity, Diversion, History-Info,
//! Referred-By, Refer-To, Warning's agent, a NOTIFY's sipfrag, a PIDF `<contact>`, ICE
//! candidates. [`hide_unknown`] walks every other header and the body for the text of an
//! inside address and puts the gateway's outside address in its place; the Call-IDs that
//! Replaces, Join, Target-Dialog, In-Reply-To and a Refer-To's `?Replaces=` carry are
//! translated like the Call-ID itself ([`Names`]). [`find`] is the scanner, used again by
//! the gateway on every finished outside datagram (`leak_policy`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use sipward_proto::{EditError, Edits, HeaderField, HeaderName, Message};

/// One inside address found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The address as written (an IPv6 reference with its brackets).
    pub(crate) address: Range<usize>,
    /// The address and the `:port` after it, if any.
    pub(crate) host_port: Range<usize>,
    /// The address is a URI's user part (`sip:10.0.0.20@host`): replaced by an address
    /// alone, as `host:port` there would read as a user and a password.
    pub(crate) user: bool,
    /// The address is a URI's host (after `@`, `sip:` or `[`), where the gateway's port
    /// belongs too; elsewhere (a display name, Warning's agent, free text) an address
    /// written without a port gets one without (`Alice 10.0.0.20 <sip:...>` must not
    /// become a display name with a colon, which no parser takes).
    pub(crate) uri_host: bool,
}

impl Found {
    fn at(text: &[u8], address: Range<usize>, port_end: usize) -> Found {
        let user = text.get(address.end) == Some(&b'@') || text.get(port_end) == Some(&b'@');
        let host_port = address.start..if user { address.end } else { port_end };
        let uri_host = address
            .start
            .checked_sub(1)
            .and_then(|i| text.get(i))
            .is_some_and(|b| matches!(b, b'@' | b':' | b'['));
        Found {
            address,
            host_port,
            user,
            uri_host,
        }
    }

    /// What a header's text gets in place of `host_port`.
    fn header_replacement<'o>(&self, outside: &Outside<'o>) -> &'o str {
        let bare = self.host_port == self.address && !self.uri_host;
        if self.user || bare {
            outside.ip
        } else {
            outside.host_port
        }
    }
}

/// What an inside address is: the inside networks and the gateway's inside addresses.
pub(crate) struct Inside<'a> {
    pub(crate) is_inside: &'a dyn Fn(IpAddr) -> bool,
    pub(crate) scanner: &'a Scanner,
}

/// What the scan looks for, prepared once per configuration.
pub(crate) struct Scanner {
    /// The first octets inside IPv4 addresses can have.
    first_octets: [bool; 256],
    /// With few of them (the usual 10, 172, 192, 127): a searcher for each one's text
    /// and its dot ("10."), so that a datagram without an inside address costs one
    /// SIMD search per first octet instead of a look at every dot.
    leads: Option<Vec<memchr::memmem::Finder<'static>>>,
    /// Whether any inside address is IPv6 (otherwise the colon scan is skipped).
    v6: bool,
    /// With IPv4 inside and no IPv6: searchers for the IPv4-mapped prefix (`::ffff:`),
    /// whose hex form (`::ffff:a00:14`) has no dotted quad for the IPv4 scan to find.
    mapped: Option<[memchr::memmem::Finder<'static>; 2]>,
}

impl Scanner {
    pub(crate) fn new<'n>(networks: impl Iterator<Item = &'n ipnet::IpNet>) -> Self {
        let mut first_octets = [false; 256];
        let mut v6 = false;
        for net in networks {
            match net {
                ipnet::IpNet::V4(v4) => {
                    let (low, high) = (v4.network().octets()[0], v4.broadcast().octets()[0]);
                    for o in low..=high {
                        if let Some(slot) = first_octets.get_mut(usize::from(o)) {
                            *slot = true;
                        }
                    }
                }
                ipnet::IpNet::V6(_) => v6 = true,
            }
        }
        let lead_octets: Vec<usize> = (0..256)
            .filter(|&o| first_octets.get(o) == Some(&true))
            .collect();
        let leads = (lead_octets.len() <= 8).then(|| {
            lead_octets
                .iter()
                .map(|o| memchr::memmem::Finder::new(format!("{o}.").as_bytes()).into_owned())
                .collect()
        });
        let any_v4 = first_octets.iter().any(|&o| o);
        let mapped = (any_v4 && !v6)
            .then(|| [b"ffff:", b"FFFF:"].map(|p| memchr::memmem::Finder::new(p).into_owned()));
        Scanner {
            first_octets,
            leads,
            v6,
            mapped,
        }
    }
}

/// Every inside address written in `text`, in order: IPv4 dotted quads (leading zeros
/// included) and, with IPv6 inside, IPv6 text (full, compressed, bracketed, IPv4-mapped).
/// Decimal-integer and hex forms of an IPv4 address are not looked for: no SIP or SDP
/// field reads them as an address.
pub(crate) fn find(text: &[u8], inside: &Inside<'_>) -> Vec<Found> {
    let scanner = inside.scanner;
    let mut found = Vec::new();
    let push_v4 = |found: &mut Vec<Found>, ip: Ipv4Addr, start: usize, end: usize| {
        if (inside.is_inside)(IpAddr::V4(ip)) {
            found.push(Found::at(text, start..end, port_end(text, end)));
        }
    };
    match &scanner.leads {
        Some(leads) => {
            for finder in leads {
                for mut start in finder.find_iter(text) {
                    // "010.0.0.1" is found as "10.": its leading zeros belong to it
                    // (any number of them: "0010." is still the text of 10).
                    let mut zeros = 0;
                    while zeros < MAX_ZEROS
                        && start > zeros
                        && text.get(start - zeros - 1) == Some(&b'0')
                    {
                        zeros += 1;
                    }
                    start -= zeros;
                    if !starts_number(text, start) {
                        continue;
                    }
                    if let Some((ip, end)) = quad_at(text, start) {
                        push_v4(&mut found, ip, start, end);
                    }
                }
            }
            if leads.len() > 1 {
                found.sort_by_key(|f| f.address.start);
            }
        }
        None => {
            let mut next = 0;
            for dot in memchr::memchr_iter(b'.', text) {
                if dot < next {
                    continue;
                }
                let Some((ip, start, end)) = quad_around(text, dot, &scanner.first_octets) else {
                    continue;
                };
                next = end;
                push_v4(&mut found, ip, start, end);
            }
        }
    }
    let push_v6 = |found: &mut Vec<Found>, colon: usize| -> Option<usize> {
        let is_inside = |ip: Ipv6Addr| {
            (inside.is_inside)(IpAddr::V6(ip))
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| (inside.is_inside)(IpAddr::V4(v4)))
        };
        let (address, end) = v6_around(text, colon, is_inside)?;
        let Some(start) = address else {
            return Some(end);
        };
        let bracketed =
            start > 0 && text.get(start - 1) == Some(&b'[') && text.get(end) == Some(&b']');
        let (a, b) = if bracketed {
            (start - 1, end + 1)
        } else {
            (start, end)
        };
        // The whole IPv6 text replaces a dotted quad found inside it (an IPv4-mapped
        // address): replacing the quad alone would leave `[::ffff:host:port]`.
        found.retain(|f| !(a <= f.address.start && f.address.end <= b));
        let overlaps = found
            .iter()
            .any(|f| f.address.start < b && a < f.address.end);
        if !overlaps {
            let port = if bracketed { port_end(text, b) } else { b };
            found.push(Found::at(text, a..b, port));
        }
        Some(end)
    };
    if scanner.v6 {
        let mut next = 0;
        for colon in memchr::memchr_iter(b':', text) {
            if colon < next {
                continue;
            }
            if let Some(end) = push_v6(&mut found, colon) {
                next = end;
            }
        }
        found.sort_by_key(|f| f.address.start);
    } else if let Some(mapped) = &scanner.mapped {
        let mut any = false;
        for finder in mapped {
            for at in finder.find_iter(text) {
                // The colon that ends `ffff:`.
                any |= push_v6(&mut found, at + 4).is_some();
            }
        }
        if any {
            found.sort_by_key(|f| f.address.start);
        }
    }
    found
}

/// Whether a number starts at `start`: no digit before it, unless that digit ends a
/// `%XX` escape (`%4010.0.0.1` is an escaped `@` and an address).
fn starts_number(text: &[u8], start: usize) -> bool {
    start == 0 || !is_digit(text, start - 1) || (start >= 3 && text.get(start - 3) == Some(&b'%'))
}

fn is_digit(text: &[u8], i: usize) -> bool {
    text.get(i).is_some_and(u8::is_ascii_digit)
}

/// The dotted quad whose first dot is at `dot`, as (address, start, end), if its first
/// octet is one of `first`.
fn quad_around(text: &[u8], dot: usize, first: &[bool; 256]) -> Option<(Ipv4Addr, usize, usize)> {
    let mut start = dot;
    while start > 0 && dot - start < MAX_ZEROS + 8 && is_digit(text, start - 1) {
        start -= 1;
    }
    // `%40` (an escaped `@`, as in a Refer-To's Replaces) is not part of the address.
    if start >= 1 && text.get(start - 1) == Some(&b'%') {
        start += 2;
    }
    if start >= dot || !starts_number(text, start) {
        return None;
    }
    let lead = octet_value(text.get(start..dot)?)?;
    if !first.get(lead).copied().unwrap_or(false) {
        return None;
    }
    let (ip, end) = quad_at(text, start)?;
    Some((ip, start, end))
}

/// Leading zeros an octet may have besides its (up to three) digits.
const MAX_ZEROS: usize = 16;

/// The value of an octet's digits: up to three after any leading zeros.
fn octet_value(digits: &[u8]) -> Option<usize> {
    // All zeros is the octet 0 (its last zero); otherwise from the first other digit.
    let from = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len().saturating_sub(1));
    let significant = digits.get(from..).unwrap_or_default();
    if significant.is_empty() || significant.len() > 3 {
        return None;
    }
    Some(
        significant
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d.wrapping_sub(b'0'))),
    )
}

/// The dotted quad starting at `start` (one to three digits per octet after any leading
/// zeros, nothing more after the last), with its end.
fn quad_at(text: &[u8], start: usize) -> Option<(Ipv4Addr, usize)> {
    let mut octets = [0u8; 4];
    let mut at = start;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if text.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let digits_start = at;
        while at - digits_start < MAX_ZEROS + 3 && is_digit(text, at) {
            at += 1;
        }
        if is_digit(text, at) {
            return None;
        }
        *octet = u8::try_from(octet_value(text.get(digits_start..at)?)?).ok()?;
    }
    Some((Ipv4Addr::from(octets), at))
}

fn is_v6_char(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// The run of address characters around `colon`, if it can hold IPv6 text: the start of
/// the first IPv6 address in it that `wanted` takes, if any, and where the run (and that
/// address) ends. Candidates are the whole run, then what follows each of its colons, or
/// starts with it: a word can be glued on by a colon ("X-Phone:fd00::21", "sip:fd00::21";
/// hex letters and the colon are address characters too, and "e:fd00::21" is itself an
/// address); a run after a space or a bracket that is an address is taken whole.
fn v6_around(
    text: &[u8],
    colon: usize,
    wanted: impl Fn(Ipv6Addr) -> bool,
) -> Option<(Option<usize>, usize)> {
    let mut start = colon;
    while start > 0 && text.get(start - 1).copied().is_some_and(is_v6_char) {
        start -= 1;
    }
    let mut end = colon;
    while text.get(end).copied().is_some_and(is_v6_char) {
        end += 1;
    }
    let run = text.get(start..end)?;
    if run.iter().filter(|&&b| b == b':').count() < 2 || run.len() > 45 {
        return None;
    }
    // A run may end in a sentence's full stop (or an ellipsis: found by the gateway
    // fuzz target) or a URI's port after the brackets.
    let dots = run.iter().rev().take_while(|&&b| b == b'.').count();
    let run = std::str::from_utf8(run.get(..run.len() - dots)?).ok()?;
    let end = start + run.len();
    let takes = |from: usize| {
        run.get(from..)
            .and_then(|t| t.parse::<Ipv6Addr>().ok())
            .is_some_and(&wanted)
    };
    if takes(0) {
        return Some((Some(start), end));
    }
    // An address preceded by a space or a bracket is the whole run: "2001:db8:1:fd00::1"
    // is outside, whatever "fd00::1" would be on its own.
    let after_word = start > 0
        && text
            .get(start - 1)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !after_word && run.parse::<Ipv6Addr>().is_ok() {
        return Some((None, end));
    }
    let glued = run
        .match_indices(':')
        .flat_map(|(at, _)| [at + 1, at])
        .find(|&from| takes(from));
    Some((glued.map(|from| start + from), end))
}

/// The end of a `:port` right after `end`, or `end`.
fn port_end(text: &[u8], end: usize) -> usize {
    if text.get(end) != Some(&b':') || !is_digit(text, end + 1) {
        return end;
    }
    let mut at = end + 1;
    while is_digit(text, at) && at - end <= 5 {
        at += 1;
    }
    at
}

/// How the Call-IDs and phones a message names are known on the other side.
pub(crate) struct Names<'a> {
    /// A Call-ID as the receiving side knows it (None: not a dialog the gateway holds).
    pub(crate) call_id: &'a dyn Fn(&[u8]) -> Option<Vec<u8>>,
    /// For an inside phone's `ip:port`, the routing token that brings a request to it
    /// from outside (its registration), so that a transfer to it can come back in.
    pub(crate) token: &'a dyn Fn(IpAddr, u16) -> Option<String>,
}

/// Headers the paths rewrite themselves (or must not touch): left to them.
fn handled_by_path(name: HeaderName) -> bool {
    matches!(
        name,
        HeaderName::Via
            | HeaderName::From
            | HeaderName::To
            | HeaderName::CallId
            | HeaderName::CSeq
            | HeaderName::MaxForwards
            | HeaderName::Expires
            | HeaderName::Contact
            | HeaderName::Route
            | HeaderName::RecordRoute
            | HeaderName::ContentLength
            | HeaderName::ContentType
            | HeaderName::ContentEncoding
    ) || name.is_protected()
}

/// Headers whose value starts with a Call-ID (RFC 3891, 3911, 4538) or is a list of them
/// (In-Reply-To, RFC 3261 20.21).
fn call_id_header(f: &HeaderField<'_>) -> Option<bool> {
    match f.name {
        HeaderName::Replaces | HeaderName::TargetDialog | HeaderName::Join => return Some(false),
        HeaderName::Other => {}
        _ => return None,
    }
    if f.raw_name.eq_ignore_ascii_case(b"In-Reply-To") {
        Some(true)
    } else {
        None
    }
}

/// Translates the Call-IDs of Replaces, Join, Target-Dialog, In-Reply-To and of a
/// Refer-To's embedded Replaces, both ways. Returns the byte ranges it edited (whole
/// lines for the Call-ID headers): their text is the other side's own and is not scanned
/// again.
pub(crate) fn translate_call_ids(
    msg: &Message<'_>,
    edits: &mut Edits,
    names: &Names<'_>,
) -> Result<Vec<Range<usize>>, EditError> {
    let mut done = Vec::new();
    for f in msg.headers() {
        if let Some(list) = call_id_header(f) {
            let value = f.value;
            let ids: Vec<&[u8]> = if list {
                value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .collect()
            } else {
                let first = value.split(|&b| b == b';').next().unwrap_or_default();
                vec![first.trim_ascii()]
            };
            let mut any = false;
            for id in ids {
                if let Some(other) = (names.call_id)(id) {
                    edits.replace(msg, id, &other)?;
                    any = true;
                }
            }
            if any {
                done.extend(msg.range_of(f.line));
            }
        } else if f.name == HeaderName::ReferTo {
            if let Some((range, other)) = refer_to_replaces(f.value, names) {
                let base = msg.range_of(f.value).ok_or(EditError::NotInMessage)?.start;
                let range = base + range.start..base + range.end;
                edits.replace_range(msg, range.clone(), &other)?;
                done.push(range);
            }
        }
    }
    Ok(done)
}

/// In a Refer-To URI's `?Replaces=` header (RFC 3891 section 5), the escaped Call-ID and
/// its translation, escaped again.
fn refer_to_replaces(value: &[u8], names: &Names<'_>) -> Option<(Range<usize>, Vec<u8>)> {
    let lower: Vec<u8> = value.to_ascii_lowercase();
    let key = b"replaces=";
    let at = lower.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = value.get(at..)?;
    // The Call-ID ends at the escaped (or, leniently, plain) semicolon or the URI's end.
    let mut end = rest.len();
    for (i, w) in rest.windows(3).enumerate() {
        if w.eq_ignore_ascii_case(b"%3b") {
            end = end.min(i);
            break;
        }
    }
    for (i, &b) in rest.iter().enumerate() {
        if matches!(b, b';' | b'&' | b'>') {
            end = end.min(i);
            break;
        }
    }
    let escaped = rest.get(..end)?;
    let id = unescape(escaped)?;
    let other = (names.call_id)(&id)?;
    Some((at..at + end, escape(&other)))
}

fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// Escapes what may not stand in a URI header value (RFC 3261 `hvalue`).
fn escape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()[]/?:+$".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Where the hidden side is to be shown instead: the gateway's outside address.
pub(crate) struct Outside<'a> {
    /// `ip:port` (IPv6 bracketed) for a host and port in a URI or header.
    pub(crate) host_port: &'a str,
    /// The address alone, for SDP lines.
    pub(crate) ip: &'a str,
}

/// Inside to outside: every header the path does not rewrite itself and the body (SDP
/// lines the media seam does not own, sipfrag, PIDF, any other text) lose their inside
/// addresses. A Refer-To naming a registered inside phone gets that phone's routing
/// token, so the transfer target's INVITE comes back in to it; a field whose address
/// sits in a quoted string (which the edit layer guards) is removed. Skips `done`
/// fields (see [`translate_call_ids`]).
pub(crate) fn hide_unknown(
    msg: &Message<'_>,
    edits: &mut Edits,
    inside: &Inside<'_>,
    outside: &Outside<'_>,
    names: &Names<'_>,
    done: &[Range<usize>],
) -> Result<(), EditError> {
    for f in msg.headers() {
        if handled_by_path(f.name) {
            continue;
        }
        let found = find(f.value, inside);
        if found.is_empty() {
            continue;
        }
        let Some(base) = msg.range_of(f.value).map(|r| r.start) else {
            continue;
        };
        let planned: Vec<(Range<usize>, String)> = found
            .iter()
            .map(|hit| {
                let range = base + hit.host_port.start..base + hit.host_port.end;
                let text = f.value.get(hit.host_port.clone()).unwrap_or_default();
                let token = match (f.name, address_of(text)) {
                    (HeaderName::ReferTo, Some((ip, port))) => (names.token)(ip, port),
                    _ => None,
                };
                let with = match token {
                    Some(t) => format!("{};swc={t}", outside.host_port),
                    None => hit.header_replacement(outside).to_string(),
                };
                (range, with)
            })
            .filter(|(r, _)| !done.iter().any(|d| d.start < r.end && r.start < d.end))
            .collect();
        if planned.is_empty() {
            continue;
        }
        let translated = msg
            .range_of(f.line)
            .is_some_and(|l| done.iter().any(|d| l.start <= d.start && d.end <= l.end));
        if translated {
            // Beside an edit already made in this field: each address on its own (one
            // the edit layer refuses is left to the outgoing scan).
            for (r, w) in planned {
                let _ = edits.replace_range(msg, r, w.as_bytes());
            }
        } else {
            // The whole value at once: allowed even where the address sits in a quoted
            // string (a display name), which a partial edit may not touch.
            let value = substitute(f.value, base, &planned);
            edits.replace(msg, f.value, &value)?;
        }
    }
    hide_in_body(msg, edits, inside, outside)
}

/// `text` (starting at message offset `base`) with the planned replacements made.
fn substitute(text: &[u8], base: usize, planned: &[(Range<usize>, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 32);
    let mut at = 0;
    for (r, w) in planned {
        let (start, end) = (r.start.saturating_sub(base), r.end.saturating_sub(base));
        if start < at {
            continue;
        }
        out.extend_from_slice(text.get(at..start).unwrap_or_default());
        out.extend_from_slice(w.as_bytes());
        at = end;
    }
    out.extend_from_slice(text.get(at..).unwrap_or_default());
    out
}

/// In a body other than SDP: an address with a port becomes the outside address with
/// its port, a bare one the outside address alone (a bare address may be an SDP line of
/// a multipart body, a `host:port` there would break it).
fn body_replacement<'o>(hit: &Found, outside: &Outside<'o>) -> &'o str {
    if hit.host_port == hit.address {
        outside.ip
    } else {
        outside.host_port
    }
}

/// `ip` and port (5060 when none) of a found `host[:port]`.
fn address_of(text: &[u8]) -> Option<(IpAddr, u16)> {
    let s = std::str::from_utf8(text).ok()?;
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some((sa.ip(), sa.port()));
    }
    let host = s.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().ok().map(|ip| (ip, 5060))
}

/// The body's inside addresses. SDP: `a=candidate` and `a=remote-candidates` lines
/// naming one are removed (the gateway relays the media, so an inside candidate could
/// only fail or bypass the relay), other lines have the address replaced, except the
/// lines the media seam rewrites itself (`c=`, `o=`, `m=`, `a=rtcp`). Any other body:
/// `host[:port]` replaced by the outside address.
fn hide_in_body(
    msg: &Message<'_>,
    edits: &mut Edits,
    inside: &Inside<'_>,
    outside: &Outside<'_>,
) -> Result<(), EditError> {
    let body = msg.body();
    if body.is_empty() {
        return Ok(());
    }
    let found = find(body, inside);
    if found.is_empty() {
        return Ok(());
    }
    let base = msg.body_range().start;
    let is_sdp = msg.sdp().is_some();
    if !is_sdp {
        for hit in found {
            let range = base + hit.host_port.start..base + hit.host_port.end;
            edits.replace_range(msg, range, body_replacement(&hit, outside).as_bytes())?;
        }
        return Ok(());
    }
    let mut removed_upto = 0;
    for hit in found {
        if hit.address.start < removed_upto {
            continue;
        }
        let line_start = body
            .get(..hit.address.start)
            .and_then(|b| b.iter().rposition(|&c| c == b'\n'))
            .map_or(0, |i| i + 1);
        let line_end = body
            .get(hit.address.end..)
            .and_then(|b| b.iter().position(|&c| c == b'\n'))
            .map_or(body.len(), |i| hit.address.end + i + 1);
        let line = body.get(line_start..line_end).unwrap_or_default();
        let owned_by_media = [&b"c="[..], b"o=", b"m=", b"a=rtcp:"]
            .iter()
            .any(|p| line.starts_with(p));
        if owned_by_media {
            continue;
        }
        if line.starts_with(b"a=candidate:") || line.starts_with(b"a=remote-candidates:") {
            edits.replace_range(msg, base + line_start..base + line_end, b"")?;
            removed_upto = line_end;
            continue;
        }
        let range = base + hit.address.start..base + hit.address.end;
        edits.replace_range(msg, range, outside.ip.as_bytes())?;
    }
    Ok(())
}

/// What to do with an outgoing outside datagram that still holds inside address text
/// after every rewrite (`[alg.*] leak_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeakPolicy {
    /// Replace each occurrence by the gateway's outside address. Credentials are the
    /// exception: their digest covers them, so they go out as they are (counted and
    /// logged; a phone should sign a domain, not the gateway's inside address).
    #[default]
    Rewrite,
    /// Remove each header field holding one; a body holding one refuses the message.
    Remove,
    /// Send nothing (a request is answered 500 to its sender).
    Refuse,
}

/// The last line of defence on a finished datagram: `None` when it must not leave.
pub(crate) fn clean_outgoing(
    payload: Vec<u8>,
    inside: &Inside<'_>,
    outside: &Outside<'_>,
    policy: LeakPolicy,
    limits: &sipward_proto::Limits,
) -> Result<Vec<u8>, Option<Vec<u8>>> {
    if find(&payload, inside).is_empty() {
        return Ok(payload);
    }
    if policy == LeakPolicy::Refuse {
        return Err(None);
    }
    let mut kept_credentials = 0;
    let fixed = {
        let Ok(sipward_proto::Datagram::Message(msg)) =
            sipward_proto::parse_datagram(&payload, limits)
        else {
            return Err(None);
        };
        let mut edits = Edits::new();
        let r = (|| -> Result<bool, EditError> {
            // The Request-URI (its user part, say) or a response's reason phrase: not
            // fields to remove. "remove" takes the address out of a reason phrase (free
            // text); a Request-URI cannot do without it.
            let start_line = msg.start_line_bytes();
            let in_start = find(start_line, inside);
            if !in_start.is_empty() {
                let phrase = !msg.is_request() && policy == LeakPolicy::Remove;
                if policy != LeakPolicy::Rewrite && !phrase {
                    return Ok(false);
                }
                let base = msg
                    .range_of(start_line)
                    .ok_or(EditError::NotInMessage)?
                    .start;
                for hit in in_start {
                    let range = base + hit.host_port.start..base + hit.host_port.end;
                    let with = if phrase {
                        ""
                    } else {
                        hit.header_replacement(outside)
                    };
                    edits.replace_range(&msg, range, with.as_bytes())?;
                }
            }
            for f in msg.headers() {
                let found = find(f.line, inside);
                if found.is_empty() {
                    continue;
                }
                if f.name.is_protected() && policy == LeakPolicy::Rewrite {
                    // A digest covers its uri: changed, it fails; removed, the phone
                    // cannot register. "rewrite" keeps the service (counted, logged);
                    // "remove" and "refuse" are there for 0 bytes over a working digest.
                    kept_credentials += found.len();
                    continue;
                }
                let in_value = find(f.value, inside);
                // "remove" cannot take away what the message needs to be one (a From
                // whose display name holds the address, say): rewritten instead.
                let rewrite = policy == LeakPolicy::Rewrite
                    || (policy == LeakPolicy::Remove && cannot_go(f.name));
                if rewrite && !f.name.is_protected() && in_value.len() == found.len() {
                    let base = msg.range_of(f.value).ok_or(EditError::NotInMessage)?.start;
                    let planned: Vec<(Range<usize>, String)> = in_value
                        .iter()
                        .map(|hit| {
                            let r = base + hit.host_port.start..base + hit.host_port.end;
                            (r, hit.header_replacement(outside).to_string())
                        })
                        .collect();
                    edits.replace(&msg, f.value, &substitute(f.value, base, &planned))?;
                } else {
                    edits.remove_field(&msg, f)?;
                }
            }
            let body = msg.body();
            let found = find(body, inside);
            if !found.is_empty() {
                if policy != LeakPolicy::Rewrite {
                    return Ok(false);
                }
                let base = msg.body_range().start;
                for hit in found {
                    let (range, with) = if msg.sdp().is_some() {
                        (hit.address, outside.ip)
                    } else {
                        let with = body_replacement(&hit, outside);
                        (hit.host_port, with)
                    };
                    edits.replace_range(
                        &msg,
                        base + range.start..base + range.end,
                        with.as_bytes(),
                    )?;
                }
            }
            Ok(true)
        })();
        match r {
            Ok(true) => msg.rewrite(&edits).ok(),
            _ => None,
        }
    };
    // Whatever the edits made of it must itself be clean (but for the credentials kept)
    // and still a message the next hop can read.
    match fixed {
        Some(p) if find(&p, inside).len() == kept_credentials && readable(&p, limits) => {
            Err(Some(p))
        }
        _ => Err(None),
    }
}

/// Header fields a message cannot lose and stay valid (RFC 3261 8.1.1, a dialog's
/// Contact, what REFER, NOTIFY and PRACK require).
fn cannot_go(name: HeaderName) -> bool {
    matches!(
        name,
        HeaderName::Via
            | HeaderName::From
            | HeaderName::To
            | HeaderName::CallId
            | HeaderName::CSeq
            | HeaderName::MaxForwards
            | HeaderName::Contact
            | HeaderName::ContentType
            | HeaderName::ContentLength
            | HeaderName::ReferTo
            | HeaderName::Event
            | HeaderName::SubscriptionState
            | HeaderName::RAck
            | HeaderName::RSeq
    )
}

/// Whether a rewritten datagram still parses (a limit its growth passed aside).
fn readable(payload: &[u8], limits: &sipward_proto::Limits) -> bool {
    match sipward_proto::parse_datagram(payload, limits) {
        Ok(_) => true,
        Err(r) => matches!(
            r.defect.kind,
            sipward_proto::DefectKind::MessageTooLarge | sipward_proto::DefectKind::SdpTooLarge
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn inside_net(ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => v4.octets()[0] == 10,
            IpAddr::V6(v6) => {
                v6.segments()[0] == 0xfd00
                    || v6.to_ipv4_mapped().is_some_and(|v| v.octets()[0] == 10)
            }
        }
    }

    fn hits(text: &str, v6: bool) -> Vec<&str> {
        let nets: Vec<ipnet::IpNet> = if v6 {
            vec!["10.0.0.0/8".parse().unwrap(), "fd00::/16".parse().unwrap()]
        } else {
            vec!["10.0.0.0/8".parse().unwrap()]
        };
        let scanner = Scanner::new(nets.iter());
        let inside = Inside {
            is_inside: &inside_net,
            scanner: &scanner,
        };
        find(text.as_bytes(), &inside)
            .into_iter()
            .map(|f| &text[f.host_port])
            .collect()
    }

    #[test]
    fn finds_dotted_quads_with_ports_and_nothing_else() {
        assert_eq!(
            hits(
                "sip:a@10.0.0.20:5062;x, <sip:b@203.0.113.1>, 10.1.2.3.",
                false
            ),
            ["10.0.0.20:5062", "10.1.2.3"]
        );
        assert!(hits("v1.10.0.0 12345.0.0.1 10.0.0 10.0.0.256 a.b.c", false).is_empty());
        // Inside text inside a longer dotted run is still inside text.
        assert_eq!(hits("1234.10.0.0.1", false), ["10.0.0.1"]);
        assert_eq!(hits("010.000.000.020", false), ["010.000.000.020"]);
        // Any number of leading zeros (found by the gateway fuzz target in a run of
        // digits and dots: "127.0127.0.1.20").
        assert_eq!(
            hits("x0010.0.0.1 127.0010.0.0.5", false),
            ["0010.0.0.1", "0010.0.0.5"]
        );
        assert!(hits("110.0.0.1 10.0.0.1000 10.0.0.0256", false).is_empty());
    }

    #[test]
    fn finds_ipv6_forms_when_inside_has_ipv6() {
        assert_eq!(
            hits(
                "sip:a@[fd00::20]:5062 c=IN IP6 fd00:0:0:0:0:0:0:21 x ::ffff:10.0.0.5",
                true
            ),
            ["[fd00::20]:5062", "fd00:0:0:0:0:0:0:21", "::ffff:10.0.0.5"]
        );
        assert!(hits("sip:[2001:db8::1]:5060 Via: SIP/2.0/UDP", true).is_empty());
    }

    /// Every text form of an inside IPv6 address (RFC 4291 section 2.2, RFC 5952 and
    /// what phones write besides): full with leading zeros, compressed, uppercase,
    /// bracketed with and without a port, with an IPv4 tail, IPv4-mapped (dotted and
    /// hex), and right after a colon with no space (a header or attribute value).
    #[test]
    fn finds_every_text_form_of_an_inside_ipv6_address() {
        for want in [
            "fd00:0000:0000:0000:0000:0000:0000:0021",
            "fd00:0:0:0:0:0:0:21",
            "fd00::21",
            "fd00::0021",
            "fd00:0000::0:21",
            "FD00::21",
            "Fd00::aB:21",
            "[fd00::21]",
            "[FD00::21]:5062",
            "[fd00:0:0:0:0:0:0:21]:65535",
            "fd00::10.0.0.33",
            "::ffff:10.0.0.5",
            "[::FFFF:10.0.0.5]:5060",
            "::ffff:a00:5",
            "0:0:0:0:0:ffff:0a00:0005",
        ] {
            for around in [
                format!("c=IN IP6 {want}\r\n"),
                format!("<sip:a@{want}>;x"),
                format!("X-Phone:{want}"),
                format!("sip:{want}"),
                format!("at {want}."),
            ] {
                assert_eq!(hits(&around, true), [want], "in {around:?}");
            }
        }
        // Not inside: another prefix, or inside text only as part of a longer word.
        assert!(hits(
            "fd01::21 2001:db8::fd00 [fe80::fd00:21] 2001:db8:1:fd00::1 [2001:db8:1:fd00::1]:5060",
            true
        )
        .is_empty());
    }

    #[test]
    fn finds_ipv4_mapped_forms_with_ipv4_inside_only_and_marks_user_parts() {
        assert_eq!(
            hits(
                "<sip:a@[::ffff:10.0.0.5]:5062>, [::FFFF:a00:14], ::ffff:0a00:0014. [::ffff:203.0.113.1]",
                false
            ),
            ["[::ffff:10.0.0.5]:5062", "[::FFFF:a00:14]", "::ffff:0a00:0014"]
        );
        assert_eq!(hits("at ::ffff:a00:14... or", false), ["::ffff:a00:14"]);
        let nets: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let scanner = Scanner::new(nets.iter());
        let inside = Inside {
            is_inside: &inside_net,
            scanner: &scanner,
        };
        let text = b"sip:10.0.0.20@x sip:10.0.0.21:5060@y sip:u@10.0.0.22:5062";
        let found = find(text, &inside);
        let users: Vec<(bool, &[u8])> = found
            .iter()
            .map(|f| (f.user, &text[f.host_port.clone()]))
            .collect();
        assert_eq!(
            users,
            [
                (true, &b"10.0.0.20"[..]),
                (true, b"10.0.0.21"),
                (false, b"10.0.0.22:5062")
            ]
        );
    }

    #[test]
    fn escapes_round_trip() {
        assert_eq!(escape(b"a@b;c"), b"a%40b%3Bc");
        assert_eq!(unescape(b"a%40b%3bc").unwrap(), b"a@b;c");
    }
}

#[cfg(test)]
mod cost {
    #![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stdout)]
    use super::*;

    /// Rough cost of the outgoing scan on a usual datagram (no inside address), against
    /// parsing the same datagram: `cargo test --release -p sipward-core scan_cost --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand in release mode"]
    fn scan_cost() {
        let invite = "INVITE sip:bob@203.0.113.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKswc80cd5d6bd566161;rport\r\nMax-Forwards: 69\r\nFrom: alice <sip:alice@203.0.113.1:5060>;tag=a-remove\r\nTo: bob <sip:bob@203.0.113.10:5060>\r\nCall-ID: swec6475ce6fdcd367\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@203.0.113.1:5060;swc=7486771beb279172>\r\nUser-Agent: Yealink SIP-T46S 66.86.0.15\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REFER, NOTIFY\r\nContent-Type: application/sdp\r\nContent-Length: 160\r\n\r\nv=0\r\no=- 1 1 IN IP4 203.0.113.1\r\ns=-\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 31000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
        let nets: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ];
        let is_inside = |ip: IpAddr| nets.iter().any(|n| n.contains(&ip));
        for v6 in [false, true] {
            let mut all = nets.clone();
            if v6 {
                all.push("fd00::/8".parse().unwrap());
            }
            let scanner = Scanner::new(all.iter());
            let inside = Inside {
                is_inside: &is_inside,
                scanner: &scanner,
            };
            let n = 200_000;
            let t = std::time::Instant::now();
            let mut hits = 0;
            for _ in 0..n {
                hits += find(std::hint::black_box(invite.as_bytes()), &inside).len();
            }
            let scan = t.elapsed().as_nanos() / n;
            let t = std::time::Instant::now();
            for _ in 0..n {
                let _ = std::hint::black_box(sipward_proto::parse_datagram(
                    std::hint::black_box(invite.as_bytes()),
                    &sipward_proto::Limits::default(),
                ));
            }
            let parse = t.elapsed().as_nanos() / n;
            println!(
                "{} bytes, v6 scan {v6}: scan {scan} ns, parse {parse} ns, hits {hits}",
                invite.len()
            );
        }
    }
}
