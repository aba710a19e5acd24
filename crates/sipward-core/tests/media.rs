//! Media pinholes in the core, on virtual time: what the SDP says after the gateway, what
//! the relay is told to open, update and close, port exhaustion, forks, hold and the
//! data-channel timeout.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sipward_core::{AlgOptions, EventKind, MediaCommand, Peer, PortReserver, ReserveError};

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The Set commands among `cmds`, as (stream id, inside peers, outside peers).
fn sets(cmds: &[MediaCommand]) -> Vec<(u64, Vec<Peer>, Vec<Peer>)> {
    cmds.iter()
        .filter_map(|c| match c {
            MediaCommand::Set { id, legs, .. } => {
                Some((*id, legs[0].peers.clone(), legs[1].peers.clone()))
            }
            MediaCommand::Close { .. } => None,
        })
        .collect()
}

fn closes(cmds: &[MediaCommand]) -> Vec<u64> {
    cmds.iter()
        .filter_map(|c| match c {
            MediaCommand::Close { id } => Some(*id),
            MediaCommand::Set { .. } => None,
        })
        .collect()
}

fn peer(rtp: &str, rtcp: &str) -> Peer {
    Peer {
        rtp: Some(sock(rtp)),
        rtcp: Some(sock(rtcp)),
        latch: false,
    }
}

fn phone_request(method: &str, cseq: u32, call: &str, to_tag: &str, body: &str) -> String {
    format!(
        "{method} sip:bob@203.0.113.50 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bK{method}{cseq}\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-{call}\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag={to_tag}\r\nCall-ID: {call}@10.0.0.20\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@10.0.0.20:5062>\r\n{}Content-Length: {}\r\n\r\n{body}",
        if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" },
        body.len()
    )
}

/// An answered outbound call: the far end at 203.0.113.50:7000. Returns the forwarded
/// INVITE and the stream id.
fn answered_call(net: &mut Net, call: &str) -> (String, u64) {
    let fwd = text(&net.phone_sends(&invite(call, &format!("z9hG4bK{call}"))));
    let ok = response_with_sdp(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
        &sdp("203.0.113.50", 7000, ""),
    );
    net.proxy_sends(&ok);
    let ack = phone_request("ACK", 1, call, "b1", "");
    net.phone_sends(&ack);
    let cmds = net.media_commands();
    let id = sets(&cmds).last().unwrap().0;
    (fwd, id)
}

#[test]
fn offer_and_answer_point_each_side_at_the_relay() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let fwd = text(&net.phone_sends(&invite("m1", "z9hG4bKm1")));
    // The offer leaves with the relay's outside pair and no inside address.
    assert!(fwd.contains("c=IN IP4 203.0.113.1\r\n"), "{fwd}");
    assert!(fwd.contains("m=audio 31000 RTP/AVP 0\r\n"), "{fwd}");
    assert!(fwd.contains("o=alice 1 1 IN IP4 203.0.113.1\r\n"), "{fwd}");
    let cmds = net.media_commands();
    let s = sets(&cmds);
    assert_eq!(s.len(), 1, "{cmds:?}");
    assert_eq!(s[0].1, vec![peer("10.0.0.20:40000", "10.0.0.20:40001")]);
    assert!(
        s[0].2.is_empty(),
        "the far end is not known before the answer"
    );
    match &cmds[0] {
        MediaCommand::Set { legs, .. } => {
            assert_eq!(legs[0].local_rtp, sock("10.0.0.1:30000"));
            assert_eq!(legs[1].local_rtp, sock("203.0.113.1:31000"));
        }
        MediaCommand::Close { .. } => unreachable!(),
    }

    // The answer reaches the phone pointing at the relay's inside pair.
    let ok = response_with_sdp(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
        &sdp("203.0.113.50", 7000, "a=rtcp:7005\r\n"),
    );
    let back = text(&net.proxy_sends(&ok));
    assert!(back.contains("c=IN IP4 10.0.0.1\r\n"), "{back}");
    assert!(back.contains("m=audio 30000 RTP/AVP 0\r\n"), "{back}");
    assert!(back.contains("a=rtcp:30001\r\n"), "{back}");
    let s = sets(&net.media_commands());
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].2, vec![peer("203.0.113.50:7000", "203.0.113.50:7005")]);
    assert_eq!(net.gw.media().stream_count(), 1);

    // BYE closes the stream and gives its ports back.
    let bye = text(&net.phone_sends(&phone_request("BYE", 2, "m1", "b1", "")));
    net.proxy_sends(&response_to(&bye, "200 OK", "b1", ""));
    let cmds = net.media_commands();
    assert_eq!(closes(&cmds), vec![s[0].0]);
    assert_eq!(net.gw.media().stream_count(), 0);
    assert!(net
        .gw
        .media()
        .pool_usage()
        .iter()
        .all(|&(_, used, _)| used == 0));
}

#[test]
fn exhausted_port_pool_refuses_the_call_with_503() {
    let mut net = Net::with_media(AlgOptions::default(), 1);
    answered_call(&mut net, "p1");
    let refused = net.phone_sends(&invite("p2", "z9hG4bKp2"));
    assert_eq!(refused.remote, addr(PHONE));
    let refused = text(&refused);
    assert!(refused.starts_with("SIP/2.0 503 "), "{refused}");
    assert!(refused.contains("no media ports"), "{refused}");
    assert_eq!(net.gw.media().refused(), 1);
    assert!(net.media_commands().is_empty());
}

