#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""make bench: echod's three models against measuring sticks, on this machine.

The sticks: a minimal C epoll echo server (bench/baseline.c; one loop, or one loop per CPU) and
Python 3 re-creations of the seed's thread- and fork-per-connection servers
(bench/seed_server.py). Clients: echoload (every byte verified), bench/streamer.c (512-byte
messages back to back, every byte verified) and, for one streaming point, tcpkali when it has
been built (make bench-tcpkali).

Two sections:
- pinned: every server on CPU 0, the client on CPU 1 (taskset). Ping-pong at 64 B to 64 KiB over
  1, 10 and 100 connections; streaming over 10 connections with 512-byte writes back to back, with
  large writes, and (tcpkali) 512-byte messages pipelined; 19,000 idle connections.
- 2 cores, nothing pinned: echod Workers= = CPUs (event and thread models) against the C server
  with one loop per CPU (SO_REUSEPORT), at 512 B x 10, 512 B x 100 and streaming; how the
  connections (C server) and the CPU time (every server, per thread) spread.

Every point is measured after a warm-up, in rounds, the servers taken in a rotating order each
round so that drift on a shared machine hits all alike. Reported: the median, the spread
(min-max) and the ratio to the baseline's median in the same run (with the min-max of the
per-round ratios). The targets of issue 17 are read from the medians and marked met / NOT met;
nothing here asserts a speed (bench-smoke only checks that every point was measured, with bytes
echoed and no fault found).

Outputs (in --out, default bench/out/): results.json (every sample, and the summaries),
report.md (the tables, and make bench-scale's section from scale.md when present), chart.svg (the
pinned models side by side).

    bench/run.py --echod BUILT/echod --echoload BUILT/echoload --baseline bench/out/baseline \
        --streamer bench/out/streamer [--tcpkali .build-tcpkali/tcpkali] [--smoke] [--runs N]
