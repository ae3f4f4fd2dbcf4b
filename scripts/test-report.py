#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0

"""Runs `swift test ARGS...`, passes its output through, then prints each suite's time against its
budget and the ten slowest tests, and finally repeats swift test's own summary line
("✔ Test run with N tests ... passed ...") so that it stays the last line (CI reads it).

Exit status: swift test's, or 1 if it passed but a suite went over its budget.
Budgets (seconds, whole-suite wall time as Swift Testing reports it) are in BUDGETS below.
"""
import os
import re
import subprocess
import sys

# Per top-level suite; a suite not listed gets DEFAULT_BUDGET. Together they keep the Swift
# part of make test well under its share of the 15-minute limit. Suites run in parallel, so a
# suite's wall time includes waiting for the CPU: on a loaded 2-core machine the echoload suites
# (dozens of client and server processes each) took 63 to 92 s where they take 30 to 50 alone.
BUDGETS = {"EchodIntegration": 360, "EcholoadRuns": 300, "ConfigLoaderTests": 30, "ConfigTests": 30}
DEFAULT_BUDGET = 120

TEST_RE = re.compile(r"^[✔✘] Test (.+?) (?:with \d+ test cases? )?(?:passed|failed) after ([0-9.]+) seconds")
SUITE_RE = re.compile(r"^[✔✘] Suite (\S+) (?:passed|failed) after ([0-9.]+) seconds")


def main():
    proc = subprocess.Popen([os.environ.get("SWIFT", "swift"), "test"] + sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    tests, suites, summary = [], {}, None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith(("✔ Test run with", "✘ Test run with")):
            summary = line
        m = TEST_RE.match(line)
        if m and not m.group(1).startswith("run with"):
            tests.append((float(m.group(2)), m.group(1)))
        m = SUITE_RE.match(line)
        if m:
            suites[m.group(1)] = float(m.group(2))
    status = proc.wait()
    over = []
    print("\ntest budgets (suite: seconds / budget):")
    for name, took in sorted(suites.items(), key=lambda kv: -kv[1]):
        budget = BUDGETS.get(name, DEFAULT_BUDGET)
        if name in BUDGETS or took > budget:
            flag = "  OVER BUDGET" if took > budget else ""
            print(f"  {name}: {took:.1f} / {budget}{flag}")
            if took > budget:
                over.append(name)
    print("slowest ten tests:")
    for took, name in sorted(tests, reverse=True)[:10]:
        print(f"  {took:8.2f} s  {name}")
    if over:
        print(f"test budget exceeded by: {', '.join(over)}")
    if summary:
        sys.stdout.write(summary)
    sys.stdout.flush()
    sys.exit(status if status != 0 else (1 if over else 0))


if __name__ == "__main__":
    main()
