//! The state seam on virtual time: the records a gateway makes as its tables change,
//! and a second gateway (a restart, a standby taking over) rebuilt from them routing
//! what the first would have: inbound calls to registered phones, in-dialog requests
//! over the restored route sets, media on the same ports, bans with their expiry.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)] // tests take one real Instant as the epoch

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sipward_core::records::StateRecord;
use sipward_core::{AlgOptions, MediaCommand};

/// A store: the last record of each key, as a journal or Redis keeps them.
#[derive(Default)]
struct Store(BTreeMap<String, StateRecord>);

impl Store {
    fn take(&mut self, net: &mut Net) -> usize {
        if net.gw.resync_needed() {
            self.0.clear();
            for r in net.gw.snapshot_state(net.now) {
                self.0.insert(r.key(), r);
            }
        }
        let mut n = 0;
        while let Some(r) = net.gw.poll_state(net.now) {
            n += 1;
            if r.is_delete() {
                self.0.remove(&r.key());
            } else {
                self.0.insert(r.key(), r);
            }
        }
        n
    }

    /// A new gateway restored from the store, `after` later.
    fn restore(
        &self,
        after: Duration,
        cseq_jump: u32,
    ) -> (Net, sipward_core::records::RestoreReport) {
        let mut net = Net::with_media(AlgOptions::default(), 4);
        net.now += after;
        let records = self.0.values().cloned().map(|r| (r, after));
        let report = net.gw.restore_state(net.now, records, cseq_jump);
        (net, report)
    }
}

fn sdp_call(net: &mut Net, call: &str) -> String {
    let fwd = text(&net.phone_sends(&invite(call, &format!("z9hG4bK{call}"))));
    let ok = response_with_sdp(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\nRecord-Route: <sip:p1.example.net;lr>\r\n",
        &sdp("203.0.113.50", 7000, ""),
    );
    net.proxy_sends(&ok);
    fwd
}

#[test]
fn a_restored_gateway_routes_calls_to_registered_phones_and_ends_calls_over_their_route_sets() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    net.gw.enable_state_records();
    let mut store = Store::default();
    store.take(&mut net);
    let registration = registered(&mut net, 3600);
    let fwd = sdp_call(&mut net, "r1");
    let made = store.take(&mut net);
    assert!(made >= 2, "a binding and a dialog: {made}");
    net.gw.ban(
        "198.51.100.66".parse().unwrap(),
        Some(Duration::from_secs(600)),
        "by hand",
        net.now,
    );
    store.take(&mut net);
    let media_before = net.gw.dialogs()[0].streams[0].local;

    // The process is gone; a new one restores 5 s later.
    let (mut net, report) = store.restore(Duration::from_secs(5), 0);
    assert_eq!((report.bindings, report.dialogs, report.bans), (1, 1, 1));
    assert_eq!((report.streams, report.streams_lost), (1, 0));
    // Media on the very ports it had, told to the relay again.
    let cmds = net.media_commands();
    let set = cmds
        .iter()
        .find_map(|c| match c {
            MediaCommand::Set { legs, .. } => Some([legs[0].local_rtp, legs[1].local_rtp]),
            MediaCommand::Close { .. } => None,
        })
        .unwrap();
    assert_eq!(set, media_before);

    // An inbound call to the registered phone.
    let contact = header(&registration, "Contact").unwrap();
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    let inbound = format!(
        "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKafter\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.com>;tag=c\r\nTo: <sip:alice@example.com>\r\nCall-ID: after-restart\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@203.0.113.10>\r\nContent-Length: 0\r\n\r\n"
    );
    let to_phone = net.proxy_sends(&inbound);
    assert_eq!(to_phone.remote, addr(PHONE));

    // The phone hangs up the restored call: the BYE follows the restored route set to
    // the far end's target, with the hidden Call-ID.
    let bye = "BYE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKbye\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-r1\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: r1@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let out = text(&net.phone_sends(bye));
    assert!(out.starts_with("BYE sip:bob@203.0.113.50 SIP/2.0"), "{out}");
    assert!(out.contains("Route: <sip:p1.example.net;lr>"), "{out}");
    assert_eq!(header(&out, "Call-ID"), header(&fwd, "Call-ID"));

    // The ban came back with what was left of it.
    let bans = net.gw.bans(net.now);
    assert_eq!(bans.len(), 1);
    assert!(bans[0].by_operator);
    let left = bans[0].expires.saturating_duration_since(net.now);
    assert!(
        left <= Duration::from_secs(595) && left > Duration::from_secs(590),
        "{left:?}"
    );
}

