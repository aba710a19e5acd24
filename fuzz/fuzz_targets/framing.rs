//! Any byte stream cut at any points: the framer never panics, never holds more than its
//! capacity, cuts the same frames whatever the split, and every message it yields is its
//! header section plus exactly the Content-Length the parser reads in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipward_proto::{parse_datagram, Datagram, Frame, Limits, StreamFramer};

fn run(stream: &[u8], max: usize, cuts: &[u8]) -> Vec<Frame> {
    let mut framer = StreamFramer::new(max);
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        // Chunk sizes from the cut bytes, 1 to 256 (all of it when there are none).
        let size = match cuts.get(i % cuts.len().max(1)) {
            Some(&c) => usize::from(c) + 1,
            None => rest.len(),
        };
        i += 1;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        framer.feed(chunk, |f| out.push(f));
        assert!(framer.buffered() <= framer.capacity());
        if framer.fault().is_some() {
            let _ = framer.answer("fuzz");
            break;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&ncuts, rest)) = data.split_first() else {
        return;
    };
    let (cuts, stream) = rest.split_at(usize::from(ncuts % 16).min(rest.len()));
    for max in [Limits::default().max_message_len, 200] {
        let whole = run(stream, max, &[]);
        let split = run(stream, max, cuts);
        let ones = run(stream, max, &[0]);
        assert_eq!(whole, split);
        assert_eq!(whole, ones);
        let limits = Limits {
            max_message_len: max,
            ..Limits::default()
        };
        for frame in &whole {
            let Frame::Message(m) = frame else { continue };
            assert!(m.bytes.len() <= max);
            let head = &m.bytes[..m.header_len];
            assert!(head.ends_with(b"\r\n\r\n"));
            assert_eq!(memchr_crlfcrlf(head), Some(head.len() - 4));
            if let Ok(Datagram::Message(msg)) = parse_datagram(&m.bytes, &limits) {
                assert_eq!(msg.content_length(), Some(m.body().len()));
            }
        }
    }
});

fn memchr_crlfcrlf(s: &[u8]) -> Option<usize> {
    s.windows(4).position(|w| w == b"\r\n\r\n")
}
