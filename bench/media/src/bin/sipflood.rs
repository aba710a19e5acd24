//! A paced SIP INVITE flood for bench/compare: new INVITEs (each with its own Call-ID
//! and branch, so no retransmission filter can absorb them) from one source address at
//! a fixed rate, paced per millisecond.
//!
//! Usage: sipflood TARGET SOURCE_IP RATE SECONDS; prints "sent N in S s (R/s)".

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: sipflood TARGET SOURCE_IP RATE SECONDS");
        std::process::exit(2);
    }
    let target: SocketAddr = args[1].parse().expect("TARGET is ip:port");
    let source: std::net::IpAddr = args[2].parse().expect("SOURCE_IP is an address");
    let rate: u64 = args[3].parse().expect("RATE is a number");
    let seconds: u64 = args[4].parse().expect("SECONDS is a number");
    let socket = UdpSocket::bind(SocketAddr::new(source, 0)).expect("bind the source address");
    let local = socket.local_addr().expect("local address");
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut sent: u64 = 0;
    let mut buf = Vec::with_capacity(1024);
    while Instant::now() < end {
        // Catch up to where the schedule says we should be, then sleep a millisecond.
        let due = started.elapsed().as_micros() as u64 * rate / 1_000_000;
        while sent < due {
            buf.clear();
            write!(
                buf,
                "INVITE sip:bob@{t} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {l};branch=z9hG4bKflood{n}\r\n\
                 From: <sip:mallory@{l}>;tag=f{n}\r\n\
                 To: <sip:bob@{t}>\r\n\
                 Call-ID: flood{n}@{ip}\r\n\
                 CSeq: 1 INVITE\r\n\
                 Max-Forwards: 70\r\n\
                 Contact: <sip:mallory@{l}>\r\n\
                 Content-Length: 0\r\n\r\n",
                t = target,
                l = local,
                ip = local.ip(),
                n = sent
            )
            .expect("format into a Vec");
            // A full socket buffer on loopback is the target falling behind: keep going.
            let _ = socket.send_to(&buf, target);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = started.elapsed().as_secs_f64();
    println!("sent {sent} in {secs:.1} s ({:.0}/s)", sent as f64 / secs);
}
