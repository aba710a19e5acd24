//! The SIP message: framing, start line, header fields, typed access, and the checks
//! that make a parsed [`Message`] known good.

use std::ops::Range;

use smallvec::SmallVec;

use crate::defect::{Defect, DefectKind, Location};
use crate::header::HeaderName;
use crate::headers::{
    self, all_option_tags_valid, media_type_is, parse_contacts, parse_content_type,
    parse_credentials, parse_cseq, parse_name_addr_list, parse_number, parse_single_name_addr,
    parse_vias, CSeq, Contacts, Credentials, NameAddr, Via,
};
use crate::limits::Limits;
use crate::scan::{
    all_token, find_byte, find_byte_sse2, is_token, is_wsp, trim_lws, CommaSplit, CrLfSearch,
};
use crate::sdp::{self, Sdp};
use crate::uri::{parse_uri_into, Uri};

/// A request method. Methods are case-sensitive (RFC 3261 section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method<'a>(pub &'a [u8]);

/// The methods sipward treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodKind {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Prack,
    Update,
    Info,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other,
}

impl<'a> Method<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    pub fn kind(&self) -> MethodKind {
        MethodKind::from_bytes(self.0)
    }
}

impl MethodKind {
    /// The method a token names (case-sensitive, as RFC 3261 says).
    pub fn from_bytes(token: &[u8]) -> MethodKind {
        match token {
            b"INVITE" => MethodKind::Invite,
            b"ACK" => MethodKind::Ack,
            b"BYE" => MethodKind::Bye,
            b"CANCEL" => MethodKind::Cancel,
            b"REGISTER" => MethodKind::Register,
            b"OPTIONS" => MethodKind::Options,
            b"PRACK" => MethodKind::Prack,
            b"UPDATE" => MethodKind::Update,
            b"INFO" => MethodKind::Info,
            b"SUBSCRIBE" => MethodKind::Subscribe,
            b"NOTIFY" => MethodKind::Notify,
            b"REFER" => MethodKind::Refer,
            b"MESSAGE" => MethodKind::Message,
            b"PUBLISH" => MethodKind::Publish,
            _ => MethodKind::Other,
        }
    }
}

/// Request line or status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: Method<'a>, uri: Uri<'a> },
    Response { code: u16, reason: &'a [u8] },
}

/// One header field as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'a> {
    pub name: HeaderName,
    /// The name as written (case and compact form preserved).
    pub raw_name: &'a [u8],
    /// The value, trimmed of surrounding white space; may contain folds.
    pub value: &'a [u8],
    /// The whole field from the first byte of its name through its final CRLF.
    pub line: &'a [u8],
}

/// The header fields of one message: the one allocation of a typical parse, made with
/// room for 16 fields. (Inline storage was measured slower: it makes the message several
/// kilobytes larger, and moving that costs more than the allocation.)
type HeaderFields<'a> = Vec<HeaderField<'a>>;

/// A parsed and validated SIP message borrowing its datagram.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    buf: &'a [u8],
    start: StartLine<'a>,
    start_line: &'a [u8],
    headers: HeaderFields<'a>,
    vias: SmallVec<[Via<'a>; 2]>,
    from: Option<NameAddr<'a>>,
    to: Option<NameAddr<'a>>,
    call_id: &'a [u8],
    cseq: Option<CSeq<'a>>,
    max_forwards: Option<u8>,
    expires: Option<u32>,
    contacts: Contacts<'a>,
    routes: Vec<NameAddr<'a>>,
    record_routes: Vec<NameAddr<'a>>,
    content_length: Option<usize>,
    content_type: Option<&'a [u8]>,
    authorization: Option<Credentials<'a>>,
    proxy_authorization: Option<Credentials<'a>>,
    www_authenticate: Option<Credentials<'a>>,
    proxy_authenticate: Option<Credentials<'a>>,
    /// Offset of the empty line that ends the header section.
    header_end: usize,
    body: Range<usize>,
    sdp: Option<Sdp<'a>>,
}

/// What one datagram is.
// Returned by value once per datagram; boxing the message would cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Datagram<'a> {
    /// CRLF or CRLFCRLF exactly: a keepalive (RFC 5626 section 3.5.1). Over UDP it is
    /// absorbed: RFC 5626's UDP keepalive is STUN, and a reply confuses clients that
    /// never expected one.
    Keepalive,
    /// A well-formed STUN Binding request (RFC 5626 section 4.4.2, the keepalive over
    /// UDP), to be answered with [`crate::stun::binding_success`].
    StunBinding(crate::stun::BindingRequest),
    Message(Message<'a>),
}

/// A datagram that must not go further, and whether its sender gets an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub defect: Defect,
    /// The status to answer with, or `None` to drop silently (responses, ACKs, and
    /// requests too broken to answer).
    pub status: Option<u16>,
}

/// Parses and validates one datagram. This and [`parse_datagram_into`] are the only ways
/// to get a [`Message`].
pub fn parse_datagram<'a>(buf: &'a [u8], limits: &Limits) -> Result<Datagram<'a>, Rejection> {
    if let Some(verdict) = classify_non_sip(buf, limits) {
        return verdict;
    }
    // The message is filled in place and moved once, into the result: it is a few
    // kilobytes, and every extra move of it is a memcpy per datagram.
    let mut msg = Message::empty(buf);
    match msg.parse(limits) {
        Ok(()) => Ok(Datagram::Message(msg)),
        Err(defect) => {
            let defect = text_defect_first(defect, &msg.headers);
            Err(Rejection {
                defect,
                status: crate::answer::answerable(buf).then(|| defect.status()),
            })
        }
    }
}