"""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CPUS = os.cpu_count() or 1

# Pinned section: every server on CPU 0. Multi-core section: nothing pinned.
PINNED = ["baseline", "event", "thread", "fork", "py-thread", "py-fork"]
MULTI = ["baseline-mc", "baseline-mcx", "event-mc", "thread-mc"]
LABELS = {
    "baseline": "C baseline", "event": "event", "thread": "thread", "fork": "fork",
    "py-thread": "Python thread (seed)", "py-fork": "Python fork (seed)",
    "baseline-mc": f"C baseline, {CPUS} loops", "baseline-mcx": f"C baseline, {CPUS} loops, EPOLLEXCLUSIVE",
    "event-mc": f"event, Workers={CPUS}",
    "thread-mc": "thread",
}
# Ratios are to this server of the same section.
BASE = {"pinned": "baseline", "multi": "baseline-mc"}
# echod models of the pinned section; their exit status after SIGTERM is checked.
ECHOD = {"event", "thread", "fork", "event-mc", "thread-mc"}

QUIET = False
# (server name, exit status) of every echod stopped with SIGTERM: a graceful stop must exit 0.
SERVER_EXITS = []


def log(msg):
    if not QUIET:
        print(msg, file=sys.stderr, flush=True)


class Server:
    """One server process: echod in a model, the C baseline or a Python seed server.

    Pinned-section servers run on CPU 0; multi-core ones (names ending in -mc, -mcx) are not
    pinned, echod with Workers= = CPUs and the baseline with one loop per CPU (-mcx: a shared
    listener with EPOLLEXCLUSIVE instead of SO_REUSEPORT listeners)."""

    def __init__(self, name, args, workdir):
        self.name = name
        self.workdir = workdir
        multi = name.endswith("-mc") or name.endswith("-mcx")
        base = name.rsplit("-", 1)[0] if multi else name
        cmd = [] if multi else ["taskset", "-c", "0"]
        session = False
        if base == "baseline":
            cmd += [args.baseline, "0", str(CPUS if multi else 1), "exclusive" if name.endswith("-mcx") else "reuseport"]
        elif base in ("py-thread", "py-fork"):
            cmd += [sys.executable, os.path.join(HERE, "seed_server.py"), base[3:]]
            session = True  # the fork server stops its children by signalling its own group
        else:
            conf = os.path.join(workdir, f"{name}.conf")
            with open(conf, "w") as f:
                f.write(
                    f"[Server]\nModel={base}\nListen=127.0.0.1:0\nWorkers={CPUS if multi else 0}\n"
                    f"MaxConnections=auto\nBacklog=4096\nLogLevel=warning\n[Limits]\nNoFile=max\n"
                    f"[Thread]\nMaxThreads=20000\n[Fork]\nMaxChildren=20000\n")
            cmd += [args.echod, "--config", conf]
        self.err = open(os.path.join(workdir, f"{name}.stderr"), "w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     start_new_session=session)
        self.port = self._port()
        self.loop_accepts = None  # the C baseline's per-loop accepted counts, after stop()

    def _port(self):
        if self.name not in ECHOD:
            line = self.proc.stdout.readline()
            m = re.match(r"port (\d+)", line)
            if not m:
                self.err.seek(0)
                raise SystemExit(f"{self.name} did not start: {line!r} {self.err.read()[-2000:]}")
            return int(m.group(1))
        # LogLevel=warning hides the "listening" line: ask /proc which port the process listens on.
        deadline = time.time() + 10
        while time.time() < deadline:
            port = listening_port(self.proc.pid)
            if port:
                return port
            if self.proc.poll() is not None:
                self.err.seek(0)
                raise SystemExit(f"echod {self.name} exited: {self.err.read()}")
            time.sleep(0.05)
        raise SystemExit(f"echod {self.name}: no listening socket after 10 s")

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.name in ECHOD:
            # Died early, killed at the timeout, or a non-zero exit: all count against the run.
            SERVER_EXITS.append((self.name, self.proc.returncode))
        self.err.seek(0)
        counts = [int(m.group(1)) for m in re.finditer(r"^loop \d+ accepted (\d+)$", self.err.read(), re.M)]
        if counts:
            self.loop_accepts = counts
        self.err.close()


def fd_targets(pid):
    """{fd: readlink target} of pid's open descriptors; None when /proc/PID/fd cannot be read."""
    targets = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                targets[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
    except OSError:
        return None
    return targets


def listening_port(pid):
    """The port of the TCP socket in LISTEN state owned by pid, from /proc."""
    targets = fd_targets(pid)
    if targets is None:
        return None
    inodes = {m.group(1) for m in (re.match(r"socket:\[(\d+)\]", t) for t in targets.values()) if m}
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:
                return int(parts[1].split(":")[1], 16)
    return None


def process_tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def memory(pid):
    """(RSS, PSS) in bytes summed over the process tree (PSS splits shared pages fairly, which
    matters for the fork model's copy-on-write children)."""
    rss = pss = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def thread_ticks(pid):
    """{thread id: utime + stime in clock ticks} for every thread of pid."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = int(fields[11]) + int(fields[12])
    return out


def cpu_spread(before, after):
    """Per-thread shares (in %) of the CPU time a process used between two thread_ticks(): the
    threads that used at least 2% of it, largest first."""
    delta = {t: after[t] - before.get(t, 0) for t in after}
    total = sum(delta.values())
    if total <= 0:
        return []
    return sorted((round(100 * d / total) for d in delta.values() if d * 50 >= total), reverse=True)


def epoll_spread(pid):
    """Open connections per event loop of process pid, read from outside: every epoll instance
    the process holds lists its registered descriptors in /proc/PID/fdinfo ("tfd: N ..."); an
    instance counts as a loop when it watches a listening socket or a connection. Largest first;
    empty when the process has no such loop (the thread model)."""
    listening = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if parts[3] == "0A":
                        listening.add(parts[9])
        except OSError:
            pass
    targets = fd_targets(pid)
    if targets is None:
        return []
    sockets, polls = {}, []
    for fd, target in targets.items():
        m = re.match(r"socket:\[(\d+)\]", target)
        if m:
            sockets[fd] = m.group(1)
        elif target == "anon_inode:[eventpoll]":
            polls.append(fd)
    counts = []
    for ep in polls:
        try:
            with open(f"/proc/{pid}/fdinfo/{ep}") as f:
                tfds = [int(m.group(1)) for m in re.finditer(r"^tfd:\s+(\d+)", f.read(), re.M)]
        except OSError:
            continue
        watched = [sockets[t] for t in tfds if t in sockets]
        if watched:
            counts.append(sum(1 for inode in watched if inode not in listening))
    return sorted(counts, reverse=True)


def echoload_faults(result):
    """Faults in an echoload result: errors it counted (mismatches, short reads, early closes,
    timeouts, I/O errors) and connections that were not made. echoload also calls a run unclean
    when nothing completed inside the measured window; on a loaded machine a stall can do that
    to a short window while every byte still came back verified, so the benchmark counts that
    as a figure of zero (shown as a stall in the report), not as a fault."""
    c = result.get("connections") or {}
    return (result.get("errors") or {}).get("total", 0) + (c.get("requested", 0) - c.get("established", 0))


def run_echoload(args, mode, target, extra, pinned):
    cmd = (["taskset", "-c", "1"] if pinned else []) + [args.echoload, mode, target, "--json", "--quiet"] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        result = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"echoload {' '.join(cmd)} gave no JSON (exit {p.returncode}): {p.stderr[-2000:]}")
    if echoload_faults(result):
        log(f"  warning: faults ({mode} {target}): {result.get('errors')}")
    elif not result.get("clean"):
        log(f"  warning: nothing completed in the measured window ({mode} {target}): a stall")
    return result


def run_tcpkali(args, target, size, conns, pinned):
    """tcpkali: each connection sends one `size`-byte message over and over, as fast as the
    socket takes (its default write combining), for duration + warm-up (it has no warm-up of its
    own; at least 1 s, as its counters are gathered from its threads now and then). It checks
    nothing of what comes back; the figures are its byte counts both ways, which are not taken
    at the same instant (received can exceed sent by a little), so only its exit status and its
    having received bytes are checked."""
    message = ("echod-bench-" * (size // 12 + 1))[:size]
    seconds = max(1.0, parse_seconds(args.duration) + parse_seconds(args.warmup))
    cmd = (["taskset", "-c", "1"] if pinned else []) + [
        args.tcpkali, "-c", str(conns), "-w", "1" if pinned else str(CPUS), "-T", f"{seconds}s",
        "-m", message, target]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    sent = re.search(r"Total data sent:.*?\((\d+) bytes\)", out)
    received = re.search(r"Total data received:.*?\((\d+) bytes\)", out)
    if p.returncode != 0 or not sent or not received:
        raise SystemExit(f"tcpkali {' '.join(cmd[:-3])} ... failed (exit {p.returncode}): {out[-2000:]}")
    sent, received = int(sent.group(1)), int(received.group(1))
    return {"mb_per_s": received / seconds / 1e6, "mb_per_s_sent": sent / seconds / 1e6,
            "bytes_sent": sent, "bytes_received": received, "echoed": received, "faults": 0}


def run_streamer(args, target, size, conns, pinned):
    """bench/streamer: `size`-byte messages back to back, one send each, every byte verified."""
    cmd = (["taskset", "-c", "1"] if pinned else []) + [
        args.streamer, target, str(conns), str(size), str(parse_seconds(args.duration)), str(parse_seconds(args.warmup))]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        r = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"{' '.join(cmd)} gave no JSON (exit {p.returncode}): {p.stderr[-2000:]}")
    if not r["clean"]:
        log(f"  warning: unclean run (streamer {target}): {r['first_fault']}")
    return {"mb_per_s": r["megabytes_per_second_received"], "mb_per_s_sent": r["megabytes_per_second_sent"],
            "echoed": r["total_bytes_received"], "faults": r["faults"] + (0 if p.returncode in (0, 1) else 1)}


def parse_seconds(d):
    return float(d[:-2]) / 1000 if d.endswith("ms") else float(d.rstrip("s"))


def measure(args, point, server, pinned):
    """One sample of one point against one server."""
    size, conns = point["size"], point["conns"]
    timing = ["--duration", args.duration, "--warmup", args.warmup]
    if point["kind"] == "pingpong":
        r = run_echoload(args, "pingpong", server.target, ["-c", str(conns), "--size", str(size)] + timing, pinned)
        t, lat = r["traffic"], r.get("latency_us") or {}  # no latency when no message came back
        return {"msgs_per_s": t["messages_per_second"], "mb_per_s": t["megabytes_per_second_sent"],
                "p50_us": lat.get("p50"), "p99_us": lat.get("p99"),
                "echoed": t["total_bytes_received"], "faults": echoload_faults(r)}
    if point["kind"] == "tcpkali":
        return run_tcpkali(args, server.target, size, conns, pinned)
    if point["kind"] == "streamer":
        return run_streamer(args, server.target, size, conns, pinned)
    extra = ["-c", str(conns), "--size", str(size)]
    r = run_echoload(args, "stream", server.target, extra + timing, pinned)
    t = r["traffic"]
    return {"mb_per_s": t["megabytes_per_second_received"], "mb_per_s_sent": t["megabytes_per_second_sent"],
            "echoed": t["total_bytes_received"], "faults": echoload_faults(r)}


def hold(args, workdir, name, conns):
    """A fresh server, N idle connections, server memory before and while they are held."""
    server = Server(name, args, workdir)
    try:
        time.sleep(0.3)
        before = memory(server.proc.pid)
        # A long drain timeout: a server that accepts slowly (fork, at thousands of children) is
        # measured by its connect rate, not failed for probes still waiting in its backlog.
        cmd = ["taskset", "-c", "1", args.echoload, "hold", server.target, "-c", str(conns),
               "--duration", args.hold_seconds, "--drain-timeout", "60s", "--json", "--quiet",
               "--source", "127.0.0.2-127.0.0.9"]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Sample the server's memory while the connections are held: the peak of the samples.
        peak = before
        while p.poll() is None:
            m = memory(server.proc.pid)
            if m[1] > peak[1]:
                peak = m
            time.sleep(0.2)
        out, err = p.communicate()
        try:
            r = json.loads(out)
        except json.JSONDecodeError:
            raise SystemExit(f"echoload hold gave no JSON: {err[-2000:]}")
        c = r["connections"]
        held = c["held"] or 0
        established = c["established"]
        return {"requested": conns, "established": established, "held": held,
                "connect_seconds": c["connect_seconds"],
                "conns_per_s": established / c["connect_seconds"] if c["connect_seconds"] else None,
                "rss_per_conn": (peak[0] - before[0]) / established if established else None,
                "pss_per_conn": (peak[1] - before[1]) / established if established else None,
                "failures": c["failures"], "clean": r["clean"]}
    finally:
        server.stop()


def metric(point):
    return "msgs_per_s" if point["kind"] == "pingpong" else "mb_per_s"


def points_for(smoke, tcpkali):
    """The points of each section, as dicts: id, section, kind, size, conns, label."""
    pinned, multi = [], []
    sizes, conn_counts = ([512], [10]) if smoke else ([64, 512, 4096, 65536], [1, 10, 100])
    for size in sizes:
        for conns in conn_counts:
            pinned.append({"id": f"pingpong {size}x{conns}", "kind": "pingpong", "size": size, "conns": conns})
    sc = 2 if smoke else 10
    streams = [
        {"id": f"stream 512x{sc}", "kind": "streamer", "size": 512, "conns": sc,
         "label": f"stream, 512-byte messages back to back, one send each, {sc} connections (bench/streamer, verified)"},
        {"id": f"stream 64Kx{sc}", "kind": "stream", "size": 65536, "conns": sc,
         "label": f"stream, large writes, {sc} connections (echoload stream, verified; its event driver "
                  f"sends up to 1 MiB at a time whatever --size says)"},
    ]
    if tcpkali:
        streams.append({"id": f"tcpkali 512x{sc}", "kind": "tcpkali", "size": 512, "conns": sc,
                        "label": f"tcpkali, 512-byte messages pipelined (its default write combining), {sc} "
                                 f"connections (bytes received counted; content not checked)"})
    pinned += streams
    multi_sizes = [10] if smoke else [10, 100]
    for conns in multi_sizes:
        multi.append({"id": f"pingpong 512x{conns}", "kind": "pingpong", "size": 512, "conns": conns})
    multi += [dict(p) for p in streams if p["kind"] != "stream"]
    for p in pinned:
        p["section"] = "pinned"
    for p in multi:
        p["section"] = "multi"
    return pinned, multi


def rotate(names, rep):
    return names[rep % len(names):] + names[:rep % len(names)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--echod", required=True)
    ap.add_argument("--echoload", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--streamer", required=True, help="bench/streamer.c, built")
    ap.add_argument("--tcpkali", default="", help="tcpkali binary; absent or empty: the tcpkali point is skipped")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--smoke", action="store_true", help="tiny, quick run: checks the benchmark works end to end")
    ap.add_argument("--runs", type=int, default=7, help="rounds (samples per point); the targets want at least 7")
    ap.add_argument("--quiet", action="store_true", help="no progress lines; print only where the report went")
    args = ap.parse_args()
    global QUIET
    QUIET = args.quiet

    tcpkali_note = None
    if not args.tcpkali:
        tcpkali_note = "tcpkali not given (make bench-tcpkali builds it): its point was not measured"
        args.tcpkali = None
    elif not os.access(args.tcpkali, os.X_OK):
        tcpkali_note = f"tcpkali not found at {args.tcpkali} (make bench-tcpkali builds it): its point was not measured"
        args.tcpkali = None
    if args.smoke:
        args.runs, args.duration, args.warmup, args.hold_seconds, hold_conns = 1, "0.4s", "0.1s", "1s", 200
    else:
        args.duration, args.warmup, args.hold_seconds, hold_conns = "2s", "0.5s", "2s", 19000
    pinned_points, multi_points = points_for(args.smoke, args.tcpkali is not None)
    os.makedirs(args.out, exist_ok=True)

    samples = {}    # (section, point id) -> server -> [sample]; a sample carries its round
    spreads = {}    # multi: point id -> server -> [per-sample spread: cpu shares, loop accepts]
    raw_hold = {}
    workdir = tempfile.mkdtemp(prefix="echod-bench-")
    log(f"work directory: {workdir} (kept with BENCH_KEEP=1)")
    try:
        for rep in range(args.runs):
            # Pinned: every server started once per round, the points taken in turn.
            order = rotate(PINNED, rep)
            servers = {}
            try:
                for name in PINNED:
                    servers[name] = Server(name, args, workdir)
                for point in pinned_points:
                    for name in order:
                        log(f"[round {rep + 1}/{args.runs}] pinned {point['id']} -> {name}")
                        r = measure(args, point, servers[name], pinned=True)
                        r["round"] = rep
                        samples.setdefault(("pinned", point["id"]), {}).setdefault(name, []).append(r)
            finally:
                for s in servers.values():
                    s.stop()
            # 2 cores, nothing pinned: a fresh server per sample, so that its per-loop accepted
            # counts and per-thread CPU time belong to that point alone.
            for point in multi_points:
                for name in rotate(MULTI, rep):
                    log(f"[round {rep + 1}/{args.runs}] {CPUS} cores {point['id']} -> {name}")
                    server = Server(name, args, workdir)
                    try:
                        before = thread_ticks(server.proc.pid)
                        # Connections per loop, sampled halfway through the measured period.
                        spread = []
                        sampler = threading.Timer(
                            parse_seconds(args.warmup) + parse_seconds(args.duration) / 2,
                            lambda: spread.extend(epoll_spread(server.proc.pid)))
                        sampler.start()
                        r = measure(args, point, server, pinned=False)
                        sampler.join()
                        r["cpu_shares"] = cpu_spread(before, thread_ticks(server.proc.pid))
                        r["loop_conns"] = spread
                    finally:
                        server.stop()
                    r["loop_accepts"] = server.loop_accepts
                    r["round"] = rep
                    samples.setdefault(("multi", point["id"]), {}).setdefault(name, []).append(r)
        for name in ["baseline", "event", "thread", "fork"]:
            log(f"hold {hold_conns} idle connections -> {name}")
            raw_hold[name] = hold(args, workdir, name, hold_conns)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)

    results = {"machine": machine(), "runs": args.runs, "duration": args.duration, "warmup": args.warmup,
               "tcpkali": args.tcpkali, "tcpkali_note": tcpkali_note,
               "sections": {}, "hold": raw_hold}
    for section, points in (("pinned", pinned_points), ("multi", multi_points)):
        results["sections"][section] = [summarise(p, samples.get((section, p["id"]), {}), BASE[section])
                                        for p in points]
    results["targets"] = targets(results)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    report = render_report(results)
    # The scale section (make bench-scale, bench/scale.py) when it has been run into the same
    # directory: one report for both.
    scale = os.path.join(args.out, "scale.md")
    if os.path.exists(scale):
        with open(scale) as f:
            report += "\n" + f.read()
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.out, "chart.svg"), "w") as f:
        f.write(render_chart(results))
    validate(results)
    if args.quiet:
        print(f"bench: every point measured for every server; report in {os.path.join(args.out, 'report.md')}")
    else:
        print(report)


def summarise(point, by_server, base_name):
    """Median, min, max of every figure per server; ratio of medians to the baseline, and the
    min-max of the per-round ratios (a server against the baseline of the same round)."""
    key = metric(point)
    base_runs = {r["round"]: r[key] for r in by_server.get(base_name, [])}
    base_median = median([r[key] for r in by_server.get(base_name, [])])
    out = dict(point) | {"metric": key, "servers": {}}
    for name, runs in by_server.items():
        values = [r[key] for r in runs if r.get(key) is not None]
        s = {"samples": len(values), "median": median(values),
             "min": min(values) if values else None, "max": max(values) if values else None,
             "runs": runs}
        for extra in ("p50_us", "p99_us", "mb_per_s"):
            if extra != key and any(r.get(extra) is not None for r in runs):
                s[extra] = median([r[extra] for r in runs if r.get(extra) is not None])
        if s["median"] is not None and base_median:
            s["ratio"] = s["median"] / base_median
            per_round = [r[key] / base_runs[r["round"]] for r in runs if base_runs.get(r["round"])]
            s["ratio_min"], s["ratio_max"] = (min(per_round), max(per_round)) if per_round else (None, None)
        if any(r.get("cpu_shares") for r in runs):
            s["cpu_shares"] = [r.get("cpu_shares") for r in runs]
        if any(r.get("loop_accepts") for r in runs):
            s["loop_accepts"] = [r.get("loop_accepts") for r in runs]
        if any(r.get("loop_conns") for r in runs):
            s["loop_conns"] = [r.get("loop_conns") for r in runs]
        out["servers"][name] = s
    return out


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def targets(results):
    """Issue 17's targets, read from the medians: the event model >= 0.95x the baseline at every
    ping-pong and streaming point (pinned), >= 1.0x the per-CPU-loop baseline with Workers= =
    CPUs (2 cores, nothing pinned). A verdict from fewer than 7 samples is marked as such."""
    out = []
    for section, name, goal in (("pinned", "event", 0.95), ("multi", "event-mc", 1.0)):
        for p in results["sections"][section]:
            s = p["servers"].get(name)
            if not s or s.get("ratio") is None:
                out.append({"section": section, "point": p["id"], "goal": goal, "ratio": None, "met": None,
                            "samples": 0})
                continue
            out.append({"section": section, "point": p["id"], "goal": goal, "ratio": s["ratio"],
                        "met": s["ratio"] >= goal, "samples": s["samples"]})
    return out


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"kernel": platform.release(), "cpu": model, "cpus": CPUS, "hostname": platform.node(),
            "load_at_end": load}


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.1f}{unit}"


def fmt_ratio(s):
    if s.get("ratio") is None:
        return "n/a"
    if s.get("ratio_min") is None:
        return f"{s['ratio']:.2f}x"
    return f"{s['ratio']:.2f}x ({s['ratio_min']:.2f}-{s['ratio_max']:.2f})"


def render_section(lines, points, names):
    for p in points:
        unit = "msgs/s" if p["metric"] == "msgs_per_s" else "MB/s echoed"
        lines += [f"### {p.get('label', p['id'])}", "",
                  f"| server | {unit}: median | min-max | ratio (per-round min-max) |"
                  + (" p50 us | p99 us |" if p["kind"] == "pingpong" else "")
                  + (" CPU % per thread | connections per loop |" if p["section"] == "multi" else ""),
                  "|---|---:|---:|---:|" + ("---:|---:|" if p["kind"] == "pingpong" else "")
                  + ("---|---|" if p["section"] == "multi" else "")]
        for name in names:
            s = p["servers"].get(name)
            if not s:
                continue
            stalls = sum(1 for r in s["runs"] if not r.get(p["metric"]))
            note = f" ({stalls} stalled)" if stalls else ""
            row = (f"| {LABELS[name]} | {fmt(s['median'])} | {fmt(s['min'])}-{fmt(s['max'])}{note} | {fmt_ratio(s)} |")
            if p["kind"] == "pingpong":
                row += f" {fmt(s.get('p50_us'))} | {fmt(s.get('p99_us'))} |"
            if p["section"] == "multi":
                shares = s.get("cpu_shares") or []
                conns = s.get("loop_conns") or []
                row += (" " + (" ".join("/".join(map(str, c)) for c in shares if c) or "n/a") + " |"
                        + " " + (" ".join("/".join(map(str, a)) for a in conns if a) or "no event loops") + " |")
            lines.append(row)
        lines.append("")


def render_report(results):
    m = results["machine"]
    load = f"{m['load_at_end']:.2f}" if m.get("load_at_end") is not None else "n/a"
    lines = ["# echod benchmark", "",
             f"Machine: {m['cpu']}, {m['cpus']} CPUs, kernel {m['kernel']}; load average (1 min) at the end: {load}. "
             f"{results['runs']} round(s), each point {results['duration']} after {results['warmup']} of warm-up, "
             f"servers in a rotating order each round. Each cell: the median, the spread (min-max) of the samples, "
             f"and the ratio of medians to the C baseline of the same run (in brackets the min-max of the "
             f"per-round ratios, each server against the baseline of its round).", ""]
    if results.get("tcpkali_note"):
        lines += [f"Note: {results['tcpkali_note']}.", ""]
    lines += ["## Targets (issue 17)", "",
              "| section | point | event / baseline | target | verdict |", "|---|---|---:|---:|---|"]
    for t in results["targets"]:
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        if t["met"] is not None and t["samples"] < 7:
            verdict += f" ({t['samples']} sample{'s' if t['samples'] != 1 else ''}; the rule wants 7)"
        section = "pinned (1 core)" if t["section"] == "pinned" else f"{m['cpus']} cores, nothing pinned"
        ratio = "n/a" if t["ratio"] is None else f"{t['ratio']:.3f}x"
        lines.append(f"| {section} | {t['point']} | {ratio} | >= {t['goal']:.2f}x | {verdict} |")
    lines += ["", "## Pinned: server on CPU 0, client on CPU 1", ""]
    render_section(lines, results["sections"]["pinned"], PINNED)
    lines += [f"## {m['cpus']} cores, nothing pinned", "",
              f"echod with `Workers={m['cpus']}`; the C baseline with one epoll loop per CPU, each with its own "
              f"SO_REUSEPORT listener (the kernel spreads connections by a hash of their addresses), and the same "
              f"server with one listener shared by every loop's epoll with EPOLLEXCLUSIVE (the kernel wakes one "
              f"idle waiter per connection; echod's workers share their listener this way). CPU % per thread: each thread's share of the server's CPU time during "
              f"the sample (threads under 2% left out), one group per sample. Connections per loop: the open "
              f"connections each epoll instance of the server watched halfway through the sample, read from "
              f"/proc/PID/fdinfo (echod does not report per-worker counts itself: its STATUS= gives totals), "
              f"largest first, one group per sample; the thread model has no event loops.", ""]
    render_section(lines, results["sections"]["multi"], MULTI)
    lines += ["## Hold (idle connections, pinned)", "",
              "| server | requested | held | connects/s | RSS B/conn | PSS B/conn | PSS ratio |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    bh = results["hold"].get("baseline", {})
    for name in ["baseline", "event", "thread", "fork"]:
        r = results["hold"].get(name)
        if r:
            pr = (f"{r['pss_per_conn'] / bh['pss_per_conn']:.2f}x"
                  if r.get("pss_per_conn") is not None and bh.get("pss_per_conn") else "n/a")
            lines.append(f"| {LABELS[name]} | {r['requested']} | {r['held']} | {fmt(r['conns_per_s'])} "
                         f"| {fmt(r['rss_per_conn'])} | {fmt(r['pss_per_conn'])} | {pr} |")
    lines += ["", "The Python seed servers are not in the hold test (a Python process or thread per idle "
              "connection, 19,000 times, measures Python's footprint, not the model's)."]
    return "\n".join(lines) + "\n"


def render_chart(results):
    """Grouped bars: each pinned point's median relative to the baseline's."""
    points = results["sections"]["pinned"]
    colors = {"baseline": "#888888", "event": "#1f77b4", "thread": "#ff7f0e", "fork": "#2ca02c",
              "py-thread": "#d62728", "py-fork": "#9467bd"}
    names = PINNED
    bar, gap, left, top, height = 10, 16, 60, 40, 260
    width = left + len(points) * (len(names) * bar + gap) + 20
    ymax = 1.2
    for p in points:
        for n in names:
            r = (p["servers"].get(n) or {}).get("ratio")
            if r:
                ymax = max(ymax, r)

    def y(v):
        return top + height - v / ymax * height
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{max(width, 600)}" height="{top + height + 150}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="20" font-size="14">echod models and the seed servers vs the C epoll baseline '
           f'(median, ratio to baseline = 1.0; server on CPU 0)</text>']
    for tick in [0, 0.25, 0.5, 0.75, 1.0] + ([ymax] if ymax > 1.2 else []):
        svg.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    x = left + gap / 2
    for p in points:
        for i, n in enumerate(names):
            r = (p["servers"].get(n) or {}).get("ratio")
            if r:
                svg.append(f'<rect x="{x + i * bar:.1f}" y="{y(r):.1f}" width="{bar - 2}" '
                           f'height="{top + height - y(r):.1f}" fill="{colors[n]}"><title>{LABELS[n]} {p["id"]}: '
                           f'{r:.2f}x</title></rect>')
        cx = x + len(names) * bar / 2
        svg.append(f'<text x="{cx:.1f}" y="{top + height + 14}" text-anchor="end" '
                   f'transform="rotate(-45 {cx:.1f} {top + height + 14})">{p["id"]}</text>')
        x += len(names) * bar + gap
    for i, n in enumerate(names):
        lx = left + (i % 3) * 170
        ly = top + height + 110 + (i // 3) * 16
        svg.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{colors[n]}"/>')
        svg.append(f'<text x="{lx + 14}" y="{ly + 9}">{LABELS[n]}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def validate(results):
    """The smoke check (the plumbing, not speed): every point measured for every server, without
    faults, with bytes echoed; every echod stopped with exit 0; every hold held all it asked for.
    A sample of zero (a stall over a whole short window, every byte still verified) is a figure,
    marked in the report, not a failure."""
    problems = []
    for section, names in (("pinned", PINNED), ("multi", MULTI)):
        for p in results["sections"][section]:
            for n in names:
                s = p["servers"].get(n)
                if not s:
                    problems.append(f"{section} {p['id']} {n}: not measured")
                    continue
                if any(run["faults"] for run in s["runs"]):
                    problems.append(f"{section} {p['id']} {n}: the client found faults")
                if not all(run["echoed"] for run in s["runs"]):
                    problems.append(f"{section} {p['id']} {n}: nothing was echoed")
    for name, status in SERVER_EXITS:
        if status != 0:
            problems.append(f"echod {name}: exit status {status} after SIGTERM (want 0)")
    for n in ["baseline", "event", "thread", "fork"]:
        h = results["hold"].get(n)
        if not h or h["held"] != h["requested"]:
            problems.append(f"hold {n}: held {h and h['held']} of {h and h['requested']}")
        elif not h.get("clean"):
            problems.append(f"hold {n}: echoload found faults: {h.get('failures')}")
    if problems:
        for p in problems:
            print(f"bench: {p}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
