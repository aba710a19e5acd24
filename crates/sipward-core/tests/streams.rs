//! Stream transports in the core, on virtual time: flows with connections, Via and
//! Contact per leg, reliability bridging between a stream leg and a UDP leg, and
//! connection events (RFC 3261 18, RFC 5626).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)] // tests take one real Instant as the epoch

mod common;

use std::time::Duration;

use common::{addr, header, text, Net, LAN, PHONE, PROXY, WAN};
use sipward_core::{AlgOptions, ConnectionId, Flow, Gateway, Service, Transmit, Transport};

/// A gateway whose phones may use UDP or TCP on 5060 and whose proxy is reached over
/// `to_proxy`; the proxy reaches the gateway over UDP and TCP.
fn net(to_proxy: Transport) -> Net {
    let mut config = common::config(AlgOptions::default());
    for rule in &mut config.rules {
        rule.services = vec![
            Service::udp(5060),
            Service {
                transport: Transport::Tcp,
                port: 5060,
            },
        ];
    }
    config.rules[0].next_hop_transport = to_proxy;
    Net {
        gw: Gateway::new(config),
        now: std::time::Instant::now(),
    }
}

fn tcp(local: &str, remote: &str, connection: u64) -> Flow {
    Flow {
        transport: Transport::Tcp,
        connection: Some(ConnectionId(connection)),
        ..Flow::udp(addr(local), addr(remote))
    }
}

fn send(net: &mut Net, flow: Flow, text: &str) -> Vec<Transmit> {
    net.gw.handle_message(net.now, flow, text.as_bytes());
    net.drain()
}

fn only(mut out: Vec<Transmit>) -> Transmit {
    assert_eq!(out.len(), 1, "{out:?}");
    out.remove(0)
}

fn invite(via_transport: &str, call: &str) -> String {
    let sdp = "v=0\r\no=alice 1 1 IN IP4 10.0.0.20\r\ns=-\r\nc=IN IP4 10.0.0.20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:bob@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/{via_transport} 10.0.0.20:5062;branch=z9hG4bK-{call}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a-{call}\r\nTo: <sip:bob@example.com>\r\nCall-ID: {call}@10.0.0.20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.0.20:5062;transport={}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        via_transport.to_lowercase(),
        sdp.len()
    )
}

#[test]
fn a_tcp_phone_to_a_udp_proxy_gets_the_gateway_s_retransmissions_and_408() {
    let mut net = net(Transport::Udp);
    let phone = tcp(LAN, PHONE, 7);
    let out = only(send(&mut net, phone, &invite("TCP", "c1")));
    assert_eq!(
        (out.transport, out.connection, out.remote),
        (Transport::Udp, None, addr(PROXY))
    );
    let fwd = text(&out);
    assert!(header(&fwd, "Via")
        .unwrap()
        .starts_with("SIP/2.0/UDP 203.0.113.1:5060"));
    let contact = header(&fwd, "Contact").unwrap();
    assert!(
        !contact.contains("transport=tcp"),
        "{contact}: the phone's leg's"
    );
    // Timer A on the UDP leg: 500 ms, then doubling.
    let again = net.advance(Duration::from_millis(500));
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].payload, out.payload);
    assert_eq!(net.advance(Duration::from_millis(999)).len(), 0);
    assert_eq!(net.advance(Duration::from_millis(1)).len(), 1);
    // 64*T1 without a response: the phone hears 408 on its own connection.
    let rest = net.advance(Duration::from_secs(31));
    let to_phone: Vec<_> = rest.iter().filter(|t| t.remote == addr(PHONE)).collect();
    assert_eq!(to_phone.len(), 1, "{rest:?}");
    assert!(text(to_phone[0]).starts_with("SIP/2.0 408"));
    assert_eq!(to_phone[0].connection, Some(ConnectionId(7)));
    assert_eq!(to_phone[0].transport, Transport::Tcp);
    assert!(net.gw.counters().retransmitted >= 5);
}

