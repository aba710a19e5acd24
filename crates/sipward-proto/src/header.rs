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
    Other,
}

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
        // Lower-case into a stack buffer, then one `match`: the compiler turns it into a
        // switch on length and a few compares, far cheaper than scanning the table.
        let mut lower = [0u8; 20];
        let Some(dst) = lower.get_mut(..name.len()) else {
            return HeaderName::Other;
        };
        for (d, s) in dst.iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        match &*dst {
            b"v" | b"via" => HeaderName::Via,
            b"f" | b"from" => HeaderName::From,
            b"t" | b"to" => HeaderName::To,
            b"i" | b"call-id" => HeaderName::CallId,
            b"cseq" => HeaderName::CSeq,
            b"max-forwards" => HeaderName::MaxForwards,
            b"expires" => HeaderName::Expires,
            b"m" | b"contact" => HeaderName::Contact,
            b"route" => HeaderName::Route,
            b"record-route" => HeaderName::RecordRoute,
            b"l" | b"content-length" => HeaderName::ContentLength,
            b"c" | b"content-type" => HeaderName::ContentType,
            b"e" | b"content-encoding" => HeaderName::ContentEncoding,
            b"authorization" => HeaderName::Authorization,
            b"proxy-authorization" => HeaderName::ProxyAuthorization,
            b"www-authenticate" => HeaderName::WwwAuthenticate,
            b"proxy-authenticate" => HeaderName::ProxyAuthenticate,
            b"user-agent" => HeaderName::UserAgent,
            b"server" => HeaderName::Server,
            b"require" => HeaderName::Require,
            b"proxy-require" => HeaderName::ProxyRequire,
            b"k" | b"supported" => HeaderName::Supported,
            b"allow" => HeaderName::Allow,
            b"s" | b"subject" => HeaderName::Subject,
            b"o" | b"event" => HeaderName::Event,
            b"r" | b"refer-to" => HeaderName::ReferTo,
            b"b" | b"referred-by" => HeaderName::ReferredBy,
            b"a" | b"accept-contact" => HeaderName::AcceptContact,
            b"j" | b"reject-contact" => HeaderName::RejectContact,
            b"d" | b"request-disposition" => HeaderName::RequestDisposition,
            b"u" | b"allow-events" => HeaderName::AllowEvents,
            b"x" | b"session-expires" => HeaderName::SessionExpires,
            b"y" | b"identity" => HeaderName::Identity,
            b"n" | b"identity-info" => HeaderName::IdentityInfo,
            b"rseq" => HeaderName::RSeq,
            b"rack" => HeaderName::RAck,
            _ => HeaderName::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, _, h)| *h == self)
            .map_or("extension header", |(long, _, _)| long)
    }

    /// Headers that may appear at most once (RFC 3261 section 7.3.1: those whose grammar
    /// does not allow a comma-separated list).
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
                | HeaderName::ContentEncoding
                | HeaderName::ReferTo
                | HeaderName::ReferredBy
                | HeaderName::RSeq
                | HeaderName::RAck
                | HeaderName::SessionExpires
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

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }
}
