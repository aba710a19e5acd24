//! Header names: long and compact forms, compared without regard to case.

use std::fmt;

/// The headers sipward knows by name. Everything else is [`HeaderName::Other`] and
/// passes through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Expires,
    Contact,
    Route,
    RecordRoute,
    ContentLength,
    ContentType,
    ContentEncoding,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    UserAgent,
    Server,
    Require,
    ProxyRequire,
    Supported,
    Allow,
    Subject,
    Event,
    ReferTo,
    ReferredBy,
    AcceptContact,
    RejectContact,
    RequestDisposition,
    AllowEvents,
    SessionExpires,
    Identity,
    IdentityInfo,
    RSeq,
    RAck,
    // Single-instance headers known only so that a repeat is refused (RARE_NAMES).
    Date,
    Organization,
    Priority,
    MimeVersion,
    MinExpires,
    MinSe,
    Timestamp,
    RetryAfter,
    Replaces,
    SubscriptionState,
    ContentDisposition,
    ReferSub,
    TargetDialog,
    SipETag,
    SipIfMatch,
    ReplyTo,
    MaxBreadth,
    Privacy,
    Join,
    FlowTimer,
    SessionId,
    AnswerMode,
    PrivAnswerMode,
    InfoPackage,
    PChargingVector,
    PCalledPartyId,
    Other,
}

/// Known names outside the hashed set (`NAMES` fills 37 of its 64 slots, and no odd
/// multiplier spreads many more without a collision): looked up only when the hash
/// misses, by length and one compare. Long form only; none has a compact form.
const RARE_NAMES: &[(&str, HeaderName)] = &[
    ("Date", HeaderName::Date),
    ("Organization", HeaderName::Organization),
    ("Priority", HeaderName::Priority),
    ("MIME-Version", HeaderName::MimeVersion),
    ("Min-Expires", HeaderName::MinExpires),
    ("Min-SE", HeaderName::MinSe),
    ("Timestamp", HeaderName::Timestamp),
    ("Retry-After", HeaderName::RetryAfter),
    ("Replaces", HeaderName::Replaces),
    ("Subscription-State", HeaderName::SubscriptionState),
    ("Content-Disposition", HeaderName::ContentDisposition),
    ("Refer-Sub", HeaderName::ReferSub),
    ("Target-Dialog", HeaderName::TargetDialog),
    ("SIP-ETag", HeaderName::SipETag),
    ("SIP-If-Match", HeaderName::SipIfMatch),
    ("Reply-To", HeaderName::ReplyTo),
    ("Max-Breadth", HeaderName::MaxBreadth),
    ("Privacy", HeaderName::Privacy),
    ("Join", HeaderName::Join),
    ("Flow-Timer", HeaderName::FlowTimer),
    ("Session-ID", HeaderName::SessionId),
    ("Answer-Mode", HeaderName::AnswerMode),
    ("Priv-Answer-Mode", HeaderName::PrivAnswerMode),
    ("Info-Package", HeaderName::InfoPackage),
    ("P-Charging-Vector", HeaderName::PChargingVector),
    ("P-Called-Party-ID", HeaderName::PCalledPartyId),
];

