//! Any SDP body: parsing never panics, and every slice it returns lies inside the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipward_proto::{sdp, Limits};

fn inside(outer: &[u8], inner: &[u8]) -> bool {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    inner.is_empty() || (i >= o && i + inner.len() <= o + outer.len())
}

fuzz_target!(|data: &[u8]| {
    for limits in [
        Limits::default(),
        Limits {
            max_sdp_len: 200,
            max_sdp_lines: 8,
            max_sdp_media: 2,
            max_param_len: 40,
            ..Limits::default()
        },
    ] {
        if let Ok(s) = sdp::parse(data, &limits) {
            assert!(s.media.len() <= limits.max_sdp_media);
            for a in s.addresses() {
                assert!(inside(data, a));
            }
            for m in &s.media {
                assert!(inside(data, m.port_token) && inside(data, m.section));
            }
        }
    }
});
