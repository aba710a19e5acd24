//! Copies of what the gateway sees, for other tools: security and call events to a
//! syslog collector (RFC 5424 over UDP), and every SIP datagram received and sent to a
//! Homer collector (HEP version 3), so that it can draw the ladder diagrams.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::SystemTime;

use sipward_core::{EventKind, SecurityEvent};

/// RFC 5424 messages over UDP, facility local0.
pub(crate) struct Syslog {
    socket: UdpSocket,
    target: SocketAddr,
    host: String,
    pid: u32,
}

impl Syslog {
    pub(crate) fn new(target: SocketAddr) -> std::io::Result<Self> {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or(target)
        } else {
            "[::]:0".parse().unwrap_or(target)
        };
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
            .unwrap_or_else(|| "-".into());
        Ok(Self {
            socket,
            target,
            host,
            pid: std::process::id(),
        })
    }

    /// Sends one event; `json` is its JSON line, the message text.
    pub(crate) fn send(&self, event: &SecurityEvent, time: &str, json: &str) {
        // local0 (16); warning for what was refused, notice for calls and lifted bans.
        let severity = match event.kind {
            EventKind::CallStarted
            | EventKind::CallAnswered
            | EventKind::CallEnded
            | EventKind::Unbanned => 5,
            _ => 4,
        };
        let line = format!(
            "<{}>1 {time} {} sipward {} {} - {json}",
            16 * 8 + severity,
            self.host,
            self.pid,
            event.kind.as_str()
        );
        // A collector that is down must not stop the gateway: losses are the syslog way.
        let _ = self.socket.send_to(line.as_bytes(), self.target);
    }
}

/// HEP version 3 (the Homer encapsulation protocol) over UDP.
pub(crate) struct Hep {
    socket: UdpSocket,
    target: SocketAddr,
    agent_id: u32,
    buffer: Vec<u8>,
}

impl Hep {
    pub(crate) fn new(target: SocketAddr, agent_id: u32) -> std::io::Result<Self> {
        let bind: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or(target)
        } else {
            "[::]:0".parse().unwrap_or(target)
        };
        let socket = UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            target,
            agent_id,
            buffer: Vec::with_capacity(2048),
        })
    }

    /// Sends a copy of one SIP datagram that went from `src` to `dst`.
    pub(crate) fn send(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let b = &mut self.buffer;
        b.clear();
        b.extend_from_slice(b"HEP3");
        b.extend_from_slice(&[0, 0]); // total length, set below
        let chunk = |b: &mut Vec<u8>, kind: u16, data: &[u8]| {
            b.extend_from_slice(&0u16.to_be_bytes()); // generic vendor
            b.extend_from_slice(&kind.to_be_bytes());
            let len = u16::try_from(data.len() + 6).unwrap_or(u16::MAX);
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(data);
        };
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                chunk(b, 1, &[2]); // IP family: IPv4
                chunk(b, 2, &[17]); // protocol: UDP
                chunk(b, 3, &s.octets());
                chunk(b, 4, &d.octets());
            }
            (s, d) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    IpAddr::V6(a) => a.octets(),
                };
                chunk(b, 1, &[10]); // IPv6
                chunk(b, 2, &[17]);
                chunk(b, 5, &v6(s));
                chunk(b, 6, &v6(d));
            }
        }
        chunk(b, 7, &src.port().to_be_bytes());
        chunk(b, 8, &dst.port().to_be_bytes());
        let secs = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
        chunk(b, 9, &secs.to_be_bytes());
        chunk(b, 10, &now.subsec_micros().to_be_bytes());
        chunk(b, 11, &[1]); // payload type: SIP
        chunk(b, 12, &self.agent_id.to_be_bytes());
        chunk(b, 15, payload);
        let total = u16::try_from(b.len()).unwrap_or(u16::MAX);
        if let Some(len) = b.get_mut(4..6) {
            len.copy_from_slice(&total.to_be_bytes());
        }
        let _ = self.socket.send_to(b, self.target);
    }
}
