//! Answers to rejected requests (RFC 3261 section 8.2.6).
//!
//! A rejected datagram did not parse, so the answer is built from a lenient second look
//! at its header lines: the Via fields, From, To, Call-ID and CSeq are copied as written,
//! To gets a tag if it has none, and a Warning says what was wrong. Without a Via or a
//! CSeq, or when the start line is a status line or the method is ACK, there is no answer.

use crate::defect::{Defect, DefectKind, Location};
use crate::header::HeaderName;
use crate::message::Rejection;
use crate::scan::{is_wsp, trim_lws};

/// Largest answer sipward builds; a bigger one would make the gateway an amplifier.
const MAX_ANSWER_LEN: usize = 8192;

/// The header values an answer copies, as found by the lenient scan.
struct Echo<'a> {
    vias: Vec<&'a [u8]>,
    from: Option<&'a [u8]>,
    to: Option<&'a [u8]>,
    call_id: Option<&'a [u8]>,
    cseq: Option<&'a [u8]>,
    proxy_require: Vec<&'a [u8]>,
    user_agents: Vec<&'a [u8]>,
}

/// Most User-Agent values the lenient scan keeps for the scanner filter.
const MAX_ECHO_USER_AGENTS: usize = 8;

/// Most Via fields copied into an answer.
const MAX_ECHO_VIAS: usize = 64;

fn lenient_scan(buf: &[u8]) -> Option<Echo<'_>> {
    let mut rest = buf;
    while let Some(r) = rest.strip_prefix(b"\r\n") {
        rest = r;
    }
    let line_end = memchr::memmem::find(rest, b"\r\n")?;
    let start_line = rest.get(..line_end)?;
    if start_line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    {
        return None;
    }
    let method = start_line.split(|&b| b == b' ').next()?;
    if method.is_empty() || method == b"ACK" || !method.iter().all(|&b| crate::scan::is_token(b)) {
        return None;
    }
    let mut echo = Echo {
        vias: Vec::new(),
        from: None,
        to: None,
        call_id: None,
        cseq: None,
        proxy_require: Vec::new(),
        user_agents: Vec::new(),
    };
    // Offsets from here on are in `buf`, past any leading CRLFs.
    let mut pos = (buf.len() - rest.len()) + line_end + 2;
    loop {
        let rest = buf.get(pos..).unwrap_or(&[]);
        if rest.is_empty() || rest.starts_with(b"\r\n") {
            break;
        }
        // One field: up to a CRLF not followed by white space. A bare CR or LF ends the
        // scan: nothing after it can be trusted.
        let mut end = 0;
        let field_len = loop {
            let i = end + memchr::memchr2(b'\r', b'\n', rest.get(end..).unwrap_or(&[]))?;
            if rest.get(i..i + 2) != Some(b"\r\n") {
                return finish(echo);
            }
            match rest.get(i + 2) {
                Some(&b) if is_wsp(b) => end = i + 2,
                _ => break i,
            }
        };
        let field = rest.get(..field_len)?;
        pos += field_len + 2;
        let Some(colon) = memchr::memchr(b':', field) else {
            continue;
        };
        let name = HeaderName::from_bytes(trim_lws(field.get(..colon)?));
        let value = trim_lws(field.get(colon + 1..)?);
        match name {
            HeaderName::Via if echo.vias.len() < MAX_ECHO_VIAS => echo.vias.push(value),
            HeaderName::From => {
                echo.from.get_or_insert(value);
            }
            HeaderName::To => {
                echo.to.get_or_insert(value);
            }
            HeaderName::CallId => {
                echo.call_id.get_or_insert(value);
            }
            HeaderName::CSeq => {
                echo.cseq.get_or_insert(value);
            }
            HeaderName::ProxyRequire => echo.proxy_require.push(value),
            HeaderName::UserAgent if echo.user_agents.len() < MAX_ECHO_USER_AGENTS => {
                echo.user_agents.push(value)
            }
            _ => {}
        }
    }
    finish(echo)
}

