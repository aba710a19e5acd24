//! The relay thread with real sockets on loopback: forwarding both ways on RTP and RTCP,
//! source checks, latching, counters, and closing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipward_core::{LegSpec, MediaCommand, Peer, Side, StreamCounters};
use sipward_relay::{Engine, RelayHandle, RelayOptions};

/// Every test that forwards runs once per engine.
const ENGINES: [Engine; 2] = [Engine::IoUring, Engine::Epoll];

fn spawn(engine: Engine) -> RelayHandle {
    let relay = RelayHandle::spawn_with_options(RelayOptions {
        engine,
        ..RelayOptions::default()
    })
    .unwrap_or_else(|e| panic!("starting the relay with {engine:?}: {e}"));
    assert_eq!(relay.engine(), engine);
    relay
}

fn bind(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn strict(rtp: &UdpSocket, rtcp: &UdpSocket) -> Peer {
    Peer {
        rtp: Some(rtp.local_addr().unwrap()),
        rtcp: Some(rtcp.local_addr().unwrap()),
        latch: false,
    }
}

fn set(relay: &RelayHandle, id: u64, inside: Vec<Peer>, outside: Vec<Peer>) -> Arc<StreamCounters> {
    set_at(
        relay,
        id,
        ["127.77.0.1:40000", "127.77.1.1:40000"],
        inside,
        outside,
    )
}

/// A `Set` of stream `id` with the relay's RTP ports `local` (inside, outside) and the
/// parties on each side, and the counters it shares.
fn command(
    id: u64,
    local: [SocketAddr; 2],
    inside: Vec<Peer>,
    outside: Vec<Peer>,
) -> (MediaCommand, Arc<StreamCounters>) {
    let counters = Arc::new(StreamCounters::new(Instant::now()));
    let [inside_rtp, outside_rtp] = local;
    let set = MediaCommand::Set {
        id,
        legs: [
            LegSpec {
                local_rtp: inside_rtp,
                peers: inside,
                provisional: false,
            },
            LegSpec {
                local_rtp: outside_rtp,
                peers: outside,
                provisional: false,
            },
        ],
        counters: counters.clone(),
    };
    (set, counters)
}

/// `command` with both legs provisional (the call not answered yet).
fn provisional_command(
    id: u64,
    local: [SocketAddr; 2],
    inside: Vec<Peer>,
    outside: Vec<Peer>,
) -> (MediaCommand, Arc<StreamCounters>) {
    let (mut set, counters) = command(id, local, inside, outside);
    if let MediaCommand::Set { legs, .. } = &mut set {
        for leg in legs.iter_mut() {
            leg.provisional = true;
        }
    }
    (set, counters)
}

/// The same, between one socket on each side (RTP and RTCP from it alike).
fn between(id: u64, local: [SocketAddr; 2], phone: &UdpSocket, far: &UdpSocket) -> MediaCommand {
    command(
        id,
        local,
        vec![strict(phone, phone)],
        vec![strict(far, far)],
    )
    .0
}

/// `set` with the relay's own RTP ports on each side given.
fn set_at(
    relay: &RelayHandle,
    id: u64,
    local: [&str; 2],
    inside: Vec<Peer>,
    outside: Vec<Peer>,
) -> Arc<StreamCounters> {
    let (set, counters) = command(id, [sock(local[0]), sock(local[1])], inside, outside);
    relay.apply([set]);
    // The relay binds on its own thread.
    std::thread::sleep(Duration::from_millis(100));
    counters
}

fn receive(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    s.recv_from(&mut buf)
        .ok()
        .map(|(n, from)| (buf[..n].to_vec(), from))
}

#[test]
fn relays_rtp_and_rtcp_both_ways_and_refuses_strangers() {
    for engine in ENGINES {
        relays_rtp_and_rtcp_both_ways_and_refuses_strangers_with(engine);
    }
}

fn relays_rtp_and_rtcp_both_ways_and_refuses_strangers_with(engine: Engine) {
    let relay = spawn(engine);
    let (phone_rtp, phone_rtcp) = (bind("127.77.0.20:0"), bind("127.77.0.20:0"));
    let (far_rtp, far_rtcp) = (bind("127.77.1.50:0"), bind("127.77.1.50:0"));
    let counters = set(
        &relay,
        1,
        vec![strict(&phone_rtp, &phone_rtcp)],
        vec![strict(&far_rtp, &far_rtcp)],
    );

    for i in 0..50u8 {
        phone_rtp
            .send_to(&[0x80, i, 1, 2], "127.77.0.1:40000")
            .unwrap();
    }
    for i in 0..50u8 {
        let (data, from) = receive(&far_rtp).expect("forwarded to the far end");
        assert_eq!(data, [0x80, i, 1, 2], "in order, unchanged");
        assert_eq!(
            from,
            sock("127.77.1.1:40000"),
            "from the relay's outside port"
        );
    }
    far_rtp.send_to(&[0x80, 9], "127.77.1.1:40000").unwrap();
    assert_eq!(
        receive(&phone_rtp).unwrap(),
        (vec![0x80, 9], sock("127.77.0.1:40000"))
    );
    phone_rtcp
        .send_to(&[0x81, 200], "127.77.0.1:40001")
        .unwrap();
    assert_eq!(
        receive(&far_rtcp).unwrap(),
        (vec![0x81, 200], sock("127.77.1.1:40001"))
    );

    // A stranger's packets go nowhere and are counted.
    let stranger = bind("127.77.1.99:0");
    for _ in 0..5 {
        stranger.send_to(&[0x80, 0xee], "127.77.1.1:40000").unwrap();
    }
    assert!(
        receive(&phone_rtp).is_none(),
        "a stranger's packet was forwarded"
    );

    let c = counters.snapshot();
    assert_eq!(c.packets[Side::Inside as usize], 51);
    assert_eq!(c.packets[Side::Outside as usize], 1);
    assert_eq!(c.bytes[Side::Inside as usize], 50 * 4 + 2);
    assert_eq!(c.dropped, 5);
    assert!(c.last_activity.is_some());

    // Closed: the port answers with ICMP port unreachable.
    relay.apply([MediaCommand::Close { id: 1 }]);
    std::thread::sleep(Duration::from_millis(100));
    far_rtp.connect("127.77.1.1:40000").unwrap();
    far_rtp.send(&[0x80, 1]).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        far_rtp.recv(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );

    // A relay stopped with a stream open lets go of its ports.
    set(
        &relay,
        2,
        vec![strict(&phone_rtp, &phone_rtcp)],
        vec![strict(&far_rtp, &far_rtcp)],
    );
    assert!(
        UdpSocket::bind("127.77.0.1:40000").is_err(),
        "the stream's port is open"
    );
    drop(relay);
    UdpSocket::bind("127.77.0.1:40000").expect("the port is free once the relay is gone");
}

#[test]
fn latching_party_is_answered_where_it_sends_from() {
    for engine in ENGINES {
        latching_party_is_answered_where_it_sends_from_with(engine);
    }
}

fn latching_party_is_answered_where_it_sends_from_with(engine: Engine) {
    let relay = spawn(engine);
    let (phone_rtp, phone_rtcp) = (bind("127.78.0.20:0"), bind("127.78.0.20:0"));
    let behind_nat = bind("127.78.1.60:0");
    let rtcp_of_nat = {
        let port = behind_nat.local_addr().unwrap().port();
        // Bind the next port where the party's RTCP is assumed to listen, if free.
        UdpSocket::bind(("127.78.1.60", port.wrapping_add(1))).ok()
    };
    let counters = set_at(
        &relay,
        7,
        ["127.78.0.1:40010", "127.78.1.1:40010"],
        vec![strict(&phone_rtp, &phone_rtcp)],
        // Its SDP named a private address it cannot be reached at, which the core
        // leaves out.
        vec![Peer {
            rtp: None,
            rtcp: None,
            latch: true,
        }],
    );
    // Nothing goes to the unreachable SDP address before the party is seen.
    phone_rtp.send_to(&[1], "127.78.0.1:40010").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counters.snapshot().dropped, 1);
    // The party sends first: it is latched, and answered there.
    assert_eq!(counters.latch_changes(), 0);
    behind_nat.send_to(&[2], "127.78.1.1:40010").unwrap();
    assert_eq!(receive(&phone_rtp).unwrap().0, vec![2]);
    // The core learns where (a restored stream keeps it); the relay reports it once
    // the batch is through, which may be just after the packet arrived.
    let reported = Instant::now() + Duration::from_secs(1);
    while counters.latched(Side::Outside).is_none() && Instant::now() < reported {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        counters.latched(Side::Outside),
        Some(behind_nat.local_addr().unwrap())
    );
    assert_eq!(counters.latch_changes(), 1);
    phone_rtp.send_to(&[3], "127.78.0.1:40010").unwrap();
    assert_eq!(receive(&behind_nat).unwrap().0, vec![3]);
    // A second source is not latched over the first.
    let other = bind("127.78.1.61:0");
    other.send_to(&[4], "127.78.1.1:40010").unwrap();
    assert!(receive(&phone_rtp).is_none());
    // RTCP for the latched party goes to the port after its RTP.
    if let Some(rtcp) = rtcp_of_nat {
        rtcp.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        phone_rtcp.send_to(&[5], "127.78.0.1:40011").unwrap();
        let mut buf = [0u8; 8];
        let (n, _) = rtcp.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[5]);
    }
}

