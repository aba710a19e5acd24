//! The edit layer: rewrites that touch only what they name, guards that refuse unsafe
//! edits, and Content-Length kept true. Property tests cover the round trip and every
//! size limit at its exact boundary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use proptest::prelude::*;
use sipward_proto::{
    parse_datagram, Datagram, DefectKind, EditError, Edits, HeaderName, Limits, Message,
};

const REGISTER_SDP: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: \"Alice at 10.0.0.5\" <sip:alice@10.0.0.5>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@10.0.0.5\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@10.0.0.5:5060;transport=udp>\r\n\
Proxy-Authorization: Digest username=\"alice\", realm=\"biloxi.example.com\", nonce=\"xyz\", uri=\"sip:bob@10.0.0.5\", response=\"0123456789abcdef0123456789abcdef\"\r\n\
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

fn parse<'a>(b: &'a [u8], limits: &Limits) -> Message<'a> {
    match parse_datagram(b, limits) {
        Ok(Datagram::Message(m)) => m,
        other => panic!("not a message: {other:?}\n{}", String::from_utf8_lossy(b)),
    }
}

fn find<'a>(hay: &'a [u8], needle: &[u8]) -> &'a [u8] {
    let i = hay
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present");
    &hay[i..i + needle.len()]
}

#[test]
fn topology_rewrite_touches_only_named_bytes() {
    let limits = Limits::default();
    let msg = parse(REGISTER_SDP.as_bytes(), &limits);
    let mut edits = Edits::new();
    let via = msg.top_via().unwrap();
    edits
        .replace(&msg, via.sent_by, b"203.0.113.1:5060")
        .unwrap();
    let contact = msg.contacts().list[0].uri.as_sip().unwrap().host_port;
    edits.replace(&msg, contact, b"203.0.113.1:40000").unwrap();
    let body = msg.body();
    let c_line = find(body, b"c=IN IP4 10.0.0.5");
    edits.replace(&msg, &c_line[9..], b"203.0.113.100").unwrap();
    let port = find(body, b"49170");
    edits.replace(&msg, port, b"30000").unwrap();
    let out = msg.rewrite(&edits).unwrap();
    let text = String::from_utf8(out.clone()).unwrap();

    let again = parse(&out, &limits);
    assert_eq!(again.top_via().unwrap().sent_by, b"203.0.113.1:5060");
    assert_eq!(again.body().len(), 130 + 5);
    assert_eq!(again.content_length(), Some(135));
    assert!(text.contains("c=IN IP4 203.0.113.100\r\n"));
    assert!(text.contains("m=audio 30000 RTP/AVP 0\r\n"));
    // The digest's uri and the quoted display name still name the inside address: both
    // are untouchable.
    assert!(text.contains("uri=\"sip:bob@10.0.0.5\""));
    assert!(text.contains("\"Alice at 10.0.0.5\""));
    // Untouched fields are byte-exact.
    for field in msg.headers() {
        if ![
            HeaderName::Via,
            HeaderName::Contact,
            HeaderName::ContentLength,
        ]
        .contains(&field.name)
        {
            assert!(out.windows(field.line.len()).any(|w| w == field.line));
        }
    }
}

