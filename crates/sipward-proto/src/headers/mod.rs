//! Typed header values, one file per family, plus the header-parameter grammar they share.
//!
//! Each parser takes the value of one header field (already unfolded in place: folds are
//! linear white space to the cursor) and returns zero-copy slices of it.

mod addr;
mod auth;
mod via;

pub use addr::{AddrList, Contacts, NameAddr};
pub use auth::Credentials;
pub use via::Via;

pub(crate) use addr::{parse_contacts, parse_name_addr_list, parse_single_name_addr};
pub(crate) use auth::parse_credentials;
pub(crate) use via::parse_vias;

use crate::defect::DefectKind;
use crate::limits::Limits;
use crate::scan::{is_lws, is_token, parse_bounded, trim_lws, Cursor};

/// Header parameters (`;name[=value]...`) as written, without the first `;`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a> {
    raw: &'a [u8],
}

impl<'a> Params<'a> {
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Iterates (name, value) pairs; quoted values keep their quotes.
    pub fn iter(&self) -> ParamIter<'a> {
        ParamIter {
            cursor: Cursor::new(self.raw),
            first: true,
        }
    }

    /// Looks a parameter up by name, case-insensitively. `Some(None)` for a flag.
    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }
}

/// Iterator over validated header parameters.
pub struct ParamIter<'a> {
    cursor: Cursor<'a>,
    first: bool,
}

impl<'a> Iterator for ParamIter<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);
    fn next(&mut self) -> Option<Self::Item> {
        if !self.first && !self.cursor.eat_sep(b';') {
            return None;
        }
        self.first = false;
        self.cursor.skip_lws();
        let param = next_param(&mut self.cursor).ok()?;
        Some(param)
    }
}

/// One `name [= value]` with value a token, an IPv6 reference or a quoted string.
#[inline]
fn next_param<'a>(c: &mut Cursor<'a>) -> Result<(&'a [u8], Option<&'a [u8]>), DefectKind> {
    let name = c.token().ok_or(DefectKind::MalformedHeader)?;
    if !c.eat_sep(b'=') {
        return Ok((name, None));
    }
    let value = match c.peek() {
        Some(b'"') => c.quoted_string().ok_or(DefectKind::MalformedHeader)?,
        Some(b'[') => {
            let v =
                c.take_while(|b| b.is_ascii_hexdigit() || matches!(b, b'[' | b']' | b':' | b'.'));
            if v.last() != Some(&b']') {
                return Err(DefectKind::MalformedHeader);
            }
            v
        }
        _ => {
            let start = c.pos();
            let token = c.token();
            if c.peek() == Some(b':') && name.eq_ignore_ascii_case(b"received") {
                // An IPv6 address without brackets, as RFC 3261's via-received has it
                // (RFC 5118 section 4.5): taken whole, checked by the Via parser.
                c.set_pos(start);
                c.take_while(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            } else {
                token.ok_or(DefectKind::MalformedHeader)?
            }
        }
    };
    Ok((name, Some(value)))
}

/// Parses `*( SEMI generic-param )` at the cursor, which stands just before a `;` or at
/// the end of the element. Checks count and length limits.
pub(crate) fn parse_params<'a>(
    c: &mut Cursor<'a>,
    limits: &Limits,
) -> Result<Params<'a>, DefectKind> {
    parse_params_with(c, limits, |_, _| {})
}

/// [`parse_params`], handing each parameter to `each` as it is parsed, so that callers
/// that check parameter values (Via, Contact) need no second pass over them.
#[inline]
pub(crate) fn parse_params_with<'a>(
    c: &mut Cursor<'a>,
    limits: &Limits,
    mut each: impl FnMut(&'a [u8], Option<&'a [u8]>),
) -> Result<Params<'a>, DefectKind> {
    // Often nothing follows (a Contact without parameters, the end of a list element):
    // no ';', not even after white space, settled here without the call.
    if c.peek().is_none_or(|b| b != b';' && !is_lws(b)) {
        return Ok(Params::default());
    }
    if let Some(params) = lone_tag(c, limits, &mut each) {
        return Ok(params);
    }
    parse_some_params(c, limits, each)
}