/// The scheduling policy and allowed CPUs of each thread named `sipward-relay`.
fn relay_threads() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        // Other tests' threads come and go: one that is gone is skipped.
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        if comm.trim() != "sipward-relay" {
            continue;
        }
        // Fields after the ")" of the name: policy is the 41st field overall.
        let after: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let policy: u32 = after[38].parse().unwrap();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        found.push((policy, cpus));
    }
    found
}

#[test]
fn a_placed_relay_runs_pinned_at_realtime_priority_and_still_forwards() {
    for engine in ENGINES {
        a_placed_relay_runs_pinned_at_realtime_priority_and_still_forwards_with(engine);
    }
}

fn a_placed_relay_runs_pinned_at_realtime_priority_and_still_forwards_with(engine: Engine) {
    let cpu = std::thread::available_parallelism().unwrap().get() - 1;
    let relay = RelayHandle::spawn_with_options(RelayOptions {
        spin: Duration::from_micros(20),
        cpu: Some(cpu),
        realtime_priority: Some(5),
        engine,
    })
    .expect("placing the relay (the tests run with CAP_SYS_NICE)");
    const SCHED_FIFO: u32 = 1;
    assert!(
        relay_threads().contains(&(SCHED_FIFO, cpu.to_string())),
        "no relay thread under SCHED_FIFO on CPU {cpu}: {:?}",
        relay_threads()
    );
    let (phone_rtp, phone_rtcp) = (bind("127.77.4.20:0"), bind("127.77.4.20:0"));
    let (far_rtp, far_rtcp) = (bind("127.77.5.50:0"), bind("127.77.5.50:0"));
    set_at(
        &relay,
        1,
        ["127.77.4.1:40000", "127.77.5.1:40000"],
        vec![strict(&phone_rtp, &phone_rtcp)],
        vec![strict(&far_rtp, &far_rtcp)],
    );
    phone_rtp.send_to(b"placed", "127.77.4.1:40000").unwrap();
    let (got, from) = receive(&far_rtp).expect("forwarded by the placed relay");
    assert_eq!(got, b"placed");
    assert_eq!(from, sock("127.77.5.1:40000"));
}