#[test]
fn udp_repeats_stay_off_a_stream_and_a_2xx_over_tcp_is_repeated_to_a_udp_phone_until_its_ack() {
    let mut net = net(Transport::Tcp);
    let phone = Flow::udp(addr(LAN), addr(PHONE));
    let out = only(send(&mut net, phone, &invite("UDP", "c2")));
    assert_eq!((out.transport, out.connection), (Transport::Tcp, None));
    let fwd = text(&out);
    assert!(header(&fwd, "Via")
        .unwrap()
        .starts_with("SIP/2.0/TCP 203.0.113.1:5060"));
    assert!(header(&fwd, "Contact").unwrap().contains(";transport=tcp"));
    // The phone's retransmission over UDP does not go onto the stream.
    assert!(send(&mut net, phone, &invite("UDP", "c2")).is_empty());
    // Nor does the gateway retransmit onto a stream itself.
    assert!(net.advance(Duration::from_secs(2)).is_empty());

    let proxy = tcp(WAN, PROXY, 9);
    let ok = common::response_to(
        &fwd,
        "200 OK",
        "b2",
        "Contact: <sip:bob@203.0.113.10;transport=tcp>\r\n",
    );
    let to_phone = only(send(&mut net, proxy, &ok));
    assert_eq!(to_phone.remote, addr(PHONE));
    let anchored = text(&to_phone);
    assert!(
        !header(&anchored, "Contact").unwrap().contains("transport"),
        "the phone's leg is UDP: {anchored}"
    );
    // Repeated at T1, 2*T1, ... until the phone's ACK.
    let again = net.advance(Duration::from_millis(500));
    assert_eq!(again.len(), 1);
    assert!(text(&again[0]).starts_with("SIP/2.0 200"));
    let ack = "ACK sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bK-ack2\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a-c2\r\nTo: <sip:bob@example.com>;tag=b2\r\nCall-ID: c2@10.0.0.20\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
    let acked = send(&mut net, phone, ack);
    assert_eq!(acked.len(), 1, "the ACK goes on: {acked:?}");
    assert_eq!(acked[0].transport, Transport::Tcp);
    let after: Vec<_> = net
        .advance(Duration::from_secs(10))
        .into_iter()
        .filter(|t| t.remote == addr(PHONE))
        .collect();
    assert!(after.is_empty(), "{after:?}");
}

#[test]
fn a_provisional_response_stops_timer_a() {
    let mut net = net(Transport::Udp);
    let out = only(send(&mut net, tcp(LAN, PHONE, 7), &invite("TCP", "c6")));
    let trying = common::response_to(&text(&out), "100 Trying", "x", "");
    net.deliver(WAN, PROXY, &trying);
    let later: Vec<_> = net
        .advance(Duration::from_secs(5))
        .into_iter()
        .filter(|t| t.remote == addr(PROXY))
        .collect();
    assert!(later.is_empty(), "{later:?}");
    assert_eq!(net.gw.counters().retransmitted, 0);
}

fn register_tcp(contact_host: &str) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.20:5062;branch=z9hG4bK-reg-tcp;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=r1\r\nTo: <sip:alice@example.com>\r\nCall-ID: reg-tcp@10.0.0.20\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@{contact_host};transport=tcp>;expires=3600\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Registers over TCP connection 7; returns the Contact the registrar learnt.
fn registered_over_tcp(net: &mut Net, contact_host: &str) -> String {
    let out = only(send(net, tcp(LAN, PHONE, 7), &register_tcp(contact_host)));
    let fwd = text(&out);
    let back = only(net.deliver(WAN, PROXY, &common::register_ok(&fwd, 3600)));
    assert_eq!(back.connection, Some(ConnectionId(7)));
    let contact = header(&fwd, "Contact").unwrap();
    contact
        .split('>')
        .next()
        .unwrap()
        .trim_start_matches('<')
        .to_string()
}

