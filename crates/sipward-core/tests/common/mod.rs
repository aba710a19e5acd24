//! The shared harness of the core tests: a phone at 10.0.0.20, the gateway at 10.0.0.1
//! (lan) and 203.0.113.1 (wan), the proxy at 203.0.113.10, all on virtual time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    unreachable_pub
)]
#![allow(clippy::disallowed_methods)] // tests take one real Instant as the epoch

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipward_core::{
    Action, AddressObject, AlgOptions, Config, Gateway, Rule, Service, Transmit, Transport, Zone,
};

pub const LAN: &str = "10.0.0.1:5060";
pub const WAN: &str = "203.0.113.1:5060";
pub const PROXY: &str = "203.0.113.10:5060";
pub const PHONE: &str = "10.0.0.20:5062";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn config(alg: AlgOptions) -> Config {
    Config {
        agent: "sipward.test".into(),
        zones: vec![
            Zone {
                name: "lan".into(),
                address: addr(LAN),
                networks: vec!["10.0.0.0/24".parse().unwrap()],
                inside: true,
                media_ports: None,
                intercept: false,
                advertise: None,
            },
            Zone {
                name: "wan".into(),
                address: addr(WAN),
                networks: vec!["203.0.113.0/24".parse().unwrap()],
                inside: false,
                media_ports: None,
                intercept: false,
                advertise: None,
            },
        ],
        alg,
        rules: vec![
            Rule {
                name: "phones-to-proxy".into(),
                action: Action::Nat,
                from_zone: 0,
                source: AddressObject::Network("10.0.0.0/24".parse().unwrap()),
                to_zone: Some(1),
                destination: AddressObject::Host {
                    ip: "203.0.113.10".parse().unwrap(),
                    port: Some(5060),
                },
                services: vec![Service::udp(5060)],
                next_hop_transport: Transport::Udp,
                server_name: None,
                udp_only: false,
                options_ping: None,
            },
            Rule {
                name: "proxy-to-core".into(),
                action: Action::Allow,
                from_zone: 1,
                source: AddressObject::Host {
                    ip: "203.0.113.10".parse().unwrap(),
                    port: None,
                },
                to_zone: None,
                destination: AddressObject::Any,
                services: vec![Service::udp(5060)],
                next_hop_transport: Transport::Udp,
                server_name: None,
                udp_only: false,
                options_ping: None,
            },
        ],
        protection: sipward_core::ProtectionOptions::default(),
        secret: [7; 16],
    }
}

pub struct Net {
    pub gw: Gateway,
    pub now: Instant,
}

impl Net {
    pub fn new(alg: AlgOptions) -> Self {
        Net {
            gw: Gateway::new(config(alg)),
            now: Instant::now(),
        }
    }

    /// Delivers a datagram and returns everything the gateway sent in reaction.
    pub fn deliver(&mut self, local: &str, remote: &str, text: &str) -> Vec<Transmit> {
        self.gw
            .handle_datagram(self.now, addr(local), addr(remote), text.as_bytes());
        self.drain()
    }

    pub fn drain(&mut self) -> Vec<Transmit> {
        let mut out = Vec::new();
        while let Some(t) = self.gw.poll_transmit() {
            if t.local == addr(WAN) {
                assert_hidden(&t);
            }
            out.push(t);
        }
        out
    }

    pub fn advance(&mut self, by: Duration) -> Vec<Transmit> {
        let end = self.now + by;
        while let Some(t) = self.gw.poll_timeout() {
            if t > end {
                break;
            }
            self.now = t;
            self.gw.handle_timeout(t);
        }
        self.now = end;
        self.drain()
    }

    pub fn phone_sends(&mut self, text: &str) -> Transmit {
        let mut out = self.deliver(LAN, PHONE, text);
        assert_eq!(out.len(), 1, "{out:?}");
        out.remove(0)
    }

    pub fn proxy_sends(&mut self, text: &str) -> Transmit {
        let mut out = self.deliver(WAN, PROXY, text);
        assert_eq!(out.len(), 1, "{out:?}");
        out.remove(0)
    }
}