#[test]
fn guards_refuse_unsafe_edits() {
    let limits = Limits::default();
    let msg = parse(REGISTER_SDP.as_bytes(), &limits);
    let mut edits = Edits::new();
    let auth = msg.header(HeaderName::ProxyAuthorization).unwrap();
    let inside = find(auth.value, b"10.0.0.5");
    assert_eq!(
        edits.replace(&msg, inside, b"x"),
        Err(EditError::Protected(HeaderName::ProxyAuthorization))
    );
    let from = msg.header(HeaderName::From).unwrap();
    let quoted = find(from.value, b"10.0.0.5");
    assert_eq!(
        edits.replace(&msg, quoted, b"x"),
        Err(EditError::InsideQuotedString)
    );
    // Replacing a display name's quotes is touching the quoted string too.
    let display = msg.from().unwrap().display.unwrap();
    assert_eq!(
        edits.replace(&msg, display, b"\"x\""),
        Err(EditError::InsideQuotedString)
    );
    assert_eq!(
        edits.replace(&msg, b"10.0.0.5", b"x"),
        Err(EditError::NotInMessage)
    );
    let end = msg.as_bytes().len();
    assert_eq!(
        edits.replace_range(&msg, 0..end + 1, b""),
        Err(EditError::NotInMessage)
    );
    let header_end = msg.header_end();
    assert_eq!(
        edits.replace_range(&msg, header_end - 3..header_end + 5, b""),
        Err(EditError::CrossesBody)
    );
    // A range that starts on the line before and ends inside a credentials header
    // (found by the edit fuzz target: it used to underflow).
    let auth_line = msg.range_of(auth.line).unwrap();
    assert_eq!(
        edits.replace_range(&msg, auth_line.start - 4..auth_line.start + 6, b""),
        Err(EditError::Protected(HeaderName::ProxyAuthorization))
    );
    let from_line = msg.range_of(from.line).unwrap();
    let quote = from_line.start + from.line.iter().position(|&b| b == b'"').unwrap();
    assert_eq!(
        edits.replace_range(&msg, from_line.start - 2..quote + 1, b""),
        Err(EditError::InsideQuotedString)
    );
    // Removing a whole credentials field is allowed: nothing inside it changes.
    edits.remove_field(&msg, auth).unwrap();
    assert!(edits.rewrite_ok(&msg));
}

#[test]
fn a_whole_value_is_replaceable_whatever_quoted_strings_it_holds() {
    let limits = Limits::default();
    let msg = parse(REGISTER_SDP.as_bytes(), &limits);
    let from = msg.header(HeaderName::From).unwrap();
    assert!(
        from.value.contains(&b'"'),
        "the test needs a quoted display name"
    );
    let mut edits = Edits::new();
    edits
        .replace(&msg, from.value, b"\"Alice\" <sip:alice@example.com>;tag=1")
        .unwrap();
    let out = msg.rewrite(&edits).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=1\r\n"),
        "{text}"
    );
    // A protected field's whole value is still refused.
    let auth = msg.header(HeaderName::ProxyAuthorization).unwrap();
    assert_eq!(
        Edits::new().replace(&msg, auth.value, b"x"),
        Err(EditError::Protected(HeaderName::ProxyAuthorization))
    );
}

