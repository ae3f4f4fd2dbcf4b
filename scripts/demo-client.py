#!/usr/bin/env python3
"""Demo traffic for echod: idle connections, ping-pong and a stream, every byte verified."""
import os, selectors, socket, sys, threading, time

host, port = sys.argv[1].rsplit(":", 1)
port = int(port)

def hold(n):
    t = time.time()
    conns = [socket.create_connection((host, port)) for _ in range(n)]
    took = time.time() - t
    for i, s in enumerate(conns):  # every held connection still echoes
        msg = b"probe %d\n" % i
        s.sendall(msg)
        got = b""
        while len(got) < len(msg):
            got += s.recv(64)
        assert got == msg, "probe mismatch"
    for s in conns:
        s.close()
    return took

def pingpong(conns, size, seconds):
    count = [0] * conns
    def run(i):
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = os.urandom(size)
        end = time.time() + seconds
        while time.time() < end:
            s.sendall(payload)
            got = bytearray()
            while len(got) < size:
                b = s.recv(size - len(got))
                assert b, "premature close"
                got += b
            assert got == payload, "echo mismatch"
            count[i] += 1
        s.close()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return sum(count)

def stream(total):
    s = socket.create_connection((host, port))
    data = os.urandom(1 << 20)
    got = bytearray()
    def reader():
        while True:
            b = s.recv(1 << 20)
            if not b:
                return
            got.extend(b)
    t = threading.Thread(target=reader)
    start = time.time()
    t.start()
    for _ in range(total >> 20):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    t.join()
    took = time.time() - start
    assert len(got) == total and all(got[i:i + len(data)] == data for i in range(0, total, len(data))), "stream mismatch"
    return took

n = 1000
took = hold(n)
print(f"hold      {n} idle connections opened in {took:.2f}s, all {n} echoed a probe")
secs = 2
msgs = pingpong(10, 512, secs)
print(f"pingpong  10 connections x 512 B for {secs}s: {msgs / secs:,.0f} msg/s, {msgs * 512 / secs / 1e6:.1f} MB/s (python client-bound)")
total = 256 << 20
took = stream(total)
print(f"stream    {total >> 20} MiB through one connection in {took:.2f}s: {total / took / 1e6:.0f} MB/s, byte-exact")
