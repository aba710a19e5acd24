//! sipward's wire layer against rsipstack and rsip, on the same bytes in the same run.
//!
//! Two comparisons, as issue 2 asks:
//! - `parse_validate/*`: sipward's parse + full validation (every typed header, every
//!   limit, the SDP body) against rsipstack's parse followed by reading the typed headers
//!   a gateway needs (Via, From, To, CSeq, Contact, Authorization for REGISTER, Allow as
//!   methods, and the numbers in Max-Forwards, Content-Length and Expires, which
//!   rsipstack keeps as text). rsipstack has no SDP model; its side parses no body.
//! - `rewrite/*`: sipward's parse + rewrite of the top Via sent-by, the Contact host and
//!   the SDP addresses and port + serialize, against rsip's parse + the same replacements
//!   through its typed headers + serialize (rsip has no SDP model: its body edit is a
//!   plain string replacement, which favours rsip).
//!
//! `bench/wire/report.sh` runs this and writes the ratios to `bench/results/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sipward_proto::{parse_datagram, Datagram, Edits, Limits, Message};

const MESSAGES: [(&str, &[u8]); 3] = [
    ("invite_sdp", include_bytes!("../messages/invite.sip")),
    ("register_auth", include_bytes!("../messages/register.sip")),
    ("ok_sdp", include_bytes!("../messages/ok.sip")),
];

const PUBLIC_IP: &str = "203.0.113.1";
const PUBLIC_HOST_PORT: &str = "203.0.113.1:5060";
const INSIDE_IP: &str = "192.168.1.20";

fn sipward_parse(bytes: &[u8], limits: &Limits) -> usize {
    match parse_datagram(bytes, limits) {
        Ok(Datagram::Message(msg)) => msg.headers().len(),
        _ => panic!("sipward refused a benchmark message"),
    }
}

fn rsipstack_parse_typed(bytes: &[u8]) -> usize {
    use rsipstack::sip::prelude::*;
    use rsipstack::sip::SipMessage;
    let msg = rsipstack::sip::parser::parse_message(bytes).expect("rsipstack parse");
    let mut n = 0;
    match &msg {
        SipMessage::Request(req) => {
            n += req.via_header().unwrap().typed().unwrap().params.len();
            n += req.from_header().unwrap().typed().unwrap().params.len();
            n += req.to_header().unwrap().typed().unwrap().params.len();
            n += req.cseq_header().unwrap().typed().unwrap().seq as usize;
            n += req.typed_contact_headers().unwrap().len();
            n += numbers_and_allow(&req.headers);
            if let Some(auth) = req.headers.iter().find_map(|h| match h {
                rsipstack::sip::Header::Authorization(a) => Some(a),
                _ => None,
            }) {
                n += rsipstack::sip::typed::Authorization::parse(auth.value())
                    .unwrap()
                    .username
                    .len();
            }
        }
        SipMessage::Response(resp) => {
            n += resp.via_header().unwrap().typed().unwrap().params.len();
            n += resp.from_header().unwrap().typed().unwrap().params.len();
            n += resp.to_header().unwrap().typed().unwrap().params.len();
            n += resp.cseq_header().unwrap().typed().unwrap().seq as usize;
            n += resp.typed_contact_headers().unwrap().len();
            n += numbers_and_allow(&resp.headers);
        }
    }
    n
}

/// What else sipward's parse yields and a gateway on rsipstack reads: the numeric
/// headers (rsipstack keeps them as text: parsed here as the validator needs them) and
/// Allow as methods.
fn numbers_and_allow(headers: &rsipstack::sip::Headers) -> usize {
    use rsipstack::sip::Header;
    let mut n = 0;
    for h in headers.iter() {
        match h {
            Header::MaxForwards(v) => n += v.value().trim().parse::<u8>().unwrap() as usize,
            Header::ContentLength(v) => n += v.value().trim().parse::<u32>().unwrap() as usize,
            Header::Expires(v) => n += v.value().trim().parse::<u32>().unwrap() as usize,
            Header::Allow(v) => {
                n += rsipstack::sip::typed::Allow::parse(v.value())
                    .unwrap()
                    .methods
                    .len()
            }
            _ => {}
        }
    }
    n
}

/// The gateway's outbound rewrite: top Via sent-by, Contact host:port, SDP origin,
/// connection addresses and media port.
fn sipward_rewrite(bytes: &[u8], limits: &Limits, out: &mut Vec<u8>) {
    let Ok(Datagram::Message(msg)) = parse_datagram(bytes, limits) else {
        panic!("sipward refused a benchmark message");
    };
    let edits = sipward_edits(&msg);
    out.clear();
    msg.rewrite_into(&edits, out).expect("rewrite");
}

