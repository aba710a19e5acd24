//! Any datagram: parsing never panics; an answer, when built, is itself a valid response;
//! an accepted message survives an empty rewrite with every header line intact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipward_proto::{build_answer, parse_datagram, Datagram, Edits, HeaderName, Limits};

fn small_limits(seed: u8) -> Limits {
    let s = usize::from(seed);
    Limits {
        max_param_len: 8 + s,
        max_message_len: 64 + s * 16,
        max_sdp_len: 32 + s * 4,
        max_headers: 1 + s % 16,
        max_vias: 1 + s % 4,
        max_routes: 1 + s % 4,
        max_contacts: 1 + s % 4,
        max_params: 1 + s % 8,
        max_sdp_media: 1 + s % 3,
        max_sdp_lines: 1 + s % 32,
    }
}

fn check(data: &[u8], limits: &Limits) {
    match parse_datagram(data, limits) {
        Err(rejection) => {
            if let Some(answer) = build_answer(data, &rejection, "fuzz") {
                assert!(rejection.status.is_some());
                match parse_datagram(
                    &answer,
                    &Limits {
                        max_message_len: 65536,
                        ..Limits::default()
                    },
                ) {
                    Ok(Datagram::Message(m)) => assert!(!m.is_request()),
                    // The answer copies the request's Via, From, To, Call-ID and CSeq as
                    // written; those may be exactly what was wrong with it.
                    Ok(Datagram::Keepalive | Datagram::StunBinding(_)) => {
                        panic!("answer parsed as keepalive")
                    }
                    Err(_) => {}
                }
            }
        }
        Ok(Datagram::Keepalive) => {}
        Ok(Datagram::StunBinding(request)) => {
            // The answer is bounded: never more than about twice a bare request.
            let answer = sipward_proto::stun::binding_success(
                &request,
                std::net::SocketAddr::from(([192, 0, 2, 1], 5060)),
            );
            assert!(answer.len() <= 52 && answer.len() <= 2 * data.len() + 4);
        }
        Ok(Datagram::Message(msg)) => {
            let _ = (
                msg.vias(),
                msg.from(),
                msg.to(),
                msg.contacts(),
                msg.routes(),
                msg.record_routes(),
            );
            let _ = (
                msg.cseq(),
                msg.sdp(),
                msg.user_agent(),
                msg.authorization(),
                msg.expires(),
            );
            let out = msg
                .rewrite(&Edits::new())
                .expect("an empty rewrite always applies");
            let big = Limits {
                max_message_len: 65536,
                max_headers: limits.max_headers + 1,
                ..limits.clone()
            };
            let Ok(Datagram::Message(again)) = parse_datagram(&out, &big) else {
                panic!("rewritten message no longer parses")
            };
            let lines = |m: &sipward_proto::Message<'_>| -> Vec<Vec<u8>> {
                m.headers()
                    .iter()
                    .filter(|h| h.name != HeaderName::ContentLength)
                    .map(|h| h.line.to_vec())
                    .collect()
            };
            assert_eq!(lines(&msg), lines(&again));
            assert_eq!(msg.body(), again.body());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, &Limits::default());
    if let Some((&seed, rest)) = data.split_first() {
        check(rest, &small_limits(seed));
    }
});
