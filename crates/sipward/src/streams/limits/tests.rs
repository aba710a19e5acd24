//! Each limit on virtual time: an epoch and offsets from it, no sockets, no sleeping.

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn id(n: u64) -> ConnectionId {
    ConnectionId(n)
}

struct Clock(Instant);

impl Clock {
    fn at(&self, d: Duration) -> Instant {
        self.0 + d
    }
}

fn setup(settings: LimitSettings) -> (StreamLimits, Clock) {
    (StreamLimits::new(settings), Clock(Instant::now()))
}

#[test]
fn defaults_are_the_documented_ones() {
    let d = LimitSettings::default();
    assert_eq!(
        (
            d.max_connections,
            d.max_connections_per_source,
            d.max_handshakes,
            d.send_queue
        ),
        (10_000, 32, 256, 256 * 1024)
    );
    assert_eq!(
        (d.new_connections_per_second, d.new_connections_burst),
        (10.0, 30.0)
    );
    assert_eq!(
        [
            d.tls_handshake_timeout,
            d.first_message_timeout,
            d.message_timeout,
            d.idle_timeout,
            d.send_timeout,
            d.connect_timeout
        ],
        [secs(5), secs(10), secs(5), secs(120), secs(10), secs(10)]
    );
    assert_eq!(d.max_pings_per_second, 10);
    assert_eq!(
        LimitSettings::from_table(&TransportSettings::default(), vec![]),
        Ok(d)
    );
}

#[test]
fn table_values_override_and_bad_ones_are_named() {
    let t = TransportSettings {
        message_timeout: Some(0.5),
        max_connections: Some(3),
        ..Default::default()
    };
    let s = LimitSettings::from_table(&t, vec![]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s.message_timeout, s.max_connections), (ms(500), 3));
    for (t, key) in [
        (
            TransportSettings {
                idle_timeout: Some(0.0),
                ..Default::default()
            },
            "idle_timeout",
        ),
        (
            TransportSettings {
                max_connections: Some(0),
                ..Default::default()
            },
            "max_connections",
        ),
        (
            TransportSettings {
                send_queue: Some(100),
                ..Default::default()
            },
            "send_queue",
        ),
        (
            TransportSettings {
                new_connections_per_second: Some(f64::NAN),
                ..Default::default()
            },
            "new_connections_per_second",
        ),
        (
            TransportSettings {
                max_pings_per_second: Some(0),
                ..Default::default()
            },
            "max_pings_per_second",
        ),
    ] {
        let e = LimitSettings::from_table(&t, vec![])
            .err()
            .unwrap_or_default();
        assert!(e.contains(key), "{key}: {e}");
    }
    let parsed: TransportSettings =
        toml::from_str("max_connections = 5\ntls_handshake_timeout = 1.5\n")
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (parsed.max_connections, parsed.tls_handshake_timeout),
        (Some(5), Some(1.5))
    );
    assert!(
        toml::from_str::<TransportSettings>("max_conections = 5").is_err(),
        "a misspelt key is refused"
    );
}

#[test]
fn total_cap_refuses_the_next_connection_until_one_closes() {
    let (mut l, c) = setup(LimitSettings {
        max_connections: 3,
        ..Default::default()
    });
    for n in 0..3 {
        assert_eq!(
            l.admit(c.at(ms(n)), id(n), ip(&format!("192.0.2.{}", n + 1)), false),
            Ok(())
        );
    }
    assert_eq!(
        l.admit(c.at(ms(5)), id(9), ip("192.0.2.50"), false),
        Err(Refuse::TotalCap)
    );
    // Outgoing connections count too.
    assert_eq!(
        l.connecting(c.at(ms(5)), id(10), ip("198.51.100.1"), false),
        Err(Refuse::TotalCap)
    );
    assert!(l.close(id(1), CloseReason::PeerClosed));
    assert_eq!(l.admit(c.at(ms(6)), id(9), ip("192.0.2.50"), false), Ok(()));
    assert_eq!(l.refused(Refuse::TotalCap), 2);
    assert_eq!(l.open_connections(), 3);
}

