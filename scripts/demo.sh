#!/usr/bin/env bash
# Runs echod on loopback with a throwaway config, pushes traffic through it, prints the result.
# The traffic comes from scripts/demo-client.py until echoload exists.
set -euo pipefail
ECHOD=${1:-.build/release/echod}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

cat >"$work/echod.conf" <<CONF
[Server]
Model=event
Listen=127.0.0.1:0
Workers=0
[Limits]
NoFile=max
CONF

echo "== echod --check-config"
"$ECHOD" --config "$work/echod.conf" --check-config | grep -v '^#' | grep -v '^$'
echo
"$ECHOD" --config "$work/echod.conf" 2>"$work/echod.log" &
pid=$!
for _ in $(seq 100); do
  addr=$(grep -o 'listen.address=[^ ]*' "$work/echod.log" | head -1 | cut -d= -f2) && [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "${addr:-}" ] || { cat "$work/echod.log"; echo "echod did not start" >&2; exit 1; }
echo "== echod (pid $pid) listening on $addr"
python3 "$here/demo-client.py" "$addr"
echo
echo "== echod resident memory: $(grep VmRSS /proc/$pid/status | awk '{print $2, $3}')"
kill -TERM "$pid"
wait "$pid" && echo "== echod stopped cleanly (exit 0)"
echo "== echod log"
cat "$work/echod.log"
