//! The SIP and SDP wire layer of sipward.
//!
//! Contract: everything here is pure (no I/O, no clock, no randomness) and works on a
//! borrowed datagram without copying values. [`parse_datagram`] is the single entry point
//! the gateway and `sipward validate` use: it either yields a [`Message`] that is known
//! good (every header the gateway relies on parsed and checked against [`Limits`]) or a
//! [`Rejection`] saying whether to answer the sender (and with which status) or drop.
//! [`build_answer`] makes that answer. Rewrites go through [`Edits`], which records
//! byte-range changes against the original buffer; [`Message::rewrite`] applies them
//! once and fixes Content-Length.
//!
//! No function in this crate panics on any input; untrusted bytes are never indexed
//! unchecked, and every list the parser builds is bounded by a [`Limits`] field.
//!
//! # Keeping the parser cheap
//!
//! (Moved here from ARCHITECTURE.md, which keeps the summary.)
//!
//! `bench/wire` compares parse + full validation with rsipstack and parse + rewrite with
//! rsip (targets: 0.25 and 0.33 of their time; `bench/results/wire-*.md` has the latest
//! ratios). The parser is instruction-bound (it runs at more than four instructions a
//! cycle), so its design is about touching each byte as few times as possible:
//!
//! - Allocation: a typical datagram allocates only its header-field list (one `Vec`, room
//!   for 16 fields). Vias (2), Contacts (1) and SDP media sections (2) are `SmallVec`s kept
//!   inline, Route and Record-Route stay empty `Vec`s unless present; more entries spill to
//!   the heap, still capped by `Limits`. `Edits` and the pieces `rewrite_into` sorts are
//!   inline as well. Because a `SmallVec`'s drop is not `may_dangle`, a parse result must not
//!   be a block's tail temporary outliving the buffer it borrows (bind it to a name).
//! - One pass where the old code made several: the common header names are recognised
//!   from a field's first four bytes and confirmed by one compare and the colon after them;
//!   other names are scanned once (token run, white space, colon) and looked up by a hash
//!   of their length and first and last two bytes, confirmed by one case-folding compare
//!   (a test proves the known names hash apart); Via and Contact parameters are checked as they
//!   are parsed, keeping the first bad value and reporting it only once the whole header
//!   parsed, so the defect reported is the same as with a second pass; Via hosts are typed
//!   once (the unroutable check reuses them); IPv4 addresses are read octet by octet; host
//!   names are checked with a branch-free class fold, then label by label; a `sip:` URI is
//!   recognised without searching for its colon.
//! - Searching: memchr's SSE2 searchers, called directly through its safe `arch` API (no
//!   per-call dispatch), for the long runs: the end of each header field, the colon after
//!   a name, the request line's spaces, `@` in URIs and Call-ID, the end of a URI host;
//!   the inline word-at-a-time search of `scan` (eight bytes per step) for the short runs
//!   of URIs and SDP lines, for skipping plain text inside quoted strings, and on other
//!   architectures.
//! - Shortcuts for the usual forms, each falling back to the general code for anything
//!   else and tested never to disagree with it: a status line `SIP/2.0 NNN reason`, a Via's
//!   `SIP/2.0/UDP ` (TCP, TLS), an IPv4 sent-by and plainly written Via parameters (with
//!   `branch`, `received` and `rport` known by one compare each), a From/To ending in a lone
//!   `;tag=token`, a bracketed `<sip:user@host[:port]>`, CSeq `N METHOD`, URI parameters of
//!   plain characters.
//! - `parse_datagram_into` parses into a caller's place: a message already there lends its
//!   header list to the next and the 2.2 KB result is not copied out of the call (some 420
//!   instructions a datagram). It needs every buffer parsed into the place to outlive it,
//!   which a loop over a batch of received datagrams has; the gateway's per-datagram call
//!   and `bench/wire` use `parse_datagram`.
//! - The edit guard walks a line for quoted strings only if the line has a quote before the
//!   edit ends (one memchr).
//! - SDP has two paths (`sdp.rs`, the general one; `sdp/fast.rs`). A fast path reads the
//!   lines nearly every phone writes (`v=0`, `o=` and `c=` with `IN IP4` and a dotted
//!   quad, `s=`, `t=`, `m=` with a plain port, `a=rtpmap` in its usual form, other `a=`
//!   lines) in one walk per line that finds the line's end, proves it clean and reads its
//!   fields, eight bytes at a time where that pays (line ends, digit runs, ports and
//!   payload types). It changes nothing until a line is known good; any other line, and
//!   every error, goes to the general path, which reads the line again from its start. So
//!   the verdicts and the error reported are the general path's alone; a test compares
//!   the two paths on usual lines and near misses.
//!
//! The rework that introduced these (branch `proto-speed`) was checked differentially with a
//! throwaway harness, not kept in the tree: the previous parser and the new one gave the same
//! verdict (defect and status) and the same typed view on the fuzz seeds, the RFC 4475 corpus
//! and several hundred thousand random mutations of them, under default and small limits.
//! From here on the RFC 4475 verdicts, the unit and property tests and the fuzz targets guard
//! the behaviour.

pub mod answer;
pub mod defect;
pub mod edit;
pub mod framing;
pub mod header;
pub mod headers;
pub mod limits;
pub mod message;
mod scan;
pub mod sdp;
pub mod stun;
pub mod uri;

pub use answer::{build_answer, lenient_user_agents};
pub use defect::{Defect, DefectKind, Location};
pub use edit::{EditError, Edits};
pub use framing::{Frame, FramedMessage, StreamFault, StreamFramer};
pub use header::HeaderName;
pub use headers::{CSeq, Contacts, Credentials, NameAddr, Params, Via};
pub use limits::Limits;
pub use message::{
    parse_datagram, parse_datagram_into, Datagram, HeaderField, Message, Method, MethodKind,
    Rejection, StartLine,
};
pub use uri::{Host, SipUri, TelUri, Uri};
