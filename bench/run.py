#!/usr/bin/env python3
"""make bench: echod's three models against a minimal C epoll echo server, on this machine.

Every figure is also given as a ratio to the baseline measured in the same run, so that a
shared, noisy machine moves both sides alike. The server is pinned to CPU 0 and echoload to
CPU 1 (taskset); each point is measured after a warm-up, repeated, with the servers taken in a
rotating order each round, and the median is reported.

Outputs (in --out, default bench/out/): results.json (every run, and the medians),
report.md (the tables), chart.svg (the models side by side).

    bench/run.py --echod .build/release/echod --echoload .build/release/echoload \
        --baseline bench/out/baseline [--smoke]
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
import time

SERVERS = ["baseline", "event", "thread", "fork"]


QUIET = False
# (server name, exit status) of every echod stopped with SIGTERM: a graceful stop must exit 0.
SERVER_EXITS = []


def log(msg):
    if not QUIET:
        print(msg, file=sys.stderr, flush=True)


class Server:
    """One server process (echod in a model, or the C baseline), pinned to CPU 0."""

    def __init__(self, name, args, workdir):
        self.name = name
        self.workdir = workdir
        cmd = ["taskset", "-c", "0"]
        if name == "baseline":
            cmd += [args.baseline, "0"]
        else:
            conf = os.path.join(workdir, f"{name}.conf")
            with open(conf, "w") as f:
                f.write(
                    f"[Server]\nModel={name}\nListen=127.0.0.1:0\nWorkers=0\nMaxConnections=auto\n"
                    f"Backlog=4096\nLogLevel=warning\n[Limits]\nNoFile=max\n"
                    f"[Thread]\nMaxThreads=20000\n[Fork]\nMaxChildren=20000\n")
            cmd += [args.echod, "--config", conf]
        self.err = open(os.path.join(workdir, f"{name}.stderr"), "w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.port = self._port()

    def _port(self):
        if self.name == "baseline":
            line = self.proc.stdout.readline()
            m = re.match(r"port (\d+)", line)
            if not m:
                raise SystemExit(f"baseline did not start: {line!r}")
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
        if self.name != "baseline":
            # Died early, killed at the timeout, or a non-zero exit: all count against the run.
            SERVER_EXITS.append((self.name, self.proc.returncode))
        self.err.close()


def listening_port(pid):
    """The port of the TCP socket in LISTEN state owned by pid, from /proc."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.match(r"socket:\[(\d+)\]", target)
            if m:
                inodes.add(m.group(1))
    except OSError:
        return None
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


def echoload(args, mode, target, extra):
    cmd = ["taskset", "-c", "1", args.echoload, mode, target, "--json", "--quiet"] + extra
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        result = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"echoload {' '.join(cmd)} gave no JSON (exit {p.returncode}): {p.stderr[-2000:]}")
    if not result.get("clean"):
        log(f"  warning: unclean run ({mode} {target}): {result.get('errors')}")
    return result


def pingpong(args, server, size, conns):
    r = echoload(args, "pingpong", server.target, [
        "-c", str(conns), "--size", str(size), "--duration", args.duration, "--warmup", args.warmup])
    t, lat = r["traffic"], r["latency_us"]
    return {"msgs_per_s": t["messages_per_second"], "mb_per_s": t["megabytes_per_second_sent"],
            "p50_us": lat["p50"], "p99_us": lat["p99"], "clean": r["clean"]}


def stream(args, server, size, conns):
    r = echoload(args, "stream", server.target, [
        "-c", str(conns), "--size", str(size), "--duration", args.duration, "--warmup", args.warmup])
    t = r["traffic"]
    return {"mb_per_s": t["megabytes_per_second_received"], "mb_per_s_sent": t["megabytes_per_second_sent"],
            "clean": r["clean"]}


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


