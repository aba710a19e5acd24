//! Connection tasks over real loopback sockets (run the tests in a private network
//! namespace): framing, pongs, verdicts, and the limits' timeouts with short settings.

use super::*;
use crate::streams::limits::LimitSettings;
use crate::streams::tls::tests::Fixture;
use crate::streams::tls::VerifyClient;
use tokio::net::TcpListener;

const MAX_MESSAGE: usize = 4096;

/// Long enough for anything that should happen; what should not happen is checked by
/// the connection staying open past the limit under test.
const PATIENCE: Duration = Duration::from_secs(10);

struct Server {
    hub: Arc<Hub>,
    addr: SocketAddr,
    events: mpsc::Receiver<ConnEvent>,
}

async fn start(settings: LimitSettings, tls: Option<Arc<TlsHolder>>) -> Server {
    let (tx, events) = mpsc::channel(64);
    let hub = Hub::new(StreamLimits::new(settings), tx, MAX_MESSAGE, "sipward-test");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let accepting = hub.clone();
    tokio::spawn(async move {
        while let Ok((stream, remote)) = listener.accept().await {
            let _ = accepting.accept(stream, remote, addr, tls.clone());
        }
    });
    tokio::spawn(hub.clone().reaper());
    Server { hub, addr, events }
}

impl Server {
    async fn event(&mut self) -> ConnEvent {
        tokio::time::timeout(PATIENCE, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("no event"))
            .unwrap_or_else(|| panic!("events closed"))
    }

    async fn message(&mut self) -> Vec<u8> {
        match self.event().await {
            ConnEvent::Message { bytes, .. } => bytes,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn closed(&mut self) -> CloseReason {
        match self.event().await {
            ConnEvent::Closed { reason, .. } => reason,
            other => panic!("expected a close, got {other:?}"),
        }
    }
}

fn register(n: u32) -> Vec<u8> {
    format!(
        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK{n}\r\n\
         From: <sip:a@example.test>;tag={n}\r\nTo: <sip:a@example.test>\r\nCall-ID: c{n}\r\n\
         CSeq: {n} REGISTER\r\nContent-Length: 4\r\n\r\nbody"
    )
    .into_bytes()
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// Everything the server sends until it closes.
async fn read_to_close<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut all))
        .await
        .unwrap_or_else(|_| panic!("the server did not close"));
    all
}

#[tokio::test]
async fn pipelined_messages_arrive_in_order_on_the_connection_flow() {
    let mut server = start(LimitSettings::default(), None).await;
    let mut client = connect(server.addr).await;
    let mut all = b"\r\n".to_vec();
    for n in 1..=3 {
        all.extend(register(n));
    }
    client
        .write_all(&all)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for n in 1..=3 {
        match server.event().await {
            ConnEvent::Message { flow, bytes } => {
                assert_eq!(bytes, register(n));
                assert_eq!(
                    (flow.transport, flow.remote),
                    (
                        Transport::Tcp,
                        client.local_addr().unwrap_or_else(|e| panic!("{e}"))
                    )
                );
                assert_eq!(flow.local, server.addr);
                assert!(flow.connection.is_some());
            }
            other => panic!("{other:?}"),
        }
    }
    drop(client);
    assert_eq!(server.closed().await, CloseReason::PeerClosed);
    assert_eq!(server.hub.limits().open_connections(), 0);
}