/// [`parse_datagram`] into `out`, for a caller that parses one datagram after another
/// into the same place: a message already in `out` lends its storage to the next one
/// (no allocation of its header list), and the result is not copied out of a call (a
/// message is a few kilobytes). On a rejection `out` holds the [`Rejection`].
pub fn parse_datagram_into<'a>(
    buf: &'a [u8],
    limits: &Limits,
    out: &mut Result<Datagram<'a>, Rejection>,
) {
    if let Some(verdict) = classify_non_sip(buf, limits) {
        *out = verdict;
        return;
    }
    match out {
        Ok(Datagram::Message(msg)) => msg.reset(buf),
        _ => *out = Ok(Datagram::Message(Message::empty(buf))),
    }
    let Ok(Datagram::Message(msg)) = out else {
        return;
    };
    if let Err(defect) = msg.parse(limits) {
        let defect = text_defect_first(defect, &msg.headers);
        *out = Err(Rejection {
            defect,
            status: crate::answer::answerable(buf).then(|| defect.status()),
        });
    }
}

/// The verdict on a datagram that is not a SIP message to parse: over the size limit
/// (checked first, so that no size of anything passes as something else), a keepalive,
/// STUN, or blank. `None`: parse it as SIP.
#[inline(always)]
fn classify_non_sip<'a>(buf: &[u8], limits: &Limits) -> Option<Result<Datagram<'a>, Rejection>> {
    // A SIP message within the limit starts with a letter (or the CR of a leading
    // CRLF): two compares keep the common case off the rest.
    if buf.len() <= limits.max_message_len && buf.first().is_some_and(|&b| b >= 0x40) {
        return None;
    }
    classify_non_sip_slow(buf, limits)
}

#[inline(never)]
fn classify_non_sip_slow<'a>(
    buf: &[u8],
    limits: &Limits,
) -> Option<Result<Datagram<'a>, Rejection>> {
    let drop = |kind| {
        Some(Err(Rejection {
            defect: at(kind, Location::Message),
            status: None,
        }))
    };
    if buf.len() > limits.max_message_len {
        let defect = at(DefectKind::MessageTooLarge, Location::Message);
        return Some(Err(Rejection {
            defect,
            status: crate::answer::answerable(buf).then(|| defect.status()),
        }));
    }
    if buf.first().is_some_and(|&b| b >= 0x40) {
        return None;
    }
    if buf == b"\r\n" || buf == b"\r\n\r\n" {
        return Some(Ok(Datagram::Keepalive));
    }
    if crate::stun::looks_like_stun(buf) {
        return match crate::stun::parse_binding_request(buf) {
            Ok(request) => Some(Ok(Datagram::StunBinding(request))),
            Err(e) => drop(DefectKind::BadStun(e)),
        };
    }
    // Only white space (sipvicious' "blank" probes, broken keepalives): nothing to
    // answer, not even a Via to answer to.
    if buf
        .iter()
        .all(|&b| matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
    {
        return drop(DefectKind::BlankDatagram);
    }
    None
}

/// Refuses text with a control character or bytes that are not UTF-8. Out of line:
/// inlined into the field dispatch it made the code around the typed parsers worse.
#[inline(never)]
fn check_text(text: &[u8]) -> Result<(), DefectKind> {
    match crate::scan::text_fault(text) {
        None => Ok(()),
        Some(crate::scan::TextFault::Control) => Err(DefectKind::ControlCharacter),
        Some(crate::scan::TextFault::InvalidUtf8) => Err(DefectKind::InvalidUtf8),
    }
}

