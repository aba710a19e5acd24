//! Edits driven by the input against a valid message: no edit panics; a rewrite that
//! applies re-parses, and every header line no edit touched comes out byte-exact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipward_proto::{parse_datagram, Datagram, Edits, HeaderName, Limits, Message};

const BASE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776asdhds;rport\r\nMax-Forwards: 70\r\nTo: Bob <sip:bob@biloxi.example.com>\r\nFrom: \"Alice 10.0.0.5\" <sip:alice@10.0.0.5>;tag=1928301774\r\nCall-ID: a84b4c76e66710@10.0.0.5\r\nCSeq: 314159 INVITE\r\nContact: <sip:alice@10.0.0.5:5060>\r\nAuthorization: Digest username=\"alice\", realm=\"x\", nonce=\"n\", uri=\"sip:10.0.0.5\", response=\"r\"\r\nContent-Type: application/sdp\r\nContent-Length: 130\r\n\r\nv=0\r\no=alice 2890844526 2890844526 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn run(ops: &[u8], msg: &Message<'_>) {
    let mut edits = Edits::new();
    let mut touched: Vec<std::ops::Range<usize>> = Vec::new();
    // Whether an edit removed the credentials header whole (the only change allowed to
    // it; its name alone can also appear elsewhere, in a body say).
    let mut auth_removed = false;
    let first_auth = msg
        .header(HeaderName::Authorization)
        .map(|h| h.line.as_ptr());
    let len = msg.as_bytes().len();
    for op in ops.chunks(4) {
        let [kind, a, b, c] = [0, 1, 2, 3].map(|i| op.get(i).copied().unwrap_or(0));
        let with: &[u8] = match c % 3 {
            0 => b"",
            1 => b"203.0.113.1",
            _ => b"X-Fuzz: 1\r\n",
        };
        let result = match kind % 6 {
            0 => msg
                .top_via()
                .map(|v| (msg.range_of(v.sent_by), edits.replace(msg, v.sent_by, with))),
            1 => msg
                .contacts()
                .list
                .first()
                .and_then(|c| c.uri.as_sip())
                .map(|u| {
                    (
                        msg.range_of(u.host_port),
                        edits.replace(msg, u.host_port, with),
                    )
                }),
            2 => msg
                .sdp()
                .and_then(|s| s.connection)
                .map(|c| (msg.range_of(c.address), edits.replace(msg, c.address, with))),
            3 => msg
                .headers()
                .get(usize::from(a) % msg.headers().len().max(1))
                .map(|f| {
                    let removed = edits.remove_field(msg, f);
                    auth_removed |= Some(f.line.as_ptr()) == first_auth && removed.is_ok();
                    (msg.range_of(f.line), removed)
                }),
            4 => Some((None, edits.append_field(msg, "X-Fuzz", with))),
            _ => {
                let start = (usize::from(a) * 256 + usize::from(b)) % (len + 1);
                let end = (start + usize::from(c) % 16).min(len);
                Some((Some(start..end), edits.replace_range(msg, start..end, with)))
            }
        };
        if let Some((Some(range), Ok(()))) = result {
            touched.push(range);
        }
    }
    let Ok(out) = msg.rewrite(&edits) else { return };
    // Edits may legitimately make a message invalid (an arbitrary range replaced); when
    // the result still parses, untouched header lines must be intact.
    if let Ok(Datagram::Message(_)) = parse_datagram(
        &out,
        &Limits {
            max_message_len: 65536,
            ..Limits::default()
        },
    ) {
        for f in msg.headers() {
            let Some(r) = msg.range_of(f.line) else {
                continue;
            };
            let hit = touched.iter().any(|t| {
                t.start < r.end && r.start < t.end
                    || (t.start == t.end && t.start > r.start && t.start < r.end)
            });
            if !hit && f.name != HeaderName::ContentLength {
                assert!(
                    out.windows(f.line.len()).any(|w| w == f.line),
                    "untouched line changed"
                );
            }
        }
    }
    // The credentials header can never change, whatever was attempted, unless removed whole.
    if let Some(auth) = msg.header(HeaderName::Authorization) {
        let value_intact = out.windows(auth.value.len()).any(|w| w == auth.value);
        assert!(value_intact || auth_removed, "Authorization was rewritten");
    }
}

fuzz_target!(|data: &[u8]| {
    let (ops, datagram) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, BASE),
    };
    let limits = Limits::default();
    if let Ok(Datagram::Message(msg)) = parse_datagram(datagram, &limits) {
        run(ops, &msg);
    } else if let Ok(Datagram::Message(msg)) = parse_datagram(BASE, &limits) {
        run(ops, &msg);
    }
});
