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
/// UDP 5060 (for the readiness probe) and TLS 5061, requiring a client certificate from
/// the test CA. Its log (every message it received, decrypted) is `kamailio.log`.
fn start_kamailio_tls(t: &Topology) -> Terminated {
    let certs = t.dir.join("certs");
    let tls_cfg = t.dir.join("kamailio-tls.cfg");
    std::fs::write(
        &tls_cfg,
        format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n\
             certificate = {c}/proxy.sipward.test.crt\nprivate_key = {c}/proxy.sipward.test.key\n\
             ca_list = {c}/ca.crt\n\n\
             [client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n\
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
    let _kamailio = start_kamailio_tls(&t);

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