/// The defect to report when a typed parser refused a field of `headers` as
/// `defect`: a control character or bad UTF-8 in that field, when there is one (a
/// syntax error is what the parser saw, the bad byte is what is really there). On the
/// error path only, so the parse loop does not carry the field for it.
#[cold]
#[inline(never)]
fn text_defect_first(defect: Defect, headers: &[HeaderField<'_>]) -> Defect {
    let Location::Header(name) = defect.at else {
        return defect;
    };
    if !matches!(
        defect.kind,
        DefectKind::MalformedHeader
            | DefectKind::MalformedUri
            | DefectKind::InvalidUser
            | DefectKind::InvalidHost
    ) {
        return defect;
    }
    headers
        .iter()
        .filter(|f| f.name == name)
        .find_map(|f| check_text(f.value).err())
        .map_or(defect, |kind| Defect::header(kind, name))
}

fn at(kind: DefectKind, at: Location) -> Defect {
    Defect::new(kind, at)
}

impl<'a> Message<'a> {
    /// A message with nothing parsed yet; only [`Message::parse`] makes it valid.
    fn empty(buf: &'a [u8]) -> Self {
        Message {
            buf,
            start: StartLine::Response {
                code: 0,
                reason: &[],
            },
            start_line: &[],
            headers: HeaderFields::new(),
            vias: SmallVec::new(),
            from: None,
            to: None,
            call_id: &[],
            cseq: None,
            max_forwards: None,
            expires: None,
            contacts: Contacts::default(),
            routes: Vec::new(),
            record_routes: Vec::new(),
            content_length: None,
            content_type: None,
            authorization: None,
            proxy_authorization: None,
            www_authenticate: None,
            proxy_authenticate: None,
            header_end: 0,
            body: 0..0,
            sdp: None,
        }
    }

    /// Makes this message [`Message::empty`] for `buf`, keeping the storage its lists
    /// have already allocated.
    fn reset(&mut self, buf: &'a [u8]) {
        self.buf = buf;
        self.start = StartLine::Response {
            code: 0,
            reason: &[],
        };
        self.start_line = &[];
        self.headers.clear();
        self.vias.clear();
        self.from = None;
        self.to = None;
        self.call_id = &[];
        self.cseq = None;
        self.max_forwards = None;
        self.expires = None;
        self.contacts.star = false;
        self.contacts.list.clear();
        self.routes.clear();
        self.record_routes.clear();
        self.content_length = None;
        self.content_type = None;
        self.authorization = None;
        self.proxy_authorization = None;
        self.www_authenticate = None;
        self.proxy_authenticate = None;
        self.header_end = 0;
        self.body = 0..0;
        self.sdp = None;
    }

    // One copy for both entry points, out of line: with a copy inlined into each, the
    // code around the header parsers came out worse for both (measured).
    #[inline(never)]
    fn parse(&mut self, limits: &Limits) -> Result<(), Defect> {
        // The size limit is checked by the entry points, before anything else.
        let buf = self.buf;
        let mut pos = 0;
        while buf.get(pos..pos + 2) == Some(b"\r\n") {
            pos += 2;
        }
        let line_end = find_crlf(buf, pos).ok_or(at(DefectKind::NotSip, Location::StartLine))?;
        self.start_line = buf.get(pos..line_end).unwrap_or(&[]);
        parse_start_line(self.start_line, limits, &mut self.start)?;
        self.header_end = split_header_fields(buf, line_end + 2, limits, &mut self.headers)?;
        let mut seen: u64 = 0;
        // Whether a Proxy-Require field has a value: noted on this walk over the fields
        // so that the checks after it need no walk of their own.
        let mut proxy_require = false;
        for i in 0..self.headers.len() {
            let Some(&field) = self.headers.get(i) else {
                break;
            };
            let bit = 1u64 << (field.name as u32 % 64);
            if field.name.is_single() && seen & bit != 0 {
                return Err(Defect::header(DefectKind::DuplicateHeader, field.name));
            }
            seen |= bit;
            self.apply_field(field, limits, &mut proxy_require)
                .map_err(|kind| Defect::header(kind, field.name))?;
        }
        self.check_semantics(limits, proxy_require)
    }
}

/// Splits the header section into `fields`. Returns the offset of the empty line.
// Kept out of line: inlined into the message parser it made the code around it worse
// (register pressure across the header loop; measured).
#[inline(never)]
fn split_header_fields<'a>(
    buf: &'a [u8],
    mut pos: usize,
    limits: &Limits,
    fields: &mut HeaderFields<'a>,
) -> Result<usize, Defect> {
    if fields.capacity() == 0 {
        // The one allocation of a typical parse: room for 16 fields, made directly
        // (`reserve` goes through the general growth path).
        *fields = HeaderFields::with_capacity(16);
    }
    let crlf = CrLfSearch::new();
    loop {
        let rest = buf.get(pos..).unwrap_or(&[]);
        if rest.is_empty() {
            return Err(at(DefectKind::MissingBlankLine, Location::Message));
        }
        if rest.starts_with(b"\r\n") {
            return Ok(pos);
        }
        if fields.len() >= limits.max_headers {
            return Err(at(DefectKind::TooManyHeaders, Location::Message));
        }
        // name = token, then optional white space and the colon, then the value's
        // leading blanks. ':' is not a token character, so this is "the text before the
        // first colon is a token". A bad name is reported only after the end of the
        // field is found, as the end search has its own verdicts that come first.
        //
        // Nearly always a known name is written right before its colon: the common
        // names are recognized from the field's first bytes, confirmed by one compare
        // and the colon after them; any other known name by a vector search for the
        // colon and one compare, which also proves it a token. Anything else takes the
        // byte walk.
        let known = match HeaderName::before_colon(rest) {
            Some((name, colon)) => Some((colon, name)),
            None => find_byte_sse2(rest, b':').and_then(|colon| {
                let name = HeaderName::from_token(rest.get(..colon)?);
                (name != HeaderName::Other).then_some((colon, name))
            }),
        };
        let (name_len, mut vstart, name_ok) = match known {
            Some((colon, _)) => (colon, colon + 1, true),
            None => {
                let name_len = rest
                    .iter()
                    .position(|&b| !is_token(b))
                    .unwrap_or(rest.len());
                let mut vstart = name_len;
                while rest.get(vstart).copied().is_some_and(is_wsp) {
                    vstart += 1;
                }
                let name_ok = name_len > 0 && rest.get(vstart) == Some(&b':');
                (name_len, vstart + usize::from(name_ok), name_ok)
            }
        };
        if name_ok {
            while rest.get(vstart).copied().is_some_and(is_wsp) {
                vstart += 1;
            }
        }
        // Find the end of the field: a CRLF not followed by SP or HT. Name, colon and
        // blanks hold no CR or LF, so a good name lets the search start at the value.
        let mut scan = if name_ok { vstart } else { 0 };
        let field_len = loop {
            let Some(i) = crlf.find(rest.get(scan..).unwrap_or(&[])) else {
                return Err(at(DefectKind::MissingBlankLine, Location::Message));
            };
            let i = scan + i;
            if rest.get(i..i + 2) != Some(b"\r\n") {
                return Err(at(DefectKind::MalformedHeaderLine, Location::Message));
            }
            match rest.get(i + 2) {
                Some(&b) if is_wsp(b) => scan = i + 2,
                _ => break i,
            }
        };
        if !name_ok {
            return Err(at(DefectKind::MalformedHeaderLine, Location::Message));
        }
        let line = rest.get(..field_len + 2).unwrap_or(&[]);
        let raw_name = rest.get(..name_len).unwrap_or(&[]);
        // Leading blanks are skipped; a fold right after the colon, or trailing white
        // space, is left to the general trim.
        let value = trim_lws(rest.get(vstart..field_len).unwrap_or(&[]));
        let name = match known {
            Some((_, name)) => name,
            None => HeaderName::from_token(raw_name),
        };
        if value.len() > limits.max_param_len
            && CommaSplit::new(value).any(|e| e.len() > limits.max_param_len)
        {
            return Err(Defect::header(DefectKind::ParamTooLong, name));
        }
        fields.push(HeaderField {
            name,
            raw_name,
            value,
            line,
        });
        pos += field_len + 2;
    }
}