#[test]
fn a_busy_polling_relay_forwards_a_steady_stream_whole_and_in_order() {
    for engine in ENGINES {
        a_busy_polling_relay_forwards_a_steady_stream_whole_and_in_order_with(engine);
    }
}

/// Packets a few microseconds apart: the relay takes them while polling (the zero-wait
/// path of each engine) rather than waking for each.
fn a_busy_polling_relay_forwards_a_steady_stream_whole_and_in_order_with(engine: Engine) {
    const PACKETS: u16 = 1000;
    let relay = RelayHandle::spawn_with_options(RelayOptions {
        spin: Duration::from_micros(500),
        engine,
        ..RelayOptions::default()
    })
    .unwrap();
    let phone = bind("127.77.20.20:0");
    let far = bind("127.77.21.50:0");
    let counters = set_at(
        &relay,
        1,
        ["127.77.20.1:40000", "127.77.21.1:40000"],
        vec![strict(&phone, &phone)],
        vec![strict(&far, &far)],
    );
    let receiver = std::thread::spawn(move || {
        (0..PACKETS)
            .map(|_| receive(&far).expect("every packet forwarded").0)
            .collect::<Vec<_>>()
    });
    for i in 0..PACKETS {
        phone
            .send_to(&i.to_be_bytes(), "127.77.20.1:40000")
            .unwrap();
        // 40 µs apart: the relay's socket holds a few hundred, a stall of over 10 ms
        // (a loaded test machine) would lose some.
        let due = Instant::now() + Duration::from_micros(40);
        while Instant::now() < due {}
    }
    let got = receiver.join().unwrap();
    let expected: Vec<Vec<u8>> = (0..PACKETS).map(|i| i.to_be_bytes().to_vec()).collect();
    assert!(got == expected, "{engine:?}: packets lost or out of order");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counters.snapshot().packets[0], u64::from(PACKETS));
}

#[test]
fn a_placement_that_cannot_be_had_fails_at_start() {
    let err = RelayHandle::spawn_with_options(RelayOptions {
        cpu: Some(4095),
        ..RelayOptions::default()
    })
    .err()
    .expect("no CPU 4095 here");
    assert!(err.to_string().contains("CPU 4095"), "{err}");
}

#[test]
fn a_burst_on_one_socket_arrives_whole_and_in_order() {
    for engine in ENGINES {
        a_burst_on_one_socket_arrives_whole_and_in_order_with(engine);
    }
}

