//! The whole gateway core on virtual time, fed from both sides: raw datagrams, and
//! well-formed messages (INVITE, REGISTER, BYE, CANCEL, NOTIFY, REFER, responses) built
//! from what the gateway last sent, so that the input reaches transactions, dialogs,
//! bindings and timers and not only the parser. Asserts no panic and that no datagram
//! leaving by the outside interface holds an inside address (but in credentials, which
//! the gateway documents as sent as they are under the "rewrite" policy).
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sipward_proto::{DefectKind, Limits};
use sipward_core::{
    Action, AddressObject, AlgOptions, Config, Gateway, LeakPolicy, Rule, Service, Transmit,
    Transport, Zone,
};

// The embedded loopback configuration's topology.
const LAN: &str = "127.0.1.1:5060";
const WAN: &str = "127.0.2.1:5060";
const PROXY: &str = "127.0.2.10:5060";
const PHONES: [&str; 2] = ["127.0.1.20:5062", "127.0.1.21:5064"];
const STRANGER: &str = "127.0.2.77:5060";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn config(flags: u8) -> Config {
    let policy = match flags & 3 {
        2 => LeakPolicy::Remove,
        3 => LeakPolicy::Refuse,
        _ => LeakPolicy::Rewrite,
    };
    let media = flags & 4 != 0;
    let net = |s: &str| s.parse().unwrap_or_else(|_| "127.0.0.0/8".parse().unwrap());
    Config {
        agent: "sipward.fuzz".into(),
        zones: vec![
            Zone {
                name: "lan".into(),
                address: addr(LAN),
                networks: vec![net("127.0.1.0/24")],
                inside: true,
                media_ports: media.then_some((30000, 30007)),
                intercept: false,
                advertise: None,
            },
            Zone {
                name: "wan".into(),
                address: addr(WAN),
                networks: vec![net("127.0.2.0/24")],
                inside: false,
                media_ports: media.then_some((31000, 31007)),
                intercept: false,
                advertise: None,
            },
        ],
        alg: AlgOptions {
            leak_policy: policy,
            max_dialogs: 16,
            max_transactions: 64,
            max_registrations: 16,
            ..AlgOptions::default()
        },
        rules: vec![
            Rule {
                name: "phones-to-proxy".into(),
                action: Action::Nat,
                from_zone: 0,
                source: AddressObject::Network(net("127.0.1.0/24")),
                to_zone: Some(1),
                destination: AddressObject::Host {
                    ip: addr(PROXY).ip(),
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
                    ip: addr(PROXY).ip(),
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

/// Inside address text in `payload`, outside the credentials headers: the dotted quad of
/// 127.0.1.0/24 (leading zeros and all) and IPv6 text that maps to it (`::ffff:7f00:114`).
fn leak(payload: &[u8], credentials_kept: bool) -> Option<String> {
    let text = String::from_utf8_lossy(payload).to_ascii_lowercase();
    let header_end = text.find("\r\n\r\n").unwrap_or(text.len());
    let mut line_start = 0;
    for (i, line) in text.split('\n').enumerate() {
        let start = line_start;
        line_start += line.len() + 1;
        let in_headers = start < header_end && i > 0;
        let protected = ["authorization:", "proxy-authorization:", "www-authenticate:"]
            .iter()
            .chain(&["proxy-authenticate:", "identity:", "y:"])
            .any(|n| line.replace(' ', "").starts_with(n));
        if credentials_kept && in_headers && protected {
            continue;
        }
        let b = line.as_bytes();
        for (at, _) in line.match_indices("127.0.1.") {
            // A number that ends in 127 (1127.0.1.5) is not the address.
            let mut s = at;
            while s > 0 && b.get(s - 1) == Some(&b'0') {
                s -= 1;
            }
            if s > 0 && b.get(s - 1).is_some_and(u8::is_ascii_digit) {
                continue;
            }
            let digits = b[at + 8..].iter().take_while(|c| c.is_ascii_digit()).count();
            let octet: Option<u32> = line.get(at + 8..at + 8 + digits).and_then(|d| d.parse().ok());
            if (1..=3).contains(&digits) && octet.is_some_and(|o| o <= 255) {
                return Some(line.to_string());
            }
        }
        for (at, _) in line.match_indices("ffff:") {
            // The IPv6 text around it, if it is one, and whether it maps to the inside.
            let is_v6 = |c: &u8| c.is_ascii_hexdigit() || *c == b':' || *c == b'.';
            let start = at - b[..at].iter().rev().take_while(|c| is_v6(c)).count();
            let end = at + b[at..].iter().take_while(|c| is_v6(c)).count();
            let run = line[start..end].trim_end_matches('.');
            let mapped = run
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .and_then(|ip| ip.to_ipv4_mapped())
                .is_some_and(|v4| v4.octets()[..3] == [127, 0, 1]);
            if mapped {
                return Some(line.to_string());
            }
        }
    }
    None
}

/// The header value `name` in `msg`, if any (the first).
fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n")
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

fn all_headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
        .collect()
}

const METHODS: [&str; 10] = [
    "INVITE", "REGISTER", "BYE", "CANCEL", "NOTIFY", "REFER", "ACK", "OPTIONS", "SUBSCRIBE",
    "MESSAGE",
];
const STATUSES: [&str; 10] = [
    "100 Trying",
    "180 Ringing",
    "183 Session Progress",
    "200 OK",
    "202 Accepted",
    "302 Moved Temporarily",
    "401 Unauthorized",
    "481 Call/Transaction Does Not Exist",
    "487 Request Terminated",
    "503 Service Unavailable",
];
const BODY_TYPES: [&str; 6] = [
    "application/sdp",
    "message/sipfrag",
    "application/pidf+xml",
    "multipart/mixed;boundary=b1",
    "text/plain",
    "application/sdp",
];

fn sdp(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=u 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtcp:{} IN IP4 {ip}\r\na=candidate:1 1 UDP 1 {ip} {port} typ host\r\na=rtpmap:0 PCMU/8000\r\n",
        port + 1
    )
}

/// The extra header lines and body of a built message: `data` up to a 0x00 byte is
/// extra header text (each 0x01 a line break), the rest the body; with no 0x00 the
/// default body of the message.
fn split_extra(data: &[u8], default_body: &str) -> (String, String, &'static str) {
    let (kind, data) = data.split_first().map_or((0, data), |(k, d)| (*k, d));
    let body_type = BODY_TYPES[usize::from(kind) % BODY_TYPES.len()];
    match data.iter().position(|&b| b == 0) {
        Some(at) => {
            let extra = String::from_utf8_lossy(&data[..at]).replace('\u{1}', "\r\n");
            let extra = if extra.is_empty() || extra.ends_with("\r\n") {
                extra
            } else {
                extra + "\r\n"
            };
            let body = String::from_utf8_lossy(&data[at + 1..]).into_owned();
            (extra, body, body_type)
        }
        None => {
            let extra = String::from_utf8_lossy(data).replace('\u{1}', "\r\n");
            let extra = if extra.is_empty() || extra.ends_with("\r\n") {
                extra
            } else {
                extra + "\r\n"
            };
            (extra, default_body.to_string(), "application/sdp")
        }
    }
}

fn with_body(start: String, headers: String, extra: &str, body: &str, ctype: &str) -> String {
    let ct = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {ctype}\r\n")
    };
    format!(
        "{start}\r\n{headers}{extra}{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A request from phone `p`, in its last dialog for in-dialog methods (`last_in`: what
/// the gateway last sent to a phone; `invite`: the number of the phone's last INVITE).
fn phone_request(p: usize, n: u32, method: &str, data: &[u8], last_in: &str, invite: u32) -> String {
    let phone = PHONES[p];
    let ip = phone.split(':').next().unwrap_or("127.0.1.20");
    let in_dialog = matches!(method, "BYE" | "NOTIFY" | "REFER" | "ACK" | "CANCEL");
    let call = if in_dialog {
        header(last_in, "Call-ID").unwrap_or("c0").to_string()
    } else {
        format!("c{n}@{ip}")
    };
    let (from, to) = if !in_dialog {
        (
            format!("\"Alice {ip}\" <sip:alice@{phone}>;tag=t{p}"),
            format!("<sip:bob@{LAN}>"),
        )
    } else if last_in.starts_with("SIP/") {
        // A response to the phone's own request: its From and To, far tag and all.
        (
            header(last_in, "From").unwrap_or("<sip:a@x>").to_string(),
            header(last_in, "To").unwrap_or("<sip:b@x>").to_string(),
        )
    } else {
        // A request the outside sent in: the phone answers as its To.
        (
            header(last_in, "To").unwrap_or("<sip:a@x>").to_string() + ";tag=ph",
            header(last_in, "From").unwrap_or("<sip:b@x>").to_string(),
        )
    };
    let branch = if method == "CANCEL" {
        format!("z9hG4bKb{invite}")
    } else {
        format!("z9hG4bKb{n}")
    };
    let (cseq, cseq_method) = match method {
        "CANCEL" => (invite, "CANCEL"),
        "ACK" => (invite, "ACK"),
        m => (n, m),
    };
    let contact_uri = header(last_in, "Contact")
        .and_then(|c| c.split('<').nth(1))
        .and_then(|c| c.split('>').next())
        .map(str::to_string);
    let uri = match (method, contact_uri) {
        ("REGISTER", _) => format!("sip:{LAN}"),
        ("CANCEL", _) => format!("sip:bob@{LAN}"),
        (_, Some(c)) if in_dialog => c,
        _ => format!("sip:bob@{LAN}"),
    };
    let mut headers = format!(
        "Via: SIP/2.0/UDP {phone};branch={branch};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call}\r\nCSeq: {cseq} {}\r\nContact: <sip:alice@{phone}>;+sip.instance=\"<urn:uuid:{ip}>\"\r\nUser-Agent: Yealink {ip}\r\n",
        cseq_method
    );
    match method {
        "REFER" => headers.push_str(&format!(
            "Refer-To: <sip:carol@{ip}:5070?Replaces={}%3Bto-tag%3Dx>\r\nReferred-By: <sip:alice@{phone}>\r\n",
            call.replace('@', "%40")
        )),
        "NOTIFY" => headers.push_str("Event: refer\r\nSubscription-State: active\r\n"),
        "INVITE" => headers.push_str(&format!(
            "P-Preferred-Identity: <sip:alice@{ip}>\r\nDiversion: <sip:100@{ip}>;reason=unconditional\r\nCall-Info: <http://{ip}/photo.png>;purpose=icon\r\n"
        )),
        _ => {}
    }
    let default_body = match method {
        "INVITE" => sdp(ip, 40000 + n as u16 % 1000),
        "NOTIFY" => format!("SIP/2.0 200 OK\r\nContact: <sip:{phone}>\r\n"),
        _ => String::new(),
    };
    let (extra, body, ctype) = split_extra(data, &default_body);
    let ctype = if method == "NOTIFY" && body == default_body {
        "message/sipfrag"
    } else {
        ctype
    };
    with_body(format!("{method} {uri} SIP/2.0"), headers, &extra, &body, ctype)
}

/// A response to `request` (one the gateway sent), with a To-tag and the request's Vias.
fn response(request: &str, status: &str, contact_ip: &str, data: &[u8]) -> Option<String> {
    if request.starts_with("SIP/") {
        return None;
    }
    let vias: String = all_headers(request, "Via")
        .iter()
        .map(|v| format!("Via: {v}\r\n"))
        .collect();
    let to = header(request, "To")?;
    let to = if to.contains("tag=") {
        to.to_string()
    } else {
        format!("{to};tag=far")
    };
    let registered = request.starts_with("REGISTER") && status.starts_with('2');
    let contact = if registered {
        // A registrar echoes the bindings.
        format!("{};expires=3600", header(request, "Contact")?)
    } else if status.starts_with('3') {
        "<sip:voicemail@vm.example.net:5080;transport=UDP>".to_string()
    } else {
        format!("<sip:b@{contact_ip}>")
    };
    let headers = format!(
        "{vias}From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\nContact: {contact}\r\n",
        header(request, "From")?,
        header(request, "Call-ID")?,
        header(request, "CSeq")?,
    );
    let default_body = if status.starts_with('2') && request.starts_with("INVITE") {
        sdp(contact_ip, 20000)
    } else {
        String::new()
    };
    let (extra, body, ctype) = split_extra(data, &default_body);
    Some(with_body(format!("SIP/2.0 {status}"), headers, &extra, &body, ctype))
}

/// A request from the proxy in the dialog of `last_out` (a message the gateway sent
/// out), toward its Contact.
fn proxy_request(n: u32, method: &str, data: &[u8], last_out: &str) -> Option<String> {
    let contact = header(last_out, "Contact")?;
    let uri = contact
        .split('<')
        .nth(1)
        .and_then(|c| c.split('>').next())
        .unwrap_or(contact);
    let (from, to) = if last_out.starts_with("SIP/") {
        (header(last_out, "To")?, header(last_out, "From")?)
    } else {
        (header(last_out, "To")?, header(last_out, "From")?)
    };
    let from = if from.contains("tag=") {
        from.to_string()
    } else {
        format!("{from};tag=far")
    };
    // A request that begins a dialog or stands alone has no To-tag.
    let to = match method {
        "INVITE" | "OPTIONS" | "MESSAGE" | "SUBSCRIBE" | "REGISTER" => {
            to.split(";tag=").next().unwrap_or(to)
        }
        _ => to,
    };
    let cseq = if method == "CANCEL" || method == "ACK" {
        let number = header(last_out, "CSeq")?.split(' ').next()?;
        format!("{number} {method}")
    } else {
        format!("{} {method}", 100 + n)
    };
    let headers = format!(
        "Via: SIP/2.0/UDP {PROXY};branch=z9hG4bKp{n}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {cseq}\r\nContact: <sip:far@{PROXY}>\r\n",
        header(last_out, "Call-ID")?
    );
    let default_body = match method {
        "NOTIFY" => "SIP/2.0 180 Ringing\r\n".to_string(),
        "INVITE" => sdp("127.0.2.10", 20002),
        _ => String::new(),
    };
    let (extra, body, ctype) = split_extra(data, &default_body);
    Some(with_body(format!("{method} {uri} SIP/2.0"), headers, &extra, &body, ctype))
}

struct World {
    gw: Gateway,
    now: Instant,
    credentials_kept: bool,
    /// The last request or response the gateway sent to the proxy, and to a phone.
    last_out: String,
    last_in: String,
    /// The number of the last INVITE a phone sent (for its CANCEL and ACK).
    invite: u32,
}

impl World {
    fn deliver(&mut self, local: &str, remote: &str, data: &[u8]) {
        self.gw.handle_datagram(self.now, addr(local), addr(remote), data);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(t) = self.gw.poll_transmit() {
            self.check(&t);
        }
        while self.gw.poll_media().is_some() {}
        while self.gw.poll_event().is_some() {}
    }

    fn check(&mut self, t: &Transmit) {
        let text = String::from_utf8_lossy(&t.payload).into_owned();
        // What the gateway sends is SIP a next hop can read (its edits keep the syntax),
        // STUN answers aside, and its answers to malformed requests, which echo the
        // sender's own (malformed) Via, From and To; only a limit may be passed by what
        // the edits added.
        let answer_to_malformed = text.contains("\r\nWarning: 399 sipward.fuzz \"");
        if !sipward_proto::stun::looks_like_stun(&t.payload) && !answer_to_malformed {
            if let Err(r) = sipward_proto::parse_datagram(&t.payload, &Limits::default()) {
                // (Max-Forwards may also reach 0: for the next hop to answer 483.)
                let size = matches!(
                    r.defect.kind,
                    DefectKind::MessageTooLarge
                        | DefectKind::SdpTooLarge
                        | DefectKind::TooManyHeaders
                        | DefectKind::TooManyParams
                        | DefectKind::TooManyHops
                );
                assert!(size, "unparseable datagram sent ({:?}):\n{text}", r.defect);
            }
        }
        if *TRACE.get_or_init(|| std::env::var_os("GATEWAY_FUZZ_TRACE").is_some()) {
            eprintln!("--- {} -> {}\n{text}", t.local, t.remote);
        }
        if t.local == addr(WAN) {
            if let Some(line) = leak(&t.payload, self.credentials_kept) {
                panic!("inside address sent to {}: {line:?}\n{text}", t.remote);
            }
            if t.remote == addr(PROXY) {
                self.last_out = text;
            }
        } else {
            self.last_in = text;
        }
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        // Timers one by one, then (the periodic sweep would make a long step cost
        // thousands of calls) one late call, as a driver that was held up makes.
        for _ in 0..32 {
            let Some(at) = self.gw.poll_timeout() else {
                break;
            };
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.gw.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
        self.gw.handle_timeout(self.now);
        self.drain();
    }
}

/// Set GATEWAY_FUZZ_TRACE to see what the gateway sends (when running one input).
static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

const STEPS: [Duration; 8] = [
    Duration::ZERO,
    Duration::ZERO,
    Duration::from_millis(10),
    Duration::from_millis(500),
    Duration::from_secs(5),
    Duration::from_secs(33),
    Duration::from_secs(200),
    Duration::from_secs(4000),
];

fuzz_target!(|input: &[u8]| {
    let Some((&flags, mut rest)) = input.split_first() else {
        return;
    };
    let mut world = World {
        gw: Gateway::new(config(flags)),
        now: Instant::now(),
        credentials_kept: matches!(flags & 3, 0 | 1),
        last_out: String::new(),
        last_in: String::new(),
        invite: 0,
    };
    let mut n: u32 = 0;
    while let [op, len, tail @ ..] = rest {
        // Short lengths as they are, the top sixteen values in steps of 256 (to 4 KiB).
        let len = match *len {
            l @ 0..=0xef => usize::from(l),
            l => usize::from(l - 0xef) * 256,
        };
        let (data, next) = tail.split_at(len.min(tail.len()));
        rest = next;
        n += 1;
        world.advance(STEPS[usize::from(op >> 5)]);
        let pick = data.first().copied().unwrap_or(0);
        let body = data.get(1..).unwrap_or_default();
        match op & 7 {
            0 => world.deliver(LAN, PHONES[0], data),
            1 => world.deliver(LAN, PHONES[1], data),
            2 => world.deliver(WAN, PROXY, data),
            3 => world.deliver(WAN, STRANGER, data),
            4 => {
                let method = METHODS[usize::from(pick) % METHODS.len()];
                if method == "INVITE" {
                    world.invite = n;
                }
                let phone = usize::from(pick >> 7);
                let msg = phone_request(phone, n, method, body, &world.last_in, world.invite);
                world.deliver(LAN, PHONES[phone], msg.as_bytes());
            }
            5 => {
                let status = STATUSES[usize::from(pick) % STATUSES.len()];
                if let Some(msg) = response(&world.last_out.clone(), status, "127.0.2.10", body) {
                    world.deliver(WAN, PROXY, msg.as_bytes());
                }
            }
            6 => {
                let method = METHODS[usize::from(pick) % METHODS.len()];
                if let Some(msg) = proxy_request(n, method, body, &world.last_out.clone()) {
                    world.deliver(WAN, PROXY, msg.as_bytes());
                }
            }
            _ => {
                let status = STATUSES[usize::from(pick) % STATUSES.len()];
                let phone = PHONES[usize::from(pick >> 7)];
                let ip = phone.split(':').next().unwrap_or("127.0.1.20");
                if let Some(msg) = response(&world.last_in.clone(), status, ip, body) {
                    world.deliver(LAN, phone, msg.as_bytes());
                }
            }
        }
    }
    // Whatever is left pending must also end cleanly.
    world.advance(Duration::from_secs(50_000));
    world.gw.shutdown(world.now);
    world.drain();
});