/// The offset of the first CRLF at or after `from`. memchr on CR alone is cheaper than a
/// two-byte substring search, whose searcher would be built for every datagram.
fn find_crlf(buf: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let i = from + memchr::memchr(b'\r', buf.get(from..)?)?;
        if buf.get(i + 1) == Some(&b'\n') {
            return Some(i);
        }
        from = i + 1;
    }
}

/// Parses the start line into `out`; a request's URI is built in place (it is some 150
/// bytes). On an error `out` is left part written.
fn parse_start_line<'a>(
    line: &'a [u8],
    limits: &Limits,
    out: &mut StartLine<'a>,
) -> Result<(), Defect> {
    let bad = || at(DefectKind::MalformedStartLine, Location::StartLine);
    // As nearly every status line is written: "SIP/2.0 ", three digits and a space,
    // which is what the split below finds there (one compare instead of its walks).
    if let Some((head, rest)) = line.split_first_chunk::<8>() {
        if let (b"SIP/2.0 ", [d0, d1, d2, b' ', reason @ ..]) = (head, rest) {
            let digit = |d: u8| u16::from(d.wrapping_sub(b'0'));
            let (a, b, c) = (digit(*d0), digit(*d1), digit(*d2));
            if a <= 9 && b <= 9 && c <= 9 {
                let code = a * 100 + b * 10 + c;
                if !(100..=699).contains(&code) {
                    return Err(at(DefectKind::BadStatusCode, Location::StartLine));
                }
                check_text(reason).map_err(|kind| at(kind, Location::StartLine))?;
                *out = StartLine::Response { code, reason };
                return Ok(());
            }
        }
    }
    if line.len() >= 4
        && line
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let mut parts = line.splitn(3, |&b| b == b' ');
        let version = parts.next().ok_or_else(bad)?;
        check_version(version)?;
        let code = parts.next().ok_or_else(bad)?;
        let reason = parts.next().ok_or_else(bad)?;
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            return Err(at(DefectKind::BadStatusCode, Location::StartLine));
        }
        let code = code.iter().fold(0u16, |v, &b| v * 10 + u16::from(b - b'0'));
        if !(100..=699).contains(&code) {
            return Err(at(DefectKind::BadStatusCode, Location::StartLine));
        }
        check_text(reason).map_err(|kind| at(kind, Location::StartLine))?;
        *out = StartLine::Response { code, reason };
        return Ok(());
    }
    // Request-Line = Method SP Request-URI SP SIP-Version, single spaces exactly: two
    // spaces in the line, found by vector searches.
    let split_at_space = |s: &'a [u8]| {
        let i = find_byte_sse2(s, b' ')?;
        Some((s.get(..i)?, s.get(i + 1..)?))
    };
    let Some((method, rest)) = split_at_space(line) else {
        return Err(bad());
    };
    let Some((uri, version)) = split_at_space(rest) else {
        return Err(bad());
    };
    if find_byte(version, b' ').is_some() {
        return Err(bad());
    }
    if !all_token(method) || uri.is_empty() {
        return Err(bad());
    }
    check_version(version)?;
    *out = StartLine::Request {
        method: Method(method),
        uri: Uri::Other {
            scheme: &[],
            raw: uri,
        },
    };
    let StartLine::Request { uri: parsed, .. } = out else {
        return Err(bad());
    };
    parse_uri_into(uri, limits, parsed).map_err(|k| at(k, Location::StartLine))?;
    match parsed {
        Uri::Other { .. } => Err(at(DefectKind::UnsupportedUriScheme, Location::StartLine)),
        // A proxy must not forward escaped headers of a Request-URI (RFC 4475 3.1.2.11).
        Uri::Sip(u) if u.headers.is_some() => {
            Err(at(DefectKind::MalformedUri, Location::StartLine))
        }
        _ => Ok(()),
    }
}

fn check_version(v: &[u8]) -> Result<(), Defect> {
    if v == b"SIP/2.0" {
        return Ok(());
    }
    let Some(rest) = v
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case(b"SIP/"))
        .and_then(|_| v.get(4..))
    else {
        return Err(at(DefectKind::MalformedStartLine, Location::StartLine));
    };
    let mut it = rest.splitn(2, |&b| b == b'.');
    let (Some(major), Some(minor)) = (it.next(), it.next()) else {
        return Err(at(DefectKind::MalformedStartLine, Location::StartLine));
    };
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !digits(major) || !digits(minor) {
        return Err(at(DefectKind::MalformedStartLine, Location::StartLine));
    }
    if rest != b"2.0" {
        return Err(at(DefectKind::UnsupportedVersion, Location::StartLine));
    }
    Ok(())
}