trait RewriteOk {
    fn rewrite_ok(&self, msg: &Message<'_>) -> bool;
}
impl RewriteOk for Edits {
    fn rewrite_ok(&self, msg: &Message<'_>) -> bool {
        msg.rewrite(self).is_ok()
    }
}

#[test]
fn overlapping_edits_are_refused_at_rewrite() {
    let limits = Limits::default();
    let msg = parse(REGISTER_SDP.as_bytes(), &limits);
    let via = msg.top_via().unwrap();
    let mut edits = Edits::new();
    edits.replace(&msg, via.sent_by, b"a.example").unwrap();
    edits
        .replace(&msg, via.host.as_bytes(), b"b.example")
        .unwrap();
    assert_eq!(msg.rewrite(&edits), Err(EditError::Overlap));
    // An edit that collides with the Content-Length fix-up is refused too.
    let mut edits = Edits::new();
    edits
        .replace(&msg, find(msg.body(), b"v=0"), b"v=0 ")
        .unwrap();
    let cl = msg.header(HeaderName::ContentLength).unwrap();
    edits.replace(&msg, cl.value, b"7").unwrap();
    assert_eq!(msg.rewrite(&edits), Err(EditError::Overlap));
}

#[test]
fn fields_are_inserted_and_removed_whole() {
    let limits = Limits::default();
    let msg = parse(REGISTER_SDP.as_bytes(), &limits);
    let mut edits = Edits::new();
    edits
        .prepend_field(&msg, "Via", b"SIP/2.0/UDP 203.0.113.1;branch=z9hG4bKgw1")
        .unwrap();
    let mf = msg.header(HeaderName::MaxForwards).unwrap();
    edits.remove_field(&msg, mf).unwrap();
    edits
        .insert_field_before(&msg, mf, "Max-Forwards", b"69")
        .unwrap();
    edits.append_field(&msg, "X-Test", b"1").unwrap();
    let out = msg.rewrite(&edits).unwrap();
    let again = parse(&out, &limits);
    assert_eq!(again.vias().len(), 2);
    assert_eq!(again.top_via().unwrap().branch, Some(&b"z9hG4bKgw1"[..]));
    assert_eq!(again.max_forwards(), Some(69));
    assert_eq!(again.headers().last().unwrap().raw_name, b"X-Test");
}

#[test]
fn content_length_is_added_when_missing() {
    let limits = Limits::default();
    let raw = b"OPTIONS sip:a@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n";
    let msg = parse(raw, &limits);
    let out = msg.rewrite(&Edits::new()).unwrap();
    assert!(out.ends_with(b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(&out[..raw.len() - 2], &raw[..raw.len() - 2]);
}

// ---- property tests ----

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,12}"
}

/// A valid request with extra unknown headers and an optional opaque body.
fn message() -> impl Strategy<Value = (String, Vec<(String, String)>, String)> {
    (
        token(),
        proptest::collection::vec(
            (token().prop_map(|t| format!("X-{t}")), "[ -~]{0,40}"),
            0..12,
        ),
        "[a-z0-9 ]{0,200}",
    )
}

fn render(tag: &str, extras: &[(String, String)], body: &str) -> String {
    let mut m = format!(
        "MESSAGE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK{tag}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@10.0.0.5>;tag={tag}\r\nTo: <sip:bob@biloxi.example.com>\r\nCall-ID: {tag}@10.0.0.5\r\nCSeq: 1 MESSAGE\r\nContact: <sip:alice@10.0.0.5:5060>\r\n"
    );
    for (n, v) in extras {
        m.push_str(&format!("{n}: {}\r\n", v.trim()));
    }
    m.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    m
}

proptest! {
    #[test]
    fn round_trip_keeps_untouched_headers_byte_exact(
        (tag, extras, body) in message(),
        remove_mask in any::<u16>(),
        new_body in "[a-z]{0,300}",
        new_host in "[a-z]{1,20}\\.example",
    ) {
        let limits = Limits::default();
        let raw = render(&tag, &extras, &body);
        let msg = parse(raw.as_bytes(), &limits);
        let mut edits = Edits::new();
        let mut touched = Vec::new();
        for (i, field) in msg.headers().iter().enumerate() {
            if field.name == HeaderName::Other && remove_mask & (1 << (i % 16)) != 0 {
                edits.remove_field(&msg, field).unwrap();
                touched.push(field.line);
            }
        }
        let contact = msg.contacts().list[0].uri.as_sip().unwrap().host_port;
        edits.replace(&msg, contact, new_host.as_bytes()).unwrap();
        touched.push(msg.header(HeaderName::Contact).unwrap().line);
        if !msg.body().is_empty() {
            edits.replace(&msg, msg.body(), new_body.as_bytes()).unwrap();
        }
        touched.push(msg.header(HeaderName::ContentLength).unwrap().line);
        let out = msg.rewrite(&edits).unwrap();
        let again = parse(&out, &limits);
        // Every untouched field survives byte-exact and in order.
        let kept: Vec<&[u8]> = msg.headers().iter().map(|f| f.line).filter(|l| !touched.contains(l)).collect();
        let got: Vec<&[u8]> = again.headers().iter().map(|f| f.line)
            .filter(|l| kept.contains(l)).collect();
        prop_assert_eq!(kept, got);
        prop_assert_eq!(again.contacts().list[0].uri.as_sip().unwrap().host_port, new_host.as_bytes());
        let expected_body = if msg.body().is_empty() { "" } else { new_body.as_str() };
        prop_assert_eq!(again.body(), expected_body.as_bytes());
        prop_assert_eq!(again.content_length(), Some(expected_body.len()));
    }

    #[test]
    fn parameter_limit_is_exact(limit in 64usize..2048) {
        let value = |n: usize| "p".repeat(n);
        let make = |n: usize| render("t1", &[("X-Long".to_owned(), value(n))], "");
        let limits = Limits { max_param_len: limit, max_message_len: 65535, ..Limits::default() };
        let at = make(limit);
        prop_assert!(parse_datagram(at.as_bytes(), &limits).is_ok());
        let over = make(limit + 1);
        let r = parse_datagram(over.as_bytes(), &limits).unwrap_err();
        prop_assert_eq!(r.defect.kind, DefectKind::ParamTooLong);
        prop_assert_eq!(r.status, Some(400));
    }

    #[test]
    fn uri_parameter_limit_is_exact(limit in 64usize..1024) {
        // A Request-URI parameter ;p=<value>: the parameter is "p=" plus the value. (In a
        // header the enclosing element is longer than the parameter and hits the limit first.)
        let make = |n: usize| {
            let m = render("t2", &[], "");
            m.replacen("sip:bob@biloxi.example.com", &format!("sip:bob@biloxi.example.com;p={}", "v".repeat(n - 2)), 1)
        };
        let limits = Limits { max_param_len: limit, max_message_len: 65535, ..Limits::default() };
        prop_assert!(parse_datagram(make(limit).as_bytes(), &limits).is_ok());
        let r = parse_datagram(make(limit + 1).as_bytes(), &limits).unwrap_err();
        prop_assert_eq!(r.defect.kind, DefectKind::ParamTooLong);
    }

    #[test]
    fn message_limit_is_exact((tag, extras, body) in message()) {
        let raw = render(&tag, &extras, &body);
        let len = raw.len();
        let limits = Limits { max_message_len: len, ..Limits::default() };
        prop_assert!(parse_datagram(raw.as_bytes(), &limits).is_ok());
        let limits = Limits { max_message_len: len - 1, ..Limits::default() };
        let r = parse_datagram(raw.as_bytes(), &limits).unwrap_err();
        prop_assert_eq!(r.defect.kind, DefectKind::MessageTooLarge);
        prop_assert_eq!(r.status, Some(513));
    }

    #[test]
    fn sdp_limit_is_exact(extra_attrs in 0usize..60) {
        let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\n");
        for i in 0..extra_attrs {
            sdp.push_str(&format!("a=x-attr{i}:value\r\n"));
        }
        let raw = render("t3", &[], &sdp).replace("text/plain", "application/sdp");
        let limits = Limits { max_sdp_len: sdp.len(), max_sdp_lines: 1000, ..Limits::default() };
        prop_assert!(parse_datagram(raw.as_bytes(), &limits).is_ok());
        let limits = Limits { max_sdp_len: sdp.len() - 1, max_sdp_lines: 1000, ..Limits::default() };
        let r = parse_datagram(raw.as_bytes(), &limits).unwrap_err();
        prop_assert_eq!(r.status, Some(413));
    }

    #[test]
    fn count_limits_are_exact(n in 1usize..40) {
        let vias: Vec<(String, String)> = Vec::new();
        let mut raw = render("t4", &vias, "");
        let extra_vias: String = (1..n).map(|i| format!("Via: SIP/2.0/UDP 10.0.0.{i};branch=z9hG4bK{i}\r\n")).collect();
        raw = raw.replace("Max-Forwards: 70\r\n", &format!("{extra_vias}Max-Forwards: 70\r\n"));
        let limits = Limits { max_vias: n, ..Limits::default() };
        prop_assert!(parse_datagram(raw.as_bytes(), &limits).is_ok());
        let limits = Limits { max_vias: n - 1, ..Limits::default() };
        if n > 1 {
            let r = parse_datagram(raw.as_bytes(), &limits).unwrap_err();
            prop_assert_eq!(r.defect.kind, DefectKind::TooManyVias);
        }
        let headers = parse(raw.as_bytes(), &Limits::default()).headers().len();
        let limits = Limits { max_headers: headers, ..Limits::default() };
        prop_assert!(parse_datagram(raw.as_bytes(), &limits).is_ok());
        let limits = Limits { max_headers: headers - 1, ..Limits::default() };
        let r = parse_datagram(raw.as_bytes(), &limits).unwrap_err();
        prop_assert_eq!(r.defect.kind, DefectKind::TooManyHeaders);
    }

    #[test]
    fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = parse_datagram(&bytes, &Limits::default());
    }

    #[test]
    fn mutated_messages_never_panic((tag, extras, body) in message(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut raw = render(&tag, &extras, &body).into_bytes();
        let i = pos % raw.len();
        raw[i] = byte;
        // Bound to a name so that the parsed message is dropped before `raw`.
        let parsed = parse_datagram(&raw, &Limits::default());
        if let Err(r) = parsed {
            if let Some(answer) = sipward_proto::build_answer(&raw, &r, "t") {
                prop_assert!(answer.starts_with(b"SIP/2.0 "));
            }
        }
    }
}
