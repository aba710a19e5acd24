//! Kamailio with its TLS module as the outside proxy and registrar, with mutual TLS
//! (`verify_certificate` and `require_certificate`): the real `sipward run` binary
//! reaches it over TLS, verifies its certificate by `server_name` and presents its own
//! client certificate; two UDP phones register with digest and call each other through
//! it. A gateway whose client certificate Kamailio does not trust, or that expects
//! another server name, is refused, and the phone gets a 503 rather than silence. Run
//! inside a private network namespace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Peer, Terminated, Topology};

/// `sipward cert` for `name` (and `ips`) into `out`, signed by the CA in `ca_dir` (made
/// there by the first call).
fn cert(out: &Path, ca_dir: &Path, name: &str, ips: &[String]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipward"));
    cmd.args(["cert", "--name", name]);
    for ip in ips {
        cmd.args(["--ip", ip]);
    }
    let result = cmd
        .arg("--out")
        .arg(out)
        .arg("--ca-out")
        .arg(ca_dir)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Starts Kamailio (tests/kamailio/proxy.cfg with its TLS module) on the proxy address:
/// UDP 5060 (for the readiness probe) and TLS 5061; `mutual`: requiring a client
/// certificate from the test CA (and verifying the servers it connects to). Its log
/// (every message it received, decrypted) is `kamailio.log`.
fn start_kamailio_tls(t: &Topology, mutual: bool) -> Terminated {
    let certs = t.dir.join("certs");
    let tls_cfg = t.dir.join("kamailio-tls.cfg");
    let verify = if mutual { "yes" } else { "no" };
    std::fs::write(
        &tls_cfg,
        format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = {verify}\nrequire_certificate = {verify}\n\
             certificate = {c}/proxy.sipward.test.crt\nprivate_key = {c}/proxy.sipward.test.key\n\
             ca_list = {c}/ca.crt\n\n\
             [client:default]\nmethod = TLSv1.2+\nverify_certificate = {verify}\nrequire_certificate = {verify}\n\
             ca_list = {c}/ca.crt\n",
            c = certs.display()
        ),
    )
    .unwrap();
    let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/kamailio/proxy.cfg");
    let log = std::fs::File::create(t.dir.join("kamailio.log")).unwrap();
    let proxy = t.proxy();
    let guard = Terminated::spawn(
        Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .args(["-A", "WITH_TLS", "-A"])
            .arg(format!("TLS_CONFIG=\"{}\"", tls_cfg.display()))
            .args(["-l", &format!("udp:{proxy}:5060")])
            .args(["-l", &format!("tls:{proxy}:5061")])
            .arg("-P")
            .arg(t.dir.join("kamailio.pid"))
            .arg("-Y")
            .arg(&t.dir)
            .arg("-w")
            .arg(&t.dir)
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("kamailio is installed (scripts/install-deps.sh installs it)");
    let started = Instant::now();
    while std::net::TcpStream::connect(format!("{proxy}:5061")).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "kamailio did not listen on TLS; see {}",
            t.dir.join("kamailio.log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// The gateway's configuration: phones on UDP, the proxy reached over TLS at 5061 by the
/// name `server_name`, its calls in admitted on the outside TLS service; the outside
/// interface's certificate (presented as the client certificate) from `gw_certs`.
fn config(t: &Topology, gw_certs: &Path, server_name: &str) -> String {
    let ca = t.dir.join("certs/ca.crt");
    let wan = format!("networks = [\"127.{}.1.0/24\"]\n", t.n);
    let tls = format!(
        "tls = {{ certificate = \"{c}/gw.sipward.test.crt\", private_key = \"{c}/gw.sipward.test.key\", ca = \"{}\" }}\n",
        ca.display(),
        c = gw_certs.display()
    );
    let proxy_object = format!("host = \"{}:5060\"\n", t.proxy());
    let text = t
        .config()
        .replacen(&wan, &format!("{wan}{tls}"), 1)
        .replacen(
            &proxy_object,
            &format!(
                "host = \"{}:5061\"\ntransport = \"tls\"\nserver_name = \"{server_name}\"\n",
                t.proxy()
            ),
            1,
        )
        .replacen(
            "source = \"proxy\"\nto = \"core\"\nservice = \"sip\"\n",
            "source = \"proxy\"\nto = \"core\"\nservice = \"sip-tls\"\n",
            1,
        );
    assert!(text.contains("service = \"sip-tls\"") && text.contains("transport = \"tls\""));
    text + "[service.sip-tls]\nprotocol = \"tls\"\nport = 5061\nalg = \"sip\"\n"
}

#[test]
fn kamailio_over_mutual_tls_registers_and_connects_phones_through_the_gateway() {
    let t = Topology::new(121);
    let certs = t.dir.join("certs");
    cert(&certs, &certs, "gw.sipward.test", &[t.gw_wan()]);
    cert(&certs, &certs, "proxy.sipward.test", &[t.proxy()]);
    let _kamailio = start_kamailio_tls(&t, true);

    let gw = t.start_gateway_text(&config(&t, &certs, "proxy.sipward.test"));
    let gw_lan = t.gw_lan_sip();
    for (i, user) in [(0, "alice"), (1, "bob")] {
        let args = [
            "-key",
            "user",
            user,
            "-au",
            user,
            "-ap",
            "secret",
            "-auth_uri",
            "sip:sipward.test",
        ];
        t.play(
            "phone_register_as.xml",
            Peer::Phone(i),
            Some(&gw_lan),
            &args,
        )
        .wait_ok(&format!("{user} registration over TLS to Kamailio"));
    }
    let bob = t.play("phone_answer.xml", Peer::Phone(1), None, &["-s", "bob"]);
    std::thread::sleep(Duration::from_millis(200));
    let alice = t.play(
        "phone_call_via_proxy.xml",
        Peer::Phone(0),
        Some(&gw_lan),
        &["-s", "bob"],
    );
    alice.wait_ok("alice calling bob through Kamailio over TLS");
    bob.wait_ok("bob answering the call Kamailio sent over TLS");
    let log = t.read_when("kamailio.log", |s| s.contains("BYE sip:"));
    assert!(log.contains("INVITE sip:bob@sipward.test"), "{log}");
    assert!(log.contains("BYE sip:"), "{log}");
    assert!(
        log.contains(&format!("Via: SIP/2.0/TLS {}:5061;", t.gw_wan())),
        "Kamailio got the gateway's requests over TLS: {log}"
    );
    t.assert_no_inside_address_in("kamailio.log");
    drop(gw);

    // A gateway whose client certificate comes from a CA Kamailio does not trust: the
    // handshake is refused and the phone's REGISTER answered 503 at once.
    let other = t.dir.join("other-ca");
    cert(&other, &other, "gw.sipward.test", &[t.gw_wan()]);
    let gw = t.start_gateway_text(&config(&t, &other, "proxy.sipward.test"));
    let started = Instant::now();
    t.play(
        "phone_register_refused.xml",
        Peer::Phone(0),
        Some(&gw_lan),
        &[],
    )
    .wait_ok("a REGISTER through a gateway Kamailio refuses");
    assert!(started.elapsed() < Duration::from_secs(5));
    let log = t.read_when("kamailio.log", |s| s.contains("certificate verify failed"));
    assert!(
        log.contains("certificate verify failed"),
        "Kamailio did not refuse the client certificate: {log}"
    );
    drop(gw);

    // A gateway expecting another name than Kamailio's certificate carries refuses it.
    let gw = t.start_gateway_text(&config(&t, &certs, "other.sipward.test"));
    t.play(
        "phone_register_refused.xml",
        Peer::Phone(0),
        Some(&gw_lan),
        &[],
    )
    .wait_ok("a REGISTER to a proxy whose certificate names another server");
    drop(gw);
}

fn sox(args: &[&str]) -> String {
    let out = Command::new("sox")
        .args(args)
        .output()
        .expect("sox is installed (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "sox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A baresip configuration directory for a UA listening (SIP over TLS among others) on
/// `ip:port`, trusting the test CA, with SRTP, playing `source`; `certificate` (PEM,
/// certificate and key) lets it serve TLS to a proxy that connects to it.
fn baresip_dir(
    t: &Topology,
    name: &str,
    ip: &str,
    port: u16,
    source: &Path,
    account: &str,
    certificate: Option<&Path>,
) -> PathBuf {
    let dir = t.dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = format!(
        "poll_method epoll\nsip_listen {ip}:{port}\nsip_cafile {}\n\
         audio_player aubridge,nil\naudio_alert aubridge,nil\naudio_source aufile,{}\n\
         module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n\
         module aubridge.so\nmodule sndfile.so\nmodule srtp.so\nmodule account.so\nmodule menu.so\n\
         snd_path {}\n",
        t.dir.join("certs/ca.crt").display(),
        source.display(),
        dir.display()
    );
    if let Some(c) = certificate {
        config.push_str(&format!("sip_certificate {}\n", c.display()));
    }
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
    dir
}

/// baresip alice inside registers with the gateway over TLS and calls baresip bob
/// outside, registered with Kamailio over TLS, both with mandatory SDES-SRTP: the
/// a=crypto lines leave the gateway byte-exact, the SRTP is relayed opaquely, and bob
/// decodes alice's 440 Hz tone.
#[test]
fn baresip_over_tls_with_srtp_through_the_gateway_and_kamailio() {
    let t = Topology::new(122);
    let certs = t.dir.join("certs");
    cert(&certs, &certs, "gw.sipward.test", &[t.gw_lan(), t.gw_wan()]);
    cert(&certs, &certs, "proxy.sipward.test", &[t.proxy()]);
    let bob_ip = format!("127.{}.1.20", t.n);
    cert(
        &certs,
        &certs,
        "bob.sipward.test",
        std::slice::from_ref(&bob_ip),
    );
    let bob_pem = t.dir.join("bob.pem");
    std::fs::write(
        &bob_pem,
        [
            std::fs::read(certs.join("bob.sipward.test.crt")).unwrap(),
            std::fs::read(certs.join("bob.sipward.test.key")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let _kamailio = start_kamailio_tls(&t, false);

    let lan = format!("networks = [\"127.{}.0.0/24\"]\ninside = true\n", t.n);
    let lan_tls = format!(
        "tls = {{ certificate = \"{c}/gw.sipward.test.crt\", private_key = \"{c}/gw.sipward.test.key\", ca = \"{c}/ca.crt\" }}\n",
        c = certs.display()
    );
    // baresip binds its TLS client socket to the wildcard address: on loopback its
    // connection comes from 127.0.0.1, which is therefore an inside phone here too.
    let lan_networks = format!(
        "networks = [\"127.{}.0.0/24\", \"127.0.0.1/32\"]\ninside = true\n",
        t.n
    );
    let text = config(&t, &certs, "proxy.sipward.test")
        .replacen(&lan, &format!("{lan_networks}{lan_tls}"), 1)
        .replacen("service = \"sip\"\n", "service = \"sip-tls\"\n", 1)
        .replacen("[alg.sip]\n", "[alg.sip]\nmedia_latching = \"any\"\n", 1)
        + "[[address]]\nname = \"loopback-phones\"\nnetwork = \"127.0.0.1/32\"\n\
             [[rule]]\naction = \"nat\"\nfrom = \"lan\"\nsource = \"loopback-phones\"\nto = \"wan\"\n\
             destination = \"proxy\"\nservice = \"sip-tls\"\n";
    assert!(!text.contains("service = \"sip\"\n"), "{text}");
    let _gw = t.start_gateway_text(&text);

    let tone = t.dir.join("tone.wav");
    let filler = t.dir.join("filler.wav");
    for (file, seconds, hz) in [(&tone, "3", "440"), (&filler, "10", "300")] {
        sox(&[
            "-n",
            "-r",
            "8000",
            "-c",
            "1",
            "-b",
            "16",
            file.to_str().unwrap(),
            "synth",
            seconds,
            "sine",
            hz,
        ]);
    }
    let proxy = t.proxy();
    let bob = baresip_dir(
        &t,
        "bob",
        &bob_ip,
        5080,
        &filler,
        &format!(
            "<sip:bob@sipward.test;transport=tls>;auth_pass=secret;outbound=\"sip:{proxy}:5061;transport=tls\";regint=600;answermode=auto;mediaenc=srtp-mand"
        ),
        Some(&bob_pem),
    );
    let mut far = common::Guard::spawn(
        Command::new("baresip")
            .arg("-f")
            .arg(&bob)
            .args(["-n", &bob_ip, "-t", "12"])
            .current_dir(&bob)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("baresip is installed (scripts/install-deps.sh installs it)");
    let log = t.read_when("kamailio.log", |l| l.contains("REGISTER sip:"));
    assert!(log.contains("REGISTER sip:"), "bob did not register: {log}");
    std::thread::sleep(Duration::from_millis(1000));

    let phone_ip = t.phone(0);
    let gw_lan = t.gw_lan();
    let alice = baresip_dir(
        &t,
        "alice",
        &phone_ip,
        5070,
        &tone,
        &format!(
            "<sip:alice@sipward.test;transport=tls>;auth_pass=secret;outbound=\"sip:{gw_lan}:5061;transport=tls\";regint=600;mediaenc=srtp-mand"
        ),
        None,
    );
    let caller = common::output_within(
        Command::new("baresip")
            .arg("-f")
            .arg(&alice)
            .args([
                "-s",
                "-n",
                &phone_ip,
                "-e",
                "/dial sip:bob@sipward.test",
                "-t",
                "7",
            ])
            .current_dir(&alice),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        caller.status.success(),
        "caller baresip: {:?}: {}",
        caller.status,
        String::from_utf8_lossy(&caller.stdout)
    );
    far.wait_ended();

    // What alice sent (its SIP trace) and what reached the outside (Kamailio's log).
    let sent = String::from_utf8_lossy(&caller.stdout).to_string();
    let crypto: Vec<&str> = sent
        .lines()
        .map(str::trim_end)
        .filter(|l| l.starts_with("a=crypto:"))
        .collect();
    assert!(!crypto.is_empty(), "alice offered no a=crypto: {sent}");
    let outside = std::fs::read_to_string(t.dir.join("kamailio.log")).unwrap();
    assert!(outside.contains("RTP/SAVP"), "{outside}");
    // The media goes through the gateway's relay (its outside address in the SDP).
    assert!(
        outside.contains(&format!("c=IN IP4 {}\r\n", t.gw_wan()))
            || outside.contains(&format!("c=IN IP4 {}\n", t.gw_wan())),
        "the SDP outside does not name the gateway's relay: {outside}"
    );
    for line in &crypto {
        assert!(
            outside.contains(line),
            "the a=crypto line did not reach the outside byte-exact: {line}\n{outside}"
        );
    }
    t.assert_no_inside_address_in("kamailio.log");
    // alice registered with digest through the gateway over TLS (and, at her exit,
    // unregistered): Kamailio took her credentials from the gateway's TLS leg, and
    // alice saw a 200 for her REGISTER.
    let via = format!("Via: SIP/2.0/TLS {}:5061;", t.gw_wan());
    assert!(
        outside.split("sipward-test received from").any(|m| m
            .starts_with(&format!(" {}:", t.gw_wan()))
            && m.contains("REGISTER sip:")
            && m.contains("username=\"alice\"")
            && m.contains(&via)),
        "no authenticated REGISTER of alice's from the gateway: {outside}"
    );
    assert!(
        sent.split("SIP/2.0 200 OK").skip(1).any(|m| m
            .lines()
            .take(12)
            .any(|l| l.starts_with("CSeq:") && l.ends_with("REGISTER"))),
        "alice got no 200 for her REGISTER: {sent}"
    );

    let decoded = std::fs::read_dir(&bob)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("bob decoded nothing (no SRTP came through)"));
    let seconds: f64 = {
        let out = Command::new("soxi")
            .arg("-D")
            .arg(&decoded)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    eprintln!("bob decoded {seconds} s of alice's 3 s tone");
    assert!(
        seconds >= 2.5,
        "bob decoded {seconds} s of alice's 3 s tone"
    );
    let stat = sox(&[decoded.to_str().unwrap(), "-n", "stat"]);
    let f: f64 = stat
        .lines()
        .find(|l| l.starts_with("Rough   frequency:"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (420.0..=460.0).contains(&f),
        "bob heard {f} Hz, not alice's 440 Hz tone"
    );
}