impl<'a> Message<'a> {
    /// Parses one field's value into place; a Proxy-Require with a value sets
    /// `proxy_require`.
    fn apply_field(
        &mut self,
        f: HeaderField<'a>,
        limits: &Limits,
        proxy_require: &mut bool,
    ) -> Result<(), DefectKind> {
        let v = f.value;
        match f.name {
            HeaderName::Via => parse_vias(v, limits, &mut self.vias)?,
            HeaderName::From => parse_single_name_addr(v, limits, &mut self.from)?,
            HeaderName::To => parse_single_name_addr(v, limits, &mut self.to)?,
            HeaderName::CallId => {
                if !headers::is_call_id(v) {
                    return Err(DefectKind::MalformedHeader);
                }
                self.call_id = v;
            }
            HeaderName::CSeq => self.cseq = Some(parse_cseq(v)?),
            HeaderName::MaxForwards => {
                let n = parse_number(v, 255).ok_or(DefectKind::BadMaxForwards)?;
                self.max_forwards = u8::try_from(n).ok();
            }
            HeaderName::Expires => {
                let n = parse_number(v, u64::from(u32::MAX)).ok_or(DefectKind::BadExpires)?;
                self.expires = u32::try_from(n).ok();
            }
            HeaderName::Contact => parse_contacts(v, limits, &mut self.contacts)?,
            HeaderName::Route | HeaderName::RecordRoute => {
                let used = self.routes.len() + self.record_routes.len();
                let room = limits.max_routes.saturating_sub(used);
                let list = if f.name == HeaderName::Route {
                    &mut self.routes
                } else {
                    &mut self.record_routes
                };
                let before = list.len();
                parse_name_addr_list(v, limits, before + room, list)?;
            }
            HeaderName::ContentLength => {
                let n = parse_number(v, u64::from(u32::MAX)).ok_or(DefectKind::BadContentLength)?;
                self.content_length = usize::try_from(n).ok();
            }
            HeaderName::ContentType => self.content_type = Some(parse_content_type(v, limits)?),
            HeaderName::Authorization => {
                let c = parse_credentials(v)?;
                self.authorization.get_or_insert(c);
            }
            HeaderName::ProxyAuthorization => {
                let c = parse_credentials(v)?;
                self.proxy_authorization.get_or_insert(c);
            }
            HeaderName::WwwAuthenticate => {
                let c = parse_credentials(v)?;
                self.www_authenticate.get_or_insert(c);
            }
            HeaderName::ProxyAuthenticate => {
                let c = parse_credentials(v)?;
                self.proxy_authenticate.get_or_insert(c);
            }
            HeaderName::ReferTo | HeaderName::ReferredBy => {
                parse_single_name_addr(v, limits, &mut None)?;
            }
            HeaderName::Require | HeaderName::ProxyRequire | HeaderName::Supported
                if !v.is_empty() && !all_option_tags_valid(v) =>
            {
                return Err(DefectKind::MalformedHeader);
            }
            HeaderName::ProxyRequire => *proxy_require |= !v.is_empty(),
            // Option tags, checked above when present: tokens only.
            HeaderName::Require | HeaderName::Supported => {}
            // Every other value is text that goes on as written (User-Agent, Subject,
            // Server, Warning, extension headers): RFC 3261's header-value is
            // TEXT-UTF8 and LWS, so no controls, no DEL, nothing but UTF-8. The typed
            // parsers above admit none of these either (their quoted strings check).
            _ => check_text(v)?,
        }
        Ok(())
    }

    /// The checks that need the whole message; `proxy_require` says whether a
    /// Proxy-Require field has a value.
    fn check_semantics(&mut self, limits: &Limits, proxy_require: bool) -> Result<(), Defect> {
        let missing = |h| Defect::header(DefectKind::MissingHeader, h);
        if self.vias.is_empty() {
            return Err(missing(HeaderName::Via));
        }
        if self.from.is_none() {
            return Err(missing(HeaderName::From));
        }
        if self.to.is_none() {
            return Err(missing(HeaderName::To));
        }
        if self.call_id.is_empty() {
            return Err(missing(HeaderName::CallId));
        }
        let Some(cseq) = self.cseq else {
            return Err(missing(HeaderName::CSeq));
        };
        if let StartLine::Request { method, .. } = self.start {
            if cseq.method != method.0 {
                return Err(Defect::header(
                    DefectKind::CSeqMethodMismatch,
                    HeaderName::CSeq,
                ));
            }
        }
        let unroutable_ip = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(a) => a.is_broadcast() || a.is_multicast(),
            std::net::IpAddr::V6(a) => a.is_multicast(),
        };
        for via in &self.vias {
            // The host is already typed; `received` was checked to be an IP address,
            // so only one written with a leading '2' (first octet 2, 2x or 2xx), an
            // IPv6 reference or an IPv6 address starting with 'f' (ff00::/8) can be
            // multicast or broadcast: just those are parsed again.
            let received = via
                .received
                .filter(|r| matches!(r.first(), Some(b'2' | b'[' | b'f' | b'F')))
                .and_then(|_| via.received_ip());
            let unroutable =
                via.host.ip().is_some_and(unroutable_ip) || received.is_some_and(unroutable_ip);
            if unroutable {
                return Err(Defect::header(DefectKind::UnroutableVia, HeaderName::Via));
            }
        }

        // Body: what follows the empty line, cut to Content-Length (extra octets in a
        // UDP datagram are ignored, RFC 3261 section 18.3).
        let body_start = self.header_end + 2;
        let available = self.buf.len().saturating_sub(body_start);
        let body_len = match self.content_length {
            Some(n) if n > available => {
                return Err(Defect::header(
                    DefectKind::BodyShorterThanContentLength,
                    HeaderName::ContentLength,
                ))
            }
            Some(n) => n,
            None => available,
        };
        self.body = body_start..body_start + body_len;
        self.buf = self.buf.get(..body_start + body_len).unwrap_or(self.buf);
        let body = self.body();
        if !body.is_empty() {
            let Some(ct) = self.content_type else {
                return Err(missing(HeaderName::ContentType));
            };
            if media_type_is(ct, "application/sdp") {
                if body.len() > limits.max_sdp_len {
                    return Err(at(DefectKind::SdpTooLarge, Location::Body));
                }
                // Built in place: the message is discarded if this fails.
                let sdp = self.sdp.insert(Sdp::empty(body));
                sdp::parse_into(body, limits, sdp)
                    .map_err(|e| at(DefectKind::BadSdp(e), Location::Body))?;
            }
        }

