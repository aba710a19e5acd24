//! Transparent (in-path) mode on virtual time: phones talk to their provider's proxies,
//! the router diverts their SIP to the gateway ([`Flow::intercepted_udp`]), and
//! everything the gateway sends a phone leaves from the address the phone talked to.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)] // tests take one real Instant as the epoch

mod common;

use common::{addr, assert_hidden, header, text, Net, LAN, WAN};
use sipward_core::{
    Action, AddressObject, AlgOptions, Config, Flow, Gateway, MediaCommand, Rule, Service,
    Transmit, Transport,
};

const PHONE: &str = "10.0.0.20:5060";
const PHONE_B: &str = "10.0.0.21:5060";
/// The proxies the phones are configured with: they never see the phones.
const PROXY_A: &str = "198.51.100.10:5060";
const PROXY_B: &str = "198.51.100.20:5080";
/// Another node of the provider, sending calls to the registered phones.
const PROVIDER_NODE: &str = "198.51.100.11:5060";
const FAR_END: &str = "198.51.100.40:5060";

/// The harness's gateway, with the lan intercepting and the rules of a router: phones
/// to the provider network (ports 5060 and 5080) by their original destination, phones
/// addressing the gateway itself to proxy A (explicit mode), the provider to the core.
fn transparent_config(media: bool) -> Config {
    let mut config = common::config(AlgOptions::default());
    config.zones[0].intercept = true;
    if media {
        config.zones[0].media_ports = Some((30000, 30099));
        config.zones[1].media_ports = Some((31000, 31099));
    }
    let phones = AddressObject::Network("10.0.0.0/24".parse().unwrap());
    let providers = AddressObject::Network("198.51.100.0/24".parse().unwrap());
    config.rules = vec![
        Rule {
            name: "phones-to-providers".into(),
            action: Action::Nat,
            from_zone: 0,
            source: phones.clone(),
            to_zone: Some(1),
            destination: providers.clone(),
            services: vec![Service::udp(5060), Service::udp(5080)],
            next_hop_transport: Transport::Udp,
            server_name: None,
            udp_only: false,
            options_ping: None,
        },
        Rule {
            name: "explicit-phones".into(),
            action: Action::Nat,
            from_zone: 0,
            source: phones,
            to_zone: Some(1),
            destination: AddressObject::Host {
                ip: "198.51.100.10".parse().unwrap(),
                port: Some(5060),
            },
            services: vec![Service::udp(5060)],
            next_hop_transport: Transport::Udp,
            server_name: None,
            udp_only: false,
            options_ping: None,
        },
        Rule {
            name: "providers-to-core".into(),
            action: Action::Allow,
            from_zone: 1,
            source: providers,
            to_zone: None,
            destination: AddressObject::Any,
            services: vec![Service::udp(5060)],
            next_hop_transport: Transport::Udp,
            server_name: None,
            udp_only: false,
            options_ping: None,
        },
    ];
    config
}

fn net(media: bool) -> Net {
    Net {
        gw: Gateway::new(transparent_config(media)),
        now: std::time::Instant::now(),
    }
}

/// What a phone at `phone` sends to `proxy`, diverted to the gateway.
fn diverted(net: &mut Net, phone: &str, proxy: &str, text: &str) -> Vec<Transmit> {
    net.gw.handle_message(
        net.now,
        Flow::intercepted_udp(addr(proxy), addr(phone)),
        text.as_bytes(),
    );
    net.drain()
}

fn only(mut out: Vec<Transmit>) -> Transmit {
    assert_eq!(out.len(), 1, "{out:?}");
    out.remove(0)
}

