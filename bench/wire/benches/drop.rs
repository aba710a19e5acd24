//! The cost of dropping a flood datagram in the gateway core: a datagram from a
//! blacklisted source (dropped before parsing), and for comparison one from an outside
//! host no rule admits (parsed, then dropped by the rule set). The socket read is not
//! included: `bench/flood/run.sh` measures the whole path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sipward_core::{
    Action, AddressObject, AlgOptions, Config, Gateway, ProtectionOptions, Rule, Service,
    Transport, Zone,
};

const INVITE: &[u8] = include_bytes!("../messages/invite.sip");

fn gateway() -> Gateway {
    let zone = |name: &str, addr: &str, net: &str, inside| Zone {
        name: name.into(),
        address: addr.parse().unwrap(),
        networks: vec![net.parse().unwrap()],
        inside,
        media_ports: None,
        intercept: false,
        advertise: None,
    };
    Gateway::new(Config {
        agent: "bench".into(),
        zones: vec![
            zone("lan", "192.168.1.1:5060", "192.168.1.0/24", true),
            zone("wan", "203.0.113.1:5060", "203.0.113.0/24", false),
        ],
        alg: AlgOptions::default(),
        rules: vec![Rule {
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
        }],
        protection: ProtectionOptions::default(),
        secret: [1; 16],
    })
}

fn drop_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("drop");
    let wan: SocketAddr = "203.0.113.1:5060".parse().unwrap();
    let attacker: SocketAddr = "198.51.100.66:5060".parse().unwrap();
    let now = Instant::now();

    let mut banned = gateway();
    banned.ban(attacker.ip(), Some(Duration::from_secs(3600)), "bench", now);
    g.bench_function("banned_source", |b| {
        b.iter(|| banned.handle_datagram(now, wan, attacker, black_box(INVITE)))
    });

    let mut unruled = gateway();
    let stranger: SocketAddr = "198.51.100.77:5060".parse().unwrap();
    // Keep the stranger under its rate limit: the bucket refills between iterations
    // only with time, so move time on.
    let mut t = now;
    g.bench_function("no_rule_after_parse", |b| {
        b.iter(|| {
            t += Duration::from_millis(100);
            unruled.handle_datagram(t, wan, stranger, black_box(INVITE))
        })
    });
    g.finish();
}

criterion_group!(benches, drop_cost);
criterion_main!(benches);