/// The usual end of a From or To value, `;tag=` and a token up to the end of the value,
/// taken as [`parse_some_params`] would take it (same parameters, same checks) without
/// its general walk. `None` for anything else, which that walk then judges.
#[inline]
fn lone_tag<'a>(
    c: &mut Cursor<'a>,
    limits: &Limits,
    each: &mut impl FnMut(&'a [u8], Option<&'a [u8]>),
) -> Option<Params<'a>> {
    let rest = c.rest();
    let (head, tail) = rest.split_first_chunk::<5>()?;
    // ';' and '=' exactly, the letters in either case (OR 0x20 maps only their upper
    // case onto them).
    if u32::from_le_bytes([head[1], head[2], head[3], head[4]]) | 0x0020_2020
        != u32::from_le_bytes(*b"tag=")
        || head[0] != b';'
    {
        return None;
    }
    let value_len = tail
        .iter()
        .position(|&b| !is_token(b))
        .unwrap_or(tail.len());
    // The token must be the rest of the value, and the one parameter within limits.
    if value_len == 0
        || value_len != tail.len()
        || 4 + value_len > limits.max_param_len
        || limits.max_params == 0
    {
        return None;
    }
    let (raw, name) = (rest.get(1..)?, rest.get(1..4)?);
    each(name, Some(tail));
    c.set_pos(c.pos() + rest.len());
    Some(Params { raw })
}

fn parse_some_params<'a>(
    c: &mut Cursor<'a>,
    limits: &Limits,
    mut each: impl FnMut(&'a [u8], Option<&'a [u8]>),
) -> Result<Params<'a>, DefectKind> {
    let save = c.pos();
    if !c.eat_sep(b';') {
        c.set_pos(save);
        return Ok(Params::default());
    }
    let start = c.pos();
    let mut count = 0usize;
    loop {
        let before = c.pos();
        let (name, value) = next_param(c)?;
        if c.pos() - before > limits.max_param_len {
            return Err(DefectKind::ParamTooLong);
        }
        count += 1;
        if count > limits.max_params {
            return Err(DefectKind::TooManyParams);
        }
        each(name, value);
        let end = c.pos();
        if !c.eat_sep(b';') {
            c.set_pos(end);
            return Ok(Params {
                raw: c.slice_from(start),
            });
        }
    }
}

/// A CSeq: sequence number and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a [u8],
}

pub(crate) fn parse_cseq(value: &[u8]) -> Result<CSeq<'_>, DefectKind> {
    // The usual `N METHOD`: the number, one space and a token to the end. Anything else
    // (more digits than a u32 needs included) goes to the general walk for its verdict.
    if let Some((seq, n)) = crate::scan::leading_number(value, 19) {
        if let (Some(b' '), Some(method), Ok(seq)) = (
            value.get(n).copied(),
            value.get(n + 1..),
            u32::try_from(seq),
        ) {
            if crate::scan::all_token(method) {
                return Ok(CSeq { seq, method });
            }
        }
    }
    parse_cseq_walk(value)
}

/// [`parse_cseq`] for any form: white space around and between, and the verdict on
/// bad values.
#[inline(never)]
fn parse_cseq_walk(value: &[u8]) -> Result<CSeq<'_>, DefectKind> {
    let mut c = Cursor::new(value);
    let digits = c.take_while(|b| b.is_ascii_digit());
    let seq = parse_bounded(digits, u64::from(u32::MAX)).ok_or(DefectKind::BadCSeq)?;
    if !c.skip_lws() {
        return Err(DefectKind::BadCSeq);
    }
    let method = c.token().ok_or(DefectKind::BadCSeq)?;
    c.skip_lws();
    if !c.at_end() {
        return Err(DefectKind::BadCSeq);
    }
    Ok(CSeq {
        seq: u32::try_from(seq).map_err(|_| DefectKind::BadCSeq)?,
        method,
    })
}

/// A scalar header that is just a number (Max-Forwards, Expires, Content-Length).
#[inline(always)]
pub(crate) fn parse_number(value: &[u8], max: u64) -> Option<u64> {
    parse_bounded(trim_lws(value), max)
}

