//! Address headers: From, To, Contact, Route, Record-Route, Refer-To.

use smallvec::SmallVec;

use super::{parse_params_with, Params};
use crate::defect::DefectKind;
use crate::header::eq_lower_name;
use crate::limits::Limits;
use crate::scan::{all_user_chars, find_byte_sse2, find_space_or3, is_lws, parse_bounded, Cursor};
use crate::uri::{parse_host, parse_uri_into, SipUri, Uri};

/// `[display-name] <uri>` or a bare addr-spec, with header parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The whole element as written.
    pub raw: &'a [u8],
    /// Display name as written (quoted string with quotes, or tokens).
    pub display: Option<&'a [u8]>,
    pub uri: Uri<'a>,
    /// Whether the URI was enclosed in `<...>`.
    pub bracketed: bool,
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// The `tag` parameter (From, To).
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.get("tag").flatten()
    }

    /// The `expires` parameter (Contact), already checked to be a 32-bit number.
    pub fn expires(&self) -> Option<u32> {
        self.params
            .get("expires")
            .flatten()
            .and_then(|v| parse_bounded(v, u64::from(u32::MAX)))
            .and_then(|v| u32::try_from(v).ok())
    }
}

/// A Contact list. Nearly every message has at most one contact: it is kept inline, so
/// parsing it allocates nothing; more (up to `Limits::max_contacts`) spill to the heap.
pub type AddrList<'a> = SmallVec<[NameAddr<'a>; 1]>;

/// A Contact header's content: `*` or a list of addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contacts<'a> {
    pub star: bool,
    pub list: AddrList<'a>,
}

/// Where a name-addr stands decides what may follow it and whether `<>` is required.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// From/To/Refer-To: one value, addr-spec allowed.
    Single,
    /// Contact: list, addr-spec allowed.
    List,
    /// Route/Record-Route: list, name-addr only.
    RouteList,
}

impl<'a> NameAddr<'a> {
    /// What an address is filled into: a name-addr is some 200 bytes, so it is built in
    /// the place it is kept rather than returned and moved there.
    fn unparsed() -> Self {
        NameAddr {
            raw: &[],
            display: None,
            uri: Uri::Other {
                scheme: &[],
                raw: &[],
            },
            bracketed: false,
            params: Params::default(),
        }
    }
}

/// Parses one address at the cursor into `out`; `each_param` sees every header
/// parameter. On an error `out` is left part written.
fn parse_one<'a>(
    c: &mut Cursor<'a>,
    form: Form,
    limits: &Limits,
    each_param: impl FnMut(&'a [u8], Option<&'a [u8]>),
    out: &mut NameAddr<'a>,
) -> Result<(), DefectKind> {
    c.skip_lws();
    let start = c.pos();
    let mut display = None;
    let uri_text;
    let bracketed;
    if c.peek() == Some(b'"') {
        display = Some(c.quoted_string().ok_or(DefectKind::MalformedHeader)?);
        c.skip_lws();
        if !c.eat(b'<') {
            return Err(DefectKind::MalformedHeader);
        }
        uri_text = None;
        bracketed = true;
    } else {
        // Tokens separated by LWS, then '<' makes it a name-addr; anything else means
        // the value is an addr-spec and we start over.
        let mut last_end = c.pos();
        loop {
            if c.token().is_none() {
                break;
            }
            last_end = c.pos();
            c.skip_lws();
        }
        if c.peek() == Some(b'<') {
            if last_end > start {
                display = Some(c.slice(start, last_end));
            }
            c.bump();
            uri_text = None;
            bracketed = true;
        } else {
            if form == Form::RouteList {
                return Err(DefectKind::MalformedHeader);
            }
            c.set_pos(start);
            uri_text = Some(c.take_while(|b| !is_lws(b) && b != b';' && b != b','));
            bracketed = false;
        }
    }
    // One place for the bracketed URI, shortcut or not, whichever way the '<' was reached.
    let uri_text = match uri_text {
        None if !plain_sip_in_brackets(c, limits, &mut out.uri) => Some(bracket_body(c)?),
        t => t,
    };
    if let Some(uri_text) = uri_text {
        if uri_text.len() > limits.max_param_len {
            return Err(DefectKind::ParamTooLong);
        }
        parse_uri_into(uri_text, limits, &mut out.uri)?;
        if !bracketed {
            // RFC 3261 section 20: a URI with '?' (or ',' or ';') must be bracketed.
            if out.uri.raw().contains(&b'?') {
                return Err(DefectKind::MalformedUri);
            }
        }
    }
    out.params = parse_params_with(c, limits, each_param)?;
    out.raw = c.slice_from(start);
    out.display = display;
    out.bracketed = bracketed;
    Ok(())
}

