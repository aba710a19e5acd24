//! Byte classes and a cursor for scanning header values.
//!
//! Header values handed to the cursor may span folded lines. The message splitter
//! guarantees that any CR or LF inside a value is part of a fold (CRLF followed by SP or
//! HT), so the cursor can treat CR and LF as linear white space.

/// Character-class bits for the RFC 3261 grammar, one table lookup per byte.
const TOKEN: u16 = 1;
const UNRESERVED: u16 = 1 << 1;
const USER: u16 = 1 << 2;
const PASSWORD: u16 = 1 << 3;
const PARAMCHAR: u16 = 1 << 4;
const HNV: u16 = 1 << 5;
const WORD: u16 = 1 << 6;
const ALNUM: u16 = 1 << 7;
const DIGIT: u16 = 1 << 8;
const HEX: u16 = 1 << 9;
const HOST: u16 = 1 << 10;

static CLASSES: [u16; 256] = build_classes();

#[allow(clippy::indexing_slicing)] // c < 256 by the loop bound
const fn build_classes() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        let alpha = b.is_ascii_alphabetic();
        let digit = b.is_ascii_digit();
        let mut v = 0u16;
        if alpha || digit {
            v |= TOKEN | UNRESERVED | USER | PASSWORD | PARAMCHAR | HNV | WORD | ALNUM;
        }
        if digit {
            v |= DIGIT | HEX;
        }
        // host names: letters, digits, '-' and the dots between labels
        if alpha || digit || b == b'-' || b == b'.' {
            v |= HOST;
        }
        if matches!(b, b'a'..=b'f' | b'A'..=b'F') {
            v |= HEX;
        }
        // mark = - _ . ! ~ * ' ( )
        if matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        ) {
            v |= UNRESERVED | USER | PASSWORD | PARAMCHAR | HNV | WORD;
        }
        // token adds % + ` and lacks ( )
        if matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        ) {
            v |= TOKEN;
        }
        // user-unreserved = & = + $ , ; ? /
        if matches!(b, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/') {
            v |= USER;
        }
        if matches!(b, b'&' | b'=' | b'+' | b'$' | b',') {
            v |= PASSWORD;
        }
        // param-unreserved = [ ] / : & + $
        if matches!(b, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$') {
            v |= PARAMCHAR;
        }
        // hnv-unreserved = [ ] / ? : + $
        if matches!(b, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$') {
            v |= HNV;
        }
        // word adds % + ` " : \ / [ ] ? { } < >
        if matches!(
            b,
            b'%' | b'+'
                | b'`'
                | b'"'
                | b':'
                | b'\\'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'{'
                | b'}'
                | b'<'
                | b'>'
        ) {
            v |= WORD;
        }
        t[c] = v;
        c += 1;
    }
    t
}

#[inline]
#[allow(clippy::indexing_slicing)] // a u8 always indexes a 256-entry table
fn class(b: u8) -> u16 {
    CLASSES[b as usize]
}

/// The decimal number `s` starts with: `(value, digit count)` when it has 1 to
/// `max_digits` digits (at most 19, so that the value cannot overflow) and no more
/// follow; `None` otherwise. Summed in the walk that finds the digits' end, for the
/// shortcuts that read a number where it stands.
#[inline(always)]
pub(crate) fn leading_number(s: &[u8], max_digits: usize) -> Option<(u64, usize)> {
    debug_assert!(max_digits <= 19);
    let mut value = 0u64;
    let mut n = 0;
    for &b in s {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if n == max_digits {
            return None;
        }
        value = value * 10 + u64::from(d);
        n += 1;
    }
    (n > 0).then_some((value, n))
}

#[inline]
pub(crate) fn is_token(b: u8) -> bool {
    class(b) & TOKEN != 0
}
#[inline]
pub(crate) fn is_alnum(b: u8) -> bool {
    class(b) & ALNUM != 0
}
#[inline]
pub(crate) fn is_digit(b: u8) -> bool {
    class(b) & DIGIT != 0
}
#[inline]
pub(crate) fn is_param_char(b: u8) -> bool {
    class(b) & PARAMCHAR != 0
}
#[inline]
pub(crate) fn is_hex(b: u8) -> bool {
    class(b) & HEX != 0
}
#[inline]
pub(crate) fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Which escaped-character class a URI component allows.
#[derive(Clone, Copy)]
pub(crate) enum UriClass {
    User,
    Password,
    Param,
    HeaderPart,
}

