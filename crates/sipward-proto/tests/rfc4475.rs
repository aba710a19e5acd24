//! The RFC 4475 torture messages, judged exactly as the gateway judges a datagram.
//!
//! Where the RFC leaves a choice, the decision and its reason are recorded beside the
//! expected verdict; ARCHITECTURE.md summarises them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;

use sipward_proto::{build_answer, parse_datagram, Datagram, Limits};

#[derive(Debug, PartialEq)]
enum Verdict {
    Accept,
    Reject(u16),
    Drop,
}
use Verdict::*;

/// (file, expected verdict, why where the RFC leaves a choice)
const EXPECTED: &[(&str, Verdict, &str)] = &[
    // 3.1.1: valid messages
    ("wsinv.dat", Accept, ""),
    ("intmeth.dat", Accept, ""),
    ("esc01.dat", Accept, ""),
    ("escnull.dat", Accept, ""),
    ("esc02.dat", Accept, ""),
    ("lwsdisp.dat", Accept, ""),
    ("longreq.dat", Accept, ""),
    (
        "dblreq.dat",
        Accept,
        "trailing octets after Content-Length are ignored and never forwarded",
    ),
    ("semiuri.dat", Accept, ""),
    ("transports.dat", Accept, ""),
    ("mpart01.dat", Accept, ""),
    ("unreason.dat", Accept, ""),
    ("noreason.dat", Accept, ""),
    // 3.1.2: invalid messages
    ("badinv01.dat", Reject(400), ""),
    ("clerr.dat", Reject(400), ""),
    ("ncl.dat", Reject(400), ""),
    ("scalar02.dat", Reject(400), ""),
    ("scalarlg.dat", Drop, "a defective response is dropped"),
    (
        "quotbal.dat",
        Reject(400),
        "no guessing where the quote ends",
    ),
    ("ltgtruri.dat", Reject(400), ""),
    ("lwsruri.dat", Reject(400), ""),
    ("lwsstart.dat", Reject(400), ""),
    ("trws.dat", Reject(400), ""),
    (
        "escruri.dat",
        Reject(400),
        "a proxy must not forward escaped Request-URI headers; refusing is simplest and safest",
    ),
    (
        "baddate.dat",
        Accept,
        "Date is not interpreted and passes untouched",
    ),
    ("regbadct.dat", Reject(400), "no guessing of brackets"),
    (
        "badaspec.dat",
        Reject(400),
        "no ignoring of spaces in an addr-spec",
    ),
    ("baddn.dat", Reject(400), "no inferring of quotes"),
    ("badvers.dat", Reject(505), ""),
    ("mismatch01.dat", Reject(400), ""),
    (
        "mismatch02.dat",
        Reject(400),
        "CSeq mismatch is checked before the method is looked at",
    ),
    ("bigcode.dat", Drop, ""),
    // 3.2: transaction layer
    (
        "badbranch.dat",
        Accept,
        "sipward adds its own Via and branch, so a bare magic cookie breaks nothing",
    ),
    // 3.3: application layer (sipward is not the UAS or registrar: it forwards what is well formed)
    (
        "insuf.dat",
        Reject(400),
        "answered from Via and CSeq alone, as the RFC asks",
    ),
    ("unkscm.dat", Reject(416), ""),
    (
        "novelsc.dat",
        Reject(416),
        "sipward forwards only sip, sips and tel Request-URIs",
    ),
    ("unksm2.dat", Accept, ""),
    (
        "bext01.dat",
        Reject(420),
        "sipward inserts a Via, so it is a proxy for Proxy-Require and supports no extension",
    ),
    (
        "invut.dat",
        Accept,
        "unknown bodies are the UAS's business and pass untouched",
    ),
    (
        "regaut01.dat",
        Accept,
        "the registrar challenges; the gateway forwards",
    ),
    ("multi01.dat", Reject(400), ""),
    ("mcl01.dat", Reject(400), ""),
    (
        "bcast.dat",
        Drop,
        "a response with a broadcast Via is never relayed",
    ),
    (
        "zeromf.dat",
        Reject(483),
        "sipward forwards every request, so Max-Forwards 0 ends here",
    ),
    ("cparam01.dat", Accept, ""),
    ("cparam02.dat", Accept, ""),
    ("regescrt.dat", Accept, ""),
    ("sdp01.dat", Accept, "Accept is for the UAS to honour"),
    (
        "inv2543.dat",
        Accept,
        "RFC 2543 syntax: no branch, no Max-Forwards, no Content-Length over UDP",
    ),
    // Unreferenced file in the archive: no SIP version, no Via, a line without colon.
    ("test.dat", Drop, "cannot be answered: no Via"),
];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/rfc4475")
}

fn judge(bytes: &[u8]) -> Verdict {
    match parse_datagram(bytes, &Limits::default()) {
        Ok(Datagram::Message(_) | Datagram::Keepalive | Datagram::StunBinding(_)) => Accept,
        Err(r) => match r.status {
            Some(s) => Reject(s),
            None => Drop,
        },
    }
}

#[test]
fn every_torture_message_gets_its_verdict() {
    let dir = corpus_dir();
    let mut listed: Vec<&str> = EXPECTED.iter().map(|(f, _, _)| *f).collect();
    listed.sort_unstable();
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus at {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".dat"))
        .collect();
    present.sort_unstable();
    assert_eq!(listed, present, "every corpus file has an expected verdict");

    let mut wrong = Vec::new();
    for (file, expected, _) in EXPECTED {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let got = judge(&bytes);
        if &got != expected {
            let why = parse_datagram(&bytes, &Limits::default())
                .err()
                .map(|r| r.defect.to_string());
            wrong.push(format!(
                "{file}: expected {expected:?}, got {got:?} ({why:?})"
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}

#[test]
fn every_rejection_is_answered_with_a_parseable_response() {
    let dir = corpus_dir();
    for (file, expected, _) in EXPECTED {
        let Reject(status) = expected else { continue };
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let rejection = parse_datagram(&bytes, &Limits::default()).unwrap_err();
        let answer = build_answer(&bytes, &rejection, "sipward.test")
            .unwrap_or_else(|| panic!("{file}: no answer"));
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with(&format!("SIP/2.0 {status} ")),
            "{file}: {text}"
        );
        assert!(
            text.contains("\r\nWarning: 399 sipward.test \""),
            "{file}: {text}"
        );
        assert!(
            text.ends_with("\r\nContent-Length: 0\r\n\r\n"),
            "{file}: {text}"
        );
    }
}

#[test]
fn trailing_octets_are_not_part_of_the_message() {
    let bytes = std::fs::read(corpus_dir().join("dblreq.dat")).unwrap();
    let Ok(Datagram::Message(m)) = parse_datagram(&bytes, &Limits::default()) else {
        panic!("dblreq rejected")
    };
    assert!(m.as_bytes().len() < bytes.len());
    assert!(m.as_bytes().ends_with(b"Content-Length: 0\r\n\r\n"));
}