/// Call-ID: `word [ "@" word ]`.
#[inline]
pub(crate) fn is_call_id(value: &[u8]) -> bool {
    let word = |w: &[u8]| !w.is_empty() && crate::scan::all_word(w);
    match crate::scan::find_byte_sse2(value, b'@') {
        Some(at) => {
            word(value.get(..at).unwrap_or_default())
                && word(value.get(at + 1..).unwrap_or_default())
        }
        None => word(value),
    }
}

/// Every comma-separated element, trimmed of white space, is a non-empty token. One walk:
/// each element is blanks, a token, blanks.
pub(crate) fn all_option_tags_valid(value: &[u8]) -> bool {
    // 0: before the element's token, 1: in it, 2: after it.
    let mut state = 0u8;
    for &b in value {
        if is_token(b) {
            if state == 2 {
                return false;
            }
            state = 1;
        } else if is_lws(b) {
            if state == 1 {
                state = 2;
            }
        } else if b == b',' && state != 0 {
            state = 0;
        } else {
            return false;
        }
    }
    state != 0
}

/// Content-Type: `type "/" subtype *( SEMI m-parameter )`. Returns the media type
/// without parameters.
pub(crate) fn parse_content_type<'a>(
    value: &'a [u8],
    limits: &Limits,
) -> Result<&'a [u8], DefectKind> {
    // Nearly every body sipward sees is SDP, labelled just so: that value is its own
    // media type, as the walk below would find.
    if value == b"application/sdp" {
        return Ok(value);
    }
    let mut c = Cursor::new(value);
    let start = c.pos();
    c.token().ok_or(DefectKind::MalformedHeader)?;
    if !c.eat_sep(b'/') {
        return Err(DefectKind::MalformedHeader);
    }
    c.token().ok_or(DefectKind::MalformedHeader)?;
    let media_type = c.slice_from(start);
    parse_params(&mut c, limits)?;
    c.skip_lws();
    if !c.at_end() {
        return Err(DefectKind::MalformedHeader);
    }
    Ok(media_type)
}

/// Compares a media type (possibly with LWS around the slash) with `type/subtype`.
#[inline]
pub(crate) fn media_type_is(media_type: &[u8], expected: &str) -> bool {
    // Nearly always written without white space: one compare, without early exit (the
    // compiler vectorizes it).
    let expected_bytes = expected.as_bytes();
    // Usually even the case matches: a plain compare settles it.
    if media_type == expected_bytes {
        return true;
    }
    if media_type.len() == expected_bytes.len()
        && media_type
            .iter()
            .zip(expected_bytes)
            .fold(0u8, |d, (a, b)| {
                d | (a.to_ascii_lowercase() ^ b.to_ascii_lowercase())
            })
            == 0
    {
        return true;
    }
    let mut it = media_type.splitn(2, |&b| b == b'/');
    let (Some(t), Some(s)) = (it.next(), it.next()) else {
        return false;
    };
    let mut e = expected.as_bytes().splitn(2, |&b| b == b'/');
    let (Some(et), Some(es)) = (e.next(), e.next()) else {
        return false;
    };
    trim_lws(t).eq_ignore_ascii_case(et) && trim_lws(s).eq_ignore_ascii_case(es)
}

/// Strips the quotes (not the escapes) from a quoted value.
pub fn unquote(v: &[u8]) -> &[u8] {
    v.strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(v)
}

