#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""make bench-scale: one million concurrent connections on this machine (issue 12 item 7).

Servers, one run each, in this order:
- c-fleet: the C baseline (bench/baseline.c) run as a fleet of processes, one epoll loop each,
  every one with its own SO_REUSEPORT listener on the same port (the kernel spreads connections
  by a hash of their addresses), enough of them to stay under the per-process descriptor ceiling;
- event: echod Model=event with [Server] Processes= as many as the ceiling requires;
- thread: echod Model=thread with Processes= (target: --thread-target connections, as many as
  memory allows);
- fork: echod Model=fork (target: --fork-target children).

Each run: a fresh server, then `echoload hold TARGET -c N` (echoload chooses its own processes and
127.0.0.0/8 source addresses and says so), holding every connection open at one instant and
probing each. Per run: held, failures by kind, time to establish all N, the connect rate per
second, the machine's memory cost (MemAvailable drop and kernel Slab growth, /proc/meminfo, from
before the ramp to the hold: server, client and kernel together), and the server's proportional
set size per connection (summed /proc/PID/smaps_rollup Pss of every server process, before the
ramp and at the hold).

The thread and fork models need more than this box's defaults: kernel.pid_max (every thread
and child takes a pid), vm.max_map_count (two mappings per thread stack) and kernel.threads-max.
The benchmark raises what is below its need, prints every change, and restores the old values
at the end (also on Ctrl-C). Servers run outside systemd: the shipped unit's TasksMax= and
LimitNPROC= do not apply (the report says so).

Targets (issue 12 item 8) are read from the figures and marked met / NOT met: 1,000,000 held with
0 failures; echod's time to establish no slower than the C fleet's; machine memory at most 1.05x
the C fleet's; echod <= 64 B of PSS per idle connection; thread >= 60,000; fork >= 30,000.

