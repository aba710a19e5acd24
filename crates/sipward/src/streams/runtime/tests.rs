//! The stream side over loopback (run in a private network namespace): listeners,
//! the gateway's own connections (reused, failing, TLS with a client certificate) and
//! what the admin surface shows.

use super::*;
use crate::streams::tls::tests::Fixture;
use crate::streams::tls::VerifyClient;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(10);

fn options(n: u32) -> Vec<u8> {
    format!(
        "OPTIONS sip:peer.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK{n}\r\n\
         From: <sip:gw@example.test>;tag={n}\r\nTo: <sip:peer.test>\r\nCall-ID: o{n}\r\n\
         CSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn transmit(
    local: SocketAddr,
    remote: SocketAddr,
    transport: Transport,
    connection: Option<ConnectionId>,
    payload: Vec<u8>,
) -> Transmit {
    Transmit {
        local,
        remote,
        payload,
        transport,
        connection,
        intercepted: false,
    }
}

async fn runtime(
    listeners: Vec<ListenerSpec>,
    tls: HashMap<IpAddr, Arc<TlsHolder>>,
    server_names: HashMap<SocketAddr, String>,
) -> StreamRuntime {
    StreamRuntime::start(StreamSetup {
        listeners,
        tls,
        server_names,
        limits: LimitSettings::default(),
        max_message_len: 8192,
        agent: "sipward-test".into(),
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn event(rt: &mut StreamRuntime) -> ConnEvent {
    tokio::time::timeout(PATIENCE, rt.next_event())
        .await
        .unwrap_or_else(|_| panic!("no event"))
        .unwrap_or_else(|| panic!("closed"))
}

/// Reads exactly `n` bytes.
async fn read_n<S: tokio::io::AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("short read"));
    buf
}

fn gw() -> SocketAddr {
    "127.0.0.1:5060".parse().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn the_gateway_opens_one_connection_per_peer_and_reuses_it_both_ways() {
    let mut rt = runtime(vec![], HashMap::new(), HashMap::new()).await;
    let peer = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let peer_addr = peer.local_addr().unwrap_or_else(|e| panic!("{e}"));
    assert!(rt.transmit(&transmit(gw(), peer_addr, Transport::Tcp, None, options(1))));
    let (mut conn, from) = tokio::time::timeout(PATIENCE, peer.accept())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no connection"));
    assert_eq!(from.ip(), gw().ip(), "opened from the interface's address");
    assert_eq!(read_n(&mut conn, options(1).len()).await, options(1));
    // Reused: the second message comes on the same connection.
    let id = rt
        .pooled(gw().ip(), peer_addr, Transport::Tcp)
        .unwrap_or_else(|| panic!("pooled"));
    assert!(rt.transmit(&transmit(gw(), peer_addr, Transport::Tcp, None, options(2))));
    assert_eq!(read_n(&mut conn, options(2).len()).await, options(2));
    // The peer's answer arrives on that connection's flow, with the interface's address.
    conn.write_all(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK2\r\nCall-ID: o2\r\nCSeq: 2 OPTIONS\r\nContent-Length: 0\r\n\r\n").await.unwrap_or_else(|e| panic!("{e}"));
    match event(&mut rt).await {
        ConnEvent::Message { flow, .. } => {
            assert_eq!(
                (flow.connection, flow.local, flow.remote, flow.transport),
                (Some(id), gw(), peer_addr, Transport::Tcp)
            );
        }
        other => panic!("{other:?}"),
    }
    // And a transmit naming the connection goes on it.
    assert!(rt.transmit(&transmit(
        gw(),
        peer_addr,
        Transport::Tcp,
        Some(id),
        options(3)
    )));
    assert_eq!(read_n(&mut conn, options(3).len()).await, options(3));
    let json = rt.connections_json();
    assert_eq!(json["open"], 1);
    assert_eq!(json["connections"][0]["direction"], "out");
    assert_eq!(json["connections"][0]["state"], "open");
    assert_eq!(json["connections"][0]["remote"], peer_addr.to_string());
    assert_eq!(json["connections"][0]["messages_in"], 1);
    drop(conn);
    match event(&mut rt).await {
        ConnEvent::Closed { reason, unsent, .. } => {
            assert_eq!((reason, unsent.len()), (CloseReason::PeerClosed, 0))
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !rt.transmit(&transmit(
            gw(),
            peer_addr,
            Transport::Tcp,
            Some(id),
            options(4)
        )),
        "a closed connection takes nothing"
    );
}

#[tokio::test]
async fn a_connection_closed_before_the_peer_said_anything_returns_what_it_carried() {
    // A server that takes the request and hangs up unanswered (as a TLS server does that
    // refuses the client certificate after a TLS 1.3 handshake): its sender must hear.
    let mut rt = runtime(vec![], HashMap::new(), HashMap::new()).await;
    let peer = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let peer_addr = peer.local_addr().unwrap_or_else(|e| panic!("{e}"));
    assert!(rt.transmit(&transmit(gw(), peer_addr, Transport::Tcp, None, options(1))));
    let (mut conn, _) = tokio::time::timeout(PATIENCE, peer.accept())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no connection"));
    assert_eq!(read_n(&mut conn, options(1).len()).await, options(1));
    drop(conn);
    match event(&mut rt).await {
        ConnEvent::Closed { reason, unsent, .. } => {
            assert_eq!(
                (reason, unsent),
                (CloseReason::PeerClosed, vec![options(1)])
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refused_connection_returns_what_was_queued_as_unsent() {
    let mut rt = runtime(vec![], HashMap::new(), HashMap::new()).await;
    // A port nothing listens on (bound then dropped).
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rt.transmit(&transmit(gw(), closed, Transport::Tcp, None, options(1))));
    match event(&mut rt).await {
        ConnEvent::Closed {
            flow,
            reason,
            unsent,
        } => {
            assert_eq!((reason, flow.remote), (CloseReason::ConnectFailed, closed));
            assert_eq!(unsent, vec![options(1)]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        rt.metrics()
            .contains("sipward_stream_closed_total{reason=\"connect_failed\"} 1"),
        "{}",
        rt.metrics()
    );
}

#[tokio::test]
async fn listeners_take_tcp_and_tls_and_answers_go_back_on_the_connection() {
    let fixture = Fixture::new("runtime-listen");
    let holder = Arc::new(
        TlsHolder::new(
            fixture.settings("server", VerifyClient::None),
            std::time::SystemTime::now(),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let specs = vec![
        ListenerSpec {
            local: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            transport: Transport::Tcp,
        },
        ListenerSpec {
            local: "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            transport: Transport::Tls,
        },
    ];
    let mut rt = runtime(specs, HashMap::from([(gw().ip(), holder)]), HashMap::new()).await;
    let listeners = rt.listeners().to_vec();
    let (tcp_at, tls_at) = (listeners[0].0, listeners[1].0);
    let mut tcp = tokio::net::TcpStream::connect(tcp_at)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tcp.write_all(&options(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let flow = match event(&mut rt).await {
        ConnEvent::Message { flow, bytes } => {
            assert_eq!(bytes, options(1));
            flow
        }
        other => panic!("{other:?}"),
    };
    assert_eq!((flow.transport, flow.local), (Transport::Tcp, tcp_at));
    assert!(rt.transmit(&transmit(
        flow.local,
        flow.remote,
        flow.transport,
        flow.connection,
        b"SIP/2.0 200 OK\r\n\r\n".to_vec()
    )));
    assert_eq!(read_n(&mut tcp, 18).await, b"SIP/2.0 200 OK\r\n\r\n");

    let client = fixture
        .material("client", VerifyClient::None)
        .client
        .unwrap_or_else(|| panic!("client"));
    let name = server_name("sip.example.test").unwrap_or_else(|e| panic!("{e}"));
    let socket = tokio::net::TcpStream::connect(tls_at)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, socket)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tls.write_all(&options(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tls.flush().await.unwrap_or_else(|e| panic!("{e}"));
    match event(&mut rt).await {
        ConnEvent::Message { flow, bytes } => assert_eq!(
            (flow.transport, flow.local, bytes),
            (Transport::Tls, tls_at, options(2))
        ),
        other => panic!("{other:?}"),
    }
    let json = rt.connections_json();
    assert_eq!(json["open"], 2);
    assert!(json["connections"].as_array().is_some_and(|c| c
        .iter()
        .any(|c| c["transport"] == "tls" && c["direction"] == "in")));
}

#[tokio::test]
async fn the_gateway_opens_tls_verifying_the_server_name_and_presenting_its_certificate() {
    let fixture = Fixture::new("runtime-tls-out");
    // The peer requires a client certificate from the CA.
    let peer_config = fixture.material("server", VerifyClient::Require).server;
    let peer = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let peer_addr = peer.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let gateway_tls = Arc::new(
        TlsHolder::new(
            fixture.settings("client", VerifyClient::None),
            std::time::SystemTime::now(),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    );
    let names = HashMap::from([(peer_addr, "sip.example.test".to_string())]);
    let mut rt = runtime(vec![], HashMap::from([(gw().ip(), gateway_tls)]), names).await;
    assert!(rt.transmit(&transmit(gw(), peer_addr, Transport::Tls, None, options(1))));
    let (socket, _) = tokio::time::timeout(PATIENCE, peer.accept())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no connection"));
    let mut tls = tokio_rustls::TlsAcceptor::from(peer_config)
        .accept(socket)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        tls.get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c| !c.is_empty()),
        "the gateway presented its certificate"
    );
    assert_eq!(read_n(&mut tls, options(1).len()).await, options(1));

    // A peer whose certificate does not carry the expected name is refused.
    let wrong = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let wrong_addr = wrong.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let stranger_config = fixture.material("client", VerifyClient::None).server;
    tokio::spawn(async move {
        if let Ok((socket, _)) = wrong.accept().await {
            let _ = tokio_rustls::TlsAcceptor::from(stranger_config)
                .accept(socket)
                .await;
        }
    });
    assert!(rt.transmit(&transmit(
        gw(),
        wrong_addr,
        Transport::Tls,
        None,
        options(2)
    )));
    match event(&mut rt).await {
        ConnEvent::Closed { reason, unsent, .. } => assert_eq!(
            (reason, unsent),
            (CloseReason::HandshakeFailed, vec![options(2)])
        ),
        other => panic!("{other:?}"),
    }
    let events = rt.drain_events();
    assert!(
        events
            .iter()
            .any(|e| e.reason.contains("tls_handshake_failed")),
        "{events:?}"
    );
}

#[tokio::test]
async fn tls_without_a_client_configuration_is_undeliverable_at_once() {
    let mut rt = runtime(vec![], HashMap::new(), HashMap::new()).await;
    let peer: SocketAddr = "127.0.0.1:5061".parse().unwrap_or_else(|e| panic!("{e}"));
    assert!(!rt.transmit(&transmit(gw(), peer, Transport::Tls, None, options(1))));
    assert!(
        !rt.transmit(&transmit(gw(), peer, Transport::Udp, None, options(1))),
        "UDP is not the stream side's"
    );
}

fn response(status: &str, cseq: &str, extra: &str) -> Vec<u8> {
    format!(
        "SIP/2.0 {status}\r\nVia: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK1\r\nFrom: <sip:a@x.test>;tag=1\r\n\
         To: <sip:a@x.test>;tag=2\r\nCall-ID: c\r\nCSeq: {cseq}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn a_registered_connection_outlives_the_idle_timeout_by_its_binding() {
    let mut rt = runtime(vec![], HashMap::new(), HashMap::new()).await;
    let peer = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let peer_addr = peer.local_addr().unwrap_or_else(|e| panic!("{e}"));
    assert!(rt.transmit(&transmit(gw(), peer_addr, Transport::Tcp, None, options(1))));
    let id = rt
        .pooled(gw().ip(), peer_addr, Transport::Tcp)
        .unwrap_or_else(|| panic!("pooled"));
    let (mut conn, _) = tokio::time::timeout(PATIENCE, peer.accept())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no connection"));
    assert_eq!(read_n(&mut conn, options(1).len()).await, options(1));
    let contact = "Contact: <sip:a@192.0.2.1:5060;transport=tcp>;expires=3600\r\n";
    let register_ok = response("200 OK", "1 REGISTER", contact);
    assert!(rt.transmit(&transmit(
        gw(),
        peer_addr,
        Transport::Tcp,
        Some(id),
        register_ok.clone()
    )));
    assert_eq!(read_n(&mut conn, register_ok.len()).await, register_ok);
    let registered = Instant::now() + Duration::from_secs(3600);
    let binding = move |_| Some(ConnectionUse::Binding { until: registered });
    rt.refresh_usage(binding);
    // Once written (the send clock stopped), only the binding's lifetime bounds it.
    let now = Instant::now();
    let far = now + Duration::from_secs(3600);
    let held = async {
        while rt.hub.limits().next_deadline().is_none_or(|d| d <= far) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert!(
        tokio::time::timeout(PATIENCE, held).await.is_ok(),
        "{:?}",
        rt.hub.limits().next_deadline().map(|d| d - now)
    );
    let invite_ok = response("200 OK", "2 INVITE", "");
    assert!(rt.transmit(&transmit(
        gw(),
        peer_addr,
        Transport::Tcp,
        Some(id),
        invite_ok.clone()
    )));
    assert_eq!(read_n(&mut conn, invite_ok.len()).await, invite_ok);
    rt.refresh_usage(|_| Some(ConnectionUse::Dialog));
    let call = async {
        while rt.hub.limits().next_deadline().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert!(
        tokio::time::timeout(PATIENCE, call).await.is_ok(),
        "no idle deadline during a call"
    );
    assert!(rt.transmit(&transmit(
        gw(),
        peer_addr,
        Transport::Tcp,
        Some(id),
        response("200 OK", "3 BYE", "")
    )));
    rt.refresh_usage(binding);
    assert!(
        rt.hub.limits().next_deadline().is_some(),
        "the call ended: idle again (bounded by the binding)"
    );
}

#[tokio::test]
async fn the_gateway_pings_its_connections_that_carry_a_binding_and_closes_on_a_missing_pong() {
    let limits = LimitSettings {
        keepalive_interval: Duration::from_millis(300),
        keepalive_timeout: Duration::from_millis(300),
        ..LimitSettings::default()
    };
    let mut rt = StreamRuntime::start(StreamSetup {
        listeners: vec![],
        tls: HashMap::new(),
        server_names: HashMap::new(),
        limits,
        max_message_len: 8192,
        agent: "sipward-test".into(),
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let peer = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let peer_addr = peer.local_addr().unwrap_or_else(|e| panic!("{e}"));
    assert!(rt.transmit(&transmit(gw(), peer_addr, Transport::Tcp, None, options(1))));
    let (mut conn, _) = tokio::time::timeout(PATIENCE, peer.accept())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no connection"));
    assert_eq!(read_n(&mut conn, options(1).len()).await, options(1));
    // No state on it yet: no ping for a while.
    let mut byte = [0u8; 1];
    let quiet = tokio::time::timeout(Duration::from_millis(700), conn.read(&mut byte)).await;
    assert!(quiet.is_err(), "pinged a connection that carries nothing");
    let id = rt
        .pooled(gw().ip(), peer_addr, Transport::Tcp)
        .unwrap_or_else(|| panic!("pooled"));
    let contact = "Contact: <sip:a@192.0.2.1:5060;transport=tcp>;expires=3600\r\n";
    let register_ok = response("200 OK", "1 REGISTER", contact);
    assert!(rt.transmit(&transmit(
        gw(),
        peer_addr,
        Transport::Tcp,
        Some(id),
        register_ok.clone()
    )));
    assert_eq!(read_n(&mut conn, register_ok.len()).await, register_ok);
    let until = Instant::now() + Duration::from_secs(3600);
    rt.refresh_usage(|_| Some(ConnectionUse::Binding { until }));
    // Now it is pinged; answered, it stays.
    assert_eq!(read_n(&mut conn, 4).await, b"\r\n\r\n");
    conn.write_all(b"\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        read_n(&mut conn, 4).await,
        b"\r\n\r\n",
        "pinged again after the interval"
    );
    // Unanswered: closed.
    match event(&mut rt).await {
        ConnEvent::Closed { reason, .. } => assert_eq!(reason, CloseReason::KeepaliveTimeout),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn closing_everything_at_shutdown_writes_what_was_queued_first() {
    let mut rt = runtime(vec![], HashMap::new(), HashMap::new()).await;
    let peer = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let peer_addr = peer.local_addr().unwrap_or_else(|e| panic!("{e}"));
    assert!(rt.transmit(&transmit(gw(), peer_addr, Transport::Tcp, None, options(1))));
    let (mut conn, _) = tokio::time::timeout(PATIENCE, peer.accept())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no connection"));
    assert_eq!(read_n(&mut conn, options(1).len()).await, options(1));
    // Sent and closed at once (the BYEs of a shutdown): the message goes out first.
    assert!(rt.transmit(&transmit(gw(), peer_addr, Transport::Tcp, None, options(2))));
    rt.close_all(Duration::from_secs(2)).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut all)).await;
    assert_eq!(all, options(2));
    assert_eq!(rt.hub.rows().len(), 0);
}
