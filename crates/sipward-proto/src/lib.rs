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

pub mod answer;
pub mod defect;
pub mod edit;
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
pub use header::HeaderName;
pub use headers::{CSeq, Contacts, Credentials, NameAddr, Params, Via};
pub use limits::Limits;
pub use message::{
    parse_datagram, parse_datagram_into, Datagram, HeaderField, Message, Method, MethodKind,
    Rejection, StartLine,
};
pub use uri::{Host, SipUri, TelUri, Uri};