/// A port reserver that fails as told: ports held by "another process", or no file
/// descriptors left at all. Records the pairs it holds.
#[derive(Clone, Default)]
struct FakeReserver {
    state: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
struct FakeState {
    taken_by_others: HashSet<SocketAddr>,
    out_of_files: bool,
    held: HashSet<SocketAddr>,
}

impl PortReserver for FakeReserver {
    fn reserve(&mut self, rtp: SocketAddr) -> Result<(), ReserveError> {
        let mut state = self.state.lock().unwrap();
        if state.taken_by_others.contains(&rtp) {
            return Err(ReserveError::InUse);
        }
        // The inside pair opens; the outside one finds the file limit reached.
        if state.out_of_files && rtp.ip() == sock("203.0.113.1:0").ip() {
            return Err(ReserveError::Unavailable);
        }
        assert!(state.held.insert(rtp), "{rtp} reserved twice");
        Ok(())
    }

    fn release(&mut self, rtp: SocketAddr) {
        assert!(
            self.state.lock().unwrap().held.remove(&rtp),
            "{rtp} not held"
        );
    }
}

/// Whether every leg of every `Set` among `cmds` is provisional.
fn provisional(cmds: &[MediaCommand]) -> Vec<bool> {
    cmds.iter()
        .filter_map(|c| match c {
            MediaCommand::Set { legs, .. } => Some(legs.iter().all(|l| l.provisional)),
            MediaCommand::Close { .. } => None,
        })
        .collect()
}

#[test]
fn legs_are_provisional_until_the_call_is_answered() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let fwd = text(&net.phone_sends(&invite("v1", "z9hG4bKv1")));
    assert_eq!(provisional(&net.media_commands()), vec![true]);
    // Early media from one fork: still provisional (another fork may answer).
    let early = response_with_sdp(
        &fwd,
        "183 Session Progress",
        "f1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
        &sdp("203.0.113.50", 7000, ""),
    );
    net.proxy_sends(&early);
    assert_eq!(provisional(&net.media_commands()), vec![true]);
    // Another fork answers: one Set, final, naming only the answer's author.
    let ok = response_with_sdp(
        &fwd,
        "200 OK",
        "f2",
        "Contact: <sip:bob@203.0.113.60>\r\n",
        &sdp("203.0.113.60", 8000, ""),
    );
    net.proxy_sends(&ok);
    let cmds = net.media_commands();
    assert_eq!(provisional(&cmds), vec![false]);
    assert_eq!(
        sets(&cmds)[0].2,
        vec![peer("203.0.113.60:8000", "203.0.113.60:8001")]
    );
}

#[test]
fn media_sockets_that_cannot_open_refuse_the_call_with_503() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let fake = FakeReserver::default();
    net.gw.set_port_reserver(Box::new(fake.clone()));
    fake.state.lock().unwrap().out_of_files = true;
    // The phone gets 503; nothing goes to the proxy (one transmit in all).
    let refused = net.phone_sends(&invite("e1", "z9hG4bKe1"));
    assert_eq!(refused.remote, addr(PHONE));
    let refused = text(&refused);
    assert!(refused.starts_with("SIP/2.0 503 "), "{refused}");
    assert!(
        refused.contains("Warning: 399 ") && refused.contains("media sockets cannot be opened"),
        "{refused}"
    );
    assert_eq!(net.gw.media().refused(), 1);
    assert!(net.media_commands().is_empty());
    // The inside pair reserved before the failure is given back.
    assert!(fake.state.lock().unwrap().held.is_empty());
    assert!(net
        .gw
        .media()
        .pool_usage()
        .iter()
        .all(|&(_, used, _)| used == 0));
    let events: Vec<_> = std::iter::from_fn(|| net.gw.poll_event()).collect();
    assert!(
        events.iter().any(|e| e.kind == EventKind::Overload
            && e.reason.contains("media sockets cannot be opened")),
        "{events:?}"
    );

    // Once descriptors are back, the next call goes through.
    fake.state.lock().unwrap().out_of_files = false;
    let fwd = text(&net.phone_sends(&invite("e2", "z9hG4bKe2")));
    assert!(fwd.starts_with("INVITE "), "{fwd}");
    assert_eq!(fake.state.lock().unwrap().held.len(), 2);
}

#[test]
fn a_port_taken_by_another_socket_is_skipped_for_the_next_pair() {
    let mut net = Net::with_media(AlgOptions::default(), 2);
    let fake = FakeReserver::default();
    net.gw.set_port_reserver(Box::new(fake.clone()));
    fake.state
        .lock()
        .unwrap()
        .taken_by_others
        .insert(sock("203.0.113.1:31000"));
    let fwd = text(&net.phone_sends(&invite("t1", "z9hG4bKt1")));
    assert!(fwd.contains("m=audio 31002 RTP/AVP 0\r\n"), "{fwd}");
    assert_eq!(net.gw.media().ports_skipped(), 1);
    assert_eq!(net.gw.media().refused(), 0);
    // With the only other pair in use as well, the next call finds no pair: 503.
    let refused = text(&net.phone_sends(&invite("t2", "z9hG4bKt2")));
    assert!(refused.starts_with("SIP/2.0 503 "), "{refused}");
    assert!(refused.contains("no media ports"), "{refused}");
    // Nothing taken by the refused call stays reserved: the first call's two pairs.
    assert_eq!(fake.state.lock().unwrap().held.len(), 2);
}