#[test]
fn per_source_cap_counts_only_that_source_and_spares_the_exempt() {
    let settings = LimitSettings {
        max_connections_per_source: 2,
        exempt: vec!["10.0.0.0/24".parse().unwrap_or_else(|e| panic!("{e}"))],
        ..Default::default()
    };
    let (mut l, c) = setup(settings);
    let phone = ip("192.0.2.7");
    assert_eq!(l.admit(c.at(ms(0)), id(1), phone, false), Ok(()));
    assert_eq!(l.admit(c.at(ms(1)), id(2), phone, true), Ok(()));
    assert_eq!(
        l.admit(c.at(ms(2)), id(3), phone, false),
        Err(Refuse::SourceCap)
    );
    assert_eq!(l.admit(c.at(ms(3)), id(4), ip("192.0.2.8"), false), Ok(()));
    for n in 10..20 {
        assert_eq!(
            l.admit(c.at(ms(4)), id(n), ip("10.0.0.5"), false),
            Ok(()),
            "exempt #{n}"
        );
    }
    assert_eq!(l.open_from(phone), 2);
    l.close(id(2), CloseReason::PeerClosed);
    assert_eq!(l.open_from(phone), 1);
    assert_eq!(l.admit(c.at(ms(5)), id(3), phone, false), Ok(()));
    assert_eq!(l.refused(Refuse::SourceCap), 1);
}

#[test]
fn a_connection_flood_exhausts_the_burst_then_bans_the_source() {
    let (mut l, c) = setup(LimitSettings {
        max_connections_per_source: 1000,
        ban_time: secs(60),
        ..Default::default()
    });
    let flooder = ip("203.0.113.9");
    // 30 at once: the burst.
    for n in 0..30 {
        assert_eq!(l.admit(c.at(ms(0)), id(n), flooder, false), Ok(()), "#{n}");
        l.close(id(n), CloseReason::PeerClosed);
    }
    assert_eq!(
        l.admit(c.at(ms(0)), id(30), flooder, false),
        Err(Refuse::Rate)
    );
    assert!(l.is_banned(c.at(ms(1)), flooder));
    // Banned: refused before any handshake even after the bucket refilled...
    assert_eq!(
        l.admit(c.at(secs(30)), id(31), flooder, true),
        Err(Refuse::Banned)
    );
    // ...until the ban ends.
    assert_eq!(l.admit(c.at(secs(61)), id(32), flooder, true), Ok(()));
    assert_eq!((l.refused(Refuse::Rate), l.refused(Refuse::Banned)), (1, 1));
    // Others are not affected.
    assert_eq!(
        l.admit(c.at(ms(2)), id(40), ip("203.0.113.10"), false),
        Ok(())
    );
}

#[test]
fn ten_a_second_is_sustainable_forever() {
    let (mut l, c) = setup(LimitSettings {
        max_connections_per_source: 1000,
        ..Default::default()
    });
    let phone = ip("192.0.2.20");
    for n in 0..200u64 {
        assert_eq!(
            l.admit(c.at(ms(n * 100)), id(n), phone, false),
            Ok(()),
            "#{n}"
        );
        l.close(id(n), CloseReason::PeerClosed);
    }
}

