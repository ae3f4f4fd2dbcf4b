#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The UDP point of `make bench` (issue 16 item 4): echod's UDP echo against a minimal C
recvmmsg/sendmmsg echo server (bench/udp_baseline.c), in the same run, at 64 and 1,400 bytes.

Each point: the server pinned to CPU 0 (echod Model=event, Workers=1; the baseline's one loop),
`echoload udp` pinned to CPU 1 offering --rate datagrams/s over 4 sockets for --duration after a
1 s warm-up, every echo verified. Figures per run: datagrams echoed per second (the measured
window), loss, latency p50/p99 from intended send times, and the server's CPU time per echoed
datagram (utime+stime of its process over the run, from /proc): when the client is the
bottleneck the echoed rates tie, and the CPU per datagram still tells the servers apart. Rounds
alternate which server goes first; each figure is the median over the rounds, with min-max, and
the ratio echod / baseline of the medians. The target (issue 16): echod >= 0.95x the baseline's
datagrams/s at both sizes.

echod runs with reflection protection on (it cannot be turned off) and its limits set above the
offered load, stated in the report: [UDP] MaxBytesPerSecond=1T, RatePerSource=1000000,
BurstPerSource=1000000 (one source: all of echoload's sockets share 127.0.0.1).

Usage: bench/udp.py --echod E --echoload L --baseline B --out DIR [--rounds N] [--duration S] [--smoke]
Writes DIR/udp.md and DIR/udp.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SIZES = [64, 1400]
RATES = {64: 50_000, 1400: 50_000}
ECHOD_CONFIG = """[Server]
Model=event
Workers=1
Listen=127.0.0.1:0
ListenDatagram=127.0.0.1:0
StopTimeoutSec=2
[UDP]
MaxBytesPerSecond=1T
RatePerSource=1000000
BurstPerSource=1000000
"""


def log(msg):
    print(f"udp-bench: {msg}", file=sys.stderr, flush=True)


def cpu_ticks(pid):
    """utime + stime of every thread of `pid`, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Server:
    def __init__(self, name, args, workdir):
        self.name = name
        if name == "baseline":
            cmd = ["taskset", "-c", "0", args.baseline, "0"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            line = self.proc.stdout.readline()
            self.port = int(line.split()[1])
        else:
            conf = os.path.join(workdir, "echod.conf")
            with open(conf, "w") as f:
                f.write(ECHOD_CONFIG)
            self.errpath = os.path.join(workdir, "echod.err")
            self.proc = subprocess.Popen(["taskset", "-c", "0", args.echod, "--config", conf],
                                         stdout=subprocess.DEVNULL, stderr=open(self.errpath, "w"))
            self.port = None
            deadline = time.monotonic() + 20
            while self.port is None and time.monotonic() < deadline:
                with open(self.errpath) as f:
                    for line in f:
                        if "listen.datagram=" in line:
                            self.port = int(line.split("listen.datagram=")[1].split()[0].rsplit(":", 1)[1])
                time.sleep(0.05)
            if self.port is None:
                raise SystemExit(f"udp-bench: echod reported no UDP port: {open(self.errpath).read()[-2000:]}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_point(args, server, size):
    rate = args.rate or RATES[size]
    cmd = ["taskset", "-c", "1", args.echoload, "udp", f"127.0.0.1:{server.port}", "--rate", f"{rate}/s",
           "--size", str(size), "-c", "4", "--duration", f"{args.duration}s", "--warmup", "1s",
           "--drain-timeout", "1s", "--max-loss", "100%", "--json", "--quiet"]
    before = cpu_ticks(server.proc.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60)
    after = cpu_ticks(server.proc.pid)
    try:
        r = json.loads(out.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"udp-bench: echoload failed ({out.returncode}): {out.stderr[-2000:]}")
    faults = r["errors"]["total"]
    if faults:
        raise SystemExit(f"udp-bench: echoload found faults against {server.name}: {r['errors']}")
    echoed = r["traffic"]["messages"]
    seconds = r["traffic"]["measured_seconds"]
    hz = os.sysconf("SC_CLK_TCK")
    total_echoed = r["traffic"]["total_bytes_received"] / size
    return {
        "offered_per_second": r["traffic"]["offered_messages_per_second"],
        "echoed_per_second": echoed / seconds if seconds else 0,
        "loss": r["datagrams"]["loss_fraction"],
        "reordered": r["datagrams"]["reordered"],
        "p50_us": (r["latency_us"] or {}).get("p50"),
        "p99_us": (r["latency_us"] or {}).get("p99"),
        # Over the whole run (warm-up and drain included), per datagram echoed in it.
        "server_cpu_us_per_datagram": (after - before) / hz * 1e6 / total_echoed if total_echoed else None,
    }


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--echod", required=True)
    ap.add_argument("--echoload", required=True)
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5)
    ap.add_argument("--rate", type=int, default=0, help="offered datagrams/s (default: per size, see RATES)")
    ap.add_argument("--smoke", action="store_true", help="one short round: checks that every point runs")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.duration = 1, 1
    os.makedirs(args.out, exist_ok=True)
    runs = {size: {"baseline": [], "event": []} for size in SIZES}
    with tempfile.TemporaryDirectory() as workdir:
        for rnd in range(args.rounds):
            order = ["baseline", "event"] if rnd % 2 == 0 else ["event", "baseline"]
            for name in order:
                server = Server(name, args, workdir)
                try:
                    for size in SIZES:
                        log(f"round {rnd + 1}/{args.rounds}: {name}, {size} B")
                        runs[size][name].append(run_point(args, server, size))
                finally:
                    server.stop()
    results = {"settings": {"echod_config": ECHOD_CONFIG, "rounds": args.rounds, "duration_seconds": args.duration,
                            "rates": {str(s): args.rate or RATES[s] for s in SIZES}, "sockets": 4,
                            "pinning": "server CPU 0, echoload CPU 1"},
               "points": {}}
    lines = ["# UDP echo: echod against the C recvmmsg/sendmmsg baseline", "",
             f"Settings: server on CPU 0, `echoload udp` on CPU 1, 4 sockets, {args.rounds} rounds of "
             f"{args.duration:g} s after a 1 s warm-up, servers alternating first. echod: `Model=event`, "
             "`Workers=1`, reflection protection on, `[UDP] MaxBytesPerSecond=1T`, `RatePerSource=1000000`, "
             "`BurstPerSource=1000000` (above the offered load). Medians, min-max in brackets.", "",
             "| size | server | offered/s | echoed/s | loss | p50 µs | p99 µs | server CPU µs/datagram |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for size in SIZES:
        point = {}
        for name in ["baseline", "event"]:
            figures = {k: summary([r[k] for r in runs[size][name]]) for k in runs[size][name][0]}
            point[name] = figures

            def f(k, digits=0):
                s = figures[k]
                if s is None:
                    return "-"
                fmt = f"{{:,.{digits}f}}"
                return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}-{fmt.format(s['max'])}]"
            lines.append(f"| {size} | {'C baseline' if name == 'baseline' else 'echod event'} | {f('offered_per_second')} "
                         f"| {f('echoed_per_second')} | {f('loss', 4)} | {f('p50_us', 1)} | {f('p99_us', 1)} "
                         f"| {f('server_cpu_us_per_datagram', 2)} |")
        ratio = point["event"]["echoed_per_second"]["median"] / point["baseline"]["echoed_per_second"]["median"]
        cpu_b = point["baseline"]["server_cpu_us_per_datagram"]
        cpu_e = point["event"]["server_cpu_us_per_datagram"]
        point["ratio_echoed"] = ratio
        point["cpu_ratio"] = cpu_e["median"] / cpu_b["median"] if cpu_b and cpu_e else None
        point["target_met"] = ratio >= 0.95
        results["points"][str(size)] = point
    lines += ["", "| size | echod / baseline, echoed/s | target ≥ 0.95 | echod / baseline, server CPU per datagram |",
              "|---:|---:|---|---:|"]
    for size in SIZES:
        p = results["points"][str(size)]
        cpu = f"{p['cpu_ratio']:.2f}x" if p["cpu_ratio"] else "-"
        lines.append(f"| {size} | {p['ratio_echoed']:.3f}x | {'met' if p['target_met'] else 'NOT met'} | {cpu} |")
    lines.append("")
    with open(os.path.join(args.out, "udp.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "udp.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