#[test]
fn idle_media_ends_the_call_with_a_bye_both_ways() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let (_, id) = answered_call(&mut net, "i1");
    assert!(net.advance(Duration::from_secs(119)).is_empty());
    let out = net.advance(Duration::from_secs(2));
    assert_eq!(out.len(), 2, "{out:?}");
    for t in &out {
        let m = text(t);
        assert!(m.starts_with("BYE "), "{m}");
        assert!(m.contains("text=\"media timeout\""), "{m}");
    }
    assert!(out.iter().any(|t| t.remote == addr(PHONE)));
    assert!(out.iter().any(|t| t.remote == addr(PROXY)));
    assert_eq!(closes(&net.media_commands()), vec![id]);
    assert!(net.gw.dialogs().is_empty());
    assert_eq!(net.gw.counters().media_timeouts, 1);
}

#[test]
fn media_activity_keeps_the_call_up() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let fwd = text(&net.phone_sends(&invite("k1", "z9hG4bKk1")));
    let offer = net.media_commands();
    let MediaCommand::Set { counters, .. } = &offer[0] else {
        panic!("{offer:?}")
    };
    let counters = counters.clone();
    net.proxy_sends(&response_with_sdp(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
        &sdp("203.0.113.50", 7000, ""),
    ));
    // The relay forwards a packet 100 s into the call.
    assert!(net.advance(Duration::from_secs(100)).is_empty());
    counters.record(sipward_core::Side::Inside, 1, 172, net.now);
    assert!(net.advance(Duration::from_secs(100)).is_empty());
    assert_eq!(net.gw.dialogs().len(), 1);
    let out = net.advance(Duration::from_secs(21));
    assert_eq!(out.len(), 2, "120 s after the last packet: {out:?}");
}

#[test]
fn a_call_on_hold_is_exempt_from_the_idle_timeout() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    answered_call(&mut net, "h1");
    let hold = phone_request(
        "INVITE",
        2,
        "h1",
        "b1",
        &sdp("10.0.0.20", 40000, "a=sendonly\r\n"),
    );
    let fwd = text(&net.phone_sends(&hold));
    assert!(fwd.contains("a=sendonly\r\n"), "{fwd}");
    assert!(fwd.contains("m=audio 31000 "), "same relay port: {fwd}");
    net.proxy_sends(&response_with_sdp(
        &fwd,
        "200 OK",
        "b1",
        "",
        &sdp("203.0.113.50", 7000, "a=recvonly\r\n"),
    ));
    assert!(net.advance(Duration::from_secs(600)).is_empty());
    assert_eq!(net.gw.dialogs().len(), 1);
    assert_eq!(net.gw.media().stream_count(), 1);
}

#[test]
fn hold_with_a_zero_address_is_passed_on_as_such() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    answered_call(&mut net, "z1");
    let hold = phone_request("INVITE", 2, "z1", "b1", &sdp("0.0.0.0", 40000, ""));
    let fwd = text(&net.phone_sends(&hold));
    assert!(fwd.contains("c=IN IP4 0.0.0.0\r\n"), "{fwd}");
    let s = sets(&net.media_commands());
    assert_eq!(s[0].1[0].rtp, None, "nothing is sent to a held party");
}

#[test]
fn re_invite_to_a_new_port_repoints_the_same_stream() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let (_, id) = answered_call(&mut net, "r1");
    let reinvite = phone_request("INVITE", 2, "r1", "b1", &sdp("10.0.0.20", 40000, ""));
    let fwd = text(&net.phone_sends(&reinvite));
    let back = text(&net.proxy_sends(&response_with_sdp(
        &fwd,
        "200 OK",
        "b1",
        "",
        &sdp("203.0.113.60", 9000, ""),
    )));
    assert!(back.contains("m=audio 30000 "), "{back}");
    let s = sets(&net.media_commands());
    let last = s.last().unwrap();
    assert_eq!(last.0, id, "the relay is reused");
    assert_eq!(last.2, vec![peer("203.0.113.60:9000", "203.0.113.60:9001")]);
    assert_eq!(net.gw.media().stream_count(), 1);
}

#[test]
fn forked_early_media_each_reach_the_relay_and_the_answer_keeps_its_own() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let fwd = text(&net.phone_sends(&invite("f1", "z9hG4bKf1")));
    net.media_commands();
    for (tag, ip) in [("b1", "203.0.113.51"), ("b2", "203.0.113.52")] {
        net.proxy_sends(&response_with_sdp(
            &fwd,
            "183 Session Progress",
            tag,
            "Contact: <sip:bob@203.0.113.50>\r\n",
            &sdp(ip, 7000, ""),
        ));
    }
    let s = sets(&net.media_commands());
    assert_eq!(
        s.last().unwrap().2,
        vec![
            peer("203.0.113.52:7000", "203.0.113.52:7001"),
            peer("203.0.113.51:7000", "203.0.113.51:7001"),
        ],
        "both forks may send; the latest is sent to"
    );
    net.proxy_sends(&response_with_sdp(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
        &sdp("203.0.113.51", 7000, ""),
    ));
    let s = sets(&net.media_commands());
    assert_eq!(
        s.last().unwrap().2,
        vec![peer("203.0.113.51:7000", "203.0.113.51:7001")],
        "the losing fork is released"
    );
}