/// True when `s` is non-empty (if `allow_empty` is false) and made only of the class's
/// characters and well-formed `%HH` escapes.
#[inline]
pub(crate) fn is_escaped_run(s: &[u8], class_of: UriClass, allow_empty: bool) -> bool {
    if s.is_empty() {
        return allow_empty;
    }
    let mask = match class_of {
        UriClass::User => USER,
        UriClass::Password => PASSWORD,
        UriClass::Param => PARAMCHAR,
        UriClass::HeaderPart => HNV,
    };
    // Usually there is no escape at all: a branch-free class check settles it ('%' is
    // in none of these classes, so any escape falls through to the walk below).
    if all_of_class(s, mask) {
        return true;
    }
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        if b == b'%' {
            match (s.get(i + 1), s.get(i + 2)) {
                (Some(&h1), Some(&h2)) if is_hex(h1) && is_hex(h2) => i += 3,
                _ => return false,
            }
        } else if class(b) & mask != 0 {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

pub(crate) fn all_token(s: &[u8]) -> bool {
    !s.is_empty() && all_of_class(s, TOKEN)
}

/// Every byte may appear in a host name (true for the empty slice).
pub(crate) fn all_host_chars(s: &[u8]) -> bool {
    all_of_class(s, HOST)
}

/// Non-empty and every byte an unescaped user character (RFC 3261 `unreserved` or
/// `user-unreserved`).
pub(crate) fn all_user_chars(s: &[u8]) -> bool {
    !s.is_empty() && all_of_class(s, USER)
}

/// Every byte is a `word` character (true for the empty slice).
pub(crate) fn all_word(s: &[u8]) -> bool {
    all_of_class(s, WORD)
}

/// Every byte has the class bit `bit`. The fold has no early exit, so it compiles to a
/// load and an AND per byte: valid input, the common case, is checked at full speed.
#[inline]
fn all_of_class(s: &[u8], bit: u16) -> bool {
    s.iter().fold(bit, |acc, &b| acc & class(b)) == bit
}

/// Word-at-a-time byte search for the short runs of a SIP message (a field, a host, an
/// SDP line: mostly under 64 bytes). memchr's SIMD search wins on long haystacks, but
/// each call pays a dispatch and setup that cost more than the whole search here; this
/// is inlined and reads eight bytes per step with the classic zero-byte test.
const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of the result is set where `w` has a zero byte. Borrows can
/// flag a byte above a real zero, never below, so the lowest flag is exact.
#[inline]
fn zero_bytes(w: u64) -> u64 {
    w.wrapping_sub(LO) & !w & HI
}

/// The skeleton of the exact searches: `flags` marks (bit 7 of each byte) the bytes of
/// a word that match, its lowest mark exact; `matches` is the same test on one byte, for
/// the tail shorter than a word.
#[inline(always)]
fn find_by_word(
    s: &[u8],
    flags: impl Fn(u64) -> u64,
    matches: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut chunks = s.chunks_exact(8);
    let mut i = 0;
    // chunks_exact: no bounds arithmetic per step.
    for chunk in &mut chunks {
        let found = flags(word(chunk));
        if found != 0 {
            return Some(i + found.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| matches(b))
        .map(|p| i + p)
}

/// The first index of `c` in `s`.
#[inline]
pub(crate) fn find_byte(s: &[u8], c: u8) -> Option<usize> {
    let pattern = LO * u64::from(c);
    find_by_word(s, |w| zero_bytes(w ^ pattern), |b| b == c)
}

/// Bit 7 of each byte of the result is set exactly where `w` has a zero byte: unlike
/// [`zero_bytes`] no borrow crosses bytes, so every mark in a word is a match.
#[inline]
fn zero_bytes_exact(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((w & LOW7).wrapping_add(LOW7)) | w | LOW7)
}

/// Bit 7 of each byte of the result is set where `w` has a byte that is not an ASCII
/// digit, exactly: after the XOR a digit is 0..=9, and adding 0x76 to the low seven bits
/// sets bit 7 for anything above (no carry leaves a byte).
#[inline]
fn non_digit_bytes(w: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let a = w ^ (LO * u64::from(b'0'));
    (((a & LOW7) + LO * 0x76) | a) & HI
}

/// The length of the run of ASCII digits at the start of `s`.
#[inline]
pub(crate) fn digit_run(s: &[u8]) -> usize {
    find_by_word(s, non_digit_bytes, |b| !b.is_ascii_digit()).unwrap_or(s.len())
}

/// The first index in `s` of a byte that is not ASCII graphic (a control, space, DEL or
/// above) or is `c`. The lowest mark of each test is exact, so the lowest of all is.
#[inline]
pub(crate) fn find_non_graphic_or(s: &[u8], c: u8) -> Option<usize> {
    let (space, del, pc) = (LO * 0x21, LO * 0x7f, LO * u64::from(c));
    find_by_word(
        s,
        |w| (w.wrapping_sub(space) & !w & HI) | (w & HI) | zero_bytes(w ^ del) | zero_bytes(w ^ pc),
        |b| !b.is_ascii_graphic() || b == c,
    )
}

/// Bit 7 of each byte of the result is set exactly where the eight-byte `chunk` has a
/// space.
#[inline]
pub(crate) fn space_bytes(chunk: &[u8]) -> u64 {
    zero_bytes_exact(word(chunk) ^ (LO * u64::from(b' ')))
}

/// An eight-byte chunk as a little-endian word.
#[inline]
fn word(chunk: &[u8]) -> u64 {
    chunk
        .first_chunk::<8>()
        .map_or(0, |w| u64::from_le_bytes(*w))
}

/// The first index of `a` or `b` in `s`.
#[inline]
pub(crate) fn find_byte2(s: &[u8], a: u8, b: u8) -> Option<usize> {
    let (pa, pb) = (LO * u64::from(a), LO * u64::from(b));
    find_by_word(
        s,
        |w| zero_bytes(w ^ pa) | zero_bytes(w ^ pb),
        |x| x == a || x == b,
    )
}

/// The first index of `a`, `b` or `c` in `s`.
#[inline]
pub(crate) fn find_byte3(s: &[u8], a: u8, b: u8, c: u8) -> Option<usize> {
    let (pa, pb, pc) = (LO * u64::from(a), LO * u64::from(b), LO * u64::from(c));
    find_by_word(
        s,
        |w| zero_bytes(w ^ pa) | zero_bytes(w ^ pb) | zero_bytes(w ^ pc),
        |x| x == a || x == b || x == c,
    )
}

/// The first index of a byte below 0x0e for which `target` holds. One SWAR test per
/// eight bytes flags every byte below 0x0e (the lowest flag is exact); the targets (CR,
/// LF, NUL) are nearly the only such bytes in SIP and SDP text, so a word with a false
/// hit (HT, say) just has its rest walked byte by byte.
#[inline]
fn find_low_control(s: &[u8], target: impl Fn(u8) -> bool) -> Option<usize> {
    const BELOW: u64 = LO * 0x0e;
    let mut chunks = s.chunks_exact(8);
    let mut i = 0;
    for chunk in &mut chunks {
        let w = word(chunk);
        let low = w.wrapping_sub(BELOW) & !w & HI;
        if low != 0 {
            let first = low.trailing_zeros() as usize / 8;
            let hit = chunk
                .get(first..)
                .and_then(|r| r.iter().position(|&b| target(b)));
            if let Some(p) = hit {
                return Some(i + first + p);
            }
        }
        i += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| target(b))
        .map(|p| i + p)
}

/// The first index in `s` of a byte below 0x21 (white space and controls), or of `a`,
/// `b` or `c`.
#[inline]
pub(crate) fn find_space_or3(s: &[u8], a: u8, b: u8, c: u8) -> Option<usize> {
    find_below_or3(s, 0x21, a, b, c)
}

/// The first index in `s` of a byte below `below` (at most 0x80), or of `a`, `b` or `c`.
/// The lowest flag of each test is exact, so the lowest of all is. Inlined with constant
/// arguments, the patterns fold away.
#[inline(always)]
fn find_below_or3(s: &[u8], below: u8, a: u8, b: u8, c: u8) -> Option<usize> {
    let floor = LO * u64::from(below);
    let (pa, pb, pc) = (LO * u64::from(a), LO * u64::from(b), LO * u64::from(c));
    find_by_word(
        s,
        |w| {
            (w.wrapping_sub(floor) & !w & HI)
                | zero_bytes(w ^ pa)
                | zero_bytes(w ^ pb)
                | zero_bytes(w ^ pc)
        },
        |x| x < below || x == a || x == b || x == c,
    )
}

/// The first index of a CR, LF or NUL in `s`.
#[inline]
pub(crate) fn find_cr_lf_nul(s: &[u8]) -> Option<usize> {
    find_low_control(s, |b| matches!(b, b'\r' | b'\n' | 0))
}

/// What TEXT-UTF8 (RFC 3261 section 25.1: a header value, a reason phrase) cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextFault {
    /// A control character (0x00-0x1F other than HT and a fold's CRLF) or DEL.
    Control,
    InvalidUtf8,
}

/// What is wrong with `s` as header text, if anything. The CR and LF of a fold are
/// allowed (the message splitter admits no other). One word test per eight bytes flags
/// controls, DEL and every non-ASCII byte, ORed together without a branch (each test
/// has no false mark in a word without a match); only text with a flag (tabs, folds,
/// UTF-8: rare) is then checked byte by byte.
#[inline]
pub(crate) fn text_fault(s: &[u8]) -> Option<TextFault> {
    let (space, del) = (LO * 0x20, LO * 0x7f);
    let flags = |w: u64| (w.wrapping_sub(space) & !w & HI) | (w & HI) | zero_bytes(w ^ del);
    let mut found = 0;
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        found |= flags(word(chunk));
    }
    match s.last_chunk::<8>() {
        // The tail as the last eight bytes, overlapping the words before.
        Some(last) if !chunks.remainder().is_empty() => found |= flags(u64::from_le_bytes(*last)),
        Some(_) => {}
        None => {
            found |= chunks
                .remainder()
                .iter()
                .fold(0, |acc, &b| acc | u64::from(!(0x20..0x7f).contains(&b)))
        }
    }
    if found == 0 {
        return None;
    }
    text_fault_slow(s)
}

/// [`text_fault`] byte by byte.
#[cold]
#[inline(never)]
fn text_fault_slow(s: &[u8]) -> Option<TextFault> {
    if s.iter()
        .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f)
    {
        return Some(TextFault::Control);
    }
    std::str::from_utf8(s)
        .is_err()
        .then_some(TextFault::InvalidUtf8)
}

