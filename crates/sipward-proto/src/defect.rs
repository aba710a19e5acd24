//! Why a datagram is refused, and what to do about it.
//!
//! Every defect the parser can find is a [`DefectKind`] at a [`Location`]. Each kind maps
//! to exactly one SIP status code (sent when the datagram is a request that can be
//! answered) and a short Warning text. The mapping is the product's reject-code policy:
//!
//! | status | when |
//! |---|---|
//! | 400 | any syntax defect, bad value, duplicate or missing header, over-long parameter |
//! | 413 | SDP body over its limit, or too many SDP media sections or lines |
//! | 416 | Request-URI with a scheme other than sip, sips or tel |
//! | 420 | Proxy-Require names an extension (sipward supports none) |
//! | 483 | Max-Forwards is 0 on a request sipward would forward |
//! | 505 | SIP version other than 2.0 |
//! | 513 | whole message over its limit, or too many headers, Vias, Routes or Contacts |

use std::fmt;

use crate::header::HeaderName;
use crate::sdp::SdpError;

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefectKind {
    /// Not a SIP message at all (no start line we can read).
    NotSip,
    /// Only white space, and not exactly a CRLF or CRLFCRLF keepalive.
    BlankDatagram,
    /// STUN, but not a well-formed Binding request sipward can answer.
    BadStun(crate::stun::StunError),
    MessageTooLarge,
    TooManyHeaders,
    TooManyVias,
    TooManyRoutes,
    TooManyContacts,
    TooManyParams,
    ParamTooLong,
    MalformedStartLine,
    UnsupportedVersion,
    BadStatusCode,
    UnsupportedUriScheme,
    MalformedUri,
    InvalidUser,
    InvalidHost,
    InvalidIp,
    InvalidPort,
    MalformedHeaderLine,
    MalformedHeader,
    /// A control character (or DEL) in text: a header value, a reason phrase.
    ControlCharacter,
    /// Bytes that are not UTF-8 in text.
    InvalidUtf8,
    DuplicateHeader,
    MissingHeader,
    MissingBlankLine,
    BadMaxForwards,
    TooManyHops,
    BadExpires,
    BadCSeq,
    CSeqMethodMismatch,
    BadContentLength,
    BodyShorterThanContentLength,
    UnroutableVia,
    UnsupportedProxyRequire,
    SdpTooLarge,
    BadSdp(SdpError),
}

/// Where the defect is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Message,
    StartLine,
    Header(HeaderName),
    Body,
}

/// One defect found in a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defect {
    pub kind: DefectKind,
    pub at: Location,
}

impl Defect {
    pub fn new(kind: DefectKind, at: Location) -> Self {
        Self { kind, at }
    }

    pub(crate) fn header(kind: DefectKind, name: HeaderName) -> Self {
        Self::new(kind, Location::Header(name))
    }

    /// The status code that answers a request with this defect.
    pub fn status(&self) -> u16 {
        use DefectKind::*;
        match self.kind {
            MessageTooLarge | TooManyHeaders | TooManyVias | TooManyRoutes | TooManyContacts => 513,
            SdpTooLarge => 413,
            BadSdp(SdpError::TooLarge | SdpError::TooManyLines | SdpError::TooManyMedia) => 413,
            UnsupportedUriScheme => 416,
            UnsupportedProxyRequire => 420,
            TooManyHops => 483,
            UnsupportedVersion => 505,
            _ => 400,
        }
    }

    /// The reason phrase for [`Defect::status`].
    pub fn reason_phrase(&self) -> &'static str {
        match self.status() {
            413 => "Request Entity Too Large",
            416 => "Unsupported URI Scheme",
            420 => "Bad Extension",
            483 => "Too Many Hops",
            505 => "Version Not Supported",
            513 => "Message Too Large",
            _ => "Bad Request",
        }
    }

    /// A short description of the kind, without location.
    pub fn kind_text(&self) -> &'static str {
        use DefectKind::*;
        match self.kind {
            NotSip => "not a SIP message",
            BlankDatagram => "blank datagram (white space only, not a keepalive)",
            BadStun(e) => e.as_str(),
            MessageTooLarge => "message too large",
            TooManyHeaders => "too many header fields",
            TooManyVias => "too many Via entries",
            TooManyRoutes => "too many Route entries",
            TooManyContacts => "too many Contact entries",
            TooManyParams => "too many parameters",
            ParamTooLong => "parameter too long",
            MalformedStartLine => "malformed start line",
            UnsupportedVersion => "unsupported SIP version",
            BadStatusCode => "bad status code",
            UnsupportedUriScheme => "unsupported URI scheme",
            MalformedUri => "malformed URI",
            InvalidUser => "invalid user part",
            InvalidHost => "invalid host name",
            InvalidIp => "invalid IP address",
            InvalidPort => "invalid port",
            MalformedHeaderLine => "malformed header line",
            MalformedHeader => "malformed header value",
            ControlCharacter => "control character",
            InvalidUtf8 => "invalid UTF-8",
            DuplicateHeader => "duplicate header",
            MissingHeader => "missing mandatory header",
            MissingBlankLine => "header section not terminated",
            BadMaxForwards => "bad Max-Forwards value",
            TooManyHops => "Max-Forwards exhausted",
            BadExpires => "bad Expires value",
            BadCSeq => "bad CSeq",
            CSeqMethodMismatch => "CSeq method does not match request method",
            BadContentLength => "bad Content-Length",
            BodyShorterThanContentLength => "body shorter than Content-Length",
            UnroutableVia => "unroutable Via address",
            UnsupportedProxyRequire => "unsupported Proxy-Require extension",
            SdpTooLarge => "SDP body too large",
            BadSdp(e) => e.as_str(),
        }
    }

    /// The text for the Warning header (399, "miscellaneous warning"): kind and place.
    pub fn warning_text(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, self.at) {
            (DefectKind::MissingHeader, Location::Header(h)) => {
                return write!(f, "missing {h} header")
            }
            (DefectKind::DuplicateHeader, Location::Header(h)) => {
                return write!(f, "duplicate {h} header")
            }
            _ => {}
        }
        f.write_str(self.kind_text())?;
        match self.at {
            Location::Message => Ok(()),
            Location::StartLine => f.write_str(" in start line"),
            Location::Header(h) => write!(f, " in {h}"),
            Location::Body => f.write_str(" in body"),
        }
    }
}