#[test]
fn declined_stream_gets_no_ports() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.20\r\ns=-\r\nc=IN IP4 10.0.0.20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\nm=video 0 RTP/AVP 96\r\n";
    let msg = invite("d1", "z9hG4bKd1").replace(&sdp_of_invite(), body);
    let msg = fix_length(&msg);
    let fwd = text(&net.phone_sends(&msg));
    assert!(fwd.contains("m=video 0 RTP/AVP 96\r\n"), "{fwd}");
    assert_eq!(sets(&net.media_commands()).len(), 1);
    assert_eq!(net.gw.media().stream_count(), 1);
}

#[test]
fn a_far_end_behind_another_nat_is_latched() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let fwd = text(&net.phone_sends(&invite("n1", "z9hG4bKn1")));
    net.proxy_sends(&response_with_sdp(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
        &sdp("192.168.7.9", 7000, ""),
    ));
    let s = sets(&net.media_commands());
    let far = &s.last().unwrap().2[0];
    assert!(
        far.latch,
        "a private address outside our networks is behind a NAT"
    );
    assert_eq!(
        (far.rtp, far.rtcp),
        (None, None),
        "nothing is sent to its unreachable SDP address before it latches"
    );
    let near = &s.last().unwrap().1[0];
    assert!(
        !near.latch,
        "the phone's address is on the gateway's own network"
    );
}

fn sdp_of_invite() -> String {
    let inv = invite("x", "y");
    inv.split("\r\n\r\n").nth(1).unwrap().to_string()
}