/// The first index of a CR or LF in `s`.
#[inline]
pub(crate) fn find_cr_lf(s: &[u8]) -> Option<usize> {
    find_low_control(s, |b| matches!(b, b'\r' | b'\n'))
}

/// The first index of `c` in `s`, by memchr's SSE2 search called directly on x86_64
/// (no dispatch; sixteen bytes a step), by [`find_byte`] elsewhere. For haystacks of
/// sixteen bytes and more (below that memchr walks bytes): a header's rest, a URI.
#[inline]
pub(crate) fn find_byte_sse2(s: &[u8], c: u8) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(sse2) = memchr::arch::x86_64::sse2::memchr::One::new(c) {
        return sse2.find(s);
    }
    find_byte(s, c)
}

/// The first index of `a`, `b` or `c` in `s`, as [`find_byte_sse2`] searches.
#[inline]
pub(crate) fn find_byte3_sse2(s: &[u8], a: u8, b: u8, c: u8) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(sse2) = memchr::arch::x86_64::sse2::memchr::Three::new(a, b, c) {
        return sse2.find(s);
    }
    find_byte3(s, a, b, c)
}

/// A search for the first CR or LF of a long haystack (the rest of a message). On
/// x86_64 it is memchr's SSE2 search, called directly: its setup is paid once per
/// message, and it reads sixteen bytes a step where [`find_cr_lf`] reads eight.
/// Elsewhere it is [`find_cr_lf`].
#[derive(Clone, Copy)]
pub(crate) struct CrLfSearch {
    #[cfg(target_arch = "x86_64")]
    sse2: Option<memchr::arch::x86_64::sse2::memchr::Two>,
}