fn inbound(target: &str, call: &str) -> String {
    format!(
        "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bK-in-{call}\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.com>;tag=c-{call}\r\nTo: <sip:alice@example.com>\r\nCall-ID: in-{call}@proxy\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@203.0.113.10>\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn an_inbound_call_goes_over_the_connection_the_phone_registered_on() {
    let mut net = net(Transport::Udp);
    // The phone's Contact names another port than its connection's: a NAT between.
    let contact = registered_over_tcp(&mut net, "10.0.0.20:40000");
    let to_phone = only(net.deliver(WAN, PROXY, &inbound(&contact, "i1")));
    assert_eq!(
        (to_phone.transport, to_phone.connection, to_phone.remote),
        (Transport::Tcp, Some(ConnectionId(7)), addr(PHONE))
    );
    let invite = text(&to_phone);
    assert!(header(&invite, "Via")
        .unwrap()
        .starts_with("SIP/2.0/TCP 10.0.0.1:5060"));
    // The phone answers on its connection; the answer goes back over UDP.
    let ringing = common::response_to(&invite, "180 Ringing", "p1", "");
    let back = only(send(&mut net, tcp(LAN, PHONE, 7), &ringing));
    assert_eq!((back.transport, back.remote), (Transport::Udp, addr(PROXY)));

    // The connection closes: the phone cannot be reached behind its NAT.
    net.gw.handle_connection_closed(net.now, ConnectionId(7));
    let answer = only(net.deliver(WAN, PROXY, &inbound(&contact, "i2")));
    assert_eq!(answer.remote, addr(PROXY));
    assert!(
        text(&answer).starts_with("SIP/2.0 430 Flow Failed"),
        "{}",
        text(&answer)
    );
    assert_eq!(net.gw.counters().flow_failed, 1);
}

#[test]
fn a_phone_reachable_at_its_contact_gets_a_new_connection() {
    let mut net = net(Transport::Udp);
    let contact = registered_over_tcp(&mut net, PHONE);
    net.gw.handle_connection_closed(net.now, ConnectionId(7));
    let to_phone = only(net.deliver(WAN, PROXY, &inbound(&contact, "i3")));
    assert_eq!(
        (to_phone.transport, to_phone.connection, to_phone.remote),
        (Transport::Tcp, None, addr(PHONE)),
        "open a connection to the Contact"
    );
}

#[test]
fn responses_go_back_on_the_request_s_connection() {
    let mut net = net(Transport::Udp);
    let contact = registered_over_tcp(&mut net, "10.0.0.20:40000");
    let proxy = tcp(WAN, PROXY, 11);
    let to_phone = only(send(&mut net, proxy, &inbound(&contact, "i4")));
    let invite = text(&to_phone);
    let ok = common::response_to(
        &invite,
        "200 OK",
        "p4",
        "Contact: <sip:alice@10.0.0.20:40000;transport=tcp>\r\n",
    );
    let back = only(send(&mut net, tcp(LAN, PHONE, 7), &ok));
    assert_eq!(
        (back.transport, back.connection),
        (Transport::Tcp, Some(ConnectionId(11)))
    );
    assert!(header(&text(&back), "Contact")
        .unwrap()
        .contains(";transport=tcp"));
}

#[test]
fn an_undeliverable_request_is_answered_503_at_once() {
    let mut net = net(Transport::Tcp);
    let phone = Flow::udp(addr(LAN), addr(PHONE));
    let out = only(send(&mut net, phone, &invite("UDP", "c5")));
    net.gw
        .handle_undeliverable(net.now, out.flow(), &out.payload);
    let answer = only(net.drain());
    assert_eq!(answer.remote, addr(PHONE));
    assert!(
        text(&answer).starts_with("SIP/2.0 503"),
        "{}",
        text(&answer)
    );
    assert_eq!(net.gw.counters().undeliverable, 1);
}

fn big_invite(call: &str, size: usize) -> String {
    // Lines of 100 bytes: a long attribute would pass the parameter limit.
    let padding = format!("a=x-padding:{}\r\n", "p".repeat(86)).repeat(size / 100);
    let sdp = format!("v=0\r\no=alice 1 1 IN IP4 10.0.0.20\r\ns=-\r\nc=IN IP4 10.0.0.20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n{padding}");
    format!(
        "INVITE sip:bob@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bK-{call}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a-{call}\r\nTo: <sip:bob@example.com>\r\nCall-ID: {call}@10.0.0.20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.0.20:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

#[test]
fn a_request_too_large_for_udp_goes_over_tcp_with_its_cancel_unless_the_next_hop_is_udp_only() {
    let mut net = net(Transport::Udp);
    let phone = Flow::udp(addr(LAN), addr(PHONE));
    let out = only(send(&mut net, phone, &big_invite("b1", 1500)));
    assert!(out.payload.len() > 1300);
    assert_eq!((out.transport, out.connection), (Transport::Tcp, None));
    let fwd = text(&out);
    assert!(
        header(&fwd, "Via").unwrap().starts_with("SIP/2.0/TCP "),
        "{fwd}"
    );
    assert_eq!(net.gw.counters().switched_to_tcp, 1);
    // Its CANCEL follows it onto TCP once the far end has answered provisionally.
    let ringing = common::response_to(&fwd, "180 Ringing", "r1", "");
    only(send(&mut net, tcp(WAN, PROXY, 3), &ringing));
    let cancel = "CANCEL sip:bob@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bK-b1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a-b1\r\nTo: <sip:bob@example.com>\r\nCall-ID: b1@10.0.0.20\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
    let out = send(&mut net, phone, cancel);
    let onward: Vec<_> = out.iter().filter(|t| t.remote == addr(PROXY)).collect();
    assert_eq!(onward.len(), 1, "{out:?}");
    assert_eq!(onward[0].transport, Transport::Tcp);
    assert!(text(onward[0]).contains("Via: SIP/2.0/TCP "));

    // A small request goes back to UDP.
    let small = only(send(&mut net, phone, &invite("UDP", "b2")));
    assert_eq!(small.transport, Transport::Udp);

    let mut udp_only = net_with(|c| c.rules[0].udp_only = true);
    let out = only(send(&mut udp_only, phone, &big_invite("b3", 1500)));
    assert_eq!(out.transport, Transport::Udp);
    assert_eq!(udp_only.gw.counters().udp_oversize, 1);
}

fn net_with(change: impl FnOnce(&mut sipward_core::Config)) -> Net {
    let mut config = common::config(AlgOptions::default());
    change(&mut config);
    Net {
        gw: Gateway::new(config),
        now: std::time::Instant::now(),
    }
}

#[test]
fn sips_needs_tls_on_both_legs_and_sdes_keys_never_cross_a_plain_leg() {
    let mut net = net(Transport::Tcp);
    let phone = Flow::udp(addr(LAN), addr(PHONE));
    let sips = invite("UDP", "s1").replacen("INVITE sip:", "INVITE sips:", 1);
    let answer = only(send(&mut net, phone, &sips));
    assert!(
        text(&answer).starts_with("SIP/2.0 480"),
        "{}",
        text(&answer)
    );
    assert!(text(&answer).contains("sips: requires TLS"));

    let keys = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzcyAoc2VuZGluZyk=\r\n";
    let sdp = format!("v=0\r\no=alice 1 1 IN IP4 10.0.0.20\r\ns=-\r\nc=IN IP4 10.0.0.20\r\nt=0 0\r\nm=audio 40000 RTP/SAVP 0\r\n{keys}");
    let srtp = format!(
        "INVITE sip:bob@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bK-k1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=k1\r\nTo: <sip:bob@example.com>\r\nCall-ID: k1@10.0.0.20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.0.20:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    let answer = only(send(&mut net, phone, &srtp));
    assert!(
        text(&answer).starts_with("SIP/2.0 488"),
        "{}",
        text(&answer)
    );
    assert_eq!(net.gw.counters().refused_insecure, 2);

    let mut allowed = net_with(|c| {
        c.alg.allow_sdes_on_plain_leg = true;
        c.rules[0].next_hop_transport = Transport::Tcp;
    });
    let out = only(send(&mut allowed, phone, &srtp));
    assert_eq!(out.remote, addr(PROXY));
    assert!(text(&out).contains(keys), "the keys pass byte-exact");
}

#[test]
fn an_options_for_the_gateway_itself_gets_200_and_a_user_s_still_404() {
    let mut net = net(Transport::Udp);
    let ping = "OPTIONS sip:203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/TCP 203.0.113.10;branch=z9hG4bKping\r\nMax-Forwards: 70\r\nFrom: <sip:trunk@example.net>;tag=1\r\nTo: <sip:203.0.113.1>\r\nCall-ID: ping-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let answer = only(send(&mut net, tcp(WAN, PROXY, 5), ping));
    let answer_text = text(&answer);
    assert!(answer_text.starts_with("SIP/2.0 200 OK"), "{answer_text}");
    assert!(answer_text.contains("Allow: INVITE"));
    assert_eq!(answer.connection, Some(ConnectionId(5)));
    let user = ping.replacen("sip:203.0.113.1:5060", "sip:nobody@203.0.113.1", 1);
    let user = user.replacen("branch=z9hG4bKping", "branch=z9hG4bKping2", 1);
    assert!(text(&only(send(&mut net, tcp(WAN, PROXY, 5), &user))).starts_with("SIP/2.0 404"));
}

#[test]
fn an_advertised_name_is_written_in_via_and_contact_and_responses_to_it_are_ours() {
    let mut net = net_with(|c| {
        c.zones[1].advertise = Some("sbc.example.com".into());
        c.rules[0].next_hop_transport = Transport::Tls;
    });
    let phone = Flow::udp(addr(LAN), addr(PHONE));
    let out = only(send(&mut net, phone, &invite("UDP", "a1")));
    assert_eq!(out.transport, Transport::Tls);
    // The TLS leg names the TLS port (5061 with no TLS listener configured), not the
    // zone's UDP port: a peer reaching the Contact must find TLS there.
    let fwd = text(&out);
    assert!(
        header(&fwd, "Via")
            .unwrap()
            .starts_with("SIP/2.0/TLS sbc.example.com:5061;"),
        "{fwd}"
    );
    assert!(header(&fwd, "Contact")
        .unwrap()
        .contains("@sbc.example.com:5061;transport=tls"));
    let ringing = common::response_to(&fwd, "180 Ringing", "r", "");
    let mut tls = tcp(WAN, PROXY, 4);
    tls.transport = Transport::Tls;
    let back = only(send(&mut net, tls, &ringing));
    assert_eq!(back.remote, addr(PHONE));
}

#[test]
fn configured_peers_are_pinged_with_options_and_shown_up_or_down() {
    let mut net = net_with(|c| c.rules[0].options_ping = Some(Duration::from_secs(30)));
    net.gw.handle_timeout(net.now);
    let ping = only(net.drain());
    assert_eq!((ping.local, ping.remote), (addr(WAN), addr(PROXY)));
    let ping_text = text(&ping);
    assert!(
        ping_text.starts_with("OPTIONS sip:203.0.113.10:5060 SIP/2.0"),
        "{ping_text}"
    );
    assert!(!net.gw.peers()[0].up);
    let ok = common::response_to(&ping_text, "200 OK", "p", "");
    assert!(net.deliver(WAN, PROXY, &ok).is_empty(), "absorbed");
    let peer = &net.gw.peers()[0];
    assert!(peer.up);
    assert_eq!(peer.last_answer.map(|(_, s)| s), Some(200));
    assert_eq!(net.gw.counters().stray_responses, 0);
    // The next ping goes unanswered: down once the one after is due.
    let next = net.advance(Duration::from_secs(30));
    assert_eq!(next.len(), 1);
    net.advance(Duration::from_secs(30));
    assert!(!net.gw.peers()[0].up);
    assert_eq!(net.gw.peers()[0].pings_sent, 3);
}

#[test]
fn outbound_parameters_and_flow_timer_pass_through_a_registration() {
    let mut net = net(Transport::Udp);
    let register = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.20:5062;branch=z9hG4bK-ob1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=r1\r\nTo: <sip:alice@example.com>\r\nCall-ID: reg-ob@10.0.0.20\r\nCSeq: 1 REGISTER\r\nSupported: outbound, path\r\nContact: <sip:alice@10.0.0.20:5062;transport=tcp;ob>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";expires=3600\r\nContent-Length: 0\r\n\r\n";
    let out = only(send(&mut net, tcp(LAN, PHONE, 7), register));
    let fwd = text(&out);
    let contact = header(&fwd, "Contact").unwrap();
    // RFC 5626: the registrar sees the flow's identity as the phone wrote it.
    for kept in [
        ";ob",
        ";reg-id=1",
        "+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"",
    ] {
        assert!(contact.contains(kept), "{kept} in {contact}");
    }
    assert!(header(&fwd, "Supported").unwrap().contains("outbound"));
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=s\r\nCall-ID: {}\r\nCSeq: 1 REGISTER\r\nRequire: outbound\r\nFlow-Timer: 120\r\nContact: <{uri}>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\";expires=3600\r\nContent-Length: 0\r\n\r\n",
        header(&fwd, "Via").unwrap(),
        header(&fwd, "From").unwrap(),
        header(&fwd, "To").unwrap(),
        header(&fwd, "Call-ID").unwrap(),
    );
    let back = text(&only(net.deliver(WAN, PROXY, &ok)));
    assert_eq!(header(&back, "Flow-Timer"), Some("120"), "{back}");
    assert_eq!(header(&back, "Require"), Some("outbound"));
    assert!(
        header(&back, "Contact").unwrap().contains("reg-id=1"),
        "{back}"
    );
}

#[test]
fn a_connection_is_in_use_while_a_binding_or_a_call_rides_it() {
    use sipward_core::ConnectionUse;
    let mut net = net(Transport::Udp);
    let (reg, call) = (ConnectionId(7), ConnectionId(9));
    assert_eq!(net.gw.connection_use(reg), None);
    // A binding holds its connection until it expires.
    let registered_at = net.now;
    registered_over_tcp(&mut net, "10.0.0.20:40000");
    let until = registered_at + Duration::from_secs(3600);
    assert_eq!(
        net.gw.connection_use(reg),
        Some(ConnectionUse::Binding { until })
    );
    assert_eq!(net.gw.connection_use(call), None);

    // A call over another connection holds it from its INVITE to its BYE's answer.
    let phone = tcp(LAN, PHONE, 9);
    let fwd = text(&only(send(&mut net, phone, &invite("TCP", "u1"))));
    assert_eq!(net.gw.connection_use(call), Some(ConnectionUse::Dialog));
    let ok = common::response_to(&fwd, "200 OK", "b1", "Contact: <sip:bob@203.0.113.50>\r\n");
    assert_eq!(only(net.deliver(WAN, PROXY, &ok)).connection, Some(call));
    send(&mut net, phone, "ACK sip:bob@203.0.113.50 SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.20:5062;branch=z9hG4bK-ack-u1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a-u1\r\nTo: <sip:bob@example.com>;tag=b1\r\nCall-ID: u1@10.0.0.20\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
    net.advance(Duration::from_secs(600));
    assert_eq!(net.gw.connection_use(call), Some(ConnectionUse::Dialog));
    let bye = text(&only(send(&mut net, phone, "BYE sip:bob@203.0.113.50 SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.20:5062;branch=z9hG4bK-bye-u1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a-u1\r\nTo: <sip:bob@example.com>;tag=b1\r\nCall-ID: u1@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")));
    assert_eq!(net.gw.connection_use(call), Some(ConnectionUse::Dialog));
    only(net.deliver(WAN, PROXY, &common::response_to(&bye, "200 OK", "b1", "")));
    assert_eq!(net.gw.connection_use(call), None, "the call ended");

    // The binding still holds its connection, until it expires.
    assert_eq!(
        net.gw.connection_use(reg),
        Some(ConnectionUse::Binding { until })
    );
    net.advance(Duration::from_secs(3001));
    assert_eq!(net.gw.connection_use(reg), None, "the binding expired");

    // A closed connection is in no one's use.
    registered_over_tcp(&mut net, "10.0.0.20:40000");
    assert!(net.gw.connection_use(reg).is_some());
    net.gw.handle_connection_closed(net.now, reg);
    assert_eq!(net.gw.connection_use(reg), None);
}