fn fix_length(msg: &str) -> String {
    let (head, body) = msg.split_once("\r\n\r\n").unwrap();
    let head: Vec<String> = head
        .split("\r\n")
        .map(|l| {
            if l.starts_with("Content-Length:") {
                format!("Content-Length: {}", body.len())
            } else {
                l.to_string()
            }
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

/// A call between two inside phones that goes out to the proxy and comes back in: with
/// `allow_media_bypass`, each phone is given the other's own address, nothing is
/// relayed and the idle timeout leaves the call alone; without it, both go through the
/// relay.
fn hairpin(bypass: bool) -> (String, String, Net) {
    let mut net = Net::with_media(
        AlgOptions {
            allow_media_bypass: bypass,
            ..AlgOptions::default()
        },
        8,
    );
    // bob registers from 10.0.0.21.
    let reg = register(1, 3600)
        .replace("10.0.0.20:5062", "10.0.0.21:5062")
        .replace("alice", "bob")
        .replace("reg-1@10.0.0.20", "reg-b@10.0.0.21");
    let fwd = text(&net.deliver(LAN, "10.0.0.21:5062", &reg)[0]);
    net.proxy_sends(&register_ok(&fwd, 3600));
    let contact = header(&fwd, "Contact").unwrap();
    let bob_uri = contact
        .split('>')
        .next()
        .unwrap()
        .trim_start_matches('<')
        .to_string();

    // alice calls; the proxy sends the call back in to bob with the SDP it got.
    let out = text(&net.phone_sends(&invite("hp", "z9hG4bKhp")));
    let offer = out.split("\r\n\r\n").nth(1).unwrap().to_string();
    let inbound = format!(
        "INVITE {bob_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKhpin\r\nMax-Forwards: 69\r\nFrom: {}\r\nTo: <sip:bob@biloxi.example.com>\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@203.0.113.1:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        header(&out, "From").unwrap(),
        header(&out, "Call-ID").unwrap(),
        offer.len()
    );
    let to_bob = net.proxy_sends(&inbound);
    assert_eq!(to_bob.remote, addr("10.0.0.21:5062"));
    let to_bob = text(&to_bob);

    // bob answers; the proxy relays the answer to alice's INVITE.
    let answer = sdp("10.0.0.21", 42000, "");
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: <sip:bob@biloxi.example.com>;tag=bb\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@10.0.0.21:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
        header(&to_bob, "Via").unwrap(),
        header(&to_bob, "From").unwrap(),
        header(&to_bob, "Call-ID").unwrap(),
        answer.len()
    );
    let ok_out = text(&net.deliver(LAN, "10.0.0.21:5062", &ok)[0]);
    assert!(
        !ok_out.contains("10.0.0.21"),
        "hidden on the way out: {ok_out}"
    );
    let back = ok_out.split("\r\n\r\n").nth(1).unwrap();
    let to_alice = text(&net.proxy_sends(&response_with_sdp(
        &out,
        "200 OK",
        "bb",
        "Contact: <sip:bob@203.0.113.1:5060>\r\n",
        back,
    )));
    (to_bob, to_alice, net)
}

#[test]
fn media_bypass_lets_two_inside_phones_talk_directly() {
    let (to_bob, to_alice, mut net) = hairpin(true);
    assert!(to_bob.contains("c=IN IP4 10.0.0.20\r\n"), "{to_bob}");
    assert!(to_bob.contains("m=audio 40000 "), "{to_bob}");
    assert!(to_alice.contains("c=IN IP4 10.0.0.21\r\n"), "{to_alice}");
    assert!(to_alice.contains("m=audio 42000 "), "{to_alice}");
    assert!(
        net.advance(Duration::from_secs(600)).is_empty(),
        "a bypassed call has no relayed media to time out"
    );
}

#[test]
fn without_bypass_a_hairpin_call_is_relayed() {
    let (to_bob, to_alice, _) = hairpin(false);
    assert!(to_bob.contains("c=IN IP4 10.0.0.1\r\n"), "{to_bob}");
    assert!(to_alice.contains("c=IN IP4 10.0.0.1\r\n"), "{to_alice}");
}

/// Offer in a reliable 183, answer in the PRACK (RFC 3262): both cross the relay.
#[test]
fn prack_carries_the_answer_to_an_offer_in_a_183() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    let no_sdp = "INVITE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKpr1\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-pr\r\nTo: bob <sip:bob@10.0.0.1:5060>\r\nCall-ID: pr@10.0.0.20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.0.20:5062>\r\nSupported: 100rel\r\nContent-Length: 0\r\n\r\n";
    let fwd = text(&net.phone_sends(no_sdp));
    assert!(net.media_commands().is_empty());
    let offer = response_with_sdp(
        &fwd,
        "183 Session Progress",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\nRequire: 100rel\r\nRSeq: 1\r\n",
        &sdp("203.0.113.50", 7000, ""),
    );
    let to_phone = text(&net.proxy_sends(&offer));
    assert!(to_phone.contains("c=IN IP4 10.0.0.1\r\n"), "{to_phone}");
    assert!(to_phone.contains("m=audio 30000 "), "{to_phone}");
    let answer = sdp("10.0.0.20", 40000, "");
    let prack = format!(
        "PRACK sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKpr2\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-pr\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: pr@10.0.0.20\r\nCSeq: 2 PRACK\r\nRAck: 1 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
        answer.len()
    );
    let out = text(&net.phone_sends(&prack));
    assert!(
        out.starts_with("PRACK sip:bob@203.0.113.50 SIP/2.0\r\n"),
        "{out}"
    );
    assert!(out.contains("c=IN IP4 203.0.113.1\r\n"), "{out}");
    assert!(out.contains("m=audio 31000 "), "{out}");
    let s = sets(&net.media_commands());
    let last = s.last().unwrap();
    assert_eq!(last.1, vec![peer("10.0.0.20:40000", "10.0.0.20:40001")]);
    assert_eq!(last.2, vec![peer("203.0.113.50:7000", "203.0.113.50:7001")]);
}

#[test]
fn an_ack_answering_a_late_offer_goes_on_unrelayed_when_ports_run_out() {
    let mut net = Net::with_media(AlgOptions::default(), 1);
    answered_call(&mut net, "l0");
    // A late offer: the INVITE has no SDP, the 200 carries the offer, the ACK the answer.
    let invite = invite("l1", "z9hG4bKl1");
    let head = invite.split("\r\n\r\n").next().unwrap();
    let bare = head
        .lines()
        .filter(|l| !l.starts_with("Content-"))
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        + "Content-Length: 0\r\n\r\n";
    let fwd = text(&net.phone_sends(&bare));
    let ok = response_with_sdp(
        &fwd,
        "200 OK",
        "b2",
        "Contact: <sip:bob@203.0.113.50>\r\n",
        &sdp("203.0.113.50", 7002, ""),
    );
    // No pair is left: the 200 (which cannot be refused) reaches the phone unrelayed.
    let answered = text(&net.proxy_sends(&ok));
    assert!(answered.starts_with("SIP/2.0 200 "), "{answered}");
    assert!(answered.contains("m=audio 7002 "), "{answered}");
    // The phone's answer in the ACK still reaches the far end (an ACK cannot be
    // answered 503; dropping it would leave the far end retransmitting its 200),
    // its inside address hidden.
    let ack = phone_request("ACK", 1, "l1", "b2", &sdp("10.0.0.20", 40002, ""));
    let forwarded = text(&net.phone_sends(&ack));
    assert!(forwarded.starts_with("ACK "), "{forwarded}");
    assert!(
        forwarded.contains("c=IN IP4 203.0.113.1\r\n"),
        "{forwarded}"
    );
    let events: Vec<_> = std::iter::from_fn(|| net.gw.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Overload && e.reason.contains("not relayed")),
        "{events:?}"
    );
}

/// The phone's INVITE with its SDP's `IN IP4 10.0.0.20` written as `with`.
fn invite_with_sdp_address(call: &str, with: &str) -> String {
    let inv = invite(call, &format!("z9hG4bK{call}"));
    let at = inv.find("\r\n\r\n").unwrap() + 4;
    let body = inv[at..].replace("IN IP4 10.0.0.20", with);
    let head = inv[..at].replace(
        &format!("Content-Length: {}", inv.len() - at),
        &format!("Content-Length: {}", body.len()),
    );
    format!("{head}{body}")
}