impl CrLfSearch {
    #[inline]
    pub(crate) fn new() -> Self {
        CrLfSearch {
            #[cfg(target_arch = "x86_64")]
            sse2: memchr::arch::x86_64::sse2::memchr::Two::new(b'\r', b'\n'),
        }
    }

    /// The first index of a CR or LF in `s`.
    #[inline]
    pub(crate) fn find(&self, s: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(sse2) = &self.sse2 {
            return sse2.find(s);
        }
        find_cr_lf(s)
    }
}

/// The first index in `s` of a byte that ends a run of plain qdtext: a quote, a
/// backslash, a control (below 0x20), DEL or a non-ASCII byte (its UTF-8 is checked).
#[inline]
fn find_qdtext_stop(s: &[u8]) -> Option<usize> {
    let floor = LO * 0x20;
    let (quote, backslash, del) = (LO * u64::from(b'"'), LO * u64::from(b'\\'), LO * 0x7f);
    find_by_word(
        s,
        |w| {
            (w.wrapping_sub(floor) & !w & HI)
                | (w & HI)
                | zero_bytes(w ^ quote)
                | zero_bytes(w ^ backslash)
                | zero_bytes(w ^ del)
        },
        |x| !(0x20..0x7f).contains(&x) || x == b'"' || x == b'\\',
    )
}