/// Via and CSeq are what the client transaction matches a response on (RFC 3261
/// section 17.1.3); From, To and Call-ID are copied when present (RFC 4475 section 3.3.1
/// asks for a 400 even when they are missing).
fn finish(echo: Echo<'_>) -> Option<Echo<'_>> {
    let complete = !echo.vias.is_empty() && echo.cseq.is_some_and(|v| !v.is_empty());
    complete.then_some(echo)
}

/// Whether a rejected datagram can be answered at all.
pub(crate) fn answerable(buf: &[u8]) -> bool {
    lenient_scan(buf).is_some()
}

/// The User-Agent values of a rejected request that would be answered, as the lenient
/// scan that builds the answer finds them (at most 8): the scanner filter reads them, so
/// that a scanner cannot get past it (and get an answer) by malforming its message.
pub fn lenient_user_agents(buf: &[u8]) -> Vec<&[u8]> {
    lenient_scan(buf).map_or_else(Vec::new, |echo| echo.user_agents)
}

/// Builds the answer to a rejected request, or `None` when the rejection says drop or
/// the request cannot be answered. `agent` names this gateway in the Warning header.
pub fn build_answer(buf: &[u8], rejection: &Rejection, agent: &str) -> Option<Vec<u8>> {
    let status = rejection.status?;
    let echo = lenient_scan(buf)?;
    let defect = &rejection.defect;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"SIP/2.0 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status, defect).as_bytes());
    out.extend_from_slice(b"\r\n");
    for via in &echo.vias {
        push_header(&mut out, "Via", via);
    }
    if let Some(from) = echo.from {
        push_header(&mut out, "From", from);
    }
    if let Some(to) = echo.to {
        if has_tag(to) {
            push_header(&mut out, "To", to);
        } else {
            out.extend_from_slice(b"To: ");
            out.extend_from_slice(to);
            out.extend_from_slice(b";tag=");
            out.extend_from_slice(answer_tag(&echo).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if let Some(call_id) = echo.call_id {
        push_header(&mut out, "Call-ID", call_id);
    }
    push_header(&mut out, "CSeq", echo.cseq?);
    if status == 420 {
        for tags in &echo.proxy_require {
            push_header(&mut out, "Unsupported", tags);
        }
    }
    out.extend_from_slice(b"Warning: 399 ");
    out.extend_from_slice(agent.as_bytes());
    out.extend_from_slice(b" \"");
    let text = match extension_header_at_fault(buf, defect) {
        // "invalid UTF-8 in Warning", not "in extension header".
        Some(name) => format!(
            "{} in {}",
            defect.kind_text(),
            String::from_utf8_lossy(name)
        ),
        None => defect.warning_text(),
    };
    out.extend(
        text.bytes()
            .filter(|&b| b != b'"' && b != b'\\' && (0x20..0x7f).contains(&b)),
    );
    out.extend_from_slice(b"\"\r\nContent-Length: 0\r\n\r\n");
    (out.len() <= MAX_ANSWER_LEN).then_some(out)
}

/// For a control character or bad UTF-8 in a header sipward has no name for (Warning,
/// Reason, Call-Info, X-...), the name of the first such header whose value holds one,
/// so that the Warning names the header that is really at fault.
fn extension_header_at_fault<'a>(buf: &'a [u8], defect: &Defect) -> Option<&'a [u8]> {
    let control = match (defect.kind, defect.at) {
        (DefectKind::ControlCharacter, Location::Header(HeaderName::Other)) => true,
        (DefectKind::InvalidUtf8, Location::Header(HeaderName::Other)) => false,
        _ => return None,
    };
    let head = buf.get(..memchr::memmem::find(buf, b"\r\n\r\n").unwrap_or(buf.len()))?;
    head.split(|&b| b == b'\n')
        .skip(1)
        .filter(|line| !line.first().is_some_and(|&b| is_wsp(b)))
        .find_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = memchr::memchr(b':', line)?;
            let name = trim_lws(line.get(..colon)?);
            let value = line.get(colon + 1..)?;
            let at_fault = if control {
                value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
            } else {
                std::str::from_utf8(value).is_err()
            };
            let plain = !name.is_empty()
                && name.len() <= 64
                && name
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b));
            (at_fault && plain && HeaderName::from_bytes(name) == HeaderName::Other).then_some(name)
        })
}

