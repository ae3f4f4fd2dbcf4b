#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""make soak: mixed, hostile and well-behaved load against each echod model for a long while,
and proof that echod comes back to where it started.

Per model (default: event, thread, fork; --seconds each, default 600), one echod on 127.0.0.1
with SendTimeoutSec= short (so that the slow readers below meet it), and at once:

- well-behaved, verified by echoload (every byte checked; must end clean): ping-pong over 16
  connections of 512 B, a constant-rate run (latency from intended send times) and a stream
  over 2 connections;
- idle hoarders: 200 connections that never send, a tenth of them replaced every second (half
  closed with a FIN, half with a reset), each probed once before it goes (it must still echo);
- half-closes: connect, send 1 to 64 KiB of random bytes, shut the write side, read until EOF:
  the bytes must come back whole;
- resets: connect, send, close with SO_LINGER 0 (an RST) while echod is echoing;
- slow readers: send 4 MiB without reading, then read a kilobyte a second (progress: echod may
  keep serving them, at the pace they read);
- stalled readers: get one echo (so echod serves the connection), then write until the buffers
  are full and never read: echod must close them once SendTimeoutSec= (5 s here) passed without
  progress (within 10 s more of the client's last write);
- SIGHUP every 3 s (a reload changing a live key back and forth).

Sampled every second: echod's open descriptors, threads, children and resident memory (RSS of
the main process; with the fork model also the children's summed PSS). At the end, after every
client closed: descriptors, threads and children must be back to their starting level within
the settle time, resident memory within the tolerance (allocator arenas do not shrink to the
byte: --rss-tolerance, default 32 MiB), and the steady middle of the run (from 20% to 90% of
the time) must show no growth trend (least-squares slope of RSS, descriptors and threads over
it, extrapolated over the steady period, within a tenth of the tolerance for memory, below 1
for descriptors and threads... see TREND below). Any failed check makes the exit status 1.

Outputs in --out (default bench/out/soak/): samples-MODEL.json, report.md.

    bench/soak.py --echod BUILT/echod --echoload BUILT/echoload [--models event,thread,fork]
        [--seconds 600] [--out DIR] [--extra-config 'MaxConnectionsPerSource=64']
"""
import argparse
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import fd_targets, listening_port, process_tree  # noqa: E402  (same directory)

HOARDERS = 200
SETTLE_SECONDS = 30
SEND_TIMEOUT = 5


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sampling

def threads_of(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def rss_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children_pss(pid):
    """(number of descendants, their summed PSS in bytes)."""
    kids = [p for p in process_tree(pid) if p != pid]
    pss = 0
    for p in kids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return len(kids), pss


def sample(pid, t0):
    fds = fd_targets(pid)
    kids, kids_pss = children_pss(pid)
    return {"t": round(time.monotonic() - t0, 2), "fds": len(fds) if fds is not None else -1,
            "threads": threads_of(pid), "children": kids, "rss": rss_of(pid), "children_pss": kids_pss}


def slope(points):
    """Least-squares slope of [(t, y)] in y per second; 0 for fewer than 3 points."""
    n = len(points)
    if n < 3:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    if den == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in points) / den


# ----------------------------------------------------------------------------- hostile clients

class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.faults = []

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def fault(self, what):
        with self.lock:
            if len(self.faults) < 50:
                self.faults.append(what)
            self.counts["faults"] = self.counts.get("faults", 0) + 1


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s, n, deadline):
    out = bytearray()
    while len(out) < n:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def probe(s, tally, what):
    """Send a short random message on an idle connection and expect it back."""
    msg = os.urandom(32)
    try:
        s.sendall(msg)
        back = recv_exact(s, len(msg), time.monotonic() + 10)
        if back != msg:
            tally.fault(f"{what}: probe echoed {len(back)} bytes, not the 32 sent")
            return False
        return True
    except OSError as e:
        tally.fault(f"{what}: probe failed: {e}")
        return False


def hoarders(port, stop, tally):
    """HOARDERS idle connections; a tenth replaced each second, each probed before it goes."""
    pool = []
    while not stop.is_set():
        while len(pool) < HOARDERS and not stop.is_set():
            try:
                pool.append(connect(port))
                tally.add("hoarders opened")
            except OSError as e:
                tally.fault(f"hoarder connect: {e}")
                break
        random.shuffle(pool)
        for _ in range(HOARDERS // 10):
            if not pool:
                break
            s = pool.pop()
            if probe(s, tally, "hoarder"):
                tally.add("hoarders probed")
            if random.random() < 0.5:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                tally.add("hoarders reset")
            s.close()
        stop.wait(1.0)
    for s in pool:
        probe(s, tally, "hoarder at the end")
        s.close()


def half_closer(port, stop, tally):
    while not stop.is_set():
        n = random.randint(1, 65536)
        data = os.urandom(n)
        try:
            s = connect(port)
            try:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                back = bytearray()
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    s.settimeout(max(0.05, deadline - time.monotonic()))
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    back += chunk
                if bytes(back) != data:
                    tally.fault(f"half-close: sent {n} bytes, got {len(back)} back"
                                f"{' (different bytes)' if len(back) == n else ''}")
                else:
                    tally.add("half-closes verified")
            finally:
                s.close()
        except OSError as e:
            tally.fault(f"half-close: {e}")
        stop.wait(0.05)


def resetter(port, stop, tally):
    while not stop.is_set():
        try:
            s = connect(port)
            s.sendall(os.urandom(random.randint(1, 200_000)) if random.random() < 0.5 else b"x" * 100)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            tally.add("resets")
        except OSError as e:
            # The connection may be reset under us while sending 200 KB: that is not a fault.
            if not isinstance(e, (ConnectionResetError, BrokenPipeError)):
                tally.fault(f"reset client: {e}")
        stop.wait(0.1)


def slow_reader(port, stop, tally):
    """Write 4 MiB without reading (as much as the buffers take), then read 1 KiB a second until
    echod closes the connection or 30 s pass."""
    while not stop.is_set():
        try:
            s = connect(port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.setblocking(False)
            sent = 0
            block = os.urandom(65536)
            deadline = time.monotonic() + 5
            while sent < 4 << 20 and time.monotonic() < deadline and not stop.is_set():
                try:
                    sent += s.send(block)
                except BlockingIOError:
                    time.sleep(0.05)
            s.setblocking(True)
            end = time.monotonic() + 30
            closed = False
            while time.monotonic() < end and not stop.is_set():
                s.settimeout(1.0)
                try:
                    chunk = s.recv(1024)
                    if not chunk:
                        closed = True
                        break
                except socket.timeout:
                    pass
                except ConnectionResetError:
                    closed = True
                    break
                stop.wait(1.0)
            # Reading a kilobyte a second is progress, not a stall: echod may keep serving it.
            tally.add("slow readers closed by echod" if closed else "slow readers still served after 30 s")
            s.close()
        except OSError as e:
            if not isinstance(e, (ConnectionResetError, BrokenPipeError)):
                tally.fault(f"slow reader: {e}")


def stalled_reader(port, stop, tally, send_timeout):
    """Write until the buffers are full, never read: echod must close the connection (an RST, as
    it closes with our bytes unread) once SendTimeoutSec= passed without progress."""
    while not stop.is_set():
        try:
            s = connect(port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            # First one echo, so that the clock below starts once echod serves this connection
            # (the fork model's parent may take a while to accept and fork on a loaded machine;
            # until then nothing of echod's is blocked on it).
            hello = os.urandom(512)
            s.sendall(hello)
            if recv_exact(s, len(hello), time.monotonic() + 30) != hello:
                tally.fault("stalled reader: no echo of its first 512 bytes within 30 s")
                s.close()
                continue
            s.setblocking(False)
            block = os.urandom(65536)
            last_progress = time.monotonic()
            closed = False
            while time.monotonic() - last_progress < send_timeout + 10 and not stop.is_set():
                try:
                    if s.send(block) > 0:
                        last_progress = time.monotonic()
                except BlockingIOError:
                    time.sleep(0.2)
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                    break
            if not closed and not stop.is_set():
                # Read what is there: a closed connection ends in EOF or a reset.
                s.setblocking(True)
                end = time.monotonic() + 5
                try:
                    while time.monotonic() < end:
                        s.settimeout(1.0)
                        if not s.recv(65536):
                            closed = True
                            break
                except ConnectionResetError:
                    closed = True
                except socket.timeout:
                    pass
                if closed:
                    tally.add("stalled readers closed by echod")
                else:
                    tally.fault(f"a stalled reader still open {send_timeout + 10} s after its last write")
            elif closed:
                tally.add("stalled readers closed by echod")
            s.close()
        except OSError as e:
            if not isinstance(e, (ConnectionResetError, BrokenPipeError)):
                tally.fault(f"stalled reader: {e}")


def reloader(pid, stop, tally, conf, base_text):
    """SIGHUP every 3 s, switching a live key (IdleTimeoutSec=) between two values."""
    flip = False
    while not stop.wait(3.0):
        flip = not flip
        with open(conf, "w") as f:
            f.write(base_text.replace("IdleTimeoutSec=infinity", "IdleTimeoutSec=1h" if flip else "IdleTimeoutSec=infinity"))
        try:
            os.kill(pid, signal.SIGHUP)
            tally.add("reloads")
        except ProcessLookupError:
            tally.fault("echod gone at a reload")
            return


# ----------------------------------------------------------------------------- one model

def soak_model(args, model, workdir):
    conf = os.path.join(workdir, f"{model}.conf")
    text = (f"[Server]\nModel={model}\nListen=127.0.0.1:0\nMaxConnections=auto\nBacklog=1024\n"
            f"LogLevel=notice\nIdleTimeoutSec=infinity\nSendTimeoutSec={SEND_TIMEOUT}s\nStopTimeoutSec=20s\n"
            f"{args.extra_config.replace(';', chr(10))}\n"
            f"[Limits]\nNoFile=max\n[Thread]\nMaxThreads=4000\n[Fork]\nMaxChildren=4000\n")
    with open(conf, "w") as f:
        f.write(text)
    err = open(os.path.join(workdir, f"{model}.stderr"), "w+")
    proc = subprocess.Popen([args.echod, "--config", conf], stdout=subprocess.DEVNULL, stderr=err)
    port = None
    deadline = time.time() + 10
    while time.time() < deadline and port is None:
        port = listening_port(proc.pid)
        if proc.poll() is not None:
            err.seek(0)
            raise SystemExit(f"echod {model} exited at start: {err.read()[-2000:]}")
        time.sleep(0.05)
    if port is None:
        raise SystemExit(f"echod {model}: not listening after 10 s")
    log(f"{model}: echod pid {proc.pid} on port {port}, {args.seconds} s of load")
    time.sleep(1.0)
    t0 = time.monotonic()
    samples = [sample(proc.pid, t0)]
    start = samples[0]

    tally = Tally()
    stop = threading.Event()
    secs = args.seconds
    target = f"127.0.0.1:{port}"
    loads = {
        "pingpong 16 x 512 B": ["pingpong", target, "-c", "16", "--size", "512"],
        "rate 2000/s over 8": ["rate", target, "-c", "8", "--size", "256", "--rate", "2000"],
        "stream 2 x 16 KiB": ["stream", target, "-c", "2", "--size", "16384"],
    }
    procs = {}
    for name, cmd in loads.items():
        procs[name] = subprocess.Popen(
            [args.echoload] + cmd + ["--duration", f"{secs}s", "--warmup", "0s", "--json", "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [threading.Thread(target=hoarders, args=(port, stop, tally), daemon=True),
               threading.Thread(target=half_closer, args=(port, stop, tally), daemon=True),
               threading.Thread(target=half_closer, args=(port, stop, tally), daemon=True),
               threading.Thread(target=resetter, args=(port, stop, tally), daemon=True),
               threading.Thread(target=slow_reader, args=(port, stop, tally), daemon=True),
               threading.Thread(target=slow_reader, args=(port, stop, tally), daemon=True),
               threading.Thread(target=stalled_reader, args=(port, stop, tally, SEND_TIMEOUT), daemon=True),
               threading.Thread(target=reloader, args=(proc.pid, stop, tally, conf, text), daemon=True)]
    for w in workers:
        w.start()
    next_report = time.monotonic() + 60
    while time.monotonic() - t0 < secs + 1:
        time.sleep(1.0)
        samples.append(sample(proc.pid, t0))
        if proc.poll() is not None:
            tally.fault(f"echod exited during the load (status {proc.returncode})")
            break
        if time.monotonic() >= next_report:
            s = samples[-1]
            log(f"{model}: t={s['t']:.0f}s fds {s['fds']} threads {s['threads']} children {s['children']} "
                f"rss {s['rss'] >> 20} MiB")
            next_report += 60
    stop.set()
    results = {}
    for name, p in procs.items():
        try:
            out, errtext = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, errtext = p.communicate()
        try:
            result = json.loads(out)
        except ValueError:
            result = None
        results[name] = {"exit": p.returncode, "result": result, "stderr": errtext[-1000:]}
        if p.returncode != 0:
            tally.fault(f"echoload {name} exited {p.returncode}: {errtext.strip()[-300:]}")
    for w in workers:
        w.join(timeout=60)
        if w.is_alive():
            tally.fault(f"a client thread ({w._target.__name__}) did not finish within 60 s")
    load_end = len(samples)

    # Settle: every client is gone; wait for the counts to come back.
    settle_deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < settle_deadline and proc.poll() is None:
        s = sample(proc.pid, t0)
        samples.append(s)
        if s["fds"] == start["fds"] and s["threads"] == start["threads"] and s["children"] == start["children"]:
            break
        time.sleep(1.0)
    end = samples[-1]

    checks = []

    def check(name, ok, detail):
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    check("echod alive through the load", proc.poll() is None, f"exit status {proc.returncode}")
    check("descriptors back to the start", end["fds"] == start["fds"], f"{start['fds']} -> {end['fds']}")
    check("threads back to the start", end["threads"] == start["threads"], f"{start['threads']} -> {end['threads']}")
    check("children back to the start", end["children"] == start["children"],
          f"{start['children']} -> {end['children']}")
    growth = end["rss"] - start["rss"]
    check("resident memory within tolerance", growth <= args.rss_tolerance_mib << 20,
          f"{start['rss'] / 2**20:.1f} -> {end['rss'] / 2**20:.1f} MiB (+{growth / 2**20:.1f}, "
          f"tolerance {args.rss_tolerance_mib} MiB)")
    steady = [s for s in samples[:load_end] if 0.2 * secs <= s["t"] <= 0.9 * secs]
    span = 0.7 * secs
    trend_rss = slope([(s["t"], s["rss"]) for s in steady]) * span
    trend_fds = slope([(s["t"], s["fds"]) for s in steady]) * span
    trend_threads = slope([(s["t"], s["threads"]) for s in steady]) * span
    # TREND: what the least-squares line gains over the steady period. The load is random (slow
    # readers and half-closes come and go), so descriptors and threads wobble by tens; a leak
    # of one per second would show as hundreds.
    check("no memory growth trend while steady", trend_rss <= (args.rss_tolerance_mib << 20) / 4,
          f"{trend_rss / 2**20:+.1f} MiB over {span:.0f} s")
    check("no descriptor growth trend while steady", trend_fds <= 50, f"{trend_fds:+.1f} over {span:.0f} s")
    check("no thread growth trend while steady", trend_threads <= 50, f"{trend_threads:+.1f} over {span:.0f} s")
    check("no client fault (bytes verified, hoarders alive, stalled readers closed)", not tally.faults, "; ".join(tally.faults[:5]) or "none")

    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    check("graceful stop exits 0", proc.returncode == 0, f"exit status {proc.returncode}")
    err.close()

    figures = {name: summarise_echoload(r["result"]) for name, r in results.items()}
    peak = {k: max(s[k] for s in samples) for k in ("fds", "threads", "children", "rss")}
    return {"model": model, "seconds": secs, "start": start, "end": end, "peak": peak,
            "trend": {"rss_bytes": trend_rss, "fds": trend_fds, "threads": trend_threads},
            "counts": tally.counts, "faults": tally.faults, "echoload": figures, "checks": checks,
            "samples": samples}


def summarise_echoload(result):
    if not isinstance(result, dict):
        return None
    keep = {}
    for key in ("connections", "traffic", "latency_us", "errors", "clean", "notes"):
        if key in result:
            keep[key] = result[key]
    return keep or result


def render(all_results, out):
    lines = ["# echod soak", "", f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{all_results[0]['seconds'] if all_results else 0} s per model. "
             "Levels: start -> peak -> end (after every client closed).", ""]
    lines.append("| model | descriptors | threads | children | RSS MiB | RSS trend (steady) | faults | checks |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in all_results:
        s, p, e = r["start"], r["peak"], r["end"]
        failed = [c["check"] for c in r["checks"] if not c["ok"]]
        lines.append(
            f"| {r['model']} | {s['fds']} -> {p['fds']} -> {e['fds']} | {s['threads']} -> {p['threads']} -> "
            f"{e['threads']} | {s['children']} -> {p['children']} -> {e['children']} | "
            f"{s['rss'] / 2**20:.1f} -> {p['rss'] / 2**20:.1f} -> {e['rss'] / 2**20:.1f} | "
            f"{r['trend']['rss_bytes'] / 2**20:+.1f} MiB | {len(r['faults'])} | "
            f"{'all passed' if not failed else 'FAILED: ' + ', '.join(failed)} |")
    lines.append("")
    for r in all_results:
        lines.append(f"## {r['model']}")
        lines.append("")
        lines.append("Clients: " + ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())))
        lines.append("")
        for c in r["checks"]:
            lines.append(f"- {'ok' if c['ok'] else 'FAILED'}: {c['check']} ({c['detail']})")
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--echod", required=True)
    ap.add_argument("--echoload", required=True)
    ap.add_argument("--models", default="event,thread,fork")
    ap.add_argument("--seconds", type=int, default=600, help="load per model (default 600)")
    ap.add_argument("--rss-tolerance-mib", type=int, default=32)
    ap.add_argument("--extra-config", default="", help="[Server] lines to add, separated by ';'")
    ap.add_argument("--out", default=os.path.join(HERE, "out", "soak"))
    args = ap.parse_args()
    if args.seconds < 10:
        ap.error("--seconds: at least 10")
    os.makedirs(args.out, exist_ok=True)
    all_results = []
    with tempfile.TemporaryDirectory(prefix="echod-soak.") as workdir:
        for model in args.models.split(","):
            r = soak_model(args, model.strip(), workdir)
            with open(os.path.join(args.out, f"samples-{r['model']}.json"), "w") as f:
                json.dump(r, f, indent=1)
            failed = [c for c in r["checks"] if not c["ok"]]
            log(f"{r['model']}: {'all checks passed' if not failed else str(len(failed)) + ' checks FAILED'}")
            all_results.append(r)
    print(render(all_results, args.out))
    return 0 if all(c["ok"] for r in all_results for c in r["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