#[test]
fn an_ipv6_written_phone_sdp_goes_out_with_the_relays_ipv4_and_its_address_type() {
    // RFC 5118 section 4.6: `IN IP6 ::ffff:10.0.0.20` is the phone's IPv4 address;
    // the relay's address replaced only the address text ("IN IP6 203.0.113.1", which
    // no parser takes) and the o= line kept the inside address, so the INVITE was lost.
    for (call, with) in [
        ("map6", "IN IP6 ::ffff:10.0.0.20"),
        ("v6", "IN IP6 2001:db8::20"),
    ] {
        let mut net = Net::with_media(AlgOptions::default(), 4);
        let out = text(&net.phone_sends(&invite_with_sdp_address(call, with)));
        assert!(out.contains("\r\nc=IN IP4 203.0.113.1\r\n"), "{out}");
        assert!(!out.contains("IN IP6 203.0.113.1"), "{out}");
        if call == "map6" {
            assert!(
                out.contains("\r\no=alice 1 1 IN IP4 203.0.113.1\r\n"),
                "{out}"
            );
        }
        assert!(
            sipward_proto::parse_datagram(out.as_bytes(), &sipward_proto::Limits::default())
                .is_ok(),
            "{out}"
        );
    }
}

/// A gateway whose two zones are of two families: `inside` and `outside` are the zones'
/// SIP addresses, `nets` their networks, `proxy` the outside proxy; media pairs from
/// 30000 inside and 31000 outside.
fn mixed_family_net(inside: &str, outside: &str, nets: [&str; 2], proxy: &str) -> Net {
    let mut cfg = config(AlgOptions::default());
    cfg.zones[0].address = sock(inside);
    cfg.zones[0].networks = vec![nets[0].parse().unwrap()];
    cfg.zones[0].media_ports = Some((30000, 30007));
    cfg.zones[1].address = sock(outside);
    cfg.zones[1].networks = vec![nets[1].parse().unwrap()];
    cfg.zones[1].media_ports = Some((31000, 31007));
    let proxy = sock(proxy);
    cfg.rules[0].source = sipward_core::AddressObject::Network(nets[0].parse().unwrap());
    cfg.rules[0].destination = sipward_core::AddressObject::Host {
        ip: proxy.ip(),
        port: Some(proxy.port()),
    };
    cfg.rules[1].source = sipward_core::AddressObject::Host {
        ip: proxy.ip(),
        port: None,
    };
    Net {
        gw: sipward_core::Gateway::new(cfg),
        now: std::time::Instant::now(),
    }
}

/// Delivers `text` and returns the one datagram sent, failing on anything else.
fn one(net: &mut Net, local: &str, remote: &str, datagram: &str) -> String {
    net.gw
        .handle_datagram(net.now, sock(local), sock(remote), datagram.as_bytes());
    let out: Vec<_> = std::iter::from_fn(|| net.gw.poll_transmit()).collect();
    assert_eq!(out.len(), 1, "{out:?}");
    text(&out[0])
}

fn parses(msg: &str) {
    assert!(
        sipward_proto::parse_datagram(msg.as_bytes(), &sipward_proto::Limits::default()).is_ok(),
        "{msg}"
    );
}

#[test]
fn an_ipv4_offer_toward_an_ipv6_media_pool_goes_out_as_ip6_and_the_answer_back_as_ip4() {
    let mut net = mixed_family_net(
        LAN,
        "[2001:db8::1]:5060",
        ["10.0.0.0/24", "2001:db8::/64"],
        "[2001:db8::10]:5060",
    );
    // An RTCP line with its address and an inside ICE candidate, beside a public one.
    let inv = invite("x6", "z9hG4bKx6");
    let added = "a=rtcp:40001 IN IP4 10.0.0.20\r\na=candidate:1 1 UDP 2130706431 10.0.0.20 40000 typ host\r\na=candidate:2 1 UDP 1694498815 198.51.100.20 40000 typ srflx\r\n";
    let at = inv.find("\r\n\r\n").unwrap() + 4;
    let body = format!("{}{added}", &inv[at..]);
    let inv = format!(
        "{}{body}",
        inv[..at].replace(
            &format!("Content-Length: {}", inv.len() - at),
            &format!("Content-Length: {}", body.len()),
        )
    );
    parses(&inv);
    let out = one(&mut net, LAN, PHONE, &inv);
    assert!(out.contains("\r\nc=IN IP6 2001:db8::1\r\n"), "{out}");
    assert!(
        out.contains("\r\no=alice 1 1 IN IP6 2001:db8::1\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\na=rtcp:31001 IN IP6 2001:db8::1\r\n"),
        "{out}"
    );
    assert!(out.contains("\r\nm=audio 31000 RTP/AVP 0\r\n"), "{out}");
    assert!(!out.contains("IN IP4"), "{out}");
    assert!(!out.contains("a=candidate:1 "), "{out}");
    assert!(
        out.contains("\r\na=candidate:2 1 UDP 1694498815 198.51.100.20 40000 typ srflx\r\n"),
        "{out}"
    );
    assert!(!out.contains("10.0.0."), "{out}");
    parses(&out);

    // The IPv6 far end answers; the phone gets the relay's IPv4 pair with IN IP4.
    let answer = "v=0\r\no=bob 7 7 IN IP6 2001:db8::50\r\ns=-\r\nc=IN IP6 2001:db8::50\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\na=rtcp:7001 IN IP6 2001:db8::50\r\n";
    let ok = response_with_sdp(
        &out,
        "200 OK",
        "b1",
        "Contact: <sip:bob@[2001:db8::50]>\r\n",
        answer,
    );
    let back = one(&mut net, "[2001:db8::1]:5060", "[2001:db8::10]:5060", &ok);
    assert!(back.contains("\r\nc=IN IP4 10.0.0.1\r\n"), "{back}");
    assert!(
        back.contains("\r\na=rtcp:30001 IN IP4 10.0.0.1\r\n"),
        "{back}"
    );
    assert!(back.contains("\r\nm=audio 30000 RTP/AVP 0\r\n"), "{back}");
    assert!(!back.contains("IN IP6 10.0.0.1"), "{back}");
    assert!(
        back.contains("\r\no=bob 7 7 IN IP6 2001:db8::50\r\n"),
        "{back}"
    );
    parses(&back);
    // The relay is told both parties, each in its own family.
    let cmds = net.media_commands();
    let s = sets(&cmds);
    let last = s.last().unwrap();
    assert_eq!(last.1, vec![peer("10.0.0.20:40000", "10.0.0.20:40001")]);
    assert_eq!(
        last.2,
        vec![peer("[2001:db8::50]:7000", "[2001:db8::50]:7001")]
    );
}