/// The usual bracketed URI, `sip:user@host>` or `sip:user@host:port>` (cursor after
/// the `<`): a user of plain user characters, a host name or IPv4 address, a port.
/// Read in one walk and written into `out`, the cursor then past the `>`; false, with
/// nothing changed, for anything else, which the general parse then judges.
#[inline]
fn plain_sip_in_brackets<'a>(c: &mut Cursor<'a>, limits: &Limits, out: &mut Uri<'a>) -> bool {
    let s = c.rest();
    let sip = u32::from_le_bytes(*b"sip:");
    let Some(body) = s
        .first_chunk::<4>()
        .filter(|p| u32::from_le_bytes(**p) | 0x0020_2020 == sip)
        .and_then(|_| s.get(4..))
    else {
        return false;
    };
    // One search each for the '@' and for the host's end; the user's characters checked
    // here, the host's by the host parse.
    let Some(at) = find_byte_sse2(body, b'@') else {
        return false;
    };
    let user = body.get(..at).unwrap_or_default();
    if at > limits.max_param_len || !all_user_chars(user) {
        return false;
    }
    let after = body.get(at + 1..).unwrap_or_default();
    let Some(host_len) = find_space_or3(after, b'>', b':', b';') else {
        return false;
    };
    let (port, end) = match after.get(host_len) {
        Some(b'>') => (None, host_len),
        Some(b':') => {
            let digits = after.get(host_len + 1..).unwrap_or_default();
            // As the port parse judges them: one to five digits, 1 to 65535.
            let Some((v, n)) = crate::scan::leading_number(digits, 5) else {
                return false;
            };
            match u16::try_from(v) {
                Ok(p) if p != 0 && digits.get(n) == Some(&b'>') => (Some(p), host_len + 1 + n),
                _ => return false,
            }
        }
        _ => return false,
    };
    let uri_len = 4 + at + 1 + end;
    // The general parse's length limits: the URI, its user, its host and port.
    if uri_len > limits.max_param_len || end > limits.max_param_len {
        return false;
    }
    let Ok(host) = parse_host(after.get(..host_len).unwrap_or_default()) else {
        return false;
    };
    *out = Uri::Sip(SipUri {
        raw: s.get(..uri_len).unwrap_or_default(),
        secure: false,
        user: Some(user),
        password: None,
        host,
        port,
        host_port: after.get(..end).unwrap_or_default(),
        // Empty, but where the general parse puts it: just after the host and port.
        params: after.get(end..end).unwrap_or_default(),
        headers: None,
    });
    c.set_pos(c.pos() + uri_len + 1);
    true
}

/// The URI between `<` (already consumed) and `>`; no white space allowed inside.
#[inline]
fn bracket_body<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], DefectKind> {
    // Usually the first byte that is white space, a control, or one of > < " is the
    // closing '>': found eight bytes at a time. Otherwise (a control byte inside, which
    // the URI parser judges) the byte walk below decides where the URI stops.
    if let Some(n) = find_space_or3(c.rest(), b'>', b'<', b'"') {
        if c.rest().get(n) == Some(&b'>') {
            let uri = c.rest().get(..n).unwrap_or_default();
            c.set_pos(c.pos() + n + 1);
            return Ok(uri);
        }
    }
    let uri = c.take_while(|b| b != b'>' && !is_lws(b) && b != b'<' && b != b'"');
    if !c.eat(b'>') {
        return Err(DefectKind::MalformedUri);
    }
    Ok(uri)
}