fn register(phone: &str, user: &str, domain: &str) -> String {
    format!(
        "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-{user}-{domain};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag=r-{user}\r\nTo: <sip:{user}@{domain}>\r\nCall-ID: reg-{user}-{domain}@{phone}\r\nCSeq: 1 REGISTER\r\nContact: <sip:{user}@{phone}>;expires=3600\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Registers `user` at `phone` with `proxy`; returns the Contact the proxy learnt.
fn registered(net: &mut Net, phone: &str, proxy: &str, user: &str) -> String {
    let out = only(diverted(
        net,
        phone,
        proxy,
        &register(phone, user, "provider.example"),
    ));
    assert_eq!((out.local, out.remote), (addr(WAN), addr(proxy)));
    assert!(!out.intercepted);
    let fwd = text(&out);
    let back = only(net.deliver(WAN, proxy, &common::register_ok(&fwd, 3600)));
    // The phone hears its proxy, from the proxy's own address.
    assert_eq!((back.local, back.remote), (addr(proxy), addr(phone)));
    assert!(back.intercepted);
    assert!(text(&back).starts_with("SIP/2.0 200"));
    let contact = header(&fwd, "Contact").unwrap();
    contact
        .split('>')
        .next()
        .unwrap()
        .trim_start_matches('<')
        .to_string()
}

fn inbound_invite(target: &str, from_node: &str, call: &str) -> String {
    format!(
        "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {from_node};branch=z9hG4bK-in-{call}\r\nMax-Forwards: 70\r\nFrom: <sip:carol@provider.example>;tag=c-{call}\r\nTo: <sip:alice@provider.example>\r\nCall-ID: in-{call}@provider\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@{from_node}>\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_diverted_registration_goes_to_its_original_destination_and_is_answered_as_the_proxy() {
    let mut net = net(false);
    registered(&mut net, PHONE, PROXY_A, "alice");
    let bindings = net.gw.bindings();
    assert_eq!(bindings.len(), 1);
    assert_eq!(bindings[0].registrar, addr(PROXY_A));
    assert!(bindings[0].intercepted);
    let traffic = net.gw.traffic();
    assert_eq!(traffic.diverted.get("phones-to-providers"), Some(&1));
    assert_eq!(traffic.diverted_to.get(&addr(PROXY_A)), Some(&1));
}

#[test]
fn inbound_calls_from_the_registrar_and_another_provider_node_reach_the_phone_from_its_proxy() {
    let mut net = net(false);
    let contact = registered(&mut net, PHONE, PROXY_A, "alice");
    for (i, node) in [PROXY_A, PROVIDER_NODE].into_iter().enumerate() {
        let call = format!("call{i}");
        let to_phone = only(net.deliver(WAN, node, &inbound_invite(&contact, node, &call)));
        assert_eq!(
            (to_phone.local, to_phone.remote),
            (addr(PROXY_A), addr(PHONE))
        );
        assert!(to_phone.intercepted, "{node}");
        let invite = text(&to_phone);
        // The phone answers to the top Via: the proxy's address, diverted back.
        assert!(
            header(&invite, "Via").unwrap().contains(PROXY_A),
            "{invite}"
        );
        let ringing = common::response_to(&invite, "180 Ringing", "ph", "");
        let back = only(diverted(&mut net, PHONE, PROXY_A, &ringing));
        assert_eq!((back.local, back.remote), (addr(WAN), addr(node)));
        assert_hidden(&back);
    }
}

#[test]
fn two_phones_on_port_5060_and_two_proxies_each_keep_their_own_binding() {
    let mut net = net(false);
    let a = registered(&mut net, PHONE, PROXY_A, "alice");
    let b = registered(&mut net, PHONE_B, PROXY_A, "bob");
    let a_at_b = registered(&mut net, PHONE, PROXY_B, "alice");
    assert_ne!(a, b);
    assert_ne!(a, a_at_b, "one binding per phone and proxy");
    assert_eq!(net.gw.bindings().len(), 3);
    for (i, (contact, phone, proxy)) in [
        (a, PHONE, PROXY_A),
        (b, PHONE_B, PROXY_A),
        (a_at_b, PHONE, PROXY_B),
    ]
    .into_iter()
    .enumerate()
    {
        let to_phone = only(net.deliver(
            WAN,
            PROVIDER_NODE,
            &inbound_invite(&contact, PROVIDER_NODE, &format!("two{i}")),
        ));
        assert_eq!(
            (to_phone.local, to_phone.remote),
            (addr(proxy), addr(phone)),
            "{contact}"
        );
    }
}

#[test]
fn a_call_out_is_anchored_at_the_proxy_address_and_its_bye_follows_the_dialog() {
    let mut net = net(true);
    let offer = "v=0\r\no=alice 1 1 IN IP4 10.0.0.20\r\ns=-\r\nc=IN IP4 10.0.0.20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let invite = format!(
        "INVITE sip:bob@provider.example SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-out1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@provider.example>;tag=a1\r\nTo: <sip:bob@provider.example>\r\nCall-ID: out1@10.0.0.20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{PHONE}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        offer.len()
    );
    let fwd = only(diverted(&mut net, PHONE, PROXY_A, &invite));
    assert_eq!((fwd.local, fwd.remote), (addr(WAN), addr(PROXY_A)));
    let fwd = text(&fwd);
    assert!(fwd.contains("c=IN IP4 203.0.113.1"), "{fwd}");
    let answer = common::sdp("198.51.100.30", 50000, "");
    let ok = common::response_with_sdp(
        &fwd,
        "200 OK",
        "b1",
        &format!("Contact: <sip:bob@{FAR_END}>\r\n"),
        &answer,
    );
    let to_phone = only(net.deliver(WAN, PROXY_A, &ok));
    assert_eq!(
        (to_phone.local, to_phone.remote),
        (addr(PROXY_A), addr(PHONE))
    );
    let to_phone = text(&to_phone);
    // In-dialog requests go to the proxy's address, so the router diverts them back.
    assert!(
        header(&to_phone, "Contact").unwrap().contains(PROXY_A),
        "{to_phone}"
    );
    // Media is never diverted: the phone sends it to the gateway's own lan address.
    assert!(to_phone.contains("c=IN IP4 10.0.0.1\r\n"), "{to_phone}");
    let sets = net
        .media_commands()
        .into_iter()
        .filter(|c| matches!(c, MediaCommand::Set { .. }))
        .count();
    assert!(sets >= 1);
    let bye = format!(
        "BYE sip:bob@{PROXY_A} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE};branch=z9hG4bK-bye1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@provider.example>;tag=a1\r\nTo: <sip:bob@provider.example>;tag=b1\r\nCall-ID: out1@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    // To the far end's target, through the proxy the phone talked to (as in explicit
    // mode, where the rule's proxy is the next hop of every request).
    let out = only(diverted(&mut net, PHONE, PROXY_A, &bye));
    assert_eq!(out.remote, addr(PROXY_A), "{}", text(&out));
    assert!(text(&out).starts_with(&format!("BYE sip:bob@{FAR_END}")));
    assert_hidden(&out);
}

#[test]
fn diverted_traffic_no_rule_admits_is_dropped_and_counted() {
    let mut net = net(false);
    for (proxy, why) in [
        ("192.0.2.50:5060", "destination outside the rules"),
        ("198.51.100.10:5070", "port not in the service"),
    ] {
        let out = diverted(
            &mut net,
            PHONE,
            proxy,
            &register(PHONE, "alice", "x.example"),
        );
        assert!(out.is_empty(), "{why}: {out:?}");
    }
    assert_eq!(net.gw.traffic().diverted_unmatched, 2);
    assert!(net.gw.bindings().is_empty());
}

#[test]
fn sip_on_port_5080_is_intercepted_too() {
    let mut net = net(false);
    registered(&mut net, PHONE, PROXY_B, "alice");
    assert_eq!(net.gw.traffic().diverted_to.get(&addr(PROXY_B)), Some(&1));
}

#[test]
fn an_explicit_mode_phone_beside_transparent_ones_uses_the_host_rule() {
    let mut net = net(false);
    registered(&mut net, PHONE, PROXY_A, "alice");
    let explicit = register(PHONE_B, "bob", "provider.example");
    let out = only(net.deliver(LAN, PHONE_B, &explicit));
    assert_eq!((out.local, out.remote), (addr(WAN), addr(PROXY_A)));
    let back = only(net.deliver(WAN, PROXY_A, &common::register_ok(&text(&out), 3600)));
    assert_eq!((back.local, back.remote), (addr(LAN), addr(PHONE_B)));
    assert!(!back.intercepted);
    // A network rule never applies to messages sent to the gateway itself: it has no
    // next hop for them.
    let views = net.gw.bindings();
    let bob = views.iter().find(|b| b.aor.contains("bob")).unwrap();
    assert!(!bob.intercepted);
    assert_eq!(bob.phone, addr(PHONE_B));
}