#[test]
fn an_ipv6_inside_offer_toward_an_ipv4_media_pool_goes_out_as_ip4_and_back_as_ip6() {
    let phone = "[fd00::20]:5062";
    let mut net = mixed_family_net(
        "[fd00::1]:5060",
        WAN,
        ["fd00::/64", "203.0.113.0/24"],
        PROXY,
    );
    let sdp6 = "v=0\r\no=alice 1 1 IN IP6 fd00::20\r\ns=-\r\nc=IN IP6 fd00::20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtcp:40001 IN IP6 fd00::20\r\na=candidate:1 1 UDP 2130706431 fd00::20 40000 typ host\r\n";
    let inv = format!(
        "INVITE sip:bob@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/UDP [fd00::20]:5062;branch=z9hG4bKv6in\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@[fd00::20]:5062>;tag=a-v6in\r\nTo: bob <sip:bob@203.0.113.10>\r\nCall-ID: v6in@fd00::20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@[fd00::20]:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp6}",
        sdp6.len()
    );
    parses(&inv);
    let out = one(&mut net, "[fd00::1]:5060", phone, &inv);
    assert!(out.contains("\r\nc=IN IP4 203.0.113.1\r\n"), "{out}");
    assert!(
        out.contains("\r\no=alice 1 1 IN IP4 203.0.113.1\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\na=rtcp:31001 IN IP4 203.0.113.1\r\n"),
        "{out}"
    );
    assert!(!out.contains("IN IP6"), "{out}");
    assert!(!out.contains("fd00:"), "{out}");
    assert!(!out.contains("a=candidate"), "{out}");
    parses(&out);

    let ok = response_with_sdp(
        &out,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
        &sdp("203.0.113.50", 7000, "a=rtcp:7001 IN IP4 203.0.113.50\r\n"),
    );
    let back = one(&mut net, WAN, PROXY, &ok);
    assert!(back.contains("\r\nc=IN IP6 fd00::1\r\n"), "{back}");
    assert!(
        back.contains("\r\na=rtcp:30001 IN IP6 fd00::1\r\n"),
        "{back}"
    );
    // o= is the far end's own name for its session: it is not an inside address, so it
    // is kept as written (any family is valid there).
    assert!(
        back.contains("\r\no=- 1 1 IN IP4 203.0.113.50\r\n"),
        "{back}"
    );
    assert!(!back.contains("c=IN IP4"), "{back}");
    parses(&back);
    let s = sets(&net.media_commands());
    let last = s.last().unwrap();
    assert_eq!(last.1, vec![peer("[fd00::20]:40000", "[fd00::20]:40001")]);
    assert_eq!(last.2, vec![peer("203.0.113.50:7000", "203.0.113.50:7001")]);
}