/// Test inputs around `base`: every prefix of it, and every single-byte replacement.
#[cfg(test)]
pub(crate) fn prefixes_and_byte_edits(base: &[u8]) -> Vec<Vec<u8>> {
    let mut cases: Vec<Vec<u8>> = (0..=base.len()).map(|n| base[..n].to_vec()).collect();
    for i in 0..base.len() {
        for b in 0..=255u8 {
            let mut v = base.to_vec();
            v[i] = b;
            cases.push(v);
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq_shortcut_agrees_with_the_walk() {
        let mut cases: Vec<Vec<u8>> = [
            &b"314159 INVITE"[..],
            b"1 ACK",
            b"0 BYE",
            b"4294967295 REGISTER",
            b"4294967296 REGISTER",
            b"00000000000000000000004294967295 X",
            b"00000000000000000000004294967296 X",
            b"99999999999999999999999 X",
            b"1  INVITE",
            b"1\tINVITE",
            b" 1 INVITE",
            b"1 INVITE ",
            b"1 INV ITE",
            b"1 INVITE\r\n",
            b"1 INV@TE",
            b"1 ",
            b"1",
            b"INVITE",
            b"",
            b"-1 INVITE",
            b"1 in!v%i~te",
        ]
        .iter()
        .map(|v| v.to_vec())
        .collect();
        for base in [&b"314159 INVITE"[..], b"4294967295 OPTIONS"] {
            cases.extend(prefixes_and_byte_edits(base));
        }
        for v in &cases {
            assert_eq!(
                parse_cseq(v),
                parse_cseq_walk(v),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn params_with_folds_and_quotes() {
        let limits = Limits::default();
        let mut c = Cursor::new(b" ;\r\n  tag = 98asjd8 ; x=\"a;b\";lr");
        let p = parse_params(&mut c, &limits).unwrap();
        assert!(c.at_end());
        assert_eq!(p.get("TAG"), Some(Some(&b"98asjd8"[..])));
        assert_eq!(p.get("x"), Some(Some(&b"\"a;b\""[..])));
        assert_eq!(p.get("lr"), Some(None));
        assert_eq!(p.iter().count(), 3);
    }

    #[test]
    fn lone_tag_as_the_general_walk_takes_it() {
        let walk = |v: &'static [u8], limits: &Limits| {
            let mut c = Cursor::new(v);
            let mut seen = Vec::new();
            let r = parse_some_params(&mut c, limits, |n, v| seen.push((n, v)));
            (r, c.pos(), seen)
        };
        let fast = |v: &'static [u8], limits: &Limits| {
            let mut c = Cursor::new(v);
            let mut seen = Vec::new();
            let r = parse_params_with(&mut c, limits, |n, v| seen.push((n, v)));
            (r, c.pos(), seen)
        };
        let tight = Limits {
            max_param_len: 6,
            max_params: 0,
            ..Limits::default()
        };
        for limits in [Limits::default(), tight] {
            for v in [
                &b";tag=9fxced76sl"[..],
                b";TaG=x",
                b";tag=",
                b";tag=a b",
                b";tag=ab;x=1",
                b";tag=ab ",
                b";tag=\"q\"",
                b";tags=1",
                b";tag =1",
                b"; tag=1",
                b";tag=a,<sip:b>",
                b";tag=123456789",
            ] {
                assert_eq!(fast(v, &limits), walk(v, &limits), "{v:?}");
            }
        }
    }

    #[test]
    fn empty_params_are_malformed() {
        let limits = Limits::default();
        let mut c = Cursor::new(b";;;");
        assert_eq!(
            parse_params(&mut c, &limits),
            Err(DefectKind::MalformedHeader)
        );
    }

    #[test]
    fn cseq_values() {
        assert_eq!(
            parse_cseq(b"0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: b"INVITE"
            }
        );
        assert_eq!(parse_cseq(b"4294967295 ACK").unwrap().seq, u32::MAX);
        assert_eq!(parse_cseq(b"4294967296 ACK"), Err(DefectKind::BadCSeq));
        assert_eq!(parse_cseq(b"1INVITE"), Err(DefectKind::BadCSeq));
        assert_eq!(parse_cseq(b"1 INVITE x"), Err(DefectKind::BadCSeq));
    }

    #[test]
    fn call_ids() {
        assert!(is_call_id(b"intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"));
        assert!(!is_call_id(b"a b"));
        assert!(!is_call_id(b"a@b@c"));
        assert!(!is_call_id(b""));
    }

    #[test]
    fn content_types() {
        let limits = Limits::default();
        let t = parse_content_type(b"application/sdp;charset=utf-8", &limits).unwrap();
        assert!(media_type_is(t, "Application/SDP"));
        assert!(parse_content_type(b"application", &limits).is_err());
        assert_eq!(
            parse_content_type(b"application/sdp", &limits),
            Ok(&b"application/sdp"[..])
        );
        assert_eq!(
            parse_content_type(b"application/sdp ;x=1", &limits),
            Ok(&b"application/sdp"[..])
        );
    }
}
