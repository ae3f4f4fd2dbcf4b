#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0

"""make demo: echod in each concurrency model on loopback, driven by echoload, one table.

For each model: start echod with a throwaway config, hold 2000 idle connections (each then
probed), run a 10-connection ping-pong of 512-byte messages, read echod's memory, stop it with
SIGTERM and check it exits 0. Every echoed byte is verified by echoload.
"""
import json, os, re, signal, subprocess, sys, tempfile, time

echod, echoload = sys.argv[1], sys.argv[2]
MODELS = ["event", "thread", "fork"]
HOLD, CONNS, SIZE, SECONDS = 2000, 10, 512, "2s"


def pss_kib(pid):
    """Proportional set size of echod and its children: shared copy-on-write pages are split
    among the processes sharing them, so the fork model is not charged them once per child."""
    total = 0
    for p in [pid] + [int(x) for x in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def run_echoload(args):
    p = subprocess.run([echoload] + args + ["--json", "--quiet"], capture_output=True, text=True, timeout=120)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        sys.exit(f"echoload {' '.join(args)} failed (exit {p.returncode}): {p.stderr.strip()}")


rows = []
with tempfile.TemporaryDirectory(prefix="echod-demo-") as work:
    for model in MODELS:
        conf = os.path.join(work, f"{model}.conf")
        with open(conf, "w") as f:
            f.write(f"[Server]\nModel={model}\nListen=127.0.0.1:0\n[Limits]\nNoFile=max\n")
        if model == "event":
            print(f"== echod --check-config ({model})")
            print(subprocess.run([echod, "--config", conf, "--check-config"], capture_output=True, text=True).stdout)
        log = open(os.path.join(work, f"{model}.log"), "w+")
        proc = subprocess.Popen([echod, "--config", conf], stderr=log)
        addr = None
        for _ in range(200):
            log.seek(0)
            m = re.search(r"listen\.address=(\S+)", log.read())
            if m:
                addr = m.group(1)
                break
            time.sleep(0.05)
        if not addr:
            proc.kill()
            log.seek(0)
            sys.exit(f"echod ({model}) did not start:\n{log.read()}")
        print(f"== Model={model}: echod pid {proc.pid} on {addr}", flush=True)
        base = pss_kib(proc.pid)
        hold = subprocess.Popen([echoload, "hold", addr, "-c", str(HOLD), "--duration", "2s", "--json", "--quiet"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = base
        while hold.poll() is None:
            peak = max(peak, pss_kib(proc.pid))
            time.sleep(0.2)
        out, err = hold.communicate()
        h = json.loads(out) if out.strip() else sys.exit(f"echoload hold failed: {err}")
        pp = run_echoload(["pingpong", addr, "-c", str(CONNS), "--size", str(SIZE), "--duration", SECONDS, "--warmup", "0.5s"])
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
        c = h["connections"]
        rows.append({
            "model": model, "held": f"{c['held']}/{c['requested']}",
            "connects/s": f"{c['established'] / c['connect_seconds']:,.0f}" if c["connect_seconds"] else "n/a",
            "mem/conn": f"{(peak - base) * 1024 / max(1, c['established']):,.0f} B",
            "msgs/s": f"{pp['traffic']['messages_per_second']:,.0f}",
            "MB/s": f"{pp['traffic']['megabytes_per_second_sent']:.1f}",
            "p50 us": f"{pp['latency_us']['p50']:.0f}", "p99 us": f"{pp['latency_us']['p99']:.0f}",
            "verified": "yes" if h["clean"] and pp["clean"] else "FAULTS",
            "exit": str(status),
        })

print()
print(f"hold: {HOLD} idle connections, each probed after the hold; mem/conn: growth of echod's proportional set size")
print(f"(PSS, parent and children) per held connection. pingpong: {CONNS} connections x {SIZE} B for {SECONDS}.")
print("This is a quick look, not a benchmark: see `make bench` for pinned, repeated runs against a C baseline.")
print()
cols = list(rows[0].keys())
widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in cols}
print("  ".join(k.ljust(widths[k]) for k in cols))
print("  ".join("-" * widths[k] for k in cols))
for r in rows:
    print("  ".join(r[k].ljust(widths[k]) for k in cols))
if any(r["verified"] != "yes" or r["exit"] != "0" for r in rows):
    sys.exit(1)
