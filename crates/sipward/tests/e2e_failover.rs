//! An active/standby pair on one Redis store (`[state] store`, `[ha]`).
//!
//! On one host both nodes cannot hold the same addresses while both live, so the test
//! plays a failover the way it happens to the process: node A (active) and node B
//! (standby, same configuration, its admin API elsewhere) start on the same addresses;
//! B cannot bind them while A holds them and binds them at promotion (on two hosts,
//! IP_FREEBIND binds them at start). A phone registers and calls through A, an operator
//! bans a source on A; A is killed with SIGKILL; B is promoted. Then RTP flows again
//! through B on the same ports, the phone's BYE reaches the far end over the restored
//! route, an inbound call reaches the phone, and the ban is on B with its remaining time.
//! A second test starts two active nodes of one group: the older one steps down.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{count, logged, Guard, Peer, Topology, ADMIN_TOKEN};
use serde_json::Value;

/// A redis-server for the test on `address:6379`, without persistence.
fn start_redis(t: &Topology, address: &str) -> Guard {
    let redis = Guard::spawn(
        Command::new("redis-server")
            .args([
                "--bind",
                address,
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&t.dir)
            .stdout(Stdio::null()),
    )
    .expect("redis-server is installed (scripts/install-deps.sh installs it)");
    let started = Instant::now();
    loop {
        let pong = std::net::TcpStream::connect(format!("{address}:6379")).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(buf)
        });
        if matches!(pong, Ok(b) if &b == b"+PONG\r\n") {
            return redis;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The topology's configuration as a node of group "edge1" with role `role`, its admin
/// API on `admin` (`t.dir/secret` is the pair's shared secret file).
fn node(t: &Topology, secret_dir: &Topology, redis: &str, role: &str, admin: &str) -> String {
    format!(
        "{}\n[state]\nsecret_file = {:?}\nstore = \"redis://{redis}:6379/0\"\n[ha]\nrole = \"{role}\"\ngroup = \"edge1\"\n",
        t.config()
            .replace(&format!("listen = \"{}:8080\"", t.gw_lan()), &format!("listen = \"{admin}\"")),
        secret_dir.dir.join("secret").display().to_string(),
    )
}

/// Starts a node on `text` (written to NAME.toml, its output in NAME.out) and waits
/// until it is ready.
fn start(t: &Topology, name: &str, text: &str) -> Guard {
    let cfg = t.dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, text).unwrap();
    let out = std::fs::File::create(t.dir.join(format!("{name}.out"))).unwrap();
    let err = out.try_clone().unwrap();
    let guard = Guard::spawn(
        Command::new(env!("CARGO_BIN_EXE_sipward"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stdout(out)
            .stderr(err),
    )
    .unwrap();
    let text = t.read_when(&format!("{name}.out"), |t| t.contains("sipward: ready\n"));
    assert!(
        text.contains("sipward: ready\n"),
        "{name} not ready: {text}"
    );
    guard
}

fn api(admin: &str, method: &str, path: &str) -> Value {
    let url = format!("http://{admin}{path}");
    let request = match method {
        "POST" => ureq::post(&url),
        _ => ureq::get(&url),
    };
    let reply = request
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    serde_json::from_str(&reply.into_string().unwrap()).unwrap()
}

/// Waits up to ten seconds until `done` holds for the node's `GET /api/v1/ha`.
fn ha_when(admin: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let ha = api(admin, "GET", "/api/v1/ha");
        if done(&ha) || started.elapsed() > Duration::from_secs(10) {
            return ha;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// RTP both ways between phone 1 and the far end through the relay's first pairs, as
/// seen for `window`.
fn rtp_through_relay(t: &Topology, window: Duration) -> (usize, usize) {
    let cap = t.capture();
    std::thread::sleep(window);
    let p = cap.stop();
    let phone = format!("{}:18000", t.phone(1));
    let far = format!("{}:16000", t.proxy());
    let (lan, wan) = (
        format!("{}:30000", t.gw_lan()),
        format!("{}:30000", t.gw_wan()),
    );
    let out = count(&p, &phone, &lan).min(count(&p, &wan, &far));
    let back = count(&p, &far, &wan).min(count(&p, &lan, &phone));
    (out, back)
}

#[test]
fn a_promoted_standby_keeps_bindings_calls_and_bans_after_the_active_is_killed() {
    let t = Topology::new(201);
    let redis_address = format!("127.{}.0.5", t.n);
    let _redis = start_redis(&t, &redis_address);
    let (admin_a, admin_b) = (
        format!("{}:8080", t.gw_lan()),
        format!("127.{}.0.2:8080", t.n),
    );
    let a = start(&t, "a", &node(&t, &t, &redis_address, "active", &admin_a));
    let _b = start(&t, "b", &node(&t, &t, &redis_address, "standby", &admin_b));
    let b_out = std::fs::read_to_string(t.dir.join("b.out")).unwrap();
    assert!(b_out.contains("bound at promotion"), "{b_out}");
    assert_eq!(api(&admin_b, "GET", "/api/v1/ha")["role"], "standby");

    t.register_alice();
    ureq::post(&format!("http://{admin_a}/api/v1/blacklist"))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_json(serde_json::json!({"source": "192.0.2.66", "seconds": 60, "reason": "test"}))
        .unwrap();
    // An outbound call from phone 1 with RTP echoed by the far end; the phone hangs up
    // 10 s after the answer, after the failover.
    t.tone(14);
    let proxy_ip = t.proxy();
    let mut far_args = vec!["-sn", "uas", "-i", &proxy_ip, "-p", "5060", "-m", "1"];
    far_args.extend(["-rtp_echo", "-mi", &proxy_ip, "-mp", "16000"]);
    far_args.extend(logged("far_messages.log"));
    let far = t.sipp(&far_args);
    std::thread::sleep(Duration::from_millis(200));
    let phone_ip = t.phone(1);
    let caller = t.play(
        "phone_call_rtp.xml",
        Peer::Phone(1),
        Some(&t.gw_lan_sip()),
        &["-s", "bob", "-mi", &phone_ip, "-mp", "18000", "-d", "10000"],
    );
    let log = t.read_when("far_messages.log", |l| l.contains("ACK sip:"));
    assert!(log.contains("ACK sip:"), "the call was not answered: {log}");
    let (out, back) = rtp_through_relay(&t, Duration::from_millis(1_000));
    assert!(out > 0 && back > 0, "no RTP before the kill: {out} {back}");

    // The standby has followed the binding, the call and the ban.
    let ha = ha_when(&admin_b, |h| {
        h["following"]["mirror_keys"].as_u64() >= Some(3)
    });
    assert_eq!(ha["following"]["mirror_keys"], 3, "{ha}");
    assert_eq!(ha["lag_ms"], 0, "{ha}");

    drop(a); // SIGKILL
             // On one host the dead node's sockets must be gone before B takes the same ports
             // (the kernel closes an io_uring's sockets a moment after the process is reaped);
             // on two hosts the addresses are another host's.
    let media_port = format!("{}:30000", t.gw_lan());
    let started = Instant::now();
    while std::net::UdpSocket::bind(&media_port).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{media_port} stays in use"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // What keepalived's notify script runs.
    let promote = common::output_within(
        Command::new(env!("CARGO_BIN_EXE_sipward"))
            .args(["ha", "promote", "--api", &format!("http://{admin_b}")])
            .args(["--token", ADMIN_TOKEN]),
        Duration::from_secs(20),
    )
    .unwrap();
    assert!(promote.status.success(), "{promote:?}");
    let promoted: Value = serde_json::from_slice(&promote.stdout).unwrap();
    assert_eq!(promoted["promoted"], true, "{promoted}");
    assert_eq!(
        promoted["epoch"], 2,
        "A claimed epoch 1 at its start: {promoted}"
    );
    assert_eq!(
        (
            &promoted["restored"]["bindings"],
            &promoted["restored"]["dialogs"],
            &promoted["restored"]["streams"],
            &promoted["restored"]["bans"]
        ),
        (
            &Value::from(1),
            &Value::from(1),
            &Value::from(1),
            &Value::from(1)
        ),
        "{promoted}"
    );
    assert_eq!(api(&admin_b, "GET", "/api/v1/ha")["role"], "active");

    // The call's media flows again through B, on the same ports.
    let (out, back) = rtp_through_relay(&t, Duration::from_millis(1_000));
    assert!(
        out > 0 && back > 0,
        "no RTP after the failover: {out} {back}"
    );
    // The phone's BYE reaches the far end through B over the restored route set.
    caller.wait_ok("caller (BYE after the failover)");
    far.wait_ok("far end");
    let far_log = std::fs::read_to_string(t.dir.join("far_messages.log")).unwrap();
    assert!(far_log.contains("BYE sip:"), "{far_log}");
    t.assert_no_inside_address_in("far_messages.log");

    // An inbound call to alice's binding, registered through A, reaches her through B.
    let answerer = t.sipp(&["-sn", "uas", "-i", &t.phone(0), "-p", "5070", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut caller_args = vec!["-inf", "contact.csv"];
    caller_args.extend(logged("caller_messages.log"));
    let inbound = t.play(
        "proxy_call.xml",
        Peer::Proxy,
        Some(&t.gw_wan_sip()),
        &caller_args,
    );
    inbound.wait_ok("inbound caller");
    answerer.wait_ok("phone 0 (answering)");
    t.assert_no_inside_address_in("caller_messages.log");

    // The ban set on A is on B, with its remaining time.
    let list = api(&admin_b, "GET", "/api/v1/blacklist");
    let bans = list.as_array().unwrap();
    assert_eq!(bans.len(), 1, "{list}");
    assert_eq!(bans[0]["source"], "192.0.2.66");
    let left = bans[0]["expires_in"].as_u64().unwrap();
    assert!((30..=59).contains(&left), "{list}");
}

/// Sends a REGISTER from phone 0 to the node on `t`'s addresses and counts the
/// datagrams that node sends to the proxy within a second (the registrar is not there:
/// only the forwarding is seen).
fn register_forwarded(t: &Topology) -> usize {
    let cap = t.capture_under(&[], &format!("udp and src host {}", t.gw_wan()));
    let phone = std::net::UdpSocket::bind(format!("{}:5070", t.phone(0))).unwrap();
    let branch = format!(
        "z9hG4bK{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let register = format!(
        "REGISTER sip:sipward.test SIP/2.0\r\nVia: SIP/2.0/UDP {p}:5070;branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carol@sipward.test>;tag=1\r\nTo: <sip:carol@sipward.test>\r\n\
         Call-ID: {branch}@{p}\r\nCSeq: 1 REGISTER\r\nContact: <sip:carol@{p}:5070>\r\n\
         Expires: 60\r\nContent-Length: 0\r\n\r\n",
        p = t.phone(0)
    );
    phone.send_to(register.as_bytes(), t.gw_lan_sip()).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let packets = cap.stop();
    count(
        &packets,
        &format!("{}:0", t.gw_wan()),
        &format!("{}:5060", t.proxy()),
    )
}

#[test]
fn of_two_active_nodes_the_one_with_the_lower_epoch_steps_down() {
    let t = Topology::new(202);
    let other = Topology::new(203);
    let redis_address = format!("127.{}.0.5", t.n);
    let _redis = start_redis(&t, &redis_address);
    let (admin_a, admin_b) = (
        format!("{}:8080", t.gw_lan()),
        format!("{}:8080", other.gw_lan()),
    );
    let _a = start(&t, "a", &node(&t, &t, &redis_address, "active", &admin_a));
    let ha = ha_when(&admin_a, |h| h["epoch"] == 1);
    assert_eq!(
        (&ha["role"], &ha["epoch"]),
        (&Value::from("active"), &Value::from(1)),
        "{ha}"
    );
    assert_eq!(
        register_forwarded(&t),
        1,
        "the active node forwards a REGISTER"
    );
    // A second active node of the same group (its own addresses) claims epoch 2.
    let _b = start(
        &other,
        "b",
        &node(&other, &t, &redis_address, "active", &admin_b),
    );
    let ha_b = ha_when(&admin_b, |h| h["epoch"] == 2);
    assert_eq!(
        (&ha_b["role"], &ha_b["epoch"]),
        (&Value::from("active"), &Value::from(2)),
        "{ha_b}"
    );
    let ha = ha_when(&admin_a, |h| h["role"] == "standby");
    assert_eq!(ha["role"], "standby", "A did not step down: {ha}");
    let a_out = std::fs::read_to_string(t.dir.join("a.out")).unwrap();
    assert!(a_out.contains("stepping down to standby"), "{a_out}");
    assert_eq!(
        register_forwarded(&t),
        0,
        "a node that stepped down sends nothing"
    );
    // B stays active, and A, now following, sees B's epoch.
    assert_eq!(api(&admin_b, "GET", "/api/v1/ha")["role"], "active");
    let ha = ha_when(&admin_a, |h| h["following"]["store_epoch"] == 2);
    assert_eq!(ha["following"]["store_epoch"], 2, "{ha}");
}

#[test]
fn a_single_node_restarts_from_the_redis_store_without_a_journal() {
    let t = Topology::new(204);
    let redis_address = format!("127.{}.0.5", t.n);
    let _redis = start_redis(&t, &redis_address);
    let admin = format!("{}:8080", t.gw_lan());
    let config = node(&t, &t, &redis_address, "active", &admin);
    let a = start(&t, "a", &config);
    t.register_alice();
    // The binding is written (one batch) before the kill.
    let ha = ha_when(&admin, |h| {
        h["store"]["records_written"].as_u64() >= Some(1)
    });
    assert!(ha["store"]["connected"] == true, "{ha}");
    drop(a); // SIGKILL
    let _a = start(&t, "a", &config);
    let out = std::fs::read_to_string(t.dir.join("a.out")).unwrap();
    assert!(
        out.contains("sipward: restored 1 binding(s), 0 dialog(s) (0 stream(s)), 0 ban(s) from Redis store redis://"),
        "{out}"
    );
    let answerer = t.sipp(&["-sn", "uas", "-i", &t.phone(0), "-p", "5070", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    let inbound = t.play(
        "proxy_call.xml",
        Peer::Proxy,
        Some(&t.gw_wan_sip()),
        &["-inf", "contact.csv"],
    );
    inbound.wait_ok("inbound caller");
    answerer.wait_ok("phone 0 (answering)");
}

#[test]
fn calls_go_on_while_redis_is_down_and_the_store_is_rewritten_when_it_is_back() {
    let t = Topology::new(205);
    let redis_address = format!("127.{}.0.5", t.n);
    let redis = start_redis(&t, &redis_address);
    let admin = format!("{}:8080", t.gw_lan());
    let config = node(&t, &t, &redis_address, "active", &admin);
    let a = start(&t, "a", &config);
    drop(redis);
    t.register_alice();
    // An inbound call to alice while the store is down.
    let answerer = t.sipp(&["-sn", "uas", "-i", &t.phone(0), "-p", "5070", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    let inbound = t.play(
        "proxy_call.xml",
        Peer::Proxy,
        Some(&t.gw_wan_sip()),
        &["-inf", "contact.csv"],
    );
    inbound.wait_ok("inbound caller (Redis down)");
    answerer.wait_ok("phone 0 (answering, Redis down)");
    let ha = ha_when(&admin, |h| h["store"]["write_failures"].as_u64() >= Some(1));
    assert_eq!(ha["store"]["connected"], false, "{ha}");
    assert!(
        ha["store"]["records_waiting_for_store"].as_u64() >= Some(1),
        "{ha}"
    );
    // Redis comes back empty: the writer rewrites what it kept (alice's binding).
    let _redis = start_redis(&t, &redis_address);
    let ha = ha_when(&admin, |h| {
        h["store"]["connected"] == true && h["store"]["records_waiting_for_store"] == 0
    });
    assert_eq!(ha["store"]["connected"], true, "{ha}");
    drop(a); // SIGKILL
    let _a = start(&t, "a", &config);
    let out = std::fs::read_to_string(t.dir.join("a.out")).unwrap();
    assert!(
        out.contains("sipward: restored 1 binding(s), "),
        "the rewrite after Redis came back holds the binding: {out}"
    );
}