#[test]
fn concurrent_handshakes_are_capped_and_freed_by_completion_or_close() {
    let (mut l, c) = setup(LimitSettings {
        max_handshakes: 2,
        ..Default::default()
    });
    assert_eq!(l.admit(c.at(ms(0)), id(1), ip("192.0.2.1"), true), Ok(()));
    assert_eq!(l.admit(c.at(ms(0)), id(2), ip("192.0.2.2"), true), Ok(()));
    assert_eq!(
        l.admit(c.at(ms(0)), id(3), ip("192.0.2.3"), true),
        Err(Refuse::Handshakes)
    );
    // Plain TCP is not held back by handshakes.
    assert_eq!(l.admit(c.at(ms(0)), id(4), ip("192.0.2.3"), false), Ok(()));
    l.handshake_done(c.at(ms(10)), id(1));
    assert_eq!(l.admit(c.at(ms(11)), id(5), ip("192.0.2.3"), true), Ok(()));
    l.close(id(2), CloseReason::HandshakeFailed);
    assert_eq!(l.handshakes_in_progress(), 1);
    assert_eq!(l.closed(CloseReason::HandshakeFailed), 1);
}

#[test]
fn a_handshake_not_finished_in_time_is_closed() {
    let (mut l, c) = setup(LimitSettings::default());
    l.admit(c.at(ms(0)), id(1), ip("192.0.2.1"), true)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(l.next_deadline(), Some(c.at(secs(5))));
    assert_eq!(l.on_timeout(c.at(ms(4999))), vec![]);
    assert_eq!(
        l.on_timeout(c.at(secs(5))),
        vec![(id(1), CloseReason::HandshakeTimeout)]
    );
    assert_eq!((l.open_connections(), l.handshakes_in_progress()), (0, 0));
    assert_eq!(l.closed(CloseReason::HandshakeTimeout), 1);
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn no_first_message_in_time_closes_and_pings_do_not_count_as_one() {
    let (mut l, c) = setup(LimitSettings::default());
    l.admit(c.at(ms(0)), id(1), ip("192.0.2.1"), true)
        .unwrap_or_else(|e| panic!("{e:?}"));
    l.handshake_done(c.at(secs(1)), id(1));
    assert_eq!(
        l.next_deadline(),
        Some(c.at(secs(11))),
        "from the handshake's end"
    );
    for s in 2..11 {
        assert_eq!(l.ping(c.at(secs(s)), id(1)), Ok(()));
    }
    assert_eq!(
        l.on_timeout(c.at(secs(11))),
        vec![(id(1), CloseReason::FirstMessageTimeout)]
    );

    // A message in time ends the wait: then only idle applies.
    l.admit(c.at(ms(0)), id(2), ip("192.0.2.2"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    l.message_complete(c.at(secs(9)), id(2));
    assert_eq!(l.next_deadline(), Some(c.at(secs(129))));
}

#[test]
fn a_message_trickling_past_message_timeout_is_closed_slowloris() {
    let (mut l, c) = setup(LimitSettings::default());
    l.admit(c.at(ms(0)), id(1), ip("192.0.2.1"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    l.message_started(c.at(secs(1)), id(1));
    // More bytes of the same message do not restart its clock.
    l.message_started(c.at(secs(3)), id(1));
    assert_eq!(l.next_deadline(), Some(c.at(secs(6))));
    assert_eq!(
        l.on_timeout(c.at(secs(6))),
        vec![(id(1), CloseReason::MessageTimeout)]
    );

    // Completed in time, the next message gets its own clock.
    l.admit(c.at(ms(0)), id(2), ip("192.0.2.2"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    l.message_started(c.at(secs(1)), id(2));
    l.message_complete(c.at(secs(5)), id(2));
    l.message_started(c.at(secs(8)), id(2));
    assert_eq!(l.on_timeout(c.at(secs(12))), vec![]);
    assert_eq!(
        l.on_timeout(c.at(secs(13))),
        vec![(id(2), CloseReason::MessageTimeout)]
    );
    assert_eq!(l.closed(CloseReason::MessageTimeout), 2);
}

#[test]
fn idle_connections_close_later_with_a_binding_and_never_during_a_dialog() {
    let (mut l, c) = setup(LimitSettings::default());
    for n in 1..=3 {
        l.admit(c.at(ms(0)), id(n), ip(&format!("192.0.2.{n}")), false)
            .unwrap_or_else(|e| panic!("{e:?}"));
        l.message_complete(c.at(secs(1)), id(n));
    }
    l.set_usage(c.at(secs(1)), id(2), Usage::Binding(c.at(secs(3601))));
    l.set_usage(c.at(secs(1)), id(3), Usage::Dialog);
    assert_eq!(
        l.on_timeout(c.at(secs(121))),
        vec![(id(1), CloseReason::Idle)]
    );
    assert_eq!(l.on_timeout(c.at(secs(3630))), vec![]);
    assert_eq!(
        l.on_timeout(c.at(secs(3631))),
        vec![(id(2), CloseReason::Idle)]
    );
    assert_eq!(
        l.next_deadline(),
        None,
        "a dialog's connection has no idle deadline"
    );
    // The dialog ends: idle counts from the last activity again.
    l.set_usage(c.at(secs(4000)), id(3), Usage::None);
    assert_eq!(
        l.on_timeout(c.at(secs(4000))),
        vec![(id(3), CloseReason::Idle)]
    );
}

#[test]
fn activity_and_pings_keep_a_connection_from_idling() {
    let (mut l, c) = setup(LimitSettings::default());
    l.admit(c.at(ms(0)), id(1), ip("192.0.2.1"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    l.message_complete(c.at(secs(1)), id(1));
    for s in (30..600).step_by(30) {
        assert_eq!(l.ping(c.at(secs(s)), id(1)), Ok(()));
        assert_eq!(l.on_timeout(c.at(secs(s))), vec![]);
    }
    assert_eq!(l.next_deadline(), Some(c.at(secs(570 + 120))));
}

#[test]
fn more_than_ten_pings_in_a_second_close_the_connection() {
    let (mut l, c) = setup(LimitSettings::default());
    l.admit(c.at(ms(0)), id(1), ip("192.0.2.1"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    for n in 0..10 {
        assert_eq!(l.ping(c.at(ms(n * 50)), id(1)), Ok(()), "#{n}");
    }
    assert_eq!(l.ping(c.at(ms(600)), id(1)), Err(CloseReason::PingStorm));
    assert_eq!(
        (l.open_connections(), l.closed(CloseReason::PingStorm)),
        (0, 1)
    );
    // Ten a second for ever is fine.
    l.admit(c.at(ms(0)), id(2), ip("192.0.2.2"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    for n in 0..100 {
        assert_eq!(l.ping(c.at(ms(n * 100)), id(2)), Ok(()), "#{n}");
    }
}

#[test]
fn the_send_queue_is_bounded_in_bytes_and_in_time() {
    let (mut l, c) = setup(LimitSettings::default());
    l.admit(c.at(ms(0)), id(1), ip("192.0.2.1"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    l.message_complete(c.at(ms(10)), id(1));
    assert_eq!(l.send_queued(c.at(secs(1)), id(1), 1000), Ok(()));
    // Draining part of it does not restart the clock; emptying it does.
    assert_eq!(l.send_queued(c.at(secs(2)), id(1), 500), Ok(()));
    assert_eq!(l.next_deadline(), Some(c.at(secs(11))));
    assert_eq!(l.send_queued(c.at(secs(3)), id(1), 0), Ok(()));
    assert_eq!(l.next_deadline(), Some(c.at(ms(120_010))));
    assert_eq!(l.send_queued(c.at(secs(4)), id(1), 10), Ok(()));
    assert_eq!(
        l.on_timeout(c.at(secs(14))),
        vec![(id(1), CloseReason::SendTimeout)]
    );

    l.admit(c.at(ms(0)), id(2), ip("192.0.2.2"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(l.send_queued(c.at(ms(1)), id(2), 256 * 1024), Ok(()));
    assert_eq!(
        l.send_queued(c.at(ms(2)), id(2), 256 * 1024 + 1),
        Err(CloseReason::SendQueueFull)
    );
    assert_eq!(l.open_connections(), 0);
}

#[test]
fn outgoing_connections_time_out_connecting_and_handshaking() {
    let (mut l, c) = setup(LimitSettings::default());
    let proxy = ip("198.51.100.1");
    assert_eq!(l.connecting(c.at(ms(0)), id(1), proxy, true), Ok(()));
    assert_eq!(
        l.on_timeout(c.at(secs(10))),
        vec![(id(1), CloseReason::ConnectTimeout)]
    );
    assert_eq!(l.connecting(c.at(ms(0)), id(2), proxy, true), Ok(()));
    l.connected(c.at(secs(1)), id(2));
    assert_eq!(l.handshakes_in_progress(), 1);
    assert_eq!(
        l.on_timeout(c.at(secs(6))),
        vec![(id(2), CloseReason::HandshakeTimeout)]
    );
    // A plain one is open at once: it waits for nothing from the peer but idles.
    assert_eq!(l.connecting(c.at(ms(0)), id(3), proxy, false), Ok(()));
    l.connected(c.at(secs(1)), id(3));
    assert_eq!(
        l.view(c.at(secs(2)), id(3)).map(|v| (v.phase, v.age)),
        Some((Phase::Open, secs(2)))
    );
    assert_eq!(l.next_deadline(), Some(c.at(secs(121))));
    // The gateway's own connections are never charged to the peer's per-source limits.
    assert_eq!(l.open_from(proxy), 0);
}

#[test]
fn counters_list_every_reason() {
    let (mut l, c) = setup(LimitSettings {
        max_connections: 1,
        ..Default::default()
    });
    l.admit(c.at(ms(0)), id(1), ip("192.0.2.1"), false)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let _ = l.admit(c.at(ms(0)), id(2), ip("192.0.2.1"), false);
    l.close(id(1), CloseReason::Garbage);
    assert!(
        !l.close(id(1), CloseReason::Garbage),
        "closing twice counts once"
    );
    let refused = l.refused_counts();
    assert_eq!(refused.len(), Refuse::ALL.len());
    assert!(refused.contains(&("max_connections", 1)));
    let closed = l.closed_counts();
    assert_eq!(closed.len(), CloseReason::ALL.len());
    assert!(closed.contains(&("not_sip", 1)));
    assert_eq!(closed.iter().map(|(_, n)| n).sum::<u64>(), 1);
}

#[test]
fn the_source_table_stays_bounded_under_a_flood_from_many_addresses() {
    let (mut l, c) = setup(LimitSettings {
        max_connections: 10,
        ..Default::default()
    });
    // 65,536 sources remembered at most; quiet ones are forgotten to make room.
    for n in 0..70_000u32 {
        let source = IpAddr::from(std::net::Ipv6Addr::from(
            0x2001_0db8_u128 << 96 | u128::from(n),
        ));
        let t = c.at(ms(u64::from(n)));
        match l.admit(t, id(u64::from(n)), source, false) {
            Ok(()) => {
                l.close(id(u64::from(n)), CloseReason::PeerClosed);
            }
            Err(r) => panic!("#{n}: {r:?}"),
        }
    }
    assert!(l.sources.len() <= 65_536, "{}", l.sources.len());
}

#[test]
fn attempts_refused_at_the_cap_still_spend_the_burst_and_end_in_a_ban() {
    let (mut l, c) = setup(LimitSettings {
        max_connections_per_source: 2,
        ..Default::default()
    });
    let flooder = ip("203.0.113.50");
    assert_eq!(l.admit(c.at(ms(0)), id(1), flooder, false), Ok(()));
    assert_eq!(l.admit(c.at(ms(0)), id(2), flooder, false), Ok(()));
    for n in 3..31 {
        assert_eq!(
            l.admit(c.at(ms(0)), id(n), flooder, false),
            Err(Refuse::SourceCap),
            "#{n}"
        );
    }
    assert_eq!(
        l.admit(c.at(ms(0)), id(31), flooder, false),
        Err(Refuse::Rate)
    );
    assert!(l.is_banned(c.at(ms(1)), flooder));
}