fn reason_phrase(status: u16, defect: &Defect) -> &'static str {
    if status == defect.status() {
        defect.reason_phrase()
    } else {
        "Bad Request"
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a To value (possibly malformed) carries a tag parameter after its URI.
fn has_tag(to: &[u8]) -> bool {
    let params = match memchr::memrchr(b'>', to) {
        Some(i) => to.get(i + 1..).unwrap_or(&[]),
        None => to,
    };
    params.split(|&b| b == b';').skip(1).any(|p| {
        let name = p.split(|&b| b == b'=').next().unwrap_or(&[]);
        trim_lws(name).eq_ignore_ascii_case(b"tag")
    })
}

/// A To-tag derived from the request, so that a retransmission gets the same answer.
fn answer_tag(echo: &Echo<'_>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let parts = [
        echo.call_id,
        echo.from,
        echo.cseq,
        echo.vias.first().copied(),
    ];
    for part in parts.into_iter().flatten() {
        for &b in part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
    }
    format!("sw{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::message::parse_datagram;

    fn answer(req: &[u8]) -> Option<String> {
        let r = parse_datagram(req, &Limits::default()).err()?;
        build_answer(req, &r, "sipward").map(|a| String::from_utf8(a).unwrap())
    }

    #[test]
    fn answers_copy_headers_and_add_a_tag() {
        let req = b"OPTIONS sip:a@b.example SIP/7.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nv: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: abc\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let a = answer(req).unwrap();
        assert!(
            a.starts_with("SIP/2.0 505 Version Not Supported\r\n"),
            "{a}"
        );
        assert!(a.contains("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2\r\n"));
        assert!(a.contains("To: <sip:a@b.example>;tag=sw"));
        assert!(a.contains("Warning: 399 sipward \"unsupported SIP version in start line\"\r\n"));
        assert!(a.ends_with("Content-Length: 0\r\n\r\n"));
        // The answer itself is a valid SIP response.
        assert!(parse_datagram(a.as_bytes(), &Limits::default()).is_ok());
        // Deterministic tag: a retransmission gets the same answer.
        assert_eq!(answer(req), Some(a));
    }

    #[test]
    fn the_warning_names_the_extension_header_at_fault() {
        let base = "OPTIONS sip:a@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: abc\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nX-Fine: ok\r\n";
        for (line, text) in [
            (
                &b"Warning: 399 host \"a\xffb\"\r\n"[..],
                "invalid UTF-8 in Warning",
            ),
            (
                b"Reason: SIP;text=\"a\x1bb\"\r\n",
                "control character in Reason",
            ),
            (b"X-Custom: a\x7fb\r\n", "control character in X-Custom"),
            (
                b"Call-Info: <http://a\xc0\xafb/>\r\n",
                "invalid UTF-8 in Call-Info",
            ),
        ] {
            let mut req = base.as_bytes().to_vec();
            req.extend_from_slice(line);
            req.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            let a = answer(&req).unwrap();
            assert!(a.starts_with("SIP/2.0 400 "), "{a}");
            assert!(
                a.contains(&format!("Warning: 399 sipward \"{text}\"\r\n")),
                "{a}"
            );
        }
        // A known header keeps its own name.
        let mut req = base.as_bytes().to_vec();
        req.extend_from_slice(b"Subject: a\x01b\r\nContent-Length: 0\r\n\r\n");
        assert!(answer(&req)
            .unwrap()
            .contains("Warning: 399 sipward \"control character in Subject\"\r\n"));
    }

    #[test]
    fn existing_to_tag_is_kept() {
        let req = b"BYE sip:a@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>;tag=77\r\nCall-ID: abc\r\nCSeq: 2 BYE\r\nMax-Forwards: 300\r\n\r\n";
        let a = answer(req).unwrap();
        assert!(a.contains("To: <sip:a@b.example>;tag=77\r\n"), "{a}");
        assert!(!a.contains("tag=sw"));
    }

    #[test]
    fn acks_and_responses_are_never_answered() {
        let ack = b"ACK sip:a@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>;tag=2\r\nCall-ID: abc\r\nCSeq: 2 ACK\r\nMax-Forwards: 300\r\n\r\n";
        let r = parse_datagram(ack, &Limits::default()).unwrap_err();
        assert_eq!(r.status, None);
        assert_eq!(answer(ack), None);
    }

    #[test]
    fn leading_crlfs_do_not_hide_the_header_fields() {
        let req = b"\r\n\r\nOPTIONS sip:a@b.example SIP/7.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: abc\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let a = answer(req).unwrap();
        assert!(a.starts_with("SIP/2.0 505 "), "{a}");
        assert!(
            a.contains("Via: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n"),
            "{a}"
        );
    }

    #[test]
    fn every_user_agent_of_a_rejected_request_is_found() {
        let req = b"OPTIONS sip:a@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nUser-Agent: Yealink\r\nFrom: <sip:x@y.example>;tag=1\r\nTo: <sip:a@b.example>\r\nCall-ID: abc\r\nCSeq: 1 OPTIONS\r\nuser-agent: friendly-scanner\r\n\r\n";
        assert!(parse_datagram(req, &Limits::default()).is_err());
        assert_eq!(
            lenient_user_agents(req),
            vec![&b"Yealink"[..], &b"friendly-scanner"[..]]
        );
        let many = [
            &req[..req.len() - 2],
            &b"User-Agent: x\r\n".repeat(20),
            b"\r\n",
        ]
        .concat();
        assert_eq!(lenient_user_agents(&many).len(), MAX_ECHO_USER_AGENTS);
    }
}
