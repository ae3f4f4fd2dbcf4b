#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0

"""Times `echod --check-config` on configuration files of pathological shapes (issue 13, item 1).

A benchmark point, not a test: it prints one line per shape (size, lines, wall time, exit status)
and asserts nothing. The loader must be linear in the file size, so every shape at the size
limit (1 MiB, ConfigurationLoader.maximumFileSize) should load well under a second.

    python3 bench/config_shapes.py --echod .build/release/echod [--size 1048000]
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def listen_lines(size):
    # Distinct addresses, so the duplicate check has nothing to report: the list only grows.
    out, n = ["[Server]\n"], 0
    total = len(out[0])
    while True:
        line = "Listen=127.%d.%d.%d:%d\n" % ((n >> 16) & 255, (n >> 8) & 255, n & 255, 1024 + n % 60000)
        if total + len(line) > size:
            break
        out.append(line)
        total += len(line)
        n += 1
    return "".join(out)


def continued_lines(size):
    # One logical line made of many physical ones: "Workers=1 \" then "\" lines.
    head = "[Server]\nWorkers=1 \\\n"
    return head + "\\\n" * ((size - len(head) - 2) // 2) + "2\n"


def continued_comment_lines(size):
    # Continuations with comment lines in between (they are dropped before joining).
    head = "[Server]\nWorkers=1 \\\n"
    return head + "# c\n\\\n" * ((size - len(head) - 2) // 6) + "2\n"


def long_key(size):
    # One key name as long as the file: the "did you mean" hint must not be quadratic in it.
    return "[Server]\n" + "K" * (size - 20) + "=1\n"


def long_section(size):
    return "[" + "S" * (size - 3) + "]\n"


def unknown_keys(size):
    # A line per error: every line is an unknown key with a hint.
    line = "Worker=1\n"
    return "[Server]\n" + line * ((size - 9) // len(line))


def unknown_distinct_keys(size):
    # Every line a different unknown key, as long as the real ones (the hint search runs each time).
    out, total, n = ["[Server]\n"], 9, 0
    while total + 10 <= size:
        out.append("W%06d=1\n" % n)
        total += 10
        n += 1
    return "".join(out)


def duplicate_keys(size):
    line = "Workers=1\n"
    return "[Server]\n" + line * ((size - 9) // len(line))


def duplicate_listen(size):
    # The same address over and over: one "duplicate address" error each.
    line = "Listen=127.0.0.1:7007\n"
    return "[Server]\n" + line * ((size - 9) // len(line))


def listen_resets(size):
    # Grow the list, empty it, grow it again.
    block = "".join("Listen=127.0.0.1:%d\n" % (2000 + i) for i in range(100)) + "Listen=\n"
    return "[Server]\n" + block * ((size - 9) // len(block))


def sections(size):
    return "[Server]\n" * (size // 9)


def comments(size):
    return "# comment\n" * (size // 10)


def long_value(size):
    return "[Server]\nLogLevel=" + "x" * (size - 20) + "\n"


SHAPES = [
    ("listen", listen_lines),
    ("continued", continued_lines),
    ("continued-comments", continued_comment_lines),
    ("long-key", long_key),
    ("long-section", long_section),
    ("long-value", long_value),
    ("unknown-keys", unknown_keys),
    ("unknown-distinct", unknown_distinct_keys),
    ("duplicate-keys", duplicate_keys),
    ("duplicate-listen", duplicate_listen),
    ("listen-resets", listen_resets),
    ("sections", sections),
    ("comments", comments),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--echod", required=True, help="the echod binary to time")
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes per file (at most 1 MiB)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds before a run is abandoned")
    parser.add_argument("--shape", action="append", help="only these shapes (default: all)")
    args = parser.parse_args()

    # CPU seconds (user + system, from the child's rusage) beside wall seconds: on a shared,
    # loaded machine the wall time says more about the neighbours than about the loader.
    print("%-20s %9s %8s %9s %9s %s" % ("shape", "bytes", "lines", "wall s", "cpu s", "exit"))
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in SHAPES:
            if args.shape and name not in args.shape:
                continue
            text = make(args.size)
            path = os.path.join(tmp, name + ".conf")
            with open(path, "w") as f:
                f.write(text)
            start = time.monotonic()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            try:
                rc = subprocess.run(
                    [args.echod, "--check-config", "--config", path],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=args.timeout,
                ).returncode
                status = str(rc)
            except subprocess.TimeoutExpired:
                status = "timeout"
            elapsed = time.monotonic() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print("%-20s %9d %8d %9.3f %9.3f %s" % (name, len(text), text.count("\n"), elapsed, cpu, status),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