fn sipward_edits(msg: &Message<'_>) -> Edits {
    let mut edits = Edits::new();
    let via = msg.top_via().expect("via");
    edits
        .replace(msg, via.sent_by, PUBLIC_HOST_PORT.as_bytes())
        .unwrap();
    if let Some(uri) = msg.contacts().list.first().and_then(|c| c.uri.as_sip()) {
        edits
            .replace(msg, uri.host_port, PUBLIC_HOST_PORT.as_bytes())
            .unwrap();
    }
    if let Some(sdp) = msg.sdp() {
        edits
            .replace(msg, sdp.origin.address, PUBLIC_IP.as_bytes())
            .unwrap();
        if let Some(c) = &sdp.connection {
            edits.replace(msg, c.address, PUBLIC_IP.as_bytes()).unwrap();
        }
        for m in &sdp.media {
            edits.replace(msg, m.port_token, b"40000").unwrap();
            if let Some(c) = &m.connection {
                edits.replace(msg, c.address, PUBLIC_IP.as_bytes()).unwrap();
            }
        }
    }
    edits
}

fn rsip_rewrite(bytes: &[u8]) -> Vec<u8> {
    use rsip::prelude::*;
    let public = rsip::HostWithPort {
        host: rsip::Host::IpAddr(PUBLIC_IP.parse().unwrap()),
        port: Some(5060.into()),
    };
    let mut msg = rsip::SipMessage::try_from(bytes).expect("rsip parse");
    let via = msg.via_header_mut().unwrap();
    let mut typed = via.typed().unwrap();
    typed.uri.host_with_port = public.clone();
    *via = typed.into();
    let contact = msg.contact_header_mut().unwrap();
    let mut typed = contact.typed().unwrap();
    typed.uri.host_with_port = public;
    *contact = typed.into();
    let body = msg.body_mut();
    if !body.is_empty() {
        let text = std::str::from_utf8(body).unwrap();
        let replaced = text
            .replace(INSIDE_IP, PUBLIC_IP)
            .replacen("m=audio 49170", "m=audio 40000", 1)
            .replacen("m=audio 3456", "m=audio 40000", 1);
        *body = replaced.into_bytes();
        let len = body.len();
        for header in msg.headers_mut().iter_mut() {
            if let rsip::Header::ContentLength(cl) = header {
                *cl = rsip::headers::ContentLength::from(len as u32);
            }
        }
    }
    msg.into()
}

fn parse_validate(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("parse_validate");
    for (name, bytes) in MESSAGES {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("sipward", name), bytes, |b, m| {
            b.iter(|| sipward_parse(black_box(m), &limits))
        });
        group.bench_with_input(BenchmarkId::new("rsipstack", name), bytes, |b, m| {
            b.iter(|| rsipstack_parse_typed(black_box(m)))
        });
    }
    group.finish();
}

fn rewrite(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("rewrite");
    for (name, bytes) in MESSAGES {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut out = Vec::with_capacity(2048);
        group.bench_with_input(BenchmarkId::new("sipward", name), bytes, |b, m| {
            b.iter(|| {
                sipward_rewrite(black_box(m), &limits, &mut out);
                out.len()
            })
        });
        group.bench_with_input(BenchmarkId::new("rsip", name), bytes, |b, m| {
            b.iter(|| rsip_rewrite(black_box(m)).len())
        });
    }
    group.finish();
}

/// Checks, before timing, that both sides did the same job: each rewrite hides the
/// inside address and still parses.
fn sanity(_: &mut Criterion) {
    let limits = Limits::default();
    for (name, bytes) in MESSAGES {
        let mut ours = Vec::new();
        sipward_rewrite(bytes, &limits, &mut ours);
        let theirs = rsip_rewrite(bytes);
        for (who, out) in [("sipward", &ours), ("rsip", &theirs)] {
            let text = String::from_utf8_lossy(out);
            let hidden = !text.contains(INSIDE_IP);
            assert!(hidden, "{who} left {INSIDE_IP} in {name}:\n{text}");
            assert!(text.contains(PUBLIC_IP), "{who} did not rewrite {name}");
        }
        assert!(matches!(
            parse_datagram(&ours, &limits),
            Ok(Datagram::Message(_))
        ));
        assert!(rsipstack_parse_typed(bytes) > 0);
    }
}

criterion_group!(benches, sanity, parse_validate, rewrite);
criterion_main!(benches);