#[test]
fn ended_state_leaves_deletes_and_a_restore_brings_nothing_back() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    net.gw.enable_state_records();
    let mut store = Store::default();
    store.take(&mut net);
    sdp_call(&mut net, "r2");
    store.take(&mut net);
    assert_eq!(store.0.len(), 1);
    let bye = "BYE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKbye2\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-r2\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: r2@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let fwd = text(&net.phone_sends(bye));
    net.proxy_sends(&response_to(&fwd, "200 OK", "b1", ""));
    store.take(&mut net);
    assert!(store.0.is_empty(), "{:?}", store.0.keys());
    let (net, report) = store.restore(Duration::from_secs(1), 0);
    assert_eq!(report.dialogs, 0);
    assert!(net.gw.dialogs().is_empty());
}

#[test]
fn applying_the_records_twice_changes_nothing_and_expired_ones_are_dropped() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    net.gw.enable_state_records();
    let mut store = Store::default();
    store.take(&mut net);
    registered(&mut net, 60);
    store.take(&mut net);
    let records: Vec<_> = store.0.values().cloned().collect();
    let mut again = Net::with_media(AlgOptions::default(), 4);
    let twice = records
        .iter()
        .chain(records.iter())
        .cloned()
        .map(|r| (r, Duration::from_secs(1)));
    let report = again.gw.restore_state(again.now, twice, 0);
    assert_eq!(report.bindings, 2, "applied twice");
    assert_eq!(again.gw.bindings().len(), 1, "one binding");
    let (late, report) = store.restore(Duration::from_secs(61), 0);
    assert_eq!(report.expired, 1);
    assert!(late.gw.bindings().is_empty());
}

#[test]
fn a_takeover_makes_the_gateway_s_own_cseqs_jump_ahead() {
    let alg = AlgOptions {
        signal_timeout: Duration::from_secs(100),
        ..AlgOptions::default()
    };
    let mut net = Net::with_media(alg.clone(), 4);
    net.gw.enable_state_records();
    let mut store = Store::default();
    store.take(&mut net);
    sdp_call(&mut net, "r3");
    let ack = "ACK sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKack3\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-r3\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: r3@10.0.0.20\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
    net.phone_sends(ack);
    store.take(&mut net);
    let mut standby = Net {
        gw: sipward_core::Gateway::new({
            let mut c = config(alg);
            c.zones[0].media_ports = Some((30000, 30007));
            c.zones[1].media_ports = Some((31000, 31007));
            c
        }),
        now: net.now,
    };
    let records = store.0.values().cloned().map(|r| (r, Duration::ZERO));
    standby.gw.restore_state(standby.now, records, 1000);
    // The signal timeout ends the call: the gateway's own BYEs count on from 1000.
    let out = standby.advance(Duration::from_secs(101));
    let byes: Vec<String> = out
        .iter()
        .map(text)
        .filter(|t| t.starts_with("BYE "))
        .collect();
    assert_eq!(byes.len(), 2, "{out:?}");
    for bye in byes {
        let cseq: u32 = header(&bye, "CSeq")
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(cseq >= 1001, "{bye}");
    }
}

#[test]
fn a_store_starts_from_a_snapshot_then_takes_changes() {
    let mut net = Net::new(AlgOptions::default());
    net.gw.enable_state_records();
    assert!(net.gw.resync_needed(), "a store starts from a snapshot");
    let snapshot = net.gw.snapshot_state(net.now);
    assert!(snapshot.is_empty());
    assert!(!net.gw.resync_needed());
    registered(&mut net, 3600);
    assert!(net.gw.poll_state(net.now).is_some());
}

#[test]
fn a_party_the_relay_latched_is_restored_at_the_address_it_was_found_at() {
    let alg = AlgOptions {
        media_latching: sipward_core::config::Latching::Any,
        ..AlgOptions::default()
    };
    let mut net = Net::with_media(alg.clone(), 4);
    net.gw.enable_state_records();
    let mut store = Store::default();
    store.take(&mut net);
    sdp_call(&mut net, "r4");
    let counters = net
        .media_commands()
        .into_iter()
        .find_map(|c| match c {
            MediaCommand::Set { counters, .. } => Some(counters),
            MediaCommand::Close { .. } => None,
        })
        .unwrap();
    store.take(&mut net);
    // The far end sends from another port than its SDP's; the relay latches it.
    let found: std::net::SocketAddr = "203.0.113.50:7788".parse().unwrap();
    counters.record_latch(sipward_core::Side::Outside, found);
    net.advance(Duration::from_secs(1));
    assert!(
        store.take(&mut net) >= 1,
        "the latch makes the dialog's record again"
    );

    let (mut restored, report) = store.restore(Duration::from_secs(2), 0);
    assert_eq!(report.streams, 1);
    let legs = restored
        .media_commands()
        .into_iter()
        .find_map(|c| match c {
            MediaCommand::Set { legs, .. } => Some(legs),
            MediaCommand::Close { .. } => None,
        })
        .unwrap();
    let far = legs[1].peers[0];
    assert_eq!(far.rtp, Some(found));
    assert!(!far.latch, "latched already: no stranger can race for it");
}