/// Media bypass never crosses the families: an IPv6 phone (inside zone fd00::1) calls an
/// IPv4 phone (inside zone 10.0.0.1) through the proxy, with `allow_media_bypass` on.
/// The offer the proxy sends back in names the relay's pair of the IPv6 phone's call,
/// whose inside party stands on another gateway address: neither phone could reach the
/// other, so both are given the relay, each in its own family.
#[test]
fn media_bypass_never_joins_an_ipv6_phone_and_an_ipv4_phone() {
    let mut cfg = config(AlgOptions {
        allow_media_bypass: true,
        ..AlgOptions::default()
    });
    cfg.zones[0].media_ports = Some((30000, 30007));
    cfg.zones[1].media_ports = Some((31000, 31007));
    let mut lan6 = cfg.zones[0].clone();
    lan6.name = "lan6".into();
    lan6.address = sock("[fd00::1]:5060");
    lan6.networks = vec!["fd00::/64".parse().unwrap()];
    lan6.media_ports = Some((32000, 32007));
    cfg.zones.push(lan6);
    let mut nat6 = cfg.rules[0].clone();
    nat6.name = "v6-phones-to-proxy".into();
    nat6.from_zone = 2;
    nat6.source = sipward_core::AddressObject::Network("fd00::/64".parse().unwrap());
    cfg.rules.insert(1, nat6);
    let mut net = Net {
        gw: sipward_core::Gateway::new(cfg),
        now: std::time::Instant::now(),
    };

    // bob registers from 10.0.0.21 (IPv4).
    let reg = register(1, 3600)
        .replace("10.0.0.20:5062", "10.0.0.21:5062")
        .replace("alice", "bob")
        .replace("reg-1@10.0.0.20", "reg-b@10.0.0.21");
    let fwd = text(&net.deliver(LAN, "10.0.0.21:5062", &reg)[0]);
    net.proxy_sends(&register_ok(&fwd, 3600));
    let contact = header(&fwd, "Contact").unwrap();
    let bob_uri = contact.split('>').next().unwrap().trim_start_matches('<');

    // alice calls from fd00::20 (IPv6); the proxy sends the call on to bob.
    let sdp6 = "v=0\r\no=alice 1 1 IN IP6 fd00::20\r\ns=-\r\nc=IN IP6 fd00::20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let inv = format!(
        "INVITE sip:bob@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/UDP [fd00::20]:5062;branch=z9hG4bKmix\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@[fd00::20]:5062>;tag=a-mix\r\nTo: bob <sip:bob@203.0.113.10>\r\nCall-ID: mix@fd00::20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@[fd00::20]:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp6}",
        sdp6.len()
    );
    let out = one(&mut net, "[fd00::1]:5060", "[fd00::20]:5062", &inv);
    assert!(out.contains("\r\nc=IN IP4 203.0.113.1\r\n"), "{out}");
    let offer = out.split("\r\n\r\n").nth(1).unwrap();
    let inbound = format!(
        "INVITE {bob_uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKmixin\r\nMax-Forwards: 69\r\nFrom: {}\r\nTo: <sip:bob@biloxi.example.com>\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@203.0.113.1:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        header(&out, "From").unwrap(),
        header(&out, "Call-ID").unwrap(),
        offer.len()
    );
    let to_bob = net.proxy_sends(&inbound);
    assert_eq!(to_bob.remote, addr("10.0.0.21:5062"));
    let to_bob = text(&to_bob);
    // Relayed: bob is given the gateway's IPv4 inside pair, not alice's IPv6 address.
    assert!(to_bob.contains("\r\nc=IN IP4 10.0.0.1\r\n"), "{to_bob}");
    assert!(to_bob.contains("\r\nm=audio 30000 "), "{to_bob}");
    assert!(!to_bob.contains("fd00:"), "{to_bob}");

    // bob answers; alice is given the relay's IPv6 pair.
    let answer = sdp("10.0.0.21", 42000, "");
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: <sip:bob@biloxi.example.com>;tag=bm\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@10.0.0.21:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
        header(&to_bob, "Via").unwrap(),
        header(&to_bob, "From").unwrap(),
        header(&to_bob, "Call-ID").unwrap(),
        answer.len()
    );
    let ok_out = text(&net.deliver(LAN, "10.0.0.21:5062", &ok)[0]);
    let back = ok_out.split("\r\n\r\n").nth(1).unwrap();
    let to_alice = one(
        &mut net,
        WAN,
        PROXY,
        &response_with_sdp(
            &out,
            "200 OK",
            "bm",
            "Contact: <sip:bob@203.0.113.1:5060>\r\n",
            back,
        ),
    );
    assert!(to_alice.contains("\r\nc=IN IP6 fd00::1\r\n"), "{to_alice}");
    assert!(to_alice.contains("\r\nm=audio 32000 "), "{to_alice}");
    assert!(!to_alice.contains("10.0.0.21"), "{to_alice}");
    // Relayed media times out when nothing flows; a bypassed call would be left alone.
    assert!(
        !net.advance(Duration::from_secs(600)).is_empty(),
        "both calls are relayed, so the idle timeout ends them"
    );
}

/// The last-line scan finds an IPv6 phone's address in every text form, in headers the
/// paths do not rewrite (uppercase, leading zeros, full, bracketed with a port) and in a
/// body glued to a word by a colon: "a=x-phone:fd00::20" was read as the outside address
/// e:fd00::20 (hex letters are address characters) and went out as it was.
#[test]
fn every_text_form_of_an_ipv6_phones_address_is_hidden_on_the_way_out() {
    let mut net = mixed_family_net(
        "[fd00::1]:5060",
        WAN,
        ["fd00::/64", "203.0.113.0/24"],
        PROXY,
    );
    let sdp6 = "v=0\r\no=alice 1 1 IN IP6 fd00::20\r\ns=-\r\nc=IN IP6 fd00::20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=x-phone:fd00::20\r\na=x-peer:sip:FD00::0020\r\n";
    let inv = format!(
        "INVITE sip:bob@203.0.113.10 SIP/2.0\r\nVia: SIP/2.0/UDP [fd00::20]:5062;branch=z9hG4bKforms\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@[fd00::20]:5062>;tag=a-forms\r\nTo: bob <sip:bob@203.0.113.10>\r\nCall-ID: forms@fd00::20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@[fd00::20]:5062>\r\nX-Peers: <sip:a@[FD00::0020]:5062>, <sip:b@[fd00:0:0:0:0:0:0:20]>, <sip:c@[FD00:0000:0000:0000:0000:0000:0000:0020]:5070>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp6}",
        sdp6.len()
    );
    parses(&inv);
    let out = one(&mut net, "[fd00::1]:5060", "[fd00::20]:5062", &inv);
    assert!(!out.to_ascii_lowercase().contains("fd00:"), "{out}");
    assert!(
        out.contains("\r\nX-Peers: <sip:a@203.0.113.1:5060>, <sip:b@203.0.113.1:5060>, <sip:c@203.0.113.1:5060>\r\n"),
        "{out}"
    );
    parses(&out);
}