/// Topology hiding, on the bytes: nothing sent outside names an inside address.
pub fn assert_hidden(t: &Transmit) {
    let text = String::from_utf8_lossy(&t.payload);
    for inside in ["10.0.0.", ":5062"] {
        assert!(
            !text.contains(inside),
            "inside address {inside} leaked to {}:\n{text}",
            t.remote
        );
    }
}

pub fn text(t: &Transmit) -> String {
    String::from_utf8(t.payload.clone()).unwrap()
}

pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

pub fn branch_of(msg: &str) -> String {
    let via = header(msg, "Via").unwrap();
    via.split(';')
        .find_map(|p| p.strip_prefix("branch="))
        .unwrap()
        .to_string()
}

pub fn invite(call: &str, branch: &str) -> String {
    let sdp = "v=0\r\no=alice 1 1 IN IP4 10.0.0.20\r\ns=-\r\nc=IN IP4 10.0.0.20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch={branch}\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-{call}\r\nTo: bob <sip:bob@10.0.0.1:5060>\r\nCall-ID: {call}@10.0.0.20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.0.20:5062>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

pub fn response_to(forwarded: &str, status: &str, to_tag: &str, extra: &str) -> String {
    format!(
        "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag={to_tag}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        header(forwarded, "Via").unwrap(),
        header(forwarded, "From").unwrap(),
        header(forwarded, "To").unwrap(),
        header(forwarded, "Call-ID").unwrap(),
        header(forwarded, "CSeq").unwrap(),
    )
}

impl Net {
    /// A gateway relaying media: inside pairs from 30000, outside from 31000, `pairs`
    /// of each.
    pub fn with_media(alg: AlgOptions, pairs: u16) -> Self {
        let mut cfg = config(alg);
        cfg.zones[0].media_ports = Some((30000, 30000 + 2 * pairs - 1));
        cfg.zones[1].media_ports = Some((31000, 31000 + 2 * pairs - 1));
        Net {
            gw: Gateway::new(cfg),
            now: Instant::now(),
        }
    }

    /// The media commands the gateway emitted since the last call.
    pub fn media_commands(&mut self) -> Vec<sipward_core::MediaCommand> {
        std::iter::from_fn(|| self.gw.poll_media()).collect()
    }
}

/// A response to `forwarded` carrying `sdp`, and `extra` header lines.
pub fn response_with_sdp(
    forwarded: &str,
    status: &str,
    to_tag: &str,
    extra: &str,
    sdp: &str,
) -> String {
    let head = response_to(forwarded, status, to_tag, extra);
    let head = head.trim_end_matches("Content-Length: 0\r\n\r\n");
    format!(
        "{head}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// An SDP body: one audio stream at `ip:port`, with `extra` lines after the `m=` line.
pub fn sdp(ip: &str, port: u16, extra: &str) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n{extra}")
}

pub fn register(cseq: u32, expires: u32) -> String {
    format!(
        "REGISTER sip:biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKreg{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@biloxi.example.com>;tag=r1\r\nTo: <sip:alice@biloxi.example.com>\r\nCall-ID: reg-1@10.0.0.20\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@10.0.0.20:5062>;expires={expires}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The registrar's answer to what the gateway forwarded: echoes the Contact it got.
pub fn register_ok(forwarded: &str, granted: u32) -> String {
    let contact = header(forwarded, "Contact").unwrap();
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=reg-srv\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: <{uri}>;expires={granted}\r\nContent-Length: 0\r\n\r\n",
        header(forwarded, "Via").unwrap(),
        header(forwarded, "From").unwrap(),
        header(forwarded, "To").unwrap(),
        header(forwarded, "Call-ID").unwrap(),
        header(forwarded, "CSeq").unwrap(),
    )
}

pub fn registered(net: &mut Net, expires: u32) -> String {
    let out = net.phone_sends(&register(1, expires));
    let fwd = text(&out);
    let back = net.proxy_sends(&register_ok(&fwd, expires));
    assert_eq!(back.remote, addr(PHONE));
    fwd
}