/// Long name, compact form (if any), variant. Matched case-insensitively.
const NAMES: &[(&str, Option<u8>, HeaderName)] = &[
    ("Via", Some(b'v'), HeaderName::Via),
    ("From", Some(b'f'), HeaderName::From),
    ("To", Some(b't'), HeaderName::To),
    ("Call-ID", Some(b'i'), HeaderName::CallId),
    ("CSeq", None, HeaderName::CSeq),
    ("Max-Forwards", None, HeaderName::MaxForwards),
    ("Expires", None, HeaderName::Expires),
    ("Contact", Some(b'm'), HeaderName::Contact),
    ("Route", None, HeaderName::Route),
    ("Record-Route", None, HeaderName::RecordRoute),
    ("Content-Length", Some(b'l'), HeaderName::ContentLength),
    ("Content-Type", Some(b'c'), HeaderName::ContentType),
    ("Content-Encoding", Some(b'e'), HeaderName::ContentEncoding),
    ("Authorization", None, HeaderName::Authorization),
    ("Proxy-Authorization", None, HeaderName::ProxyAuthorization),
    ("WWW-Authenticate", None, HeaderName::WwwAuthenticate),
    ("Proxy-Authenticate", None, HeaderName::ProxyAuthenticate),
    ("User-Agent", None, HeaderName::UserAgent),
    ("Server", None, HeaderName::Server),
    ("Require", None, HeaderName::Require),
    ("Proxy-Require", None, HeaderName::ProxyRequire),
    ("Supported", Some(b'k'), HeaderName::Supported),
    ("Allow", None, HeaderName::Allow),
    ("Subject", Some(b's'), HeaderName::Subject),
    ("Event", Some(b'o'), HeaderName::Event),
    ("Refer-To", Some(b'r'), HeaderName::ReferTo),
    ("Referred-By", Some(b'b'), HeaderName::ReferredBy),
    ("Accept-Contact", Some(b'a'), HeaderName::AcceptContact),
    ("Reject-Contact", Some(b'j'), HeaderName::RejectContact),
    (
        "Request-Disposition",
        Some(b'd'),
        HeaderName::RequestDisposition,
    ),
    ("Allow-Events", Some(b'u'), HeaderName::AllowEvents),
    ("Session-Expires", Some(b'x'), HeaderName::SessionExpires),
    ("Identity", Some(b'y'), HeaderName::Identity),
    ("Identity-Info", Some(b'n'), HeaderName::IdentityInfo),
    ("RSeq", None, HeaderName::RSeq),
    ("RAck", None, HeaderName::RAck),
];

impl HeaderName {
    /// Looks a raw header name up, long or compact form, any case.
    pub fn from_bytes(name: &[u8]) -> Self {
        // Every known name is a token, so anything else is an extension header.
        if crate::scan::all_token(name) {
            Self::from_token(name)
        } else {
            HeaderName::Other
        }
    }

    /// [`HeaderName::from_bytes`] without its token check: exact for any bytes (the
    /// compare is), and what the message splitter uses.
    pub(crate) fn from_token(name: &[u8]) -> Self {
        // Every datagram looks up each of its names, so this is on the hot path. A
        // hash of the first two and last two bytes (case folded) and the length tells
        // all known long names apart (`long_names_hash_apart`; and two arms with one
        // value would be unreachable patterns), and one jump picks the candidate; one
        // case-insensitive compare then confirms it. No copy, no table scan.
        // `names_match_long_compact_and_case` checks it against `NAMES`.
        if let [first] = *name {
            return Self::from_compact(first.to_ascii_lowercase());
        }
        // Each arm compares with its own literal: inlined, the compare is then a load,
        // an OR and a compare per word with constants.
        let confirm = |long: &[u8], header| {
            if eq_lower_name(name, long) {
                header
            } else {
                HeaderName::Other
            }
        };
        macro_rules! by_hash {
            ($($konst:ident: $long:literal => $header:ident,)*) => {{
                $(const $konst: u32 = name_hash($long);)*
                match name_hash(name) {
                    $($konst => confirm($long, HeaderName::$header),)*
                    _ => HeaderName::Other,
                }
            }};
        }
        let found = by_hash! {
            TO: b"to" => To,
            VIA: b"via" => Via,
            FROM: b"from" => From,
            CSEQ: b"cseq" => CSeq,
            RSEQ: b"rseq" => RSeq,
            RACK: b"rack" => RAck,
            ROUTE: b"route" => Route,
            ALLOW: b"allow" => Allow,
            EVENT: b"event" => Event,
            SERVER: b"server" => Server,
            CALL_ID: b"call-id" => CallId,
            CONTACT: b"contact" => Contact,
            EXPIRES: b"expires" => Expires,
            REQUIRE: b"require" => Require,
            SUBJECT: b"subject" => Subject,
            REFER_TO: b"refer-to" => ReferTo,
            IDENTITY: b"identity" => Identity,
            SUPPORTED: b"supported" => Supported,
            USER_AGENT: b"user-agent" => UserAgent,
            REFERRED_BY: b"referred-by" => ReferredBy,
            MAX_FORWARDS: b"max-forwards" => MaxForwards,
            RECORD_ROUTE: b"record-route" => RecordRoute,
            CONTENT_TYPE: b"content-type" => ContentType,
            ALLOW_EVENTS: b"allow-events" => AllowEvents,
            AUTHORIZATION: b"authorization" => Authorization,
            PROXY_REQUIRE: b"proxy-require" => ProxyRequire,
            IDENTITY_INFO: b"identity-info" => IdentityInfo,
            CONTENT_LENGTH: b"content-length" => ContentLength,
            ACCEPT_CONTACT: b"accept-contact" => AcceptContact,
            REJECT_CONTACT: b"reject-contact" => RejectContact,
            SESSION_EXPIRES: b"session-expires" => SessionExpires,
            CONTENT_ENCODING: b"content-encoding" => ContentEncoding,
            WWW_AUTHENTICATE: b"www-authenticate" => WwwAuthenticate,
            PROXY_AUTHENTICATE: b"proxy-authenticate" => ProxyAuthenticate,
            PROXY_AUTHORIZATION: b"proxy-authorization" => ProxyAuthorization,
            REQUEST_DISPOSITION: b"request-disposition" => RequestDisposition,
        };
        if found != HeaderName::Other {
            return found;
        }
        Self::from_rare_token(name)
    }