def median_of(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--echod", required=True)
    ap.add_argument("--echoload", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--smoke", action="store_true", help="tiny, quick run: checks the benchmark works end to end")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quiet", action="store_true", help="no progress lines; print only where the report went")
    args = ap.parse_args()
    global QUIET
    QUIET = args.quiet

    args.target_runs = max(args.runs, 7)
    if args.smoke:
        args.runs, args.target_runs, args.duration, args.warmup, args.hold_seconds = 1, 1, "0.5s", "0.2s", "1s"
        sizes, conn_counts, hold_conns, stream_conns = [512], [10], 200, 2
    else:
        args.duration, args.warmup, args.hold_seconds = "3s", "1s", "2s"
        sizes, conn_counts, hold_conns, stream_conns = [64, 512, 4096, 65536], [1, 10, 100], 19000, 10
    os.makedirs(args.out, exist_ok=True)

    results = {"machine": machine(), "runs": args.runs, "target_runs": args.target_runs,
               "duration": args.duration, "warmup": args.warmup,
               "pingpong": {}, "stream": {}, "hold": {}}
    workdir = tempfile.mkdtemp(prefix="echod-bench-")
    log(f"work directory: {workdir} (kept with BENCH_KEEP=1)")
    try:
        raw_pp = {}   # (size, conns) -> server -> [run results]
        raw_st = {}
        for rep in range(args.runs):
            order = SERVERS[rep % len(SERVERS):] + SERVERS[:rep % len(SERVERS)]
            servers = {name: Server(name, args, workdir) for name in SERVERS}
            try:
                for size in sizes:
                    for conns in conn_counts:
                        for name in order:
                            log(f"[run {rep + 1}/{args.runs}] pingpong {size} B x {conns} -> {name}")
                            raw_pp.setdefault((size, conns), {}).setdefault(name, []).append(
                                pingpong(args, servers[name], size, conns))
                for name in order:
                    log(f"[run {rep + 1}/{args.runs}] stream 65536 B x {stream_conns} -> {name}")
                    raw_st.setdefault(name, []).append(stream(args, servers[name], 65536, stream_conns))
            finally:
                for s in servers.values():
                    s.stop()
        # The points with targets get extra rounds (7 samples in all), still alternating servers:
        # on a shared machine their medians are what the targets are read from.
        for rep in range(args.runs, args.target_runs):
            order = SERVERS[rep % len(SERVERS):] + SERVERS[:rep % len(SERVERS)]
            servers = {name: Server(name, args, workdir) for name in SERVERS}
            try:
                for name in order:
                    log(f"[target round {rep + 1}/{args.target_runs}] pingpong 512 B x 100 -> {name}")
                    raw_pp.setdefault((512, 100), {}).setdefault(name, []).append(pingpong(args, servers[name], 512, 100))
                    log(f"[target round {rep + 1}/{args.target_runs}] stream 65536 B x {stream_conns} -> {name}")
                    raw_st.setdefault(name, []).append(stream(args, servers[name], 65536, stream_conns))
            finally:
                for s in servers.values():
                    s.stop()
        raw_hold = {}
        for name in SERVERS:
            log(f"hold {hold_conns} idle connections -> {name}")
            raw_hold[name] = hold(args, workdir, name, hold_conns)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)

    for (size, conns), by_server in raw_pp.items():
        key = f"{size}x{conns}"
        results["pingpong"][key] = {
            name: {k: median_of(runs, k) for k in ("msgs_per_s", "mb_per_s", "p50_us", "p99_us")}
            | {"runs": runs, "samples": len(runs)}
            for name, runs in by_server.items()}
    results["stream"] = {name: {"mb_per_s": median_of(runs, "mb_per_s"), "runs": runs, "samples": len(runs)}
                         for name, runs in raw_st.items()}
    results["hold"] = raw_hold
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    report = render_report(results)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.out, "chart.svg"), "w") as f:
        f.write(render_chart(results))
    validate(results, sizes, conn_counts)
    if args.quiet:
        print(f"bench: every point measured for every server; report in {os.path.join(args.out, 'report.md')}")
    else:
        print(report)


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
    return {"kernel": platform.release(), "cpu": model, "cpus": os.cpu_count(),
            "hostname": platform.node()}