/// From, To, Refer-To: exactly one address, put in `out`. On an error `out` may hold a
/// part-written address.
pub(crate) fn parse_single_name_addr<'a>(
    value: &'a [u8],
    limits: &Limits,
    out: &mut Option<NameAddr<'a>>,
) -> Result<(), DefectKind> {
    let mut c = Cursor::new(value);
    let na = out.insert(NameAddr::unparsed());
    parse_one(&mut c, Form::Single, limits, |_, _| {}, na)?;
    c.skip_lws();
    if !c.at_end() {
        return Err(DefectKind::MalformedHeader);
    }
    Ok(())
}

/// Route, Record-Route: a list of bracketed addresses, appended to `out`.
pub(crate) fn parse_name_addr_list<'a>(
    value: &'a [u8],
    limits: &Limits,
    max: usize,
    out: &mut Vec<NameAddr<'a>>,
) -> Result<(), DefectKind> {
    parse_list(value, Form::RouteList, limits, max, out, |_, _, _| {}).map_err(|e| match e {
        DefectKind::TooManyContacts => DefectKind::TooManyRoutes,
        e => e,
    })
}

/// Parses a comma-separated list into `out`. `each_param` sees every header parameter
/// with the index of its element in `out`.
fn parse_list<'a>(
    value: &'a [u8],
    form: Form,
    limits: &Limits,
    max: usize,
    out: &mut impl AddrSink<'a>,
    mut each_param: impl FnMut(usize, &'a [u8], Option<&'a [u8]>),
) -> Result<(), DefectKind> {
    let mut c = Cursor::new(value);
    loop {
        if out.len() >= max {
            return Err(DefectKind::TooManyContacts);
        }
        let index = out.len();
        let na = out.push_unparsed().ok_or(DefectKind::MalformedHeader)?;
        parse_one(&mut c, form, limits, |n, v| each_param(index, n, v), na)?;
        c.skip_lws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return Err(DefectKind::MalformedHeader);
        }
    }
}

/// Where `parse_list` puts addresses: a `Vec` (Route, Record-Route: usually none, so no
/// allocation) or an [`AddrList`] (Contact: usually one, kept inline).
trait AddrSink<'a> {
    fn len(&self) -> usize;
    /// Appends an address to be filled in, and returns it (always `Some`).
    fn push_unparsed(&mut self) -> Option<&mut NameAddr<'a>>;
}

impl<'a> AddrSink<'a> for Vec<NameAddr<'a>> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn push_unparsed(&mut self) -> Option<&mut NameAddr<'a>> {
        Vec::push(self, NameAddr::unparsed());
        self.last_mut()
    }
}

impl<'a> AddrSink<'a> for AddrList<'a> {
    fn len(&self) -> usize {
        SmallVec::len(self)
    }
    fn push_unparsed(&mut self) -> Option<&mut NameAddr<'a>> {
        SmallVec::push(self, NameAddr::unparsed());
        self.last_mut()
    }
}

/// Contact: `*` or a list; `expires` must be a 32-bit number and `q` a qvalue.
pub(crate) fn parse_contacts<'a>(
    value: &'a [u8],
    limits: &Limits,
    out: &mut Contacts<'a>,
) -> Result<(), DefectKind> {
    if crate::scan::trim_lws(value) == b"*" {
        if out.star || !out.list.is_empty() {
            return Err(DefectKind::MalformedHeader);
        }
        out.star = true;
        return Ok(());
    }
    if out.star {
        return Err(DefectKind::MalformedHeader);
    }
    // The values are checked as the parameters go by, but a syntax error anywhere in
    // the header still wins, and within one contact a bad `expires` wins over a bad
    // `q` (only the first of each counts, as `Params::get` reads them). So each
    // contact's verdict is settled when the next one starts, the first bad one is kept,
    // and it is reported only once the whole list has parsed.
    let mut current: Option<(usize, ContactParams)> = None;
    let mut error: Option<DefectKind> = None;
    let mut settle = |checked: Option<(usize, ContactParams)>| {
        if let (None, Some((_, p))) = (error, checked) {
            error = p.expires_error.or(p.q_error);
        }
    };
    parse_list(
        value,
        Form::List,
        limits,
        limits.max_contacts,
        &mut out.list,
        |index, name, value| {
            if current.as_ref().is_none_or(|(i, _)| *i != index) {
                settle(current.take());
                current = Some((index, ContactParams::default()));
            }
            if let Some((_, p)) = current.as_mut() {
                p.visit(name, value);
            }
        },
    )?;
    settle(current.take());
    error.map_or(Ok(()), Err)
}