/// The length of the UTF-8 character `s` starts with, if it is a valid one.
#[inline]
fn utf8_char_len(s: &[u8]) -> Option<usize> {
    let len = match s.first()? {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return None,
    };
    std::str::from_utf8(s.get(..len)?).ok().map(|_| len)
}

/// Trims linear white space (including folds) from both ends.
#[inline]
pub(crate) fn trim_lws(s: &[u8]) -> &[u8] {
    // Usually there is nothing to trim: two byte tests instead of two scans.
    if s.first().is_none_or(|&b| !is_lws(b)) && s.last().is_none_or(|&b| !is_lws(b)) {
        return s;
    }
    let start = s.iter().position(|&b| !is_lws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_lws(b)).map_or(start, |p| p + 1);
    s.get(start..end).unwrap_or(&[])
}

/// Parses a decimal number of at most `max_digits` digits into a u64, rejecting empty
/// input, signs and anything that is not a digit.
pub(crate) fn parse_decimal(s: &[u8], max_digits: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max_digits {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !is_digit(b) {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Parses a decimal number that may carry leading zeros ("0068"), bounded by `max`.
#[inline]
pub(crate) fn parse_bounded(s: &[u8], max: u64) -> Option<u64> {
    // Up to 19 digits cannot overflow a u64: one walk, leading zeros and all.
    if !s.is_empty() && s.len() <= 19 {
        let mut v = 0u64;
        for &b in s {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            v = v * 10 + u64::from(d);
        }
        return (v <= max).then_some(v);
    }
    if s.is_empty() || !s.iter().all(|&b| is_digit(b)) {
        return None;
    }
    let significant = s
        .iter()
        .position(|&b| b != b'0')
        .and_then(|p| s.get(p..))
        .unwrap_or(&[]);
    if significant.is_empty() {
        return Some(0);
    }
    parse_decimal(significant, 20).filter(|&v| v <= max)
}

/// Splits `s` at top-level commas: commas inside quoted strings or angle brackets do not
/// split. Elements are returned untrimmed.
pub(crate) struct CommaSplit<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> CommaSplit<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Self { rest: Some(s) }
    }
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let mut in_quotes = false;
        let mut in_angle = false;
        let mut i = 0;
        while let Some(&b) = s.get(i) {
            match b {
                b'\\' if in_quotes => i += 1,
                b'"' => in_quotes = !in_quotes,
                b'<' if !in_quotes => in_angle = true,
                b'>' if !in_quotes => in_angle = false,
                b',' if !in_quotes && !in_angle => {
                    self.rest = s.get(i + 1..);
                    return s.get(..i);
                }
                _ => {}
            }
            i += 1;
        }
        self.rest = None;
        Some(s)
    }
}