fn a_burst_on_one_socket_arrives_whole_and_in_order_with(engine: Engine) {
    let relay = spawn(engine);
    let (phone_rtp, phone_rtcp) = (bind("127.77.6.20:0"), bind("127.77.6.20:0"));
    let (far_rtp, far_rtcp) = (bind("127.77.7.50:0"), bind("127.77.7.50:0"));
    let counters = set_at(
        &relay,
        1,
        ["127.77.6.1:40000", "127.77.7.1:40000"],
        vec![strict(&phone_rtp, &phone_rtcp)],
        vec![strict(&far_rtp, &far_rtcp)],
    );
    // Equal sizes (one train), a shorter one (ends it), then larger and smaller ones
    // (new trains), all queued before the relay reads: the relay must keep every
    // datagram's bounds and order.
    let sizes: Vec<usize> = (0..70)
        .map(|_| 172)
        .chain([100, 1200, 1200, 1200, 40, 172, 1400])
        .collect();
    let burst: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|k| (i * 7 + k) as u8).collect())
        .collect();
    for datagram in &burst {
        phone_rtp.send_to(datagram, "127.77.6.1:40000").unwrap();
    }
    for (i, sent) in burst.iter().enumerate() {
        let (got, from) = receive(&far_rtp).unwrap_or_else(|| panic!("datagram {i} lost"));
        assert_eq!(from, sock("127.77.7.1:40000"));
        assert_eq!(&got, sent, "datagram {i} (of {} bytes) changed", sent.len());
    }
    assert!(receive(&far_rtp).is_none(), "more came out than went in");
    let snapshot = counters.snapshot();
    assert_eq!(snapshot.packets[0], burst.len() as u64);
    assert_eq!(
        snapshot.bytes[0],
        sizes.iter().sum::<usize>() as u64,
        "bytes counted"
    );
}

#[test]
fn many_streams_each_with_a_packet_all_arrive() {
    for engine in ENGINES {
        many_streams_each_with_a_packet_all_arrive_with(engine);
    }
}