    /// The [`RARE_NAMES`]: by length, then one compare each.
    #[inline(never)]
    fn from_rare_token(name: &[u8]) -> Self {
        let candidates: &[(&[u8], HeaderName)] = match name.len() {
            4 => &[(b"date", HeaderName::Date), (b"join", HeaderName::Join)],
            6 => &[(b"min-se", HeaderName::MinSe)],
            7 => &[(b"privacy", HeaderName::Privacy)],
            8 => &[
                (b"priority", HeaderName::Priority),
                (b"replaces", HeaderName::Replaces),
                (b"sip-etag", HeaderName::SipETag),
                (b"reply-to", HeaderName::ReplyTo),
            ],
            9 => &[
                (b"timestamp", HeaderName::Timestamp),
                (b"refer-sub", HeaderName::ReferSub),
            ],
            10 => &[
                (b"flow-timer", HeaderName::FlowTimer),
                (b"session-id", HeaderName::SessionId),
            ],
            11 => &[
                (b"min-expires", HeaderName::MinExpires),
                (b"retry-after", HeaderName::RetryAfter),
                (b"max-breadth", HeaderName::MaxBreadth),
                (b"answer-mode", HeaderName::AnswerMode),
            ],
            12 => &[
                (b"organization", HeaderName::Organization),
                (b"mime-version", HeaderName::MimeVersion),
                (b"sip-if-match", HeaderName::SipIfMatch),
                (b"info-package", HeaderName::InfoPackage),
            ],
            13 => &[(b"target-dialog", HeaderName::TargetDialog)],
            16 => &[(b"priv-answer-mode", HeaderName::PrivAnswerMode)],
            17 => &[
                (b"p-charging-vector", HeaderName::PChargingVector),
                (b"p-called-party-id", HeaderName::PCalledPartyId),
            ],
            18 => &[(b"subscription-state", HeaderName::SubscriptionState)],
            19 => &[(b"content-disposition", HeaderName::ContentDisposition)],
            _ => &[],
        };
        candidates
            .iter()
            .find(|(long, _)| eq_lower_name(name, long))
            .map_or(HeaderName::Other, |(_, header)| *header)
    }

    /// The common names written as usual, recognized at the start of a header field
    /// without searching for its colon: the name and the offset of the colon right
    /// after it, or `None` (then the colon search and [`HeaderName::from_token`]
    /// decide). A name is taken only when a case-insensitive compare confirms all of
    /// it and a ':' follows, so it is what `from_token` finds before the first colon.
    #[inline]
    pub(crate) fn before_colon(line: &[u8]) -> Option<(Self, usize)> {
        let head = line.first_chunk::<4>()?;
        let try_name = |long: &[u8], header| {
            let n = long.len();
            (line.get(n) == Some(&b':')
                && line.get(..n).is_some_and(|name| eq_lower_name(name, long)))
            .then_some((header, n))
        };
        // The first four bytes with bit 0x20 set (lower case for letters; ':' and '-'
        // have it already, and so do a few controls then) pick the candidates; the
        // compare of each is exact.
        match u32::from_le_bytes(*head) | 0x2020_2020 {
            k if k == u32::from_le_bytes(*b"via:") => try_name(b"via", HeaderName::Via),
            k if k == u32::from_le_bytes(*b"from") => try_name(b"from", HeaderName::From),
            k if k == u32::from_le_bytes(*b"call") => try_name(b"call-id", HeaderName::CallId),
            k if k == u32::from_le_bytes(*b"cseq") => try_name(b"cseq", HeaderName::CSeq),
            k if k == u32::from_le_bytes(*b"cont") => try_name(b"contact", HeaderName::Contact)
                .or_else(|| try_name(b"content-length", HeaderName::ContentLength))
                .or_else(|| try_name(b"content-type", HeaderName::ContentType)),
            k if k == u32::from_le_bytes(*b"max-") => {
                try_name(b"max-forwards", HeaderName::MaxForwards)
            }
            k if k == u32::from_le_bytes(*b"allo") => try_name(b"allow", HeaderName::Allow),
            k if k == u32::from_le_bytes(*b"supp") => try_name(b"supported", HeaderName::Supported),
            k if k == u32::from_le_bytes(*b"user") => {
                try_name(b"user-agent", HeaderName::UserAgent)
            }
            k if k == u32::from_le_bytes(*b"expi") => try_name(b"expires", HeaderName::Expires),
            k if k == u32::from_le_bytes(*b"auth") => {
                try_name(b"authorization", HeaderName::Authorization)
            }
            k if k & 0x00ff_ffff == u32::from_le_bytes(*b"to:\0") => {
                try_name(b"to", HeaderName::To)
            }
            _ => None,
        }
    }

