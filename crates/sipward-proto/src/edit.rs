//! Edits recorded against the original datagram and applied once.
//!
//! Like Kamailio's lumps: the gateway records replacements, insertions and removals as
//! byte ranges of the received message, then [`Message::rewrite`] copies the untouched
//! bytes around them into one output buffer and fixes Content-Length. Headers nobody
//! edited come out byte-exact.
//!
//! Two guards hold for every edit: it must not change bytes inside a credentials header
//! (Authorization, Proxy-Authorization, WWW-/Proxy-Authenticate, Identity: digests are
//! computed over them), and it must not start, end or fall inside a quoted string.

use std::fmt;
use std::ops::Range;

use smallvec::SmallVec;

use crate::header::HeaderName;
use crate::message::{HeaderField, Message};

/// Why an edit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditError {
    /// The slice or range is not inside the message.
    NotInMessage,
    /// The edit would change a credentials header.
    Protected(HeaderName),
    /// The edit touches a quoted string.
    InsideQuotedString,
    /// Two edits overlap.
    Overlap,
    /// One edit spans both the header section and the body.
    CrossesBody,
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EditError::NotInMessage => f.write_str("edit range is outside the message"),
            EditError::Protected(h) => write!(f, "edit would change the protected header {h}"),
            EditError::InsideQuotedString => f.write_str("edit touches a quoted string"),
            EditError::Overlap => f.write_str("edits overlap"),
            EditError::CrossesBody => f.write_str("edit spans header section and body"),
        }
    }
}

impl std::error::Error for EditError {}

#[derive(Debug, Clone)]
struct Op {
    range: Range<usize>,
    with: Range<usize>,
}

/// A set of edits against one message. Reusable: [`Edits::clear`] keeps the capacity.
///
/// A forwarded message gets a handful of edits (Via, Contact, the SDP addresses and
/// ports) totalling a few hundred bytes: both lists start inline, so recording them
/// allocates nothing; more spill to the heap.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    ops: SmallVec<[Op; 12]>,
    bytes: SmallVec<[u8; 256]>,
}

impl Edits {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn clear(&mut self) {
        self.ops.clear();
        self.bytes.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Replaces `part`, a subslice of the message (such as a typed value's host), with
    /// `with`.
    pub fn replace(
        &mut self,
        msg: &Message<'_>,
        part: &[u8],
        with: &[u8],
    ) -> Result<(), EditError> {
        let range = msg.range_of(part).ok_or(EditError::NotInMessage)?;
        self.replace_range(msg, range, with)
    }

    /// Replaces a byte range of the message.
    pub fn replace_range(
        &mut self,
        msg: &Message<'_>,
        range: Range<usize>,
        with: &[u8],
    ) -> Result<(), EditError> {
        check(msg, &range)?;
        let start = self.bytes.len();
        self.bytes.extend_from_slice(with);
        self.ops.push(Op {
            range,
            with: start..self.bytes.len(),
        });
        Ok(())
    }

    /// Inserts bytes at an offset of the message.
    pub fn insert(&mut self, msg: &Message<'_>, at: usize, with: &[u8]) -> Result<(), EditError> {
        self.replace_range(msg, at..at, with)
    }

    /// Removes a subslice of the message.
    pub fn remove(&mut self, msg: &Message<'_>, part: &[u8]) -> Result<(), EditError> {
        self.replace(msg, part, b"")
    }

    /// Removes a whole header field, CRLF included.
    pub fn remove_field(
        &mut self,
        msg: &Message<'_>,
        field: &HeaderField<'_>,
    ) -> Result<(), EditError> {
        self.replace(msg, field.line, b"")
    }

    /// Inserts a new header field just before an existing one.
    pub fn insert_field_before(
        &mut self,
        msg: &Message<'_>,
        field: &HeaderField<'_>,
        name: &str,
        value: &[u8],
    ) -> Result<(), EditError> {
        let at = msg
            .range_of(field.line)
            .ok_or(EditError::NotInMessage)?
            .start;
        self.insert_field_at(msg, at, name, value)
    }

    /// Inserts a new header field as the first one of the message.
    pub fn prepend_field(
        &mut self,
        msg: &Message<'_>,
        name: &str,
        value: &[u8],
    ) -> Result<(), EditError> {
        let at = msg
            .headers()
            .first()
            .and_then(|f| msg.range_of(f.line))
            .map_or(msg.header_end(), |r| r.start);
        self.insert_field_at(msg, at, name, value)
    }

    /// Appends a new header field after the last one.
    pub fn append_field(
        &mut self,
        msg: &Message<'_>,
        name: &str,
        value: &[u8],
    ) -> Result<(), EditError> {
        self.insert_field_at(msg, msg.header_end(), name, value)
    }

    fn insert_field_at(
        &mut self,
        msg: &Message<'_>,
        at: usize,
        name: &str,
        value: &[u8],
    ) -> Result<(), EditError> {
        check(msg, &(at..at))?;
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(b": ");
        self.bytes.extend_from_slice(value);
        self.bytes.extend_from_slice(b"\r\n");
        self.ops.push(Op {
            range: at..at,
            with: start..self.bytes.len(),
        });
        Ok(())
    }
}

/// Refuses edits outside the message, across the header/body boundary, inside
/// credentials headers or touching quoted strings.
fn check(msg: &Message<'_>, range: &Range<usize>) -> Result<(), EditError> {
    let len = msg.as_bytes().len();
    if range.start > range.end || range.end > len {
        return Err(EditError::NotInMessage);
    }
    let body = msg.body_range();
    if range.start < body.start && range.end > msg.header_end() {
        return Err(EditError::CrossesBody);
    }
    if range.start > msg.header_end() {
        return Ok(()); // the body has no headers to guard
    }
    // Fields are in message order: skip straight to the first that ends after the
    // range starts, and stop at the first that begins after it ends.
    let fields = msg.headers();
    let first = fields.partition_point(|f| {
        msg.range_of(f.line)
            .is_some_and(|line| line.end <= range.start)
    });
    for field in fields.get(first..).unwrap_or_default() {
        let Some(line) = msg.range_of(field.line) else {
            continue;
        };
        if line.start > range.end {
            break;
        }
        let whole = range.start <= line.start && line.end <= range.end;
        let touches = range.start < line.end && line.start < range.end
            || (range.start == range.end && line.start < range.start && range.start < line.end);
        if !touches || whole {
            continue;
        }
        if field.name.is_protected() {
            return Err(EditError::Protected(field.name));
        }
        // Replacing a field's whole value is deliberate (restoring a From or To the
        // phone wrote), whatever quoted strings it holds.
        if msg.range_of(field.value).as_ref() == Some(range) {
            continue;
        }
        // The range may start before this line and end inside it: clamp to the line.
        let rel = range.start.saturating_sub(line.start)..range.end.saturating_sub(line.start);
        if touches_quoted(field.line, &rel) {
            return Err(EditError::InsideQuotedString);
        }
    }
    Ok(())
}

/// Whether `rel` (relative to `line`) starts inside a quoted string or covers any byte
/// of one (its quotes included).
fn touches_quoted(line: &[u8], rel: &Range<usize>) -> bool {
    // Without a quote up to the range's end nothing in it can be quoted: the usual case
    // (a Via or Contact host), found with one memchr instead of the walk below.
    let upto = line.get(..rel.end.saturating_add(1)).unwrap_or(line);
    if memchr::memchr(b'"', upto).is_none() {
        return false;
    }
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, &b) in line.iter().enumerate().take(rel.end + 1) {
        if i == rel.start && in_quotes {
            return true;
        }
        if i >= rel.start && i < rel.end && (in_quotes || b == b'"') {
            return true;
        }
        if in_quotes {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quotes = false;
            }
        } else if b == b'"' {
            in_quotes = true;
        }
    }
    false
}