/// The verdict on one contact's `expires` and `q` parameters (the first of each).
#[derive(Default)]
struct ContactParams {
    expires_seen: bool,
    q_seen: bool,
    expires_error: Option<DefectKind>,
    q_error: Option<DefectKind>,
}

impl ContactParams {
    #[inline]
    fn visit(&mut self, name: &[u8], value: Option<&[u8]>) {
        if !self.expires_seen && name.len() == 7 && eq_lower_name(name, b"expires") {
            self.expires_seen = true;
            let ok = value.is_some_and(|v| parse_bounded(v, u64::from(u32::MAX)).is_some());
            self.expires_error = (!ok).then_some(DefectKind::BadExpires);
        } else if !self.q_seen && name.len() == 1 && eq_lower_name(name, b"q") {
            self.q_seen = true;
            self.q_error = (!value.is_some_and(is_qvalue)).then_some(DefectKind::MalformedHeader);
        }
    }
}

/// qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
fn is_qvalue(q: &[u8]) -> bool {
    match q {
        [b'0'] | [b'1'] => true,
        [b'0', b'.', rest @ ..] => rest.len() <= 3 && rest.iter().all(u8::is_ascii_digit),
        [b'1', b'.', rest @ ..] => rest.len() <= 3 && rest.iter().all(|&b| b == b'0'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sip_shortcut_agrees_with_the_general_parse() {
        let bases: [&[u8]; 8] = [
            b"sip:alice@atlanta.example.com>;tag=1928301774",
            b"sip:bob@biloxi.example.com>",
            b"sip:bob@192.168.1.20:5062>",
            b"SIP:alice@192.168.1.20:5060;transport=udp>",
            b"sip:a-b.c_d!~*'()&=+$,;?/@host.example.:65535>",
            b"sip:%41lice:pw@[2001:db8::1]:5060>",
            b"sip:carol@chicago.example.com?subject=x>",
            b"sip:x@h:1>, <sip:y@g>",
        ];
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for base in bases {
            cases.extend(crate::headers::prefixes_and_byte_edits(base));
        }
        let tight = Limits {
            max_param_len: 12,
            ..Limits::default()
        };
        for limits in [Limits::default(), tight] {
            for v in &cases {
                let mut fast = Cursor::new(v);
                let mut fast_uri = Uri::Other {
                    scheme: b"x",
                    raw: b"x",
                };
                if !plain_sip_in_brackets(&mut fast, &limits, &mut fast_uri) {
                    // Nothing changed: the general parse then takes the value as it was.
                    assert_eq!(fast.pos(), 0);
                    assert_eq!(
                        fast_uri,
                        Uri::Other {
                            scheme: b"x",
                            raw: b"x"
                        }
                    );
                    continue;
                }
                let mut slow = Cursor::new(v);
                let text = bracket_body(&mut slow).unwrap();
                assert!(text.len() <= limits.max_param_len);
                let mut slow_uri = Uri::Other {
                    scheme: b"",
                    raw: b"",
                };
                parse_uri_into(text, &limits, &mut slow_uri).unwrap();
                assert_eq!(fast_uri, slow_uri, "{:?}", String::from_utf8_lossy(v));
                // The same slices, not only the same bytes: callers take their offsets.
                let (Uri::Sip(f), Uri::Sip(s)) = (&fast_uri, &slow_uri) else {
                    panic!("not sip");
                };
                let spans = |u: &SipUri<'_>| {
                    [
                        Some(u.raw),
                        u.user,
                        Some(u.host.as_bytes()),
                        Some(u.host_port),
                        Some(u.params),
                    ]
                    .map(|x| x.map(|x| (x.as_ptr(), x.len())))
                };
                assert_eq!(spans(f), spans(s));
                assert_eq!(fast.pos(), slow.pos());
            }
        }
        // The usual forms do take the shortcut.
        for v in &bases[..3] {
            let mut c = Cursor::new(v);
            let mut uri = Uri::Other {
                scheme: b"",
                raw: b"",
            };
            assert!(plain_sip_in_brackets(&mut c, &Limits::default(), &mut uri));
        }
    }

    fn single(v: &[u8]) -> Result<NameAddr<'_>, DefectKind> {
        let mut out = None;
        parse_single_name_addr(v, &Limits::default(), &mut out)?;
        out.ok_or(DefectKind::MalformedHeader)
    }

    #[test]
    fn forms_of_from_and_to() {
        let na = single(
            b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(na.display, Some(&b"\"J Rosenberg \\\\\\\"\""[..]));
        assert_eq!(na.tag(), Some(&b"98asjd8"[..]));
        let na = single(b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert!(!na.bracketed);
        assert_eq!(na.tag(), Some(&b"1918181833n"[..]));
        let na = single(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(na.display, Some(&b"caller"[..]));
        let na = single(b"token1~` token2'+_ token3*%!.- <sip:mundane@example.com>").unwrap();
        assert_eq!(na.display, Some(&b"token1~` token2'+_ token3*%!.-"[..]));
        assert!(matches!(
            single(b"isbn:2983792873").unwrap().uri,
            Uri::Other { .. }
        ));
    }

    #[test]
    fn torture_defects() {
        assert!(single(b"\"Mr. J. User <sip:j.user@example.com>").is_err());
        assert!(single(b"\"Watson, Thomas\" < sip:t.watson@example.org >").is_err());
        assert!(single(b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err());
        assert!(single(b"<sip:a@example.com>, <sip:b@example.com>").is_err());
        assert!(single(b"sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
    }

    #[test]
    fn contacts() {
        let limits = Limits::default();
        let mut c = Contacts::default();
        parse_contacts(b"\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33", &limits, &mut c).unwrap();
        assert_eq!(c.list.len(), 1);
        assert_eq!(c.list[0].params.get("q"), Some(Some(&b"0.33"[..])));
        let mut c = Contacts::default();
        parse_contacts(
            b"<sip:a@h.example>;expires=60, sip:b@h.example;expires=0",
            &limits,
            &mut c,
        )
        .unwrap();
        assert_eq!(
            c.list.iter().map(|n| n.expires()).collect::<Vec<_>>(),
            vec![Some(60), Some(0)]
        );
        let mut c = Contacts::default();
        parse_contacts(b" * ", &limits, &mut c).unwrap();
        assert!(c.star);
        let mut c = Contacts::default();
        assert_eq!(
            parse_contacts(b"<sip:a@h.example>;expires=4294967296", &limits, &mut c),
            Err(DefectKind::BadExpires)
        );
        let mut c = Contacts::default();
        assert!(parse_contacts(b"<sip:a@h.example>;q=1.5", &limits, &mut c).is_err());
        let mut c = Contacts::default();
        assert!(parse_contacts(b"\"Joe\" <sip:joe@example.org>;;;;", &limits, &mut c).is_err());
        // Which defect wins: a later element's syntax over an earlier bad value, the
        // first element's bad value over a later one's, expires over q, first of each.
        let verdict = |v: &[u8]| parse_contacts(v, &limits, &mut Contacts::default());
        assert_eq!(
            verdict(b"<sip:a@h.example>;expires=x, <sip:b@h.example>;;"),
            Err(DefectKind::MalformedHeader)
        );
        assert_eq!(
            verdict(b"<sip:a@h.example>;q=2, <sip:b@h.example>;expires=x"),
            Err(DefectKind::MalformedHeader)
        );
        assert_eq!(
            verdict(b"<sip:a@h.example>;q=2;expires=x"),
            Err(DefectKind::BadExpires)
        );
        assert_eq!(verdict(b"<sip:a@h.example>;expires=1;expires=x"), Ok(()));
        assert_eq!(verdict(b"<sip:a@h.example>;q=1;q=5"), Ok(()));
    }

    #[test]
    fn routes_need_brackets() {
        let limits = Limits::default();
        let mut out = Vec::new();
        parse_name_addr_list(
            b"<sip:p1.example;lr>,<sip:p2.example;lr>",
            &limits,
            8,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 2);
        let mut out = Vec::new();
        assert!(parse_name_addr_list(b"sip:p1.example", &limits, 8, &mut out).is_err());
        let mut out = Vec::new();
        assert_eq!(
            parse_name_addr_list(b"<sip:a.example>,<sip:b.example>", &limits, 1, &mut out),
            Err(DefectKind::TooManyRoutes)
        );
    }
}
