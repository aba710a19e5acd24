//! What both wire benchmarks run: the messages, and each side's parse and rewrite (see
//! `wire.rs` for what each side does and why it is a fair match).

#![allow(dead_code)]

use sipward_proto::{parse_datagram, Datagram, Edits, Limits, Message};

pub const MESSAGES: [(&str, &[u8]); 3] = [
    ("invite_sdp", include_bytes!("../../messages/invite.sip")),
    (
        "register_auth",
        include_bytes!("../../messages/register.sip"),
    ),
    ("ok_sdp", include_bytes!("../../messages/ok.sip")),
];

pub const PUBLIC_IP: &str = "203.0.113.1";
pub const PUBLIC_HOST_PORT: &str = "203.0.113.1:5060";
pub const INSIDE_IP: &str = "192.168.1.20";

pub fn sipward_parse(bytes: &[u8], limits: &Limits) -> usize {
    match parse_datagram(bytes, limits) {
        Ok(Datagram::Message(msg)) => msg.headers().len(),
        _ => panic!("sipward refused a benchmark message"),
    }
}

pub fn rsipstack_parse_typed(bytes: &[u8]) -> usize {
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
pub fn sipward_rewrite(bytes: &[u8], limits: &Limits, out: &mut Vec<u8>) {
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

pub fn rsip_rewrite(bytes: &[u8]) -> Vec<u8> {
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
