#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0

"""make mutants: apply each one-line break from Tests/mutants/mutants.json, build, run the tests
that must catch it, restore the source, and report which mutants survived.

Each mutant names a file, one or more exact snippets to replace (search text -> replacement) and
the `swift test --filter` patterns whose run must fail. A snippet that is not found exactly once
is an error (the mutant is stale after a refactoring: update it), never a silent skip. Every
source file is restored after each mutant, also on Ctrl-C.

Usage: scripts/mutants.py [--list FILE] [--scratch DIR] [--only ID[,ID...]] [--timeout SECONDS]
       scripts/mutants.py --check-only   (only that every snippet is found once: part of make test,
                                          so a refactoring that leaves a mutant stale fails at once)
Exit status: 0 when every mutant was killed (or, with --check-only, every snippet found); 1 otherwise.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(path):
    with open(path) as f:
        mutants = json.load(f)
    ids = [m["id"] for m in mutants]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        sys.exit(f"mutants: duplicate ids {sorted(dup)} in {path}")
    return mutants


def check_snippets(mutants):
    """Every snippet must occur exactly once in its file; returns a list of problems."""
    problems = []
    for m in mutants:
        path = os.path.join(ROOT, m["file"])
        try:
            text = open(path).read()
        except OSError as e:
            problems.append(f"{m['id']}: cannot read {m['file']}: {e.strerror}")
            continue
        for edit in m["edits"]:
            n = text.count(edit["find"])
            if n != 1:
                problems.append(f"{m['id']}: {m['file']}: snippet found {n} times (want 1): {edit['find']!r}")
    return problems


def run(cmd, timeout, log):
    start = time.monotonic()
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            status = "timeout"
    return status, time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--list", default=os.path.join(ROOT, "Tests/mutants/mutants.json"))
    ap.add_argument("--scratch", default=".build-mutants", help="swift build --scratch-path (kept between runs)")
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--timeout", type=int, default=600, help="per test run, seconds")
    ap.add_argument("--swift", default=os.environ.get("SWIFT", "swift"))
    ap.add_argument("--check-only", action="store_true", help="check the snippets, build and run nothing")
    args = ap.parse_args()

    mutants = load(args.list)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m["id"] for m in mutants}
        if unknown:
            sys.exit(f"mutants: unknown ids {sorted(unknown)}")
        mutants = [m for m in mutants if m["id"] in wanted]
    problems = check_snippets(mutants)
    if problems:
        for p in problems:
            print(f"mutants: STALE {p}", file=sys.stderr)
        sys.exit("mutants: stale mutants; update Tests/mutants/mutants.json to the current source")
    if args.check_only:
        print(f"mutants: {len(mutants)} mutants, every snippet found once")
        return

    logs = os.path.join(ROOT, args.scratch, "mutant-logs")
    os.makedirs(logs, exist_ok=True)
    build = [args.swift, "build", "--build-tests", "--scratch-path", args.scratch]
    print(f"mutants: building the unmutated tree in {args.scratch}", flush=True)
    status, took = run(build, 3600, os.path.join(logs, "baseline-build.log"))
    if status != 0:
        sys.exit(f"mutants: the unmutated tree does not build (see {logs}/baseline-build.log)")

    results = []
    originals = {}

    def restore():
        for path, text in originals.items():
            with open(path, "w") as f:
                f.write(text)
        originals.clear()

    def interrupted(signum, frame):
        restore()
        sys.exit(f"mutants: interrupted; sources restored")

    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)

    for m in mutants:
        path = os.path.join(ROOT, m["file"])
        text = open(path).read()
        originals[path] = text
        mutated = text
        for edit in m["edits"]:
            mutated = mutated.replace(edit["find"], edit["replace"], 1)
        try:
            with open(path, "w") as f:
                f.write(mutated)
            print(f"mutants: {m['id']}: {m['claim']}", flush=True)
            status, took = run(build, 3600, os.path.join(logs, f"{m['id']}-build.log"))
            if status != 0:
                results.append((m, "BUILD FAILED", f"see {logs}/{m['id']}-build.log"))
                continue
            killers = []
            for i, pattern in enumerate(m["tests"]):
                cmd = [args.swift, "test", "--skip-build", "--scratch-path", args.scratch, "--filter", pattern]
                log = os.path.join(logs, f"{m['id']}-test{i}.log")
                status, took = run(cmd, args.timeout, log)
                ran = open(log, errors="replace").read()
                if "Test run with 0 tests" in ran or "No matching test cases" in ran:
                    results.append((m, "NO TESTS", f"filter {pattern!r} matched nothing"))
                    break
                if status != 0:
                    failed = [l.strip() for l in ran.splitlines() if l.startswith("✘ Test ") and "recorded an issue" in l]
                    killers.append(f"{pattern} ({took:.0f} s): {failed[0][:160] if failed else status}")
            else:
                results.append((m, "killed" if killers else "SURVIVED", "; ".join(killers) or "every listed test passed"))
        finally:
            restore()

    print("\nmutants: results")
    for m, verdict, detail in results:
        print(f"  {verdict:12} {m['id']:28} {m['file']}")
        print(f"  {'':12} claim: {m['claim']}")
        print(f"  {'':12} {detail}")
    bad = [r for r in results if r[1] != "killed"]
    print(f"mutants: {len(results) - len(bad)} of {len(results)} killed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
