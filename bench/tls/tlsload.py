#!/usr/bin/env python3
"""TLS load for bench/tls/run.sh: idle registered phones, slowloris and a connection flood.

  tlsload.py idle HOST:PORT SOURCES COUNT RATE PING_SECONDS [IN_FLIGHT]
      COUNT TLS connections from the SOURCES addresses (comma-separated, round robin),
      opened at RATE/s with at most IN_FLIGHT (200) handshakes at once; each registers a user of its own and then sends CRLFCRLF every
      PING_SECONDS, expecting CRLF back. Prints "ready REGISTERED FAILED" once every
      connection has tried, then holds them until SIGTERM and prints
      "done registered=N failed=N pongs=N missed_pongs=N closed_by_edge=N".
  tlsload.py slowloris HOST:PORT SOURCES COUNT SECONDS
      COUNT connections that finish the handshake and send the start of an INVITE one byte
      a second; a connection the edge closes is reopened (a real slowloris does). Prints
      "done opened=N closed_by_edge=N refused=N".
  tlsload.py flood HOST:PORT SOURCE RATE SECONDS
      RATE new connections a second from SOURCE, each attempting a TLS handshake (2 s
      limit) and held silent if it succeeds. Prints "done attempted=N handshakes=N
      refused=N".

The certificate is not verified: the benchmark measures the edge, not the client's PKI.
"""
import asyncio
import signal
import ssl
import sys
import time


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_tls(host, port, source, ctx, timeout):
    return await asyncio.wait_for(
        asyncio.open_connection(host, port, ssl=ctx, local_addr=(source, 0), server_hostname="bench.test"),
        timeout,
    )


async def read_response(reader):
    """Reads responses until a final one; returns its status code."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        head = head.lstrip(b"\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        code = int(head.split(b" ", 2)[1])
        if code >= 200:
            return code


def register_message(n, local):
    host, port = local[0], local[1]
    return (
        f"REGISTER sip:bench.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS {host}:{port};branch=z9hG4bK-idle-{n};rport\r\n"
        f"Max-Forwards: 70\r\n"
        f"From: <sip:u{n:06d}@bench.test>;tag=idle{n}\r\n"
        f"To: <sip:u{n:06d}@bench.test>\r\n"
        f"Call-ID: idle-{n}@bench.test\r\n"
        f"CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:u{n:06d}@{host}:{port};transport=tls>\r\n"
        f"Expires: 3600\r\n"
        f"Content-Length: 0\r\n\r\n"
    ).encode()


async def idle(target, sources, count, rate, ping, in_flight):
    host, port = target
    ctx = client_context()
    stats = {"registered": 0, "failed": 0, "pongs": 0, "missed_pongs": 0, "closed_by_edge": 0}
    tried = 0
    gate = asyncio.Semaphore(in_flight)
    writers = []

    async def phone(n):
        nonlocal tried
        try:
            async with gate:
                reader, writer = await open_tls(host, port, sources[n % len(sources)], ctx, 20)
                writers.append(writer)
                writer.write(register_message(n, writer.get_extra_info("sockname")))
                await writer.drain()
                code = await asyncio.wait_for(read_response(reader), 20)
            if code != 200:
                raise RuntimeError(f"REGISTER answered {code}")
            stats["registered"] += 1
        except Exception:
            stats["failed"] += 1
            return
        finally:
            tried += 1
        while True:
            await asyncio.sleep(ping)
            try:
                writer.write(b"\r\n\r\n")
                await writer.drain()
                pong = await asyncio.wait_for(reader.read(16), 10)
            except Exception:
                stats["closed_by_edge"] += 1
                return
            if not pong:
                stats["closed_by_edge"] += 1
                return
            if pong.strip(b"\r\n") == b"":
                stats["pongs"] += 1
            else:
                stats["missed_pongs"] += 1

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks = []
    start = time.monotonic()
    for n in range(count):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(phone(n)))
    while tried < count and not stop.is_set():
        await asyncio.sleep(0.1)
    print(f"ready {stats['registered']} {stats['failed']}", flush=True)
    await stop.wait()
    print("done " + " ".join(f"{k}={v}" for k, v in stats.items()), flush=True)
    for w in writers:
        w.transport.abort()


async def slowloris(target, sources, count, seconds):
    host, port = target
    ctx = client_context()
    stats = {"opened": 0, "closed_by_edge": 0, "refused": 0}
    end = time.monotonic() + seconds
    partial = b"INVITE sip:victim@bench.test SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK-slow\r\n"

    async def one(n):
        await asyncio.sleep(n * 0.005)  # 2,000 connections over 10 s
        while time.monotonic() < end:
            try:
                reader, writer = await open_tls(host, port, sources[n % len(sources)], ctx, 5)
            except Exception:
                stats["refused"] += 1
                await asyncio.sleep(1)
                continue
            stats["opened"] += 1
            try:
                for i in range(len(partial)):
                    if time.monotonic() >= end:
                        break
                    writer.write(partial[i:i + 1])
                    await writer.drain()
                    # A closed connection shows as EOF (or a reset) within the second.
                    try:
                        data = await asyncio.wait_for(reader.read(4096), 1)
                        if not data:
                            raise ConnectionResetError
                    except asyncio.TimeoutError:
                        pass
                # Everything sent and still open: hold it until the end or the edge's close.
                left = end - time.monotonic()
                if left > 0:
                    try:
                        if not await asyncio.wait_for(reader.read(4096), left):
                            raise ConnectionResetError
                    except asyncio.TimeoutError:
                        pass
            except Exception:
                if time.monotonic() < end:
                    stats["closed_by_edge"] += 1
            finally:
                writer.transport.abort()

    await asyncio.gather(*(one(n) for n in range(count)))
    print("done " + " ".join(f"{k}={v}" for k, v in stats.items()), flush=True)


async def flood(target, source, rate, seconds):
    host, port = target
    ctx = client_context()
    stats = {"attempted": 0, "handshakes": 0, "refused": 0}
    held = []

    async def one():
        try:
            _, writer = await open_tls(host, port, source, ctx, 2)
            stats["handshakes"] += 1
            held.append(writer)
        except Exception:
            stats["refused"] += 1

    tasks = []
    start = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        stats["attempted"] += 1
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    print("done " + " ".join(f"{k}={v}" for k, v in stats.items()), flush=True)
    for w in held:
        w.transport.abort()


def main():
    mode, target = sys.argv[1], sys.argv[2]
    host, port = target.rsplit(":", 1)
    target = (host, int(port))
    if mode == "idle":
        in_flight = int(sys.argv[7]) if len(sys.argv) > 7 else 200
        asyncio.run(idle(target, sys.argv[3].split(","), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), in_flight))
    elif mode == "slowloris":
        asyncio.run(slowloris(target, sys.argv[3].split(","), int(sys.argv[4]), float(sys.argv[5])))
    elif mode == "flood":
        asyncio.run(flood(target, sys.argv[3], float(sys.argv[4]), float(sys.argv[5])))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