fn many_streams_each_with_a_packet_all_arrive_with(engine: Engine) {
    const STREAMS: u16 = 200;
    let relay = spawn(engine);
    let phone = bind("127.77.8.20:0");
    let far = bind("127.77.9.50:0");
    let all: Vec<Arc<StreamCounters>> = (0..STREAMS)
        .map(|i| {
            let port = 42000 + 2 * i;
            let local = [
                SocketAddr::new([127, 77, 8, 1].into(), port),
                SocketAddr::new([127, 77, 9, 1].into(), port),
            ];
            let (set, counters) = command(
                u64::from(i),
                local,
                vec![strict(&phone, &phone)],
                vec![strict(&far, &far)],
            );
            relay.apply([set]);
            counters
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // One datagram per stream, all queued at once, three times over (the far end's
    // receive buffer holds one round).
    for round in 0..3u8 {
        for i in 0..STREAMS {
            let to = SocketAddr::new([127, 77, 8, 1].into(), 42000 + 2 * i);
            phone
                .send_to(&[round, (i >> 8) as u8, i as u8], to)
                .unwrap();
        }
        let mut seen = vec![false; usize::from(STREAMS)];
        for _ in 0..STREAMS {
            let (data, from) = receive(&far).expect("every datagram forwarded");
            let i = usize::from(data[1]) << 8 | usize::from(data[2]);
            assert_eq!(data[0], round);
            assert_eq!(
                from.port(),
                42000 + 2 * i as u16,
                "sent from the stream's own port"
            );
            assert!(!std::mem::replace(&mut seen[i], true), "stream {i} twice");
        }
    }
    // Counted just after sending.
    std::thread::sleep(Duration::from_millis(100));
    assert!(all.iter().all(|c| c.snapshot().packets[0] == 3));
    for i in 0..STREAMS {
        relay.apply([MediaCommand::Close { id: u64::from(i) }]);
    }
}

#[test]
fn a_send_the_kernel_refuses_is_counted_as_dropped_not_forwarded() {
    for engine in ENGINES {
        a_send_the_kernel_refuses_is_counted_as_dropped_not_forwarded_with(engine);
    }
}

fn a_send_the_kernel_refuses_is_counted_as_dropped_not_forwarded_with(engine: Engine) {
    let relay = spawn(engine);
    let (phone_rtp, phone_rtcp) = (bind("127.77.10.20:0"), bind("127.77.10.20:0"));
    // An IPv6 party behind an IPv4 port: every send to it fails.
    let unreachable = Peer {
        rtp: Some(sock("[::1]:7000")),
        rtcp: Some(sock("[::1]:7001")),
        latch: false,
    };
    let counters = set_at(
        &relay,
        1,
        ["127.77.10.1:40000", "127.77.11.1:40000"],
        vec![strict(&phone_rtp, &phone_rtcp)],
        vec![unreachable],
    );
    for _ in 0..3 {
        phone_rtp.send_to(b"lost", "127.77.10.1:40000").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let c = counters.snapshot();
    assert_eq!(
        (c.packets[0], c.bytes[0], c.dropped),
        (0, 0, 3),
        "{engine:?}"
    );
}

#[test]
fn streams_opened_and_closed_in_quick_succession_leave_every_port_free() {
    for engine in ENGINES {
        streams_opened_and_closed_in_quick_succession_leave_every_port_free_with(engine);
    }
}

fn streams_opened_and_closed_in_quick_succession_leave_every_port_free_with(engine: Engine) {
    const STREAMS: u16 = 50;
    let relay = spawn(engine);
    let phone = bind("127.77.12.20:0");
    let far = bind("127.77.13.50:0");
    let local = |side: u8, i: u16| SocketAddr::new([127, 77, 12 + side, 1].into(), 44000 + 2 * i);
    for cycle in 0..20u64 {
        // Each cycle reuses the ports the last one closed, as the core's pool would
        // when it runs short, while datagrams for them may still be in flight.
        relay.apply((0..STREAMS).map(|i| {
            between(
                cycle * 1000 + u64::from(i),
                [local(0, i), local(1, i)],
                &phone,
                &far,
            )
        }));
        std::thread::sleep(Duration::from_millis(20));
        for i in 0..STREAMS {
            let _ = phone.send_to(&[cycle as u8], local(0, i));
        }
        relay.apply((0..STREAMS).map(|i| MediaCommand::Close {
            id: cycle * 1000 + u64::from(i),
        }));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Still serving: a last stream on the same ports forwards.
    set_at(
        &relay,
        99_999,
        ["127.77.12.1:44000", "127.77.13.1:44000"],
        vec![strict(&phone, &phone)],
        vec![strict(&far, &far)],
    );
    while receive(&far).is_some() {}
    phone.send_to(b"last", "127.77.12.1:44000").unwrap();
    assert_eq!(
        receive(&far).map(|(d, _)| d),
        Some(b"last".to_vec()),
        "{engine:?}"
    );
    relay.apply([MediaCommand::Close { id: 99_999 }]);
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..STREAMS {
        for side in 0..2 {
            let mut port = local(side, i);
            for _ in 0..2 {
                UdpSocket::bind(port)
                    .unwrap_or_else(|e| panic!("{engine:?}: port {port} still held: {e}"));
                port.set_port(port.port() + 1);
            }
        }
    }
}

#[test]
fn a_port_closed_and_reopened_in_one_batch_of_commands_forwards() {
    for engine in ENGINES {
        a_port_closed_and_reopened_in_one_batch_of_commands_forwards_with(engine);
    }
}

fn a_port_closed_and_reopened_in_one_batch_of_commands_forwards_with(engine: Engine) {
    let relay = spawn(engine);
    let (phone_rtp, phone_rtcp) = (bind("127.77.14.20:0"), bind("127.77.14.20:0"));
    let (far_rtp, far_rtcp) = (bind("127.77.15.50:0"), bind("127.77.15.50:0"));
    let set = |id| {
        let local = [sock("127.77.14.1:40000"), sock("127.77.15.1:40000")];
        let parties = (strict(&phone_rtp, &phone_rtcp), strict(&far_rtp, &far_rtcp));
        command(id, local, vec![parties.0], vec![parties.1]).0
    };
    relay.apply([set(1)]);
    std::thread::sleep(Duration::from_millis(100));
    // A call ends and the next one gets its ports at once (a pool running short).
    relay.apply([MediaCommand::Close { id: 1 }, set(2)]);
    std::thread::sleep(Duration::from_millis(100));
    phone_rtp
        .send_to(b"next call", "127.77.14.1:40000")
        .unwrap();
    assert_eq!(
        receive(&far_rtp).map(|(d, _)| d),
        Some(b"next call".to_vec()),
        "{engine:?}: the new stream did not get its ports"
    );
}

#[test]
fn ports_closed_and_reopened_under_load_are_free_for_the_new_stream() {
    for engine in ENGINES {
        ports_closed_and_reopened_under_load_are_free_for_the_new_stream_with(engine);
    }
}

fn ports_closed_and_reopened_under_load_are_free_for_the_new_stream_with(engine: Engine) {
    const BUSY: u16 = 300;
    let relay = spawn(engine);
    let phone = bind("127.77.16.20:0");
    let far = bind("127.77.17.50:0");
    let stream = |id: u64, port: u16| {
        let local = [
            SocketAddr::new([127, 77, 16, 1].into(), port),
            SocketAddr::new([127, 77, 17, 1].into(), port),
        ];
        between(id, local, &phone, &far)
    };
    relay.apply((0..BUSY).map(|i| stream(u64::from(i), 46000 + 2 * i)));
    std::thread::sleep(Duration::from_millis(200));
    // Traffic on every busy stream while one more stream is closed and reopened on the
    // same ports, in one batch of commands, again and again.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let blaster = {
        let stop = stop.clone();
        let phone = phone.try_clone().unwrap();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for i in 0..BUSY {
                    let to = SocketAddr::new([127, 77, 16, 1].into(), 46000 + 2 * i);
                    let _ = phone.send_to(b"busy", to);
                }
            }
        })
    };
    let probe_phone = bind("127.77.18.20:0");
    let probe_far = bind("127.77.19.50:0");
    let probe = |id: u64| {
        let local = [sock("127.77.18.1:45000"), sock("127.77.19.1:45000")];
        between(id, local, &probe_phone, &probe_far)
    };
    relay.apply([probe(10_000)]);
    let mut failures = 0;
    for round in 1..=20u64 {
        relay.apply([
            MediaCommand::Close {
                id: 10_000 + round - 1,
            },
            probe(10_000 + round),
        ]);
        std::thread::sleep(Duration::from_millis(30));
        // Sent again (7 times, 300 ms apart) while nothing comes: a relay starved of CPU by
        // the load may be slow, but a port still held never forwards. A late copy of
        // an earlier round's probe is skipped.
        let forwarded = (0..7).any(|_| {
            probe_phone
                .send_to(&round.to_be_bytes(), "127.77.18.1:45000")
                .unwrap();
            std::iter::from_fn(|| receive(&probe_far))
                .take(10)
                .any(|(data, _)| data == round.to_be_bytes())
        });
        if !forwarded {
            failures += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    blaster.join().unwrap();
    assert_eq!(
        failures, 0,
        "{engine:?}: reopened streams that did not forward"
    );
}

/// Waits (up to a second) for the forwarded counts to read `expected`: a relay counts
/// a read's packets after sending them, so the receiver may see them first.
fn packets_become(counters: &StreamCounters, expected: [u64; 2]) {
    let started = Instant::now();
    while counters.snapshot().packets != expected && started.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(counters.snapshot().packets, expected);
}

#[test]
fn latching_any_relays_an_ordinary_and_an_asymmetric_call_both_ways() {
    for engine in ENGINES {
        latching_any_relays_an_ordinary_and_an_asymmetric_call_both_ways_with(engine);
    }
}

/// `media_latching = "any"`: every party latches, also one that sends from the address
/// its SDP names (this relayed nothing: a named source was accepted without being
/// latched, and a latching party is sent to only once latched).
fn latching_any_relays_an_ordinary_and_an_asymmetric_call_both_ways_with(engine: Engine) {
    let relay = spawn(engine);
    let latching = |rtp: &UdpSocket| {
        let a = rtp.local_addr().unwrap();
        Peer {
            rtp: Some(a),
            rtcp: Some(SocketAddr::new(a.ip(), a.port() + 1)),
            latch: true,
        }
    };
    // An ordinary call: each party sends from where its SDP says.
    let (phone, far) = (bind("127.85.0.20:0"), bind("127.85.1.50:0"));
    let local = ["127.85.0.1:40100", "127.85.1.1:40100"];
    let counters = set_at(
        &relay,
        1,
        local,
        vec![latching(&phone)],
        vec![latching(&far)],
    );
    phone.send_to(&[1], local[0]).unwrap();
    far.send_to(&[2], local[1]).unwrap();
    assert_eq!(receive(&far).unwrap(), (vec![1], sock(local[1])));
    assert_eq!(receive(&phone).unwrap(), (vec![2], sock(local[0])));
    packets_become(&counters, [1, 1]);

    // Asymmetric RTP (RFC 4961): both parties send from other ports than their SDP
    // names, and get the other's media back where they send from.
    let (phone_sdp, far_sdp) = (bind("127.85.0.21:0"), bind("127.85.1.51:0"));
    let (phone_sends, far_sends) = (bind("127.85.0.21:0"), bind("127.85.1.51:0"));
    let local = ["127.85.0.1:40110", "127.85.1.1:40110"];
    let counters = set_at(
        &relay,
        2,
        local,
        vec![latching(&phone_sdp)],
        vec![latching(&far_sdp)],
    );
    // Before the phone has sent, the far end's media goes where the phone's SDP says.
    far_sends.send_to(&[1], local[1]).unwrap();
    assert_eq!(receive(&phone_sdp).unwrap().0, vec![1]);
    for i in 0..5u8 {
        phone_sends.send_to(&[10 + i], local[0]).unwrap();
        far_sends.send_to(&[20 + i], local[1]).unwrap();
    }
    for i in 0..5u8 {
        assert_eq!(receive(&far_sends).unwrap().0, vec![10 + i]);
        assert_eq!(receive(&phone_sends).unwrap().0, vec![20 + i]);
    }
    assert!(receive(&phone_sdp).is_none() && receive(&far_sdp).is_none());
    packets_become(&counters, [5, 6]);
}

#[test]
fn media_arriving_before_the_answer_is_applied_is_sent_on_once_it_is() {
    for engine in ENGINES {
        media_arriving_before_the_answer_is_applied_is_sent_on_once_it_is_with(engine);
    }
}

/// The far end sends RTP right after its 200 OK; the relay learns of it only once the
/// gateway has read the 200. What came before is held and sent on if it is the
/// answer's party's; a stranger's is not.
fn media_arriving_before_the_answer_is_applied_is_sent_on_once_it_is_with(engine: Engine) {
    let relay = spawn(engine);
    let (phone_rtp, phone_rtcp) = (bind("127.86.0.20:0"), bind("127.86.0.20:0"));
    let far = bind("127.86.1.50:0");
    let stranger = bind("127.86.1.99:0");
    let local = [sock("127.86.0.1:40200"), sock("127.86.1.1:40200")];
    // The offer: the phone is known, the far end not yet.
    let (offer, counters) = command(3, local, vec![strict(&phone_rtp, &phone_rtcp)], vec![]);
    relay.apply([offer]);
    std::thread::sleep(Duration::from_millis(100));
    for i in 0..3u8 {
        far.send_to(&[i], local[1]).unwrap();
    }
    stranger.send_to(&[99], local[1]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        receive(&phone_rtp).is_none(),
        "nothing goes on before the answer"
    );
    // The answer names the far end.
    let (answer, _) = command(
        3,
        local,
        vec![strict(&phone_rtp, &phone_rtcp)],
        vec![strict(&far, &far)],
    );
    relay.apply([answer]);
    for i in 0..3u8 {
        assert_eq!(receive(&phone_rtp).unwrap(), (vec![i], local[0]));
    }
    assert!(
        receive(&phone_rtp).is_none(),
        "the stranger's datagram is dropped"
    );
    packets_become(&counters, [0, 3]);
    assert_eq!(counters.snapshot().dropped, 1);
    // Later media flows as usual.
    far.send_to(&[7], local[1]).unwrap();
    assert_eq!(receive(&phone_rtp).unwrap().0, vec![7]);
}

#[test]
fn a_latched_stray_source_gives_way_to_the_party_s_sdp_address() {
    for engine in ENGINES {
        a_latched_stray_source_gives_way_to_the_party_s_sdp_address_with(engine);
    }
}

/// Latching "any" takes the first source; when the party then sends from the address
/// its SDP names, that address takes over (a stray packet, or one from a party's old
/// address after a re-INVITE, does not keep its media).
fn a_latched_stray_source_gives_way_to_the_party_s_sdp_address_with(engine: Engine) {
    let relay = spawn(engine);
    let (phone, far, stray) = (
        bind("127.87.0.20:0"),
        bind("127.87.1.50:0"),
        bind("127.87.1.99:0"),
    );
    let latching = |s: &UdpSocket| Peer {
        latch: true,
        ..strict(s, s)
    };
    let local = ["127.87.0.1:40300", "127.87.1.1:40300"];
    set_at(
        &relay,
        4,
        local,
        vec![latching(&phone)],
        vec![latching(&far)],
    );
    stray.send_to(&[1], local[1]).unwrap();
    assert_eq!(receive(&phone).unwrap().0, vec![1]);
    phone.send_to(&[2], local[0]).unwrap();
    assert_eq!(
        receive(&stray).unwrap().0,
        vec![2],
        "the stray source latched"
    );
    far.send_to(&[3], local[1]).unwrap();
    assert_eq!(receive(&phone).unwrap().0, vec![3]);
    phone.send_to(&[4], local[0]).unwrap();
    assert_eq!(
        receive(&far).unwrap().0,
        vec![4],
        "the SDP address took over"
    );
    assert!(receive(&stray).is_none());
}

#[test]
fn media_of_a_fork_answering_before_its_200_is_read_is_sent_on() {
    for engine in ENGINES {
        media_of_a_fork_answering_before_its_200_is_read_is_sent_on_with(engine);
    }
}

/// Early media came from one fork; another answers and streams at once. Until the call
/// is answered its packets are held (the leg is provisional), then sent on; once the
/// call is answered, strangers are dropped at once again.
fn media_of_a_fork_answering_before_its_200_is_read_is_sent_on_with(engine: Engine) {
    let relay = spawn(engine);
    let phone = bind("127.88.0.20:0");
    let (first_fork, second_fork) = (bind("127.88.1.50:0"), bind("127.88.1.60:0"));
    let local = [sock("127.88.0.1:40400"), sock("127.88.1.1:40400")];
    let (early, counters) = provisional_command(
        5,
        local,
        vec![strict(&phone, &phone)],
        vec![strict(&first_fork, &first_fork)],
    );
    relay.apply([early]);
    std::thread::sleep(Duration::from_millis(100));
    first_fork.send_to(&[1], local[1]).unwrap();
    assert_eq!(receive(&phone).unwrap().0, vec![1], "early media flows");
    second_fork.send_to(&[2], local[1]).unwrap();
    second_fork.send_to(&[3], local[1]).unwrap();
    assert!(
        receive(&phone).is_none(),
        "held, not sent, before the answer"
    );
    let (answered, _) = command(
        5,
        local,
        vec![strict(&phone, &phone)],
        vec![strict(&second_fork, &second_fork)],
    );
    relay.apply([answered]);
    assert_eq!(receive(&phone).unwrap().0, vec![2]);
    assert_eq!(receive(&phone).unwrap().0, vec![3]);
    packets_become(&counters, [0, 3]);
    // Answered: the first fork is a stranger now, dropped and counted at once.
    first_fork.send_to(&[4], local[1]).unwrap();
    assert!(receive(&phone).is_none());
    assert_eq!(counters.snapshot().dropped, 1);
}

#[test]
fn reserved_sockets_are_the_ones_served_and_a_stopped_relay_reserves_nothing() {
    for (i, engine) in ENGINES.into_iter().enumerate() {
        reserved_sockets_are_the_ones_served_and_a_stopped_relay_reserves_nothing_with(
            engine,
            &format!("127.{}", 89 + i),
        );
    }
}

fn reserved_sockets_are_the_ones_served_and_a_stopped_relay_reserves_nothing_with(
    engine: Engine,
    net: &str,
) {
    use sipward_core::{PortReserver, ReserveError};
    let relay = spawn(engine);
    let at = |host: &str| sock(&format!("{net}.{host}"));
    let mut reservations = relay.reservations();
    let local = [at("0.1:40500"), at("1.1:40500")];
    for rtp in local {
        reservations.reserve(rtp).unwrap();
    }
    // Bound at once: another program cannot take them now.
    assert!(UdpSocket::bind(local[1]).is_err());
    assert!(UdpSocket::bind(at("1.1:40501")).is_err());
    // A taken port is reported as such, for the core to try another pair.
    let _taken = UdpSocket::bind(at("1.1:40510")).unwrap();
    assert_eq!(
        reservations.reserve(at("1.1:40510")),
        Err(ReserveError::InUse)
    );
    // The relay serves the reserved sockets.
    let (phone, far) = (
        bind(&format!("{net}.0.20:0")),
        bind(&format!("{net}.1.50:0")),
    );
    relay.apply([between(6, local, &phone, &far)]);
    phone.send_to(&[1], local[0]).unwrap();
    assert_eq!(receive(&far).unwrap(), (vec![1], local[1]));
    // A pair given back closes.
    reservations.reserve(at("0.1:40520")).unwrap();
    reservations.release(at("0.1:40520"));
    UdpSocket::bind(at("0.1:40521")).expect("released");
    // Without a relay thread, nothing is reserved: the call is refused instead.
    drop(relay);
    assert_eq!(
        reservations.reserve(at("0.1:40530")),
        Err(ReserveError::Unavailable)
    );
}

#[test]
fn an_inbound_caller_streaming_before_the_phone_s_answer_is_applied_is_heard() {
    for engine in ENGINES {
        an_inbound_caller_streaming_before_the_phone_s_answer_is_applied_is_heard_with(engine);
    }
}

/// An inbound call: the far end offered, so it is known; the phone becomes known with
/// its 200. The far end streams as soon as it has the 200, which may be before the
/// relay has the phone's `Set`: its packets wait for the phone instead of being dropped.
fn an_inbound_caller_streaming_before_the_phone_s_answer_is_applied_is_heard_with(engine: Engine) {
    let relay = spawn(engine);
    let (phone, far) = (bind("127.91.0.20:0"), bind("127.91.1.50:0"));
    let local = [sock("127.91.0.1:40600"), sock("127.91.1.1:40600")];
    let (offer, counters) = provisional_command(7, local, vec![], vec![strict(&far, &far)]);
    relay.apply([offer]);
    std::thread::sleep(Duration::from_millis(100));
    far.send_to(&[1], local[1]).unwrap();
    far.send_to(&[2], local[1]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let (answered, _) = command(
        7,
        local,
        vec![strict(&phone, &phone)],
        vec![strict(&far, &far)],
    );
    relay.apply([answered]);
    assert_eq!(receive(&phone).unwrap(), (vec![1], local[0]));
    assert_eq!(receive(&phone).unwrap().0, vec![2]);
    packets_become(&counters, [0, 2]);
    assert_eq!(counters.snapshot().dropped, 0);
}

#[test]
fn a_pair_closed_and_reserved_again_at_once_is_not_taken_for_another_program_s() {
    for (i, engine) in ENGINES.into_iter().enumerate() {
        let net = format!("127.{}", 92 + i);
        a_pair_closed_and_reserved_again_at_once_is_not_taken_for_another_program_s_with(
            engine, &net,
        );
    }
}

/// A full pool under load: a call ends (its `Close` queued to the relay) and the next
/// call gets the same pair at once, before the relay thread has closed the sockets.
/// The reservation waits for the relay instead of taking the port for another
/// program's (which would refuse the call with 503).
fn a_pair_closed_and_reserved_again_at_once_is_not_taken_for_another_program_s_with(
    engine: Engine,
    net: &str,
) {
    use sipward_core::PortReserver;
    let relay = spawn(engine);
    let mut reservations = relay.reservations();
    let local = [
        sock(&format!("{net}.0.1:40700")),
        sock(&format!("{net}.1.1:40700")),
    ];
    let (phone, far) = (
        bind(&format!("{net}.0.20:0")),
        bind(&format!("{net}.1.50:0")),
    );
    for round in 0..20u64 {
        for rtp in local {
            reservations
                .reserve(rtp)
                .unwrap_or_else(|e| panic!("round {round}: {rtp}: {e:?}"));
        }
        relay.apply([between(round, local, &phone, &far)]);
        relay.apply([MediaCommand::Close { id: round }]);
    }
}