Outputs (in --out, default bench/out/): scale.json, scale.md (the report's section, which
bench/run.py's report includes when present), scale.svg.

    bench/scale.py --echod BUILT/echod --echoload BUILT/echoload --baseline bench/out/baseline \
        [--connections 1000000] [--only c-fleet,event,thread,fork] [--hold 5s]
"""
import argparse
import json
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Connections one server process is given: under 20,000 descriptors with room for the spread of
# SO_REUSEPORT's hash (1,000,000 over 60 processes: 16,667 each, a few hundred either way).
PER_PROCESS = 16_667
LABELS = {"c-fleet": "C baseline fleet", "event": "echod event", "thread": "echod thread", "fork": "echod fork"}
COLORS = {"c-fleet": "#888888", "event": "#1f77b4", "thread": "#ff7f0e", "fork": "#2ca02c"}
# What the thread and fork runs need; raised only if below, restored at the end.
SYSCTLS = {"kernel.pid_max": 4_194_304, "vm.max_map_count": 262_144, "kernel.threads-max": 400_000}


def log(msg):
    print(f"bench-scale: {msg}", file=sys.stderr, flush=True)


def meminfo():
    """(MemAvailable, Slab) in bytes."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("MemAvailable", "Slab"):
                out[k] = int(v.split()[0]) * 1024
    return out["MemAvailable"], out["Slab"]


def pss(pids):
    """Summed Pss (bytes) of `pids` and all their descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    total, todo, seen = 0, list(pids), set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total, len(seen)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sysctl_path(key):
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctl(key):
    with open(sysctl_path(key)) as f:
        return f.read().strip()


def write_sysctl(key, value):
    with open(sysctl_path(key), "w") as f:
        f.write(str(value))


class Sysctls:
    """Raises the SYSCTLS that are below their need; restores them (once) on exit."""

    def __init__(self, dry):
        self.changed = []  # (key, old, new)
        self.dry = dry

    def raise_all(self):
        for key, need in SYSCTLS.items():
            old = read_sysctl(key)
            if int(old) < need:
                if not self.dry:
                    write_sysctl(key, need)
                self.changed.append((key, old, str(need)))
                log(f"sysctl {key}: {old} -> {need}")
            else:
                log(f"sysctl {key}: {old} (enough, left alone)")

    def restore(self):
        for key, old, _ in reversed(self.changed):
            if not self.dry:
                try:
                    write_sysctl(key, old)
                    log(f"sysctl {key}: restored to {old}")
                except OSError as e:
                    log(f"sysctl {key}: could not restore {old}: {e}")
        self.dry = True  # once


class Fleet:
    """The server processes of one run, all listening on 127.0.0.1:port."""

    def __init__(self, kind, args, workdir, connections):
        self.kind = kind
        self.port = free_port()
        self.procs = []
        self.err = open(os.path.join(workdir, f"{kind}.stderr"), "w+")
        self.processes = 1
        if kind == "c-fleet":
            self.processes = max(1, math.ceil(connections / PER_PROCESS))
            for _ in range(self.processes):
                self.procs.append(subprocess.Popen([args.baseline, str(self.port), "1", "reuseport"],
                                                   stdout=subprocess.DEVNULL, stderr=self.err))
        else:
            model = kind
            lines = [f"[Server]", f"Model={model}", f"Listen=127.0.0.1:{self.port}", "Backlog=4096",
                     "MaxConnections=auto", "LogLevel=warning"]
            if model in ("event", "thread"):
                self.processes = max(1, math.ceil(connections / PER_PROCESS))
                lines += [f"Processes={self.processes}"]
                if model == "event":
                    lines += ["Workers=1"]
            # Only the selected model's section: keys of another model are warnings, and echod
            # bounds MaxChildren= at 1,000,000.
            lines += ["[Limits]", "NoFile=max"]
            if model == "thread":
                lines += ["[Thread]", "MaxThreads=20000", "StackSize=64K"]
            if model == "fork":
                lines += ["[Fork]", f"MaxChildren={min(connections + 1000, 1_000_000)}"]
            conf = os.path.join(workdir, f"{kind}.conf")
            with open(conf, "w") as f:
                f.write("\n".join(lines) + "\n")
            self.procs.append(subprocess.Popen([args.echod, "--config", conf], stdout=subprocess.DEVNULL,
                                               stderr=self.err))
        self.wait_listening()

    def wait_listening(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    self.err.seek(0)
                    raise RuntimeError(f"{self.kind}: a server exited ({p.returncode}): {self.err.read()[-1500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    time.sleep(0.5)  # every process of the fleet has had time to bind
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind}: not listening on port {self.port} after 30 s")

    @property
    def pids(self):
        return [p.pid for p in self.procs]

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.err.close()


def supports_processes(echod, workdir):
    conf = os.path.join(workdir, "probe.conf")
    with open(conf, "w") as f:
        f.write("[Server]\nModel=event\nListen=127.0.0.1:0\nProcesses=2\n")
    return subprocess.run([echod, "--check-config", "--config", conf], capture_output=True).returncode == 0


def run_one(kind, args, workdir, connections):
    log(f"{kind}: {connections} connections")
    before_mem = meminfo()
    fleet = Fleet(kind, args, workdir, connections)
    try:
        time.sleep(1)
        idle_pss, nprocs = pss(fleet.pids)
        idle_mem = meminfo()
        # The fork server accepts more slowly than echoload connects (a fork per connection, slower
        # as children accumulate): a connection waiting in its backlog is not a failure of the
        # model, so its connects may take longer.
        timeout = "180s" if kind == "fork" else "20s"
        cmd = [args.echoload, "hold", f"127.0.0.1:{fleet.port}", "-c", str(connections), "--duration", args.hold,
               "--drain-timeout", "60s", "--connect-timeout", timeout, "--json", "--quiet"]
        log("  " + " ".join(cmd))
        started = time.time()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Sample while the connections are held: the lowest MemAvailable, the highest Slab and PSS.
        low_avail, high_slab, high_pss, high_procs = idle_mem[0], idle_mem[1], idle_pss, nprocs
        while p.poll() is None:
            avail, slab = meminfo()
            low_avail, high_slab = min(low_avail, avail), max(high_slab, slab)
            s, n = pss(fleet.pids)
            if s > high_pss:
                high_pss, high_procs = s, n
            time.sleep(1)
        out, err = p.communicate()
        wall = time.time() - started
    finally:
        fleet.stop()
    try:
        r = json.loads(out)
    except json.JSONDecodeError:
        return {"kind": kind, "error": f"echoload gave no JSON (exit {p.returncode}): {err[-1500:]}"}
    c = r["connections"]
    held = c["held"] or 0
    return {
        "kind": kind, "requested": connections, "server_processes": fleet.processes, "server_pids_at_hold": high_procs,
        "held": held, "established": c["established"], "failed": c["failed"], "failures": c["failures"],
        "connect_seconds": c["connect_seconds"], "established_per_second": c["established_per_second"],
        "client_processes": r["processes"], "plan": r.get("plan"), "clean": r["clean"],
        "unclean_reasons": r.get("unclean_reasons", []), "errors": r["errors"]["total"],
        "mem_available_drop": idle_mem[0] - low_avail, "slab_growth": high_slab - idle_mem[1],
        "mem_available_before_server": before_mem[0],
        "machine_bytes_per_conn": (idle_mem[0] - low_avail) / held if held else None,
        "pss_idle": idle_pss, "pss_hold": high_pss,
        "pss_per_conn": (high_pss - idle_pss) / held if held else None, "wall_seconds": round(wall, 1),
    }


def targets(results, connections):
    by = {r["kind"]: r for r in results if "error" not in r}
    c, e = by.get("c-fleet"), by.get("event")
    out = []

    def add(what, value, goal, met):
        out.append({"target": what, "value": value, "goal": goal, "met": met})
    if e:
        add("event: held with 0 failures", f"{e['held']:,} held, {e['failed']} failed", ">= 1,000,000, 0 failed",
            e["held"] >= 1_000_000 and e["failed"] == 0 and connections >= 1_000_000)
        add("event: PSS per idle connection", f"{e['pss_per_conn']:.1f} B" if e["pss_per_conn"] is not None else "n/a",
            "<= 64 B", e["pss_per_conn"] is not None and e["pss_per_conn"] <= 64)
    if e and c:
        add("event: time to establish vs C fleet", f"{e['connect_seconds']:.1f} s vs {c['connect_seconds']:.1f} s",
            "<= 1.0x", e["connect_seconds"] <= c["connect_seconds"])
        ratio = e["mem_available_drop"] / c["mem_available_drop"] if c["mem_available_drop"] else None
        add("event: machine memory vs C fleet", f"{ratio:.3f}x" if ratio else "n/a", "<= 1.05x",
            ratio is not None and ratio <= 1.05)
    if "thread" in by:
        add("thread: held", f"{by['thread']['held']:,}", ">= 60,000", by["thread"]["held"] >= 60_000)
    if "fork" in by:
        add("fork: held (children)", f"{by['fork']['held']:,}", ">= 30,000", by["fork"]["held"] >= 30_000)
    return out


def timeline_text(per_second):
    if not per_second:
        return "n/a"
    n = len(per_second)
    span = max(1, math.ceil(n / 8))
    parts = []
    for i in range(0, n, span):
        chunk = per_second[i:i + span]
        label = f"{i}s" if len(chunk) == 1 else f"{i}-{i + len(chunk) - 1}s"
        parts.append(f"{label} {sum(chunk) / len(chunk) / 1000:.1f}k/s")
    return ", ".join(parts)


def render_report(doc):
    m = doc["machine"]
    lines = ["## Scale: one million concurrent connections (make bench-scale)", "",
             f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['mem_gib']:.1f} GiB, kernel {m['kernel']}; "
             f"RLIMIT_NOFILE hard limit {m['nofile_hard']}; load average (1 min) at the end: {m['load_at_end']:.2f}. "
             f"One run per server, {doc['connections']:,} connections asked of the C fleet and the event model "
             f"(thread: {doc['thread_target']:,}, fork: {doc['fork_target']:,}), held {doc['hold']} with every connection open at one instant and "
             f"probed. Servers run outside systemd: the shipped unit's TasksMax=/LimitNPROC= did not apply.", ""]
    if doc["sysctls"]:
        lines += ["sysctls raised for the run and restored after it: "
                  + ", ".join(f"`{k}` {o} -> {n}" for k, o, n in doc["sysctls"]) + ".", ""]
    for note in doc["notes"]:
        lines += [f"Note: {note}", ""]
    lines += ["| server | processes | held / asked | failed | time to establish | MemAvailable drop | Slab growth "
              "| machine B/conn | server PSS B/conn |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        if "error" in r:
            lines.append(f"| {LABELS[r['kind']]} | | | | | | | | {r['error'][:120]} |")
            continue
        fails = ", ".join(f"{k} {v}" for k, v in sorted(r["failures"].items())) or "0"
        lines.append(
            f"| {LABELS[r['kind']]} | {r['server_processes']} | {r['held']:,} / {r['requested']:,} | {fails} "
            f"| {r['connect_seconds']:.1f} s | {r['mem_available_drop'] / 2**30:.2f} GiB | {r['slab_growth'] / 2**30:.2f} GiB "
            f"| {r['machine_bytes_per_conn']:,.0f} | {r['pss_per_conn']:.1f} |" if r["held"] else
            f"| {LABELS[r['kind']]} | {r['server_processes']} | 0 / {r['requested']:,} | {fails} | | | | | |")
    lines += ["", "Connect rate over the ramp (connections established per second, mean over spans):", ""]
    for r in doc["results"]:
        if "error" not in r:
            lines.append(f"- {LABELS[r['kind']]}: {timeline_text(r['established_per_second'])}")
    lines += ["", "### Targets (issue 12 item 8)", "", "| target | measured | goal | verdict |", "|---|---|---|---|"]
    for t in doc["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {t['goal']} | {'met' if t['met'] else 'NOT met'} |")
    lines += ["", "Machine memory is the whole box (server, echoload and the kernel's socket memory of both ends); "
              "server PSS is the growth of the server processes' summed proportional set size.", "", "![scale](scale.svg)", ""]
    return "\n".join(lines)


def render_chart(doc):
    """Connections established over time, one line per server."""
    runs = [r for r in doc["results"] if "error" not in r and r["established_per_second"]]
    left, top, width, height = 70, 30, 560, 240
    tmax = max([len(r["established_per_second"]) for r in runs] + [1])
    ymax = max([sum(r["established_per_second"]) for r in runs] + [1])
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 170}" height="{top + height + 50}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="14">Connections established over time (make bench-scale)</text>']
    for i in range(5):
        v = ymax * i / 4
        y = top + height - height * i / 4
        svg.append(f'<line x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        svg.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v / 1000:,.0f}k</text>')
    svg.append(f'<text x="{left + width / 2}" y="{top + height + 30}" text-anchor="middle">seconds from the first connect</text>')
    for k, r in enumerate(runs):
        total, pts = 0, [f"{left},{top + height}"]
        for i, n in enumerate(r["established_per_second"]):
            total += n
            pts.append(f"{left + width * (i + 1) / tmax:.1f},{top + height - height * total / ymax:.1f}")
        svg.append(f'<polyline fill="none" stroke="{COLORS[r["kind"]]}" stroke-width="2" points="{" ".join(pts)}"/>')
        svg.append(f'<rect x="{left + width + 15}" y="{top + k * 18}" width="10" height="10" fill="{COLORS[r["kind"]]}"/>')
        svg.append(f'<text x="{left + width + 30}" y="{top + k * 18 + 9}">{LABELS[r["kind"]]}: {r["held"]:,}</text>')
    svg.append(f'<text x="{left + width}" y="{top + height + 14}" text-anchor="end">{tmax} s</text>')
    svg.append("</svg>")
    return "\n".join(svg) + "\n"


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    return {"kernel": platform.release(), "cpu": model, "cpus": os.cpu_count(), "mem_gib": total / 2**30,
            "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1], "load_at_end": os.getloadavg()[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--echod", required=True)
    ap.add_argument("--echoload", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--connections", type=int, default=1_000_000)
    ap.add_argument("--thread-target", type=int, default=60_000)
    ap.add_argument("--fork-target", type=int, default=30_000)
    ap.add_argument("--only", default="c-fleet,event,thread,fork")
    ap.add_argument("--hold", default="5s", help="how long echoload holds every connection open")
    ap.add_argument("--no-sysctl", action="store_true", help="change no sysctl (the thread and fork runs may fall short)")
    args = ap.parse_args()
    kinds = [k for k in args.only.split(",") if k]
    for k in kinds:
        if k not in LABELS:
            sys.exit(f"bench-scale: unknown server {k!r} (c-fleet, event, thread, fork)")
    # Every server process inherits the hard limit as its soft one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = max(args.connections if set(kinds) & {"c-fleet", "event"} else 0,
               args.thread_target if "thread" in kinds else 0, args.fork_target if "fork" in kinds else 0)
    avail = meminfo()[0]
    if need >= 500_000 and avail < 9 * 2**30:
        sys.exit(f"bench-scale: {need:,} connections need about 8 GiB free; MemAvailable is {avail / 2**30:.1f} GiB")
    os.makedirs(args.out, exist_ok=True)
    sysctls = Sysctls(dry=args.no_sysctl or not (set(kinds) & {"thread", "fork"}))
    notes = []
    results = []
    restore = lambda *_: (sysctls.restore(), sys.exit(130))
    signal.signal(signal.SIGINT, restore)
    signal.signal(signal.SIGTERM, restore)
    with tempfile.TemporaryDirectory(prefix="bench-scale.") as workdir:
        try:
            if not sysctls.dry:
                sysctls.raise_all()
            processes_ok = supports_processes(args.echod, workdir)
            for kind in kinds:
                if kind in ("event", "thread") and not processes_ok:
                    notes.append(f"{LABELS[kind]} not measured: this echod does not accept [Server] Processes=")
                    log(notes[-1])
                    continue
                n = {"thread": args.thread_target, "fork": args.fork_target}.get(kind, args.connections)
                try:
                    r = run_one(kind, args, workdir, n)
                except RuntimeError as e:
                    r = {"kind": kind, "error": str(e)}
                results.append(r)
                log(f"  {json.dumps({k: v for k, v in r.items() if k != 'established_per_second'})}")
                time.sleep(5)  # TIME_WAIT-free (the client closes last) but let the kernel settle
        finally:
            sysctls.restore()
    doc = {"connections": args.connections, "thread_target": args.thread_target, "fork_target": args.fork_target,
           "hold": args.hold, "machine": machine(), "sysctls": sysctls.changed, "notes": notes, "results": results,
           "targets": targets(results, args.connections)}
    with open(os.path.join(args.out, "scale.json"), "w") as f:
        json.dump(doc, f, indent=1)
    report = render_report(doc)
    with open(os.path.join(args.out, "scale.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.out, "scale.svg"), "w") as f:
        f.write(render_chart(doc))
    print(report)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
