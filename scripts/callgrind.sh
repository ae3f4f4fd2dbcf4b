#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Instructions per echoed message on the event model's hot path, measured with callgrind.
#
# A fixed workload: echod (Model=event, Workers=1) under callgrind, one echoload pingpong run
# against it (CONNECTIONS connections, SIZE-byte messages, DURATION), then SIGTERM. The figure is
# the worker thread's instruction count (callgrind, --separate-threads) divided by the messages
# it echoed (echod's own "stopped" log line: bytes.echoed / SIZE). User space only: the system
# calls themselves are the kernel's and are not counted. Accepting and closing the connections
# and the idle heartbeats are in the count too; with thousands of messages they are noise.
#
# Usage: scripts/callgrind.sh [ECHOD] [ECHOLOAD]   (default: .build/release/echod, .build/release/echoload)
# Environment: CONNECTIONS (10), SIZE (64), DURATION (5s), OUT (a new temporary directory).
set -euo pipefail

ECHOD=${1:-.build/release/echod}
ECHOLOAD=${2:-.build/release/echoload}
CONNECTIONS=${CONNECTIONS:-10}
SIZE=${SIZE:-64}
DURATION=${DURATION:-5s}
OUT=${OUT:-$(mktemp -d /tmp/echod-callgrind.XXXXXX)}

command -v valgrind >/dev/null || { echo "callgrind: valgrind not found (apt-get install valgrind)" >&2; exit 1; }
for b in "$ECHOD" "$ECHOLOAD"; do
    [ -x "$b" ] || { echo "callgrind: $b not built" >&2; exit 1; }
done

cat >"$OUT/echod.conf" <<CONF
[Server]
Model=event
Workers=1
Listen=127.0.0.1:0
LogLevel=info
CONF

# Valgrind 3.19 (Debian 12) gives up on the DWARF 5 debug information Swift emits ("Possibly
# corrupted debuginfo file"): profile a copy without it (symbols stay, so the profile still
# names functions).
strip --strip-debug -o "$OUT/echod" "$ECHOD"

valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$OUT/callgrind.out.%p" \
    "$OUT/echod" --config "$OUT/echod.conf" 2>"$OUT/echod.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT

# The port the kernel picked, from the "listening" line (valgrind makes start-up slow).
port=""
for _ in $(seq 1 600); do
    port=$(sed -n 's/.*listening.* listen.address=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$OUT/echod.log" | head -1)
    [ -n "$port" ] && grep -q " serving" "$OUT/echod.log" && break
    kill -0 $pid 2>/dev/null || { cat "$OUT/echod.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$port" ] || { echo "callgrind: echod did not start" >&2; cat "$OUT/echod.log" >&2; exit 1; }

"$ECHOLOAD" pingpong --quiet --connections "$CONNECTIONS" --size "$SIZE" --duration "$DURATION" \
    --warmup 0 "127.0.0.1:$port" >"$OUT/echoload.txt"

kill -TERM $pid
wait $pid
trap - EXIT

bytes=$(sed -n 's/.* stopped .*bytes\.echoed=\([0-9]*\).*/\1/p' "$OUT/echod.log")
[ -n "$bytes" ] || { echo "callgrind: no 'stopped' line in $OUT/echod.log" >&2; exit 1; }
messages=$((bytes / SIZE))
# Thread 1 is the control thread; thread 2 is the only worker (echod-w0).
worker=$(ls "$OUT"/callgrind.out.$pid-02)
instructions=$(sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$worker")
[ -n "$instructions" ] || instructions=$(sed -n 's/^totals: *\([0-9]*\).*/\1/p' "$worker")
echo "callgrind: $messages messages of $SIZE B over $CONNECTIONS connections echoed;" \
    "worker thread: $instructions instructions"
awk -v i="$instructions" -v m="$messages" 'BEGIN { printf "callgrind: %.1f instructions per echoed message\n", i / m }'
echo "callgrind: profiles in $OUT (callgrind_annotate $worker)"