    /// The compact forms (RFC 3261 section 7.3.3 and later extensions), lower-case.
    fn from_compact(c: u8) -> Self {
        match c {
            b'v' => HeaderName::Via,
            b'f' => HeaderName::From,
            b't' => HeaderName::To,
            b'i' => HeaderName::CallId,
            b'm' => HeaderName::Contact,
            b'l' => HeaderName::ContentLength,
            b'c' => HeaderName::ContentType,
            b'e' => HeaderName::ContentEncoding,
            b'k' => HeaderName::Supported,
            b's' => HeaderName::Subject,
            b'o' => HeaderName::Event,
            b'r' => HeaderName::ReferTo,
            b'b' => HeaderName::ReferredBy,
            b'a' => HeaderName::AcceptContact,
            b'j' => HeaderName::RejectContact,
            b'd' => HeaderName::RequestDisposition,
            b'u' => HeaderName::AllowEvents,
            b'x' => HeaderName::SessionExpires,
            b'y' => HeaderName::Identity,
            b'n' => HeaderName::IdentityInfo,
            _ => HeaderName::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        NAMES
            .iter()
            .map(|(long, _, h)| (*long, *h))
            .chain(RARE_NAMES.iter().copied())
            .find(|(_, h)| *h == self)
            .map_or("extension header", |(long, _)| long)
    }

    /// Headers that may appear at most once (RFC 3261 section 7.3.1: those whose grammar
    /// does not allow a comma-separated list; RFC 6665 Event and Subscription-State,
    /// RFC 4028 Session-Expires and Min-SE, RFC 3891 Replaces, RFC 4488 Refer-Sub,
    /// RFC 4538 Target-Dialog, RFC 3903 SIP-ETag and SIP-If-Match, RFC 3261 Reply-To,
    /// RFC 5393 Max-Breadth, RFC 3323 Privacy, RFC 3911 Join, RFC 5626 Flow-Timer,
    /// RFC 7989 Session-ID, RFC 5373 Answer-Mode and Priv-Answer-Mode, RFC 6086
    /// Info-Package, RFC 7315 P-Charging-Vector and P-Called-Party-ID). A repeat is refused:
    /// the elements after the gateway would each read a different one of them (the
    /// scanner filter read the first User-Agent, a proxy may read the last).
    pub fn is_single(self) -> bool {
        matches!(
            self,
            HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::MaxForwards
                | HeaderName::Expires
                | HeaderName::ContentLength
                | HeaderName::ContentType
                | HeaderName::ReferTo
                | HeaderName::ReferredBy
                | HeaderName::RSeq
                | HeaderName::RAck
                | HeaderName::SessionExpires
                | HeaderName::UserAgent
                | HeaderName::Server
                | HeaderName::Subject
                | HeaderName::Event
                | HeaderName::Date
                | HeaderName::Organization
                | HeaderName::Priority
                | HeaderName::MimeVersion
                | HeaderName::MinExpires
                | HeaderName::MinSe
                | HeaderName::Timestamp
                | HeaderName::RetryAfter
                | HeaderName::Replaces
                | HeaderName::SubscriptionState
                | HeaderName::ContentDisposition
                | HeaderName::ReferSub
                | HeaderName::TargetDialog
                | HeaderName::SipETag
                | HeaderName::SipIfMatch
                | HeaderName::ReplyTo
                | HeaderName::MaxBreadth
                | HeaderName::Privacy
                | HeaderName::Join
                | HeaderName::FlowTimer
                | HeaderName::SessionId
                | HeaderName::AnswerMode
                | HeaderName::PrivAnswerMode
                | HeaderName::InfoPackage
                | HeaderName::PChargingVector
                | HeaderName::PCalledPartyId
        )
    }

    /// Headers whose value must never be rewritten: credentials are computed over them.
    pub fn is_protected(self) -> bool {
        matches!(
            self,
            HeaderName::Authorization
                | HeaderName::ProxyAuthorization
                | HeaderName::WwwAuthenticate
                | HeaderName::ProxyAuthenticate
                | HeaderName::Identity
        )
    }
}

/// The hash [`HeaderName::from_token`] looks long names up by: the first two and the
/// last two bytes (two loads, overlapping in a name of two or three bytes) with bit
/// 0x20 set (the case of a letter), plus the length, times an odd constant found to
/// spread the known names over 64 values without a collision; the top six bits. A
/// name shorter than two bytes hashes to 64, no known name's value.
const fn name_hash(name: &[u8]) -> u32 {
    let (Some(first), Some(last)) = (name.first_chunk::<2>(), name.last_chunk::<2>()) else {
        return 64;
    };
    let key = (u16::from_le_bytes(*first) as u32 | (u16::from_le_bytes(*last) as u32) << 16)
        | 0x2020_2020;
    key.wrapping_add(name.len() as u32)
        .wrapping_mul(0xe62f_1a3d)
        >> 26
}

/// Compares `name` without regard to ASCII case with `lower`, a lower-case name made of
/// letters and '-' (a header or parameter name), eight bytes at a time. Bit 0x20 is set
/// in `name` only where `lower` has a letter (bit 0x40 marks those), so each byte must
/// be that letter in either case, or exactly the '-': exact for any input bytes.
#[inline(always)]
pub(crate) fn eq_lower_name(name: &[u8], lower: &[u8]) -> bool {
    let len = name.len();
    if len != lower.len() {
        return false;
    }
    // The case bit of the letters of `lower`, in each of a word's bytes.
    let fold = |l: u64| (l & 0x4040_4040_4040_4040) >> 1;
    let word = |s: &[u8], at: usize| {
        s.get(at..)
            .and_then(|r| r.first_chunk::<8>())
            .map(|w| u64::from_le_bytes(*w))
    };
    if len < 8 {
        // Two overlapping loads cover the name: the first and the last four (or two)
        // bytes, instead of a loop over the bytes.
        let w4 = |s: &[u8], at: usize| {
            s.get(at..)
                .and_then(|r| r.first_chunk::<4>())
                .map(|w| u64::from(u32::from_le_bytes(*w)))
        };
        let w2 = |s: &[u8], at: usize| {
            s.get(at..)
                .and_then(|r| r.first_chunk::<2>())
                .map(|w| u64::from(u16::from_le_bytes(*w)))
        };
        let same = |n: Option<u64>, l: Option<u64>| match (n, l) {
            (Some(n), Some(l)) => n | fold(l) == l,
            _ => false,
        };
        return match len {
            4.. => same(w4(name, 0), w4(lower, 0)) && same(w4(name, len - 4), w4(lower, len - 4)),
            2.. => same(w2(name, 0), w2(lower, 0)) && same(w2(name, len - 2), w2(lower, len - 2)),
            _ => name
                .iter()
                .zip(lower)
                .all(|(&x, &y)| u64::from(x) | fold(u64::from(y)) == u64::from(y)),
        };
    }
    // Words at 0, 8, ... and a last one ending at `len` (overlapping the one before).
    let mut at = 0;
    loop {
        let at_clamped = at.min(len - 8);
        match (word(name, at_clamped), word(lower, at_clamped)) {
            (Some(n), Some(l)) if n | fold(l) == l => {}
            _ => return false,
        }
        if at_clamped == len - 8 {
            return true;
        }
        at += 8;
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_before_colon_as_from_token_finds_them() {
        // What the splitter would find: the first colon, the name before it.
        let general = |line: &[u8]| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = HeaderName::from_token(&line[..colon]);
            (name != HeaderName::Other).then_some((name, colon))
        };
        for (long, _, _) in NAMES {
            let lower = long.to_ascii_lowercase().into_bytes();
            for tail in [&b":x"[..], b" :x", b"x:", b"\x1ax"] {
                for i in 0..lower.len() + 1 {
                    for b in 0..=255u8 {
                        let mut v = lower.clone();
                        match v.get_mut(i) {
                            Some(x) => *x = b,
                            None => v.push(b),
                        }
                        v.extend_from_slice(tail);
                        if let Some(found) = HeaderName::before_colon(&v) {
                            assert_eq!(Some(found), general(&v), "{v:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rare_names_are_found_in_any_case_and_near_misses_are_not() {
        for (long, name) in RARE_NAMES {
            assert_eq!(HeaderName::from_bytes(long.as_bytes()), *name);
            assert_eq!(
                HeaderName::from_bytes(long.to_lowercase().as_bytes()),
                *name
            );
            assert_eq!(
                HeaderName::from_bytes(long.to_uppercase().as_bytes()),
                *name
            );
            assert_eq!(name.as_str(), *long);
            let mut v = long.to_ascii_lowercase().into_bytes();
            for i in 0..v.len() {
                for b in 0..=255u8 {
                    let keep = v[i];
                    v[i] = b;
                    let expected = if b.eq_ignore_ascii_case(&keep) {
                        *name
                    } else {
                        HeaderName::Other
                    };
                    assert_eq!(HeaderName::from_token(&v), expected, "{v:?}");
                    v[i] = keep;
                }
            }
        }
        // Every variant fits the parser's 64-bit set of names seen.
        assert!((HeaderName::Other as u32) < 64);
    }

    #[test]
    fn long_names_hash_apart() {
        let mut seen = [false; 64];
        for (long, _, _) in NAMES {
            let h = name_hash(long.to_ascii_lowercase().as_bytes()) as usize;
            assert!(h < 64 && !seen[h], "{long}");
            seen[h] = true;
        }
    }

    #[test]
    fn names_match_long_compact_and_case() {
        assert_eq!(HeaderName::from_bytes(b"vIa"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"V"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::from_bytes(b"call-id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_bytes(b"C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"q"), HeaderName::Other);
        assert_eq!(
            HeaderName::from_bytes(b"x-a-very-long-extension-header"),
            HeaderName::Other
        );
        // Near misses: bytes that OR 0x20 would fold onto a letter or '-'.
        assert_eq!(HeaderName::from_bytes(b"Call\rID"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"Call_ID"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"Max-Forward_"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b"Contacts"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(b""), HeaderName::Other);
        // The splitter looks names up before knowing they are tokens: the compare must
        // be exact for any bytes (CR | 0x20 is '-', '_' | 0x20 is DEL).
        assert_eq!(HeaderName::from_token(b"Call\rID"), HeaderName::Other);
        assert_eq!(HeaderName::from_token(b"Call\x0dID"), HeaderName::Other);
        assert_eq!(
            HeaderName::from_token(b"Max\x0dForwards"),
            HeaderName::Other
        );
        assert_eq!(HeaderName::from_token(b"v\x01a"), HeaderName::Other);
        assert_eq!(HeaderName::from_token(b"CALL-id"), HeaderName::CallId);
        assert_eq!(HeaderName::from_token(b"\x16"), HeaderName::Other);
        // The match and the table of names agree on every long and compact form.
        for (long, compact, name) in NAMES {
            assert_eq!(HeaderName::from_bytes(long.as_bytes()), *name, "{long}");
            assert_eq!(
                HeaderName::from_bytes(long.to_uppercase().as_bytes()),
                *name
            );
            if let Some(c) = compact {
                assert_eq!(HeaderName::from_bytes(&[*c]), *name, "{long}");
            }
            // Every byte of every name flipped to each other value is not that name.
            let lower = long.to_ascii_lowercase().into_bytes();
            for i in 0..lower.len() {
                for b in 0..=255u8 {
                    let mut v = lower.clone();
                    v[i] = b;
                    let expected = NAMES
                        .iter()
                        .map(|(l, _, h)| (*l, *h))
                        .chain(RARE_NAMES.iter().copied())
                        .find(|(l, _)| l.as_bytes().eq_ignore_ascii_case(&v))
                        .map_or(HeaderName::Other, |(_, h)| h);
                    assert_eq!(HeaderName::from_token(&v), expected, "{v:?}");
                }
            }
        }
    }
}