/// One replacement to apply: the original range, its new bytes, and the order it was
/// recorded in (ties at one offset keep that order).
type Piece<'a> = (Range<usize>, &'a [u8], usize);

/// Writes `n` in decimal into `buf` and returns the digits.
fn format_decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        if let Some(d) = buf.get_mut(start) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || start == 0 {
            break;
        }
    }
    buf.get(start..).unwrap_or_default()
}

impl Message<'_> {
    /// Applies `edits` and returns the new message, with Content-Length set to the new
    /// body length (added if the message had none).
    pub fn rewrite(&self, edits: &Edits) -> Result<Vec<u8>, EditError> {
        let mut out = Vec::with_capacity(self.as_bytes().len() + edits.bytes.len() + 32);
        self.rewrite_into(edits, &mut out)?;
        Ok(out)
    }

    /// Like [`Message::rewrite`], appending to `out` (reuse a buffer across messages).
    pub fn rewrite_into(&self, edits: &Edits, out: &mut Vec<u8>) -> Result<(), EditError> {
        let src = self.as_bytes();
        let body = self.body_range();
        // Declared before `pieces`, which borrows them (a SmallVec's drop needs them alive).
        let mut len_buf = [0u8; 20];
        let added_field;
        // One more than the inline edits, for the Content-Length piece.
        let mut pieces: SmallVec<[Piece<'_>; 13]> = edits
            .ops
            .iter()
            .enumerate()
            .map(|(seq, op)| {
                (
                    op.range.clone(),
                    edits.bytes.get(op.with.clone()).unwrap_or(&[]),
                    seq,
                )
            })
            .collect();
        let mut body_len = body.len();
        for (range, with, _) in &pieces {
            if range.start >= body.start {
                body_len = (body_len + with.len()).saturating_sub(range.len());
            }
        }
        // Content-Length: replace its value, or add the field at the end of the headers.
        let new_len = format_decimal(body_len, &mut len_buf);
        match self.header(HeaderName::ContentLength) {
            Some(f) if f.value != new_len => {
                let r = self.range_of(f.value).ok_or(EditError::NotInMessage)?;
                pieces.push((r, new_len, usize::MAX));
            }
            Some(_) => {}
            None => {
                added_field = [b"Content-Length: ", new_len, b"\r\n"].concat();
                let at = self.header_end();
                pieces.push((at..at, &added_field, usize::MAX));
            }
        }
        pieces.sort_by_key(|(r, _, seq)| (r.start, r.end, *seq));
        for pair in pieces.windows(2) {
            if let [(a, _, _), (b, _, _)] = pair {
                if a.end > b.start {
                    return Err(EditError::Overlap);
                }
            }
        }
        out.reserve(src.len() + edits.bytes.len() + 24);
        // From the start line: CRLFs a sender put before it (RFC 3261 7.5) stay here, a
        // next hop could take them for a keepalive.
        let mut pos = self
            .range_of(self.start_line_bytes())
            .map_or(0, |r| r.start);
        for (range, with, _) in &pieces {
            out.extend_from_slice(src.get(pos..range.start).unwrap_or(&[]));
            out.extend_from_slice(with);
            pos = range.end;
        }
        out.extend_from_slice(src.get(pos..).unwrap_or(&[]));
        Ok(())
    }
}