/// A forward-only cursor over a header value.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    pub(crate) fn bump(&mut self) {
        self.pos += 1;
    }

    /// Consumes `b` if it is next.
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Skips linear white space, folds included. Returns whether any was skipped.
    pub(crate) fn skip_lws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
        self.pos != start
    }

    /// `SWS x SWS` separators such as `;`, `=`, `/`, `,`.
    pub(crate) fn eat_sep(&mut self, b: u8) -> bool {
        // The usual case, the separator with no white space around it, in two tests.
        if self.peek() == Some(b) {
            self.pos += 1;
            if !self.peek().is_some_and(is_lws) {
                return true;
            }
            self.pos -= 1;
        }
        let save = self.pos;
        self.skip_lws();
        if self.eat(b) {
            self.skip_lws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    #[inline]
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        // A slice walk with a local count: no bounds check or store of `pos` per byte.
        let rest = self.rest();
        let n = rest.iter().position(|&b| !f(b)).unwrap_or(rest.len());
        self.pos += n;
        rest.get(..n).unwrap_or(&[])
    }

    /// A non-empty token.
    pub(crate) fn token(&mut self) -> Option<&'a [u8]> {
        let t = self.take_while(is_token);
        (!t.is_empty()).then_some(t)
    }

    /// A quoted string, returned with its quotes. `None` if the quote is unterminated or
    /// holds a byte the grammar forbids.
    pub(crate) fn quoted_string(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        loop {
            // Bulk step: the run of plain qdtext up to the next quote, backslash or
            // control is skipped in one search; that byte then goes through the rules
            // below (a fold's CR, LF or HT is allowed there). Without one, the string
            // is unterminated.
            self.pos += find_qdtext_stop(self.rest())?;
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return self.buf.get(start..self.pos);
                }
                b'\\' => {
                    // quoted-pair: any ASCII byte but CR and LF. An escaped control is
                    // valid (RFC 4475 section 3.1.1.3 has BEL, NUL and DEL escaped in
                    // a display name and calls the message valid); a raw one is not.
                    self.pos += 1;
                    match self.peek()? {
                        b'\r' | b'\n' | 0x80..=0xff => return None,
                        _ => self.pos += 1,
                    }
                }
                // qdtext excludes controls other than the LWS of a fold
                b if b < 0x20 && !is_lws(b) => return None,
                0x7f => return None,
                0x80..=0xff => self.pos += utf8_char_len(self.rest())?,
                _ => self.pos += 1,
            }
        }
    }

    pub(crate) fn slice_from(&self, start: usize) -> &'a [u8] {
        self.buf.get(start..self.pos).unwrap_or(&[])
    }

    pub(crate) fn slice(&self, start: usize, end: usize) -> &'a [u8] {
        self.buf.get(start..end).unwrap_or(&[])
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn set_pos(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_numbers_keep_leading_zeros_and_limits() {
        assert_eq!(parse_bounded(b"0068", 255), Some(68));
        assert_eq!(parse_bounded(b"0000", 255), Some(0));
        assert_eq!(parse_bounded(b"255", 255), Some(255));
        assert_eq!(parse_bounded(b"256", 255), None);
        assert_eq!(parse_bounded(b"-1", 255), None);
        assert_eq!(parse_bounded(b"", 255), None);
        assert_eq!(parse_bounded(b"99999999999999999999999999", u64::MAX), None);
    }

    #[test]
    fn comma_split_respects_quotes_and_brackets() {
        let parts: Vec<_> = CommaSplit::new(b"\"a,b\" <sip:x;p=1,2>, c").collect();
        assert_eq!(parts, vec![&b"\"a,b\" <sip:x;p=1,2>"[..], &b" c"[..]]);
    }

    #[test]
    fn quoted_strings_refuse_raw_controls_and_bad_utf8() {
        let mut c = Cursor::new(b"\"a\\\"b\\\x00\" rest");
        assert_eq!(c.quoted_string(), Some(&b"\"a\\\"b\\\x00\""[..]));
        let mut c = Cursor::new("\"Jos\u{e9} \u{1f600}\"".as_bytes());
        assert!(c.quoted_string().is_some());
        for bad in [
            &b"\"a\x1b\""[..],
            b"\"a\\\r\"",
            b"\"a\x7f\"",
            b"\"Jos\xe9\"",
            b"\"a\xc3\"",
            b"\"a\xed\xa0\x80\"",
        ] {
            assert_eq!(Cursor::new(bad).quoted_string(), None, "{bad:?}");
        }
        let mut c = Cursor::new(b"\"a\x01\"");
        assert_eq!(c.quoted_string(), None);
        let mut c = Cursor::new(b"\"unterminated");
        assert_eq!(c.quoted_string(), None);
    }

    #[test]
    fn text_faults_are_found_at_any_offset() {
        assert_eq!(text_fault(b"Yealink SIP-T46S 66.86.0.15"), None);
        assert_eq!(
            text_fault("R\u{e9}union \u{2014} caf\u{e9}".as_bytes()),
            None
        );
        assert_eq!(text_fault(b"folded\r\n\ttext\twith tab"), None);
        for (fault, byte) in [
            (TextFault::Control, 0x00),
            (TextFault::Control, 0x01),
            (TextFault::Control, 0x1b),
            (TextFault::Control, 0x7f),
            (TextFault::InvalidUtf8, 0xff),
            (TextFault::InvalidUtf8, 0xc3),
        ] {
            for at in 0..20 {
                let mut s = b"abcdefghijklmnopqrst".to_vec();
                s[at] = byte;
                assert_eq!(text_fault(&s), Some(fault), "{byte:#x} at {at}");
            }
        }
    }

    #[test]
    fn word_at_a_time_search_agrees_with_position() {
        let alphabet = [b'a', 0, 1, b'\n', b'\r', 0x80, 0x8a, 0xff, b';', b'@', b':'];
        let hay: Vec<u8> = (0..70)
            .map(|i| alphabet[(i * 7 + i / 11) % alphabet.len()])
            .collect();
        for start in 0..hay.len() {
            for end in start..hay.len() {
                let s = &hay[start..end];
                for c in [b'a', b'\r', b'\n', b';', b'@', b':', 0, 0x80, 0xff] {
                    assert_eq!(find_byte(s, c), s.iter().position(|&b| b == c));
                    assert_eq!(
                        find_byte2(s, c, b'@'),
                        s.iter().position(|&b| b == c || b == b'@')
                    );
                    assert_eq!(
                        find_byte3(s, c, b'@', b';'),
                        s.iter().position(|&b| b == c || b == b'@' || b == b';')
                    );
                }
            }
        }
        // Bytes just above and below the searched one, and borrows across bytes.
        let tricky = [0x01u8, 0x00, 0x0a, 0x0b, 0x09, 0x0a, 0x8a, 0x0a, 0x00];
        for c in [0x00u8, 0x0a, 0x01, 0x8a] {
            for start in 0..tricky.len() {
                let s = &tricky[start..];
                assert_eq!(find_byte(s, c), s.iter().position(|&b| b == c));
            }
        }
    }

    #[test]
    fn sse2_searches_agree_with_position() {
        let alphabet = [
            b'a', b':', b'@', b'\r', b'\n', b';', b'?', 0, 0x80, 0xff, b' ',
        ];
        let hay: Vec<u8> = (0..90)
            .map(|i| alphabet[(i * 7 + i / 13) % alphabet.len()])
            .collect();
        let crlf = CrLfSearch::new();
        for start in 0..hay.len() {
            for end in start..hay.len() {
                let s = &hay[start..end];
                for c in [b':', b'@', b' ', b'\r', 0, 0xff] {
                    assert_eq!(find_byte_sse2(s, c), s.iter().position(|&b| b == c));
                }
                assert_eq!(
                    find_byte3_sse2(s, b';', b'?', b':'),
                    s.iter().position(|&b| matches!(b, b';' | b'?' | b':'))
                );
                assert_eq!(
                    crlf.find(s),
                    s.iter().position(|&b| b == b'\r' || b == b'\n')
                );
            }
        }
    }

    #[test]
    fn digit_and_graphic_searches_agree_with_position() {
        let alphabet = [
            b'0', b'9', b'5', b'/', b':', 0x2f, 0x3a, b' ', 0x7f, 0x80, 0xb0, 0xff, 0, b'a', 0x21,
            0x7e,
        ];
        let hay: Vec<u8> = (0..70)
            .map(|i| alphabet[(i * 5 + i / 3) % alphabet.len()])
            .collect();
        for start in 0..hay.len() {
            for end in start..hay.len() {
                let s = &hay[start..end];
                assert_eq!(
                    digit_run(s),
                    s.iter()
                        .position(|b| !b.is_ascii_digit())
                        .unwrap_or(s.len())
                );
                assert_eq!(
                    find_non_graphic_or(s, b'/'),
                    s.iter().position(|&b| b == b'/' || !b.is_ascii_graphic())
                );
            }
        }
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b'1', b, b'2', b, b, b'0', b, b'9']);
            let marks = non_digit_bytes(w);
            for (i, &x) in w.to_le_bytes().iter().enumerate() {
                assert_eq!(marks >> (8 * i + 7) & 1 == 1, !x.is_ascii_digit(), "{b}");
            }
        }
    }

    #[test]
    fn space_bytes_marks_exactly_the_spaces() {
        for chunk in [
            *b"a b  !! ",
            *b"!       ",
            *b" !!!!!!!",
            [0x20, 0x21, 0, 0x20, 0xa0, 0xff, 0x1f, 0x20],
        ] {
            let expected = (0..8)
                .filter(|&i| chunk[i] == b' ')
                .fold(0u64, |m, i| m | 0x80 << (8 * i));
            assert_eq!(space_bytes(&chunk), expected, "{chunk:?}");
        }
    }

    #[test]
    fn control_byte_search_agrees_with_position() {
        let alphabet = [
            b'a', 0, 1, b'\n', b'\r', b'\t', 0x0d, 0x0e, 0x8d, 0xff, b' ',
        ];
        let hay: Vec<u8> = (0..70)
            .map(|i| alphabet[(i * 5 + i / 7) % alphabet.len()])
            .collect();
        for start in 0..hay.len() {
            for end in start..hay.len() {
                let s = &hay[start..end];
                assert_eq!(
                    find_cr_lf_nul(s),
                    s.iter().position(|&b| b == b'\r' || b == b'\n' || b == 0)
                );
                assert_eq!(
                    find_cr_lf(s),
                    s.iter().position(|&b| b == b'\r' || b == b'\n')
                );
            }
        }
    }

    #[test]
    fn space_or3_search_agrees_with_position() {
        let alphabet = [
            b'a', b' ', b'\t', b'>', b'<', b'"', 0x21, 0x20, 0xa0, 0xbe, 0, 0x7f,
        ];
        let hay: Vec<u8> = (0..70)
            .map(|i| alphabet[(i * 5 + i / 9) % alphabet.len()])
            .collect();
        for start in 0..hay.len() {
            for end in start..hay.len() {
                let s = &hay[start..end];
                assert_eq!(
                    find_space_or3(s, b'>', b'<', b'"'),
                    s.iter()
                        .position(|&b| b < 0x21 || b == b'>' || b == b'<' || b == b'"')
                );
            }
        }
    }

    #[test]
    fn qdtext_stop_search_agrees_with_position() {
        let alphabet = [
            b'a', b'"', b'\\', 0x7f, 0x1f, 0x20, b'\t', 0x80, 0xff, 0x9f, 0x5c,
        ];
        let hay: Vec<u8> = (0..70)
            .map(|i| alphabet[(i * 5 + i / 9) % alphabet.len()])
            .collect();
        for start in 0..hay.len() {
            for end in start..hay.len() {
                let s = &hay[start..end];
                assert_eq!(
                    find_qdtext_stop(s),
                    s.iter()
                        .position(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x7f)
                );
            }
        }
    }

    #[test]
    fn escaped_runs() {
        assert!(is_escaped_run(b"al%20ice", UriClass::User, false));
        assert!(!is_escaped_run(b"al%2", UriClass::User, false));
        assert!(!is_escaped_run(b"a@b", UriClass::User, false));
        assert!(!is_escaped_run(b"", UriClass::User, false));
    }
}