        if self.is_request() {
            if self.max_forwards == Some(0) {
                return Err(Defect::header(
                    DefectKind::TooManyHops,
                    HeaderName::MaxForwards,
                ));
            }
            if proxy_require {
                return Err(Defect::header(
                    DefectKind::UnsupportedProxyRequire,
                    HeaderName::ProxyRequire,
                ));
            }
        }
        Ok(())
    }

    /// The message through the end of its body (trailing octets excluded).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    pub fn start_line(&self) -> &StartLine<'a> {
        &self.start
    }

    /// The start line as written, without its CRLF.
    pub fn start_line_bytes(&self) -> &'a [u8] {
        self.start_line
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<Method<'a>> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&Uri<'a>> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn headers(&self) -> &[HeaderField<'a>] {
        &self.headers
    }

    /// The first field of that name.
    pub fn header(&self, name: HeaderName) -> Option<&HeaderField<'a>> {
        self.headers.iter().find(|h| h.name == name)
    }

    pub fn vias(&self) -> &[Via<'a>] {
        &self.vias
    }

    pub fn top_via(&self) -> Option<&Via<'a>> {
        self.vias.first()
    }

    /// Present on every valid message.
    pub fn from(&self) -> Option<&NameAddr<'a>> {
        self.from.as_ref()
    }

    /// Present on every valid message.
    pub fn to(&self) -> Option<&NameAddr<'a>> {
        self.to.as_ref()
    }

    pub fn call_id(&self) -> &'a [u8] {
        self.call_id
    }

    /// Present on every valid message.
    pub fn cseq(&self) -> Option<CSeq<'a>> {
        self.cseq
    }

    pub fn max_forwards(&self) -> Option<u8> {
        self.max_forwards
    }

    pub fn expires(&self) -> Option<u32> {
        self.expires
    }

    pub fn contacts(&self) -> &Contacts<'a> {
        &self.contacts
    }

    pub fn routes(&self) -> &[NameAddr<'a>] {
        &self.routes
    }

    pub fn record_routes(&self) -> &[NameAddr<'a>] {
        &self.record_routes
    }

    pub fn content_length(&self) -> Option<usize> {
        self.content_length
    }

    pub fn content_type(&self) -> Option<&'a [u8]> {
        self.content_type
    }

    pub fn authorization(&self) -> Option<&Credentials<'a>> {
        self.authorization.as_ref()
    }

    pub fn proxy_authorization(&self) -> Option<&Credentials<'a>> {
        self.proxy_authorization.as_ref()
    }

    pub fn www_authenticate(&self) -> Option<&Credentials<'a>> {
        self.www_authenticate.as_ref()
    }

    pub fn proxy_authenticate(&self) -> Option<&Credentials<'a>> {
        self.proxy_authenticate.as_ref()
    }

    pub fn user_agent(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::UserAgent).map(|h| h.value)
    }

    pub fn body(&self) -> &'a [u8] {
        self.buf.get(self.body.clone()).unwrap_or(&[])
    }

    /// Byte range of the body within [`Message::as_bytes`].
    pub fn body_range(&self) -> Range<usize> {
        self.body.clone()
    }

    /// Offset of the empty line that ends the header section.
    pub fn header_end(&self) -> usize {
        self.header_end
    }

    /// The SDP body, when the Content-Type says so.
    pub fn sdp(&self) -> Option<&Sdp<'a>> {
        self.sdp.as_ref()
    }

    /// The range a subslice of this message occupies, or `None` if it is not one.
    pub fn range_of(&self, part: &[u8]) -> Option<Range<usize>> {
        let base = self.buf.as_ptr() as usize;
        let start = (part.as_ptr() as usize).checked_sub(base)?;
        let end = start.checked_add(part.len())?;
        (end <= self.buf.len()).then_some(start..end)
    }

    /// The header field that contains `range`, if any.
    pub fn field_containing(&self, range: &Range<usize>) -> Option<&HeaderField<'a>> {
        self.headers.iter().find(|h| {
            self.range_of(h.line)
                .is_some_and(|r| r.start <= range.start && range.end <= r.end)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@10.0.0.5\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@10.0.0.5:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 130\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\n\
s=-\r\n\
c=IN IP4 10.0.0.5\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";

    fn parse(b: &[u8]) -> Result<Message<'_>, Rejection> {
        match parse_datagram(b, &Limits::default())? {
            Datagram::Message(m) => Ok(m),
            Datagram::Keepalive | Datagram::StunBinding(_) => panic!("keepalive"),
        }
    }

    #[test]
    fn typical_invite() {
        let m = parse(INVITE).unwrap();
        assert_eq!(m.method().map(|m| m.kind()), Some(MethodKind::Invite));
        assert_eq!(m.top_via().unwrap().sent_by, b"10.0.0.5:5060");
        assert_eq!(m.from().unwrap().tag(), Some(&b"1928301774"[..]));
        assert_eq!(m.cseq().unwrap().seq, 314159);
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.contacts().list.len(), 1);
        assert_eq!(m.body().len(), 130);
        assert_eq!(m.sdp().unwrap().media.len(), 1);
    }

    #[test]
    fn parse_into_a_reused_place() {
        let limits = Limits::default();
        let register = b"REGISTER sip:b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\nVia: SIP/2.0/UDP 10.0.0.2\r\nFrom: <sip:a@b.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: 1\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@10.0.0.1>, <sip:a@10.0.0.3>\r\nRoute: <sip:p.example;lr>\r\n\r\n";
        let both = [&register[..], INVITE, b"\r\n", b"x"].concat();
        let (reg, rest) = both.split_at(register.len());
        let (inv, rest) = rest.split_at(INVITE.len());
        let (ping, junk) = rest.split_at(2);
        let mut out = Ok(Datagram::Keepalive);
        for d in [reg, inv, inv, ping, junk, inv, reg] {
            parse_datagram_into(d, &limits, &mut out);
            assert_eq!(
                format!("{out:?}"),
                format!("{:?}", parse_datagram(d, &limits))
            );
        }
    }

    #[test]
    fn keepalives() {
        assert!(matches!(
            parse_datagram(b"\r\n\r\n", &Limits::default()),
            Ok(Datagram::Keepalive)
        ));
        assert!(matches!(
            parse_datagram(b"\r\n", &Limits::default()),
            Ok(Datagram::Keepalive)
        ));
    }

    /// OPTIONS with one extra header line `extra` (raw bytes).
    fn options_with(extra: &[u8]) -> Vec<u8> {
        [
            &b"OPTIONS sip:a@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKt\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n"[..],
            extra,
            b"\r\nContent-Length: 0\r\n\r\n",
        ]
        .concat()
    }

    #[test]
    fn text_headers_refuse_controls_and_bad_utf8() {
        for (line, text) in [
            (&b"Subject: hi\x00there"[..], "control character in Subject"),
            (b"Subject: \x01", "control character in Subject"),
            (
                b"User-Agent: evil\x1b[2J",
                "control character in User-Agent",
            ),
            (b"User-Agent: del\x7f", "control character in User-Agent"),
            (b"User-Agent: Jos\xe9", "invalid UTF-8 in User-Agent"),
            (b"Server: a\x00", "control character in Server"),
            (b"s: \xc3\x28", "invalid UTF-8 in Subject"),
            (
                b"Warning: 399 h \"a\x07\"",
                "control character in extension header",
            ),
            (
                b"X-Anything: a\x1bb",
                "control character in extension header",
            ),
            (
                b"Contact: \"Al\x1bice\" <sip:a@10.0.0.1>",
                "control character in Contact",
            ),
            (
                b"Contact: \"Jos\xe9\" <sip:a@10.0.0.1>",
                "invalid UTF-8 in Contact",
            ),
        ] {
            let msg = options_with(line);
            let r = parse(&msg).unwrap_err();
            assert_eq!(r.status, Some(400), "{line:?}");
            assert_eq!(r.defect.to_string(), text, "{line:?}");
        }
        // Text that is fine: UTF-8, tabs, folds, escaped controls in a quoted string
        // (RFC 4475 section 3.1.1.3 calls that valid).
        for line in [
            "Subject: R\u{e9}union \u{2014} \u{1f600}".as_bytes(),
            b"Subject: tab\there\r\n folded",
            b"User-Agent: Yealink SIP-T46S 66.86.0.15",
            b"Contact: \"BEL:\\\x07\" <sip:a@10.0.0.1>",
        ] {
            assert!(parse(&options_with(line)).is_ok(), "{line:?}");
        }
        // A reason phrase is text as well.
        for reason in [&b"OK\x7f"[..], b"O\x00K", b"\xffOK"] {
            let msg = [
                &b"SIP/2.0 200 "[..],
                reason,
                b"\r\nVia: SIP/2.0/UDP 10.0.0.1\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n",
            ]
            .concat();
            let r = parse(&msg).unwrap_err();
            assert_eq!(r.defect.at, Location::StartLine, "{reason:?}");
            assert!(
                matches!(
                    r.defect.kind,
                    DefectKind::ControlCharacter | DefectKind::InvalidUtf8
                ),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn repeated_single_instance_headers_are_refused() {
        for (lines, text) in [
            (
                &b"User-Agent: Yealink SIP-T46S\r\nUser-Agent: friendly-scanner"[..],
                "duplicate User-Agent header",
            ),
            (
                b"user-agent: a\r\nUSER-AGENT: b",
                "duplicate User-Agent header",
            ),
            (b"Subject: a\r\ns: b", "duplicate Subject header"),
            (b"Server: a\r\nServer: b", "duplicate Server header"),
            (b"Date: a\r\nDate: b", "duplicate Date header"),
            (
                b"Organization: a\r\nOrganization: b",
                "duplicate Organization header",
            ),
            (
                b"Priority: urgent\r\nPriority: normal",
                "duplicate Priority header",
            ),
            (
                b"MIME-Version: 1.0\r\nMime-Version: 1.0",
                "duplicate MIME-Version header",
            ),
            (
                b"Min-Expires: 60\r\nMin-Expires: 60",
                "duplicate Min-Expires header",
            ),
            (
                b"Timestamp: 1\r\nTimestamp: 2",
                "duplicate Timestamp header",
            ),
            (
                b"Retry-After: 1\r\nRetry-After: 2",
                "duplicate Retry-After header",
            ),
            (
                b"Max-Forwards: 1\r\nMax-Forwards: 2",
                "duplicate Max-Forwards header",
            ),
            (b"Expires: 1\r\nExpires: 2", "duplicate Expires header"),
            (b"Event: a\r\no: b", "duplicate Event header"),
            (b"Min-SE: 90\r\nMin-SE: 90", "duplicate Min-SE header"),
            (
                b"Subscription-State: active\r\nSubscription-State: active",
                "duplicate Subscription-State header",
            ),
            (
                b"Replaces: a;to-tag=1;from-tag=2\r\nReplaces: b;to-tag=1;from-tag=2",
                "duplicate Replaces header",
            ),
            (
                b"Content-Disposition: session\r\nContent-Disposition: render",
                "duplicate Content-Disposition header",
            ),
            (
                b"SIP-If-Match: a\r\nSIP-If-Match: b",
                "duplicate SIP-If-Match header",
            ),
        ] {
            let r = parse(&options_with(lines)).unwrap_err();
            assert_eq!(r.status, Some(400), "{text}");
            assert_eq!(r.defect.to_string(), text);
        }
        // Lists may repeat.
        for lines in [
            &b"Allow: INVITE\r\nAllow: BYE"[..],
            b"Supported: timer\r\nSupported: replaces",
            b"Warning: 399 a \"x\"\r\nWarning: 399 b \"y\"",
            b"X-Extension: 1\r\nX-Extension: 2",
            // RFC 3261 20.12: a list (content-coding *(COMMA content-coding)).
            b"Content-Encoding: gzip\r\ne: deflate",
            b"Call-Info: <http://a.example/x>\r\nCall-Info: <http://b.example/y>",
            b"P-Asserted-Identity: <sip:a@b.example>\r\nP-Asserted-Identity: <tel:+1555>",
        ] {
            assert!(parse(&options_with(lines)).is_ok(), "{lines:?}");
        }
    }

    #[test]
    fn blank_datagrams_are_not_keepalives() {
        let limits = Limits::default();
        // Over the size limit: refused as too large whatever it holds, before any
        // keepalive check (nothing to answer: no Via).
        for len in [limits.max_message_len + 1, 65_507] {
            let r = parse_datagram(&vec![b' '; len], &limits).unwrap_err();
            assert_eq!(r.defect.kind, DefectKind::MessageTooLarge);
            assert_eq!(r.status, None);
        }
        let crlfs = b"\r\n".repeat(100);
        for blank in [
            &b" "[..],
            &[b' '; 100][..],
            b"\r\n \r\n",
            b"\t",
            b"\n\n",
            b"\r\n\r\n\r\n",
            &crlfs,
        ] {
            let r = parse_datagram(blank, &limits).unwrap_err();
            assert_eq!(r.defect.kind, DefectKind::BlankDatagram, "{blank:?}");
            assert_eq!(r.status, None);
        }
    }

    #[test]
    fn stun_binding_requests_are_told_from_sip() {
        let limits = Limits::default();
        let mut binding = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        binding.extend_from_slice(&[7; 12]);
        match parse_datagram(&binding, &limits) {
            Ok(Datagram::StunBinding(r)) => assert_eq!(r.transaction_id, [7; 12]),
            other => panic!("{other:?}"),
        }
        let mut out = Ok(Datagram::Keepalive);
        parse_datagram_into(&binding, &limits, &mut out);
        assert!(matches!(out, Ok(Datagram::StunBinding(_))));
        drop(out);
        // A Binding response (reflected at us): STUN-looking, dropped.
        binding[0] = 0x01;
        binding[1] = 0x01;
        let r = parse_datagram(&binding, &limits).unwrap_err();
        assert!(matches!(r.defect.kind, DefectKind::BadStun(_)));
        assert_eq!(r.status, None);
    }

    #[test]
    fn message_size_boundary() {
        let limits = Limits {
            max_message_len: INVITE.len(),
            ..Limits::default()
        };
        assert!(parse_datagram(INVITE, &limits).is_ok());
        let limits = Limits {
            max_message_len: INVITE.len() - 1,
            ..Limits::default()
        };
        let r = parse_datagram(INVITE, &limits).unwrap_err();
        assert_eq!(r.defect.kind, DefectKind::MessageTooLarge);
        assert_eq!(r.status, Some(513));
    }

    #[test]
    fn responses_are_dropped_not_answered() {
        let r = parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1\r\n\r\n").unwrap_err();
        assert_eq!(r.status, None);
    }

    #[test]
    fn missing_and_duplicate_headers() {
        let r = parse(b"OPTIONS sip:a@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nTo: <sip:a@b.example>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap_err();
        assert_eq!(
            r.defect,
            Defect::header(DefectKind::DuplicateHeader, HeaderName::To)
        );
        assert_eq!(r.status, Some(400));
        let r = parse(b"OPTIONS sip:a@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap_err();
        assert_eq!(
            r.defect,
            Defect::header(DefectKind::MissingHeader, HeaderName::CallId)
        );
        // Call-ID missing: still answered, from Via and CSeq.
        assert_eq!(r.status, Some(400));
        let r = parse(b"OPTIONS sip:a@b.example SIP/2.0\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n").unwrap_err();
        // No Via: nowhere to answer.
        assert_eq!(r.status, None);
    }

    #[test]
    fn multicast_or_broadcast_received_is_unroutable() {
        let with_received = |r: &str| {
            let text = String::from_utf8_lossy(INVITE)
                .replace(";rport\r\n", &format!(";rport;received={r}\r\n"));
            parse(text.as_bytes())
                .map(|_| ())
                .map_err(|r| r.defect.kind)
        };
        for r in [
            "224.0.0.1",
            "239.255.255.255",
            "255.255.255.255",
            "[ff02::1]",
            "ff02::1",
            "FF05::2",
        ] {
            assert_eq!(with_received(r), Err(DefectKind::UnroutableVia), "{r}");
        }
        for r in [
            "10.0.0.1",
            "199.1.1.1",
            "223.255.255.255",
            "240.0.0.1",
            "2.2.2.2",
            "[2001:db8::1]",
            "2001:db8::9:255",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            assert_eq!(with_received(r), Ok(()), "{r}");
        }
    }

    #[test]
    fn range_of_subslices() {
        let m = parse(INVITE).unwrap();
        let via = m.top_via().unwrap();
        let r = m.range_of(via.sent_by).unwrap();
        assert_eq!(&INVITE[r.clone()], b"10.0.0.5:5060");
        assert_eq!(m.field_containing(&r).unwrap().name, HeaderName::Via);
        assert!(m.range_of(b"10.0.0.5").is_none());
    }
}
