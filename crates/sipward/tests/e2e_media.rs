//! Media through `sipward run`: SIPp streams RTP (`rtp_stream`) on one side, SIPp echoes
//! it (`-rtp_echo`) on the other, and tcpdump, an observer outside sipward, counts every
//! datagram on every hop. The relay allocates the first pair of each pool (port 30000 on
//! the inside and on the outside address) to a topology's first call.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{count, logged, Packet, Peer, Topology};

/// The relay's first port pair on `ip`.
fn relay(ip: &str) -> String {
    format!("{ip}:30000")
}

/// Every hop of one direction carried the same number of datagrams.
fn assert_every_packet_relayed(
    p: &[Packet],
    sender: &str,
    relay_in: &str,
    relay_out: &str,
    receiver: &str,
) -> usize {
    let sent = count(p, sender, relay_in);
    let delivered = count(p, relay_out, receiver);
    assert!(
        sent >= 90,
        "{sender} streamed {sent} packets, expected about 100"
    );
    assert_eq!(
        delivered, sent,
        "{sender} sent {sent} datagrams to {relay_in}; {receiver} got {delivered} from {relay_out}"
    );
    sent
}

/// Sends `n` datagrams of `len` bytes from a fresh socket on `from_ip` to `to`.
fn inject(from_ip: &str, to: &str, n: usize, len: usize) {
    let s = UdpSocket::bind(format!("{from_ip}:0")).unwrap();
    for _ in 0..n {
        s.send_to(&vec![0x80; len], to).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn outbound_call_relays_every_packet_both_ways_drops_injection_and_closes_on_bye() {
    let t = Topology::new(51);
    let _gw = t.start_gateway();
    let cap = t.capture();
    let (phone, far) = (
        format!("{}:18000", t.phone(0)),
        format!("{}:16000", t.proxy()),
    );
    let (lan_relay, wan_relay) = (relay(&t.gw_lan()), relay(&t.gw_wan()));
    let (caller, far_end) = t.media_call(2500, &logged("proxy_messages.log"));
    // Mid-call, a third host on the outside sends into the relay's outside port.
    std::thread::sleep(Duration::from_millis(1200));
    let intruder = format!("127.{}.1.99", t.n);
    inject(&intruder, &wan_relay, 20, 77);
    caller.wait_ok("phone");
    far_end.wait_ok("far end");

    // After the BYE the far end's own media address is refused: the port is closed.
    let s = UdpSocket::bind(&far).unwrap();
    s.connect(&wan_relay).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.send(&[0x80; 99]).unwrap();
    let mut buf = [0u8; 64];
    let err = s.recv(&mut buf).unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the relay port is still open after BYE"
    );

    let all = cap.stop();
    assert_eq!(
        count(&all, &far, &wan_relay) - count(&all, &lan_relay, &phone),
        1
    );
    // The probe (99 bytes) aside, every hop carried the same datagrams.
    let p: Vec<Packet> = all.iter().copied().filter(|x| x.len != 99).collect();
    let sent = assert_every_packet_relayed(&p, &phone, &lan_relay, &wan_relay, &far);
    let echoed = assert_every_packet_relayed(&p, &far, &wan_relay, &lan_relay, &phone);
    assert_eq!(sent, echoed, "the far end echoed every packet");
    assert_eq!(count(&p, &format!("{intruder}:0"), &wan_relay), 20);
    let leaked: Vec<_> = all
        .iter()
        .filter(|x| x.src.ip().to_string() == t.gw_lan() && (x.len == 77 || x.len == 99))
        .collect();
    assert!(
        leaked.is_empty(),
        "injected datagrams were forwarded: {leaked:?}"
    );
    // Nothing reached the outside from an inside address.
    let inside = t.inside_prefix();
    assert!(p
        .iter()
        .filter(|x| x
            .dst
            .ip()
            .to_string()
            .starts_with(&format!("127.{}.1.", t.n)))
        .all(|x| !x.src.ip().to_string().starts_with(&inside)));
    t.assert_no_inside_address_in("proxy_messages.log");
}

#[test]
fn media_follows_hold_resume_and_a_move_to_another_port() {
    let t = Topology::new(52);
    let _gw = t.start_gateway();
    t.tone(2);
    let cap = t.capture();
    let proxy_ip = t.proxy();
    let far_end = t.play(
        "proxy_rtp_answer_move.xml",
        Peer::Proxy,
        None,
        &["-rtp_echo", "-mi", &proxy_ip, "-mp", "16000"],
    );
    std::thread::sleep(Duration::from_millis(200));
    let phone_ip = t.phone(0);
    let caller = t.play(
        "phone_rtp_hold_move.xml",
        Peer::Phone(0),
        Some(&t.gw_lan_sip()),
        &["-s", "bob", "-mi", &phone_ip, "-mp", "18000"],
    );
    caller.wait_ok("phone");
    far_end.wait_ok("far end");
    let p = cap.stop();
    let phone = format!("{phone_ip}:18000");
    let (lan_relay, wan_relay) = (relay(&t.gw_lan()), relay(&t.gw_wan()));
    let sent = count(&p, &phone, &lan_relay);
    let before = count(&p, &wan_relay, &format!("{proxy_ip}:16000"));
    let after = count(&p, &wan_relay, &format!("{proxy_ip}:16002"));
    assert!(sent >= 90, "{sent}");
    assert_eq!(
        before + after,
        sent,
        "every packet reached the far end, hold included"
    );
    assert!(
        after >= 20,
        "the relay followed the move to port 16002: {after}"
    );
    let echoed = count(&p, &lan_relay, &phone);
    // Packets the far end echoed from its old port while the move was in flight are
    // refused (that source is no longer the party's).
    assert!(
        echoed + 3 >= sent,
        "echo back to the phone: {echoed} of {sent}"
    );
}

#[test]
fn inbound_call_relays_every_packet_both_ways() {
    let t = Topology::new(53);
    let _gw = t.start_gateway();
    t.tone(2);
    t.register_alice();
    let cap = t.capture();
    let phone_ip = t.phone(0);
    let answerer = t.sipp(&[
        "-sn",
        "uas",
        "-i",
        &phone_ip,
        "-p",
        "5070",
        "-m",
        "1",
        "-rtp_echo",
        "-mi",
        &phone_ip,
        "-mp",
        "18000",
    ]);
    std::thread::sleep(Duration::from_millis(200));
    let proxy_ip = t.proxy();
    let mut caller_args = vec!["-inf", "contact.csv", "-mi", &proxy_ip, "-mp", "16000"];
    caller_args.extend(logged("caller_messages.log"));
    let caller = t.play(
        "proxy_call_rtp.xml",
        Peer::Proxy,
        Some(&t.gw_wan_sip()),
        &caller_args,
    );
    caller.wait_ok("caller");
    answerer.wait_ok("phone (answering)");
    let p = cap.stop();
    let (phone, far) = (format!("{phone_ip}:18000"), format!("{proxy_ip}:16000"));
    let (lan_relay, wan_relay) = (relay(&t.gw_lan()), relay(&t.gw_wan()));
    let sent = assert_every_packet_relayed(&p, &far, &wan_relay, &lan_relay, &phone);
    let echoed = assert_every_packet_relayed(&p, &phone, &lan_relay, &wan_relay, &far);
    assert_eq!(sent, echoed);
    t.assert_no_inside_address_in("caller_messages.log");
}