/// A REGISTER with a body of `len` bytes.
fn register_with_body(n: u32, len: usize) -> Vec<u8> {
    let mut message = format!(
        "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK{n}\r\n\
         From: <sip:a@example.test>;tag={n}\r\nTo: <sip:a@example.test>\r\nCall-ID: c{n}\r\n\
         CSeq: {n} REGISTER\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes();
    message.extend((0..len).map(|i| b'a' + (i % 26) as u8));
    message
}

/// An idle connection reads into a small buffer and a message in flight into a larger
/// one: messages of every size, alone, pipelined and cut at the buffers' sizes, arrive
/// whole and in order, and a keepalive between them is answered.
#[tokio::test]
async fn messages_of_every_size_arrive_whole_across_the_read_buffers() {
    let mut server = start(LimitSettings::default(), None).await;
    let mut client = connect(server.addr).await;
    client.set_nodelay(true).unwrap_or_else(|e| panic!("{e}"));
    let sizes = [0, 1, 63, 64, 65, 900, 1024, 1500, 3000];
    // One at a time, with a pause: each starts on an idle connection.
    for (n, len) in (1u32..).zip(sizes) {
        let message = register_with_body(n, len);
        client
            .write_all(&message)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(server.message().await, message, "body of {len}");
    }
    // A keepalive while idle: its pong.
    client
        .write_all(b"\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut pong = [0u8; 2];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut pong))
        .await
        .unwrap_or_else(|_| panic!("no pong"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&pong, b"\r\n");
    // All of them at once, written in pieces cut at the buffers' sizes.
    let all: Vec<u8> = (100u32..)
        .zip(sizes)
        .flat_map(|(n, len)| register_with_body(n, len))
        .collect();
    let mut rest = all.as_slice();
    for cut in [64, 1, 63, 1024, 1, 1023, 64].into_iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, after) = rest.split_at(cut.min(rest.len()));
        client
            .write_all(piece)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::task::yield_now().await;
        rest = after;
    }
    for (n, len) in (100u32..).zip(sizes) {
        assert_eq!(
            server.message().await,
            register_with_body(n, len),
            "body of {len}"
        );
    }
}

#[tokio::test]
async fn a_message_split_byte_by_byte_is_one_message() {
    let mut server = start(LimitSettings::default(), None).await;
    let mut client = connect(server.addr).await;
    client.set_nodelay(true).unwrap_or_else(|e| panic!("{e}"));
    for b in register(7) {
        client
            .write_all(&[b])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::task::yield_now().await;
    }
    assert_eq!(server.message().await, register(7));
}

#[tokio::test]
async fn a_ping_gets_a_pong_and_a_ping_storm_closes() {
    let mut server = start(LimitSettings::default(), None).await;
    let mut client = connect(server.addr).await;
    client
        .write_all(b"\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut pong = [0u8; 2];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut pong))
        .await
        .ok()
        .and_then(Result::ok);
    assert_eq!(&pong, b"\r\n");
    // Pings are not messages: still awaiting the first one.
    let rows = server.hub.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].view.as_ref().map(|v| v.phase),
        Some(crate::streams::limits::Phase::AwaitingFirstMessage)
    );
    client
        .write_all(&b"\r\n\r\n".repeat(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rest = read_to_close(&mut client).await;
    assert!(
        rest.len() <= 20,
        "at most the pongs before the storm was seen: {}",
        rest.len()
    );
    assert_eq!(server.closed().await, CloseReason::PingStorm);
    assert_eq!(server.hub.limits().closed(CloseReason::PingStorm), 1);
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let settings = LimitSettings {
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let mut server = start(settings, None).await;
    let mut client = connect(server.addr).await;
    client
        .write_all(&register(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(server.message().await, register(1));
    assert_eq!(read_to_close(&mut client).await, b"");
    assert_eq!(server.closed().await, CloseReason::Idle);
}

#[tokio::test]
async fn no_first_message_is_closed() {
    let settings = LimitSettings {
        first_message_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let mut server = start(settings, None).await;
    let mut client = connect(server.addr).await;
    assert_eq!(read_to_close(&mut client).await, b"");
    assert_eq!(server.closed().await, CloseReason::FirstMessageTimeout);
}

#[tokio::test]
async fn a_slowloris_message_is_closed_at_message_timeout() {
    let settings = LimitSettings {
        message_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let mut server = start(settings, None).await;
    let mut client = connect(server.addr).await;
    let message = register(1);
    // A byte every 100 ms: never idle, never done within 400 ms.
    let trickle = async {
        for b in message.iter().take(20) {
            if client.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (_, reason) = tokio::join!(trickle, server.closed());
    assert_eq!(reason, CloseReason::MessageTimeout);
    assert_eq!(server.hub.limits().closed(CloseReason::MessageTimeout), 1);
}

#[tokio::test]
async fn garbage_is_closed_without_an_answer() {
    let mut server = start(LimitSettings::default(), None).await;
    let mut client = connect(server.addr).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read_to_close(&mut client).await, b"");
    assert_eq!(server.closed().await, CloseReason::Garbage);
}

#[tokio::test]
async fn a_huge_content_length_gets_513_and_a_close() {
    let mut server = start(LimitSettings::default(), None).await;
    let mut client = connect(server.addr).await;
    let text = String::from_utf8_lossy(&register(1))
        .replace("Content-Length: 4", "Content-Length: 99999999");
    client
        .write_all(text.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = String::from_utf8_lossy(&read_to_close(&mut client).await).to_string();
    assert!(answer.starts_with("SIP/2.0 513 "), "{answer}");
    assert!(answer.contains("Call-ID: c1\r\n"), "{answer}");
    assert_eq!(server.closed().await, CloseReason::TooLarge);
}

#[tokio::test]
async fn a_missing_content_length_gets_400_and_a_close() {
    let mut server = start(LimitSettings::default(), None).await;
    let mut client = connect(server.addr).await;
    let text = String::from_utf8_lossy(&register(1)).replace("Content-Length: 4\r\n", "");
    client
        .write_all(text.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let answer = String::from_utf8_lossy(&read_to_close(&mut client).await).to_string();
    assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
    assert_eq!(server.closed().await, CloseReason::MissingContentLength);
}

#[tokio::test]
async fn sends_are_written_in_order_and_the_queue_is_bounded() {
    let settings = LimitSettings {
        send_queue: 8192,
        ..Default::default()
    };
    let mut server = start(settings, None).await;
    let mut client = connect(server.addr).await;
    client
        .write_all(&register(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = match server.event().await {
        ConnEvent::Message { flow, .. } => flow.connection.unwrap_or(ConnectionId(0)),
        other => panic!("{other:?}"),
    };
    assert!(server.hub.send(id, b"SIP/2.0 200 OK\r\n".to_vec()));
    assert!(server.hub.send(id, b"Content-Length: 0\r\n\r\n".to_vec()));
    let mut got = vec![0u8; 37];
    tokio::time::timeout(PATIENCE, client.read_exact(&mut got))
        .await
        .ok()
        .and_then(Result::ok);
    assert_eq!(got, b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(
        !server.hub.send(ConnectionId(999), b"x".to_vec()),
        "no such connection"
    );
    // One send larger than the whole queue: refused and the connection closed.
    assert!(!server.hub.send(id, vec![b'x'; 9000]));
    assert_eq!(server.closed().await, CloseReason::SendQueueFull);
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_closed_at_send_timeout() {
    let settings = LimitSettings {
        send_timeout: Duration::from_millis(500),
        send_queue: 64 << 20,
        ..Default::default()
    };
    let mut server = start(settings, None).await;
    let mut client = connect(server.addr).await;
    client
        .write_all(&register(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let id = match server.event().await {
        ConnEvent::Message { flow, .. } => flow.connection.unwrap_or(ConnectionId(0)),
        other => panic!("{other:?}"),
    };
    // More than the socket buffers hold, never read by the client.
    for _ in 0..64 {
        if !server.hub.send(id, vec![b'x'; 256 * 1024]) {
            break;
        }
    }
    assert_eq!(server.closed().await, CloseReason::SendTimeout);
    drop(client);
}

#[tokio::test]
async fn the_caps_refuse_before_anything_is_read() {
    let settings = LimitSettings {
        max_connections_per_source: 2,
        ..Default::default()
    };
    let server = start(settings, None).await;
    let _a = connect(server.addr).await;
    let _b = connect(server.addr).await;
    let mut c = connect(server.addr).await;
    assert_eq!(
        read_to_close(&mut c).await,
        b"",
        "the third from one source is closed at once"
    );
    assert_eq!(server.hub.limits().refused(Refuse::SourceCap), 1);
    assert_eq!(server.hub.rows().len(), 2);
}

#[tokio::test]
async fn tls_messages_flow_and_a_silent_client_is_closed_at_the_handshake_timeout() {
    let fixture = Fixture::new("conn-tls");
    let holder = Arc::new(
        TlsHolder::new(
            fixture.settings("server", VerifyClient::None),
            std::time::SystemTime::now(),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let settings = LimitSettings {
        tls_handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let mut server = start(settings, Some(holder)).await;
    let client_config = fixture
        .material("client", VerifyClient::None)
        .client
        .unwrap_or_else(|| panic!("client"));
    let connector = tokio_rustls::TlsConnector::from(client_config);
    let name = crate::streams::tls::server_name("127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
    let mut tls = connector
        .connect(name, connect(server.addr).await)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tls.write_all(&register(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tls.write_all(b"\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tls.flush().await.unwrap_or_else(|e| panic!("{e}"));
    match server.event().await {
        ConnEvent::Message { flow, bytes } => {
            assert_eq!(bytes, register(1));
            assert_eq!(flow.transport, Transport::Tls);
        }
        other => panic!("{other:?}"),
    }
    let mut pong = [0u8; 2];
    tokio::time::timeout(PATIENCE, tls.read_exact(&mut pong))
        .await
        .ok()
        .and_then(Result::ok);
    assert_eq!(&pong, b"\r\n");

    let mut silent = connect(server.addr).await;
    assert_eq!(read_to_close(&mut silent).await, b"");
    assert_eq!(server.closed().await, CloseReason::HandshakeTimeout);
    // Plain SIP on the TLS port fails the handshake.
    let mut plain = connect(server.addr).await;
    plain
        .write_all(&register(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = read_to_close(&mut plain).await;
    assert_eq!(server.closed().await, CloseReason::HandshakeFailed);
}

#[tokio::test]
async fn a_tls_peer_that_leaves_during_or_right_after_the_handshake_is_an_ordinary_close() {
    let fixture = Fixture::new("conn-tls-leave");
    let holder = Arc::new(
        TlsHolder::new(
            fixture.settings("server", VerifyClient::None),
            std::time::SystemTime::now(),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let mut server = start(LimitSettings::default(), Some(holder)).await;
    // A health check: connects and closes before any ClientHello.
    drop(connect(server.addr).await);
    assert_eq!(server.closed().await, CloseReason::PeerClosed);
    // A client that completes the handshake and drops at once, unread session tickets
    // and all (the kernel answers them with a reset), as `openssl s_time` does.
    let client_config = fixture
        .material("client", VerifyClient::None)
        .client
        .unwrap_or_else(|| panic!("client"));
    let name = crate::streams::tls::server_name("127.0.0.1").unwrap_or_else(|e| panic!("{e}"));
    let tls = tokio_rustls::TlsConnector::from(client_config)
        .connect(name, connect(server.addr).await)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(tls);
    assert_eq!(server.closed().await, CloseReason::PeerClosed);
    // Plain SIP on the TLS port is still a failed handshake.
    let mut plain = connect(server.addr).await;
    plain
        .write_all(&register(3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = read_to_close(&mut plain).await;
    assert_eq!(server.closed().await, CloseReason::HandshakeFailed);
}