def ratio(value, base):
    if value is None or not base:
        return "n/a"
    return f"{value / base:.2f}x"


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.1f}{unit}"


def render_report(results):
    m = results["machine"]
    lines = [f"# echod benchmark", "",
             f"Machine: {m['cpu']}, {m['cpus']} CPUs, kernel {m['kernel']}. Server on CPU 0, echoload on CPU 1. "
             f"Median of {results['runs']} run(s) ({results['target_runs']} for the two points with targets: "
             f"pingpong 512x100 and stream), {results['duration']} each after {results['warmup']} warm-up. "
             f"Ratios are to the C baseline measured in the same run.", ""]
    lines += ["## pingpong (closed loop)", "",
              "| size x conns | server | msgs/s | ratio | MB/s | p50 us | p99 us | p99 ratio |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, by_server in results["pingpong"].items():
        base = by_server.get("baseline", {})
        for name in SERVERS:
            r = by_server.get(name)
            if not r:
                continue
            lines.append(f"| {key} | {name} | {fmt(r['msgs_per_s'])} | {ratio(r['msgs_per_s'], base.get('msgs_per_s'))} "
                         f"| {fmt(r['mb_per_s'])} | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} "
                         f"| {ratio(r['p99_us'], base.get('p99_us'))} |")
    lines += ["", "## stream (64 KiB writes)", "", "| server | MB/s (echoed) | ratio |", "|---|---:|---:|"]
    base = results["stream"].get("baseline", {}).get("mb_per_s")
    for name in SERVERS:
        r = results["stream"].get(name)
        if r:
            lines.append(f"| {name} | {fmt(r['mb_per_s'])} | {ratio(r['mb_per_s'], base)} |")
    lines += ["", "## hold (idle connections)", "",
              "| server | requested | held | connects/s | RSS B/conn | PSS B/conn | PSS ratio |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    bh = results["hold"].get("baseline", {})
    for name in SERVERS:
        r = results["hold"].get(name)
        if r:
            lines.append(f"| {name} | {r['requested']} | {r['held']} | {fmt(r['conns_per_s'])} "
                         f"| {fmt(r['rss_per_conn'])} | {fmt(r['pss_per_conn'])} "
                         f"| {ratio(r['pss_per_conn'], bh.get('pss_per_conn'))} |")
    lines += ["", "## targets (Model=event)", ""]
    lines += [f"- {t}" for t in targets(results)]
    return "\n".join(lines) + "\n"


def targets(results):
    out = []
    pp = results["pingpong"].get("512x100")
    if pp and pp.get("baseline") and pp.get("event"):
        r = pp["event"]["msgs_per_s"] / pp["baseline"]["msgs_per_s"]
        out.append(f"pingpong 512 B x 100 msgs/s: {r:.3f}x baseline (target >= 0.95): {'met' if r >= 0.95 else 'NOT met'}")
        q = pp["event"]["p99_us"] / pp["baseline"]["p99_us"]
        out.append(f"pingpong 512 B x 100 p99: {q:.3f}x baseline (target <= 1.2): {'met' if q <= 1.2 else 'NOT met'}")
    st = results["stream"]
    if st.get("baseline") and st.get("event") and st["baseline"]["mb_per_s"]:
        r = st["event"]["mb_per_s"] / st["baseline"]["mb_per_s"]
        out.append(f"stream 64 KiB MB/s: {r:.3f}x baseline (target >= 0.95): {'met' if r >= 0.95 else 'NOT met'}")
    h = results["hold"].get("event")
    if h and h["pss_per_conn"] is not None:
        v = h["pss_per_conn"]
        out.append(f"idle connection cost: {v:.0f} B/conn (target <= 256): {'met' if v <= 256 else 'NOT met'}")
    return out


def render_chart(results):
    """Grouped bars: msgs/s relative to the baseline for each pingpong point, plus stream."""
    points = [(k, v) for k, v in results["pingpong"].items()]
    if results["stream"]:
        points.append(("stream 64K x10 (MB/s)", {n: {"msgs_per_s": r["mb_per_s"]} for n, r in results["stream"].items()}))
    colors = {"baseline": "#888888", "event": "#1f77b4", "thread": "#ff7f0e", "fork": "#2ca02c"}
    bar, gap, left, top, height = 14, 18, 60, 40, 260
    width = left + len(points) * (len(SERVERS) * bar + gap) + 20
    ymax = 1.2
    for _, by in points:
        b = (by.get("baseline") or {}).get("msgs_per_s")
        for n in SERVERS:
            v = (by.get(n) or {}).get("msgs_per_s")
            if b and v:
                ymax = max(ymax, v / b)
    def y(v):
        return top + height - v / ymax * height
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + height + 110}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="20" font-size="14">echod models vs the C epoll baseline '
           f'(msgs/s or MB/s, ratio to baseline = 1.0)</text>']
    for tick in [0, 0.25, 0.5, 0.75, 1.0] + ([ymax] if ymax > 1.2 else []):
        svg.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    x = left + gap / 2
    for label, by in points:
        b = (by.get("baseline") or {}).get("msgs_per_s")
        for i, n in enumerate(SERVERS):
            v = (by.get(n) or {}).get("msgs_per_s")
            if b and v:
                r = v / b
                svg.append(f'<rect x="{x + i * bar:.1f}" y="{y(r):.1f}" width="{bar - 2}" '
                           f'height="{top + height - y(r):.1f}" fill="{colors[n]}"><title>{n} {label}: {r:.2f}x</title></rect>')
        cx = x + len(SERVERS) * bar / 2
        svg.append(f'<text x="{cx:.1f}" y="{top + height + 14}" text-anchor="end" '
                   f'transform="rotate(-45 {cx:.1f} {top + height + 14})">{label}</text>')
        x += len(SERVERS) * bar + gap
    for i, n in enumerate(SERVERS):
        svg.append(f'<rect x="{left + i * 90}" y="{top + height + 80}" width="10" height="10" fill="{colors[n]}"/>')
        svg.append(f'<text x="{left + i * 90 + 14}" y="{top + height + 89}">{n}</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def validate(results, sizes, conn_counts):
    """The smoke check: every point measured for every server, figures present and positive."""
    problems = []
    for size in sizes:
        for conns in conn_counts:
            by = results["pingpong"].get(f"{size}x{conns}", {})
            for n in SERVERS:
                if not by.get(n) or not by[n]["msgs_per_s"]:
                    problems.append(f"pingpong {size}x{conns} {n}: no figure")
    for key, by in results["pingpong"].items():
        for n, r in by.items():
            if not all(run["clean"] for run in r["runs"]):
                problems.append(f"pingpong {key} {n}: echoload found faults")
    for n, r in results["stream"].items():
        if not all(run["clean"] for run in r["runs"]):
            problems.append(f"stream {n}: echoload found faults")
    for n, r in results["hold"].items():
        if not r.get("clean"):
            problems.append(f"hold {n}: echoload found faults: {r.get('failures')}")
    for name, status in SERVER_EXITS:
        if status != 0:
            problems.append(f"echod {name}: exit status {status} after SIGTERM (want 0)")
    for n in SERVERS:
        if not results["stream"].get(n) or not results["stream"][n]["mb_per_s"]:
            problems.append(f"stream {n}: no figure")
        h = results["hold"].get(n)
        if not h or h["held"] != h["requested"]:
            problems.append(f"hold {n}: held {h and h['held']} of {h and h['requested']}")
    if problems:
        for p in problems:
            print(f"bench: {p}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
