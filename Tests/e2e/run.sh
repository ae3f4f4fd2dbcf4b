#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# echod end to end against real systemd 252: boots a throwaway systemd-nspawn container from this
# machine's own file system, installs the .deb there and runs Tests/e2e/inside.sh as the
# container's only job (see ../shared/notes/systemd-testing.md for the recipe).
#
# The container's root is an overlay: this machine's / read-only underneath, a tmpfs on top, so
# dpkg can install into /usr and /etc inside without touching the host (nspawn's own
# --volatile=overlay refuses the host's root directory). It has a private network: the tests
# talk to 127.0.0.1 inside it only.
#
# Usage: Tests/e2e/run.sh ECHOD.deb ECHOLOAD.deb   (as root; E2E_RESULTS=DIR keeps the logs there,
# E2E_TIMEOUT=SECONDS bounds the container's life, default 300; E2E_PREVIOUS_DEB=FILE, the
# previous release's single echod package, adds the upgrade scenario; E2E_RESTART_SCALE="19000"
# adds timed restarts at those connection counts). Prints inside.sh's report, and on failure the
# container's journal and console; the last line is "N passed, M failed". Exit status: 0 when
# every scenario passed.
set -euo pipefail
usage="usage: run.sh ECHOD.deb ECHOLOAD.deb"
deb=$(realpath "${1:?$usage}")
deb_load=$(realpath "${2:?$usage}")
deb_previous=""
if [ -n "${E2E_PREVIOUS_DEB:-}" ]; then deb_previous=$(realpath "$E2E_PREVIOUS_DEB"); fi
here=$(cd "$(dirname "$0")" && pwd)
timeout_s=${E2E_TIMEOUT:-300}

[ "$(id -u)" -eq 0 ] || { echo "e2e: needs root (mounts, systemd-nspawn)" >&2; exit 1; }
command -v systemd-nspawn >/dev/null || { echo "e2e: systemd-nspawn missing (apt install systemd-container)" >&2; exit 1; }

work=$(mktemp -d /tmp/echod-e2e.XXXXXX)
root=$work/root
nspawn_pid=""
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # $nspawn_pid is timeout(1): it passes SIGTERM on to systemd-nspawn (which powers the
        # container off) and SIGKILLs it 10 s later if need be.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    mountpoint -q "$root" && umount "$root"
    mountpoint -q "$work" && umount "$work"
    rmdir "$work" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount -t tmpfs -o mode=0755,size=1G echod-e2e "$work"
mkdir "$work/upper" "$work/overlay-work" "$root"
mount -t overlay echod-e2e -o "lowerdir=/,upperdir=$work/upper,workdir=$work/overlay-work" "$root"

# A policy-rc.d that forbids starting services (as on this build machine, a Docker habit) would
# stop the postinst from starting echod.socket: the container stands for a real system.
rm -f "$root/usr/sbin/policy-rc.d"
# Its own machine ID and a volatile journal (/run/log/journal): the host's journal files stay out
# of the container's (they share the boot ID).
systemd-id128 new >"$root/etc/machine-id"
rm -rf "$root/var/log/journal"
mkdir -p "$root/e2e/out"
install -m 0755 "$here/inside.sh" "$root/e2e/inside.sh"
install -m 0644 "$deb" "$root/e2e/echod.deb"
install -m 0644 "$deb_load" "$root/e2e/echoload.deb"
if [ -n "$deb_previous" ]; then install -m 0644 "$deb_previous" "$root/e2e/echod-previous.deb"; fi
# E2E_RESTART_SCALE="19000": more connection counts for the timed restart (1000 always runs).
if [ -n "${E2E_RESTART_SCALE:-}" ]; then echo "$E2E_RESTART_SCALE" >"$root/e2e/restart-scale"; fi
# The container's only job: run the scenarios, keep the journal, exit with the failure count.
cat >"$root/etc/systemd/system/echod-e2e.service" <<'UNIT'
[Unit]
Description=echod end-to-end test

[Service]
Type=oneshot
ExecStart=/bin/bash -c '/e2e/inside.sh /e2e /e2e/out >/e2e/out/test.log 2>&1; rc=$$?; \
  journalctl -b --no-pager -o short-monotonic >/e2e/out/journal.log 2>&1; systemctl exit $$rc'
UNIT

start=$(date +%s)
set +e
timeout -k 10 "$timeout_s" systemd-nspawn --quiet --keep-unit --register=no -D "$root" --boot \
    --private-network --console=read-only \
    systemd.unit=echod-e2e.service systemd.firstboot=off >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!
wait "$nspawn_pid"
rc=$?
nspawn_pid=""
set -e

out=$root/e2e/out
if [ -n "${E2E_RESULTS:-}" ]; then
    # Keep the report, the container's journal and console (CI artifacts).
    rm -rf "$E2E_RESULTS" && mkdir -p "$E2E_RESULTS"
    cp -a "$out/." "$work/console.log" "$E2E_RESULTS/" 2>/dev/null || true
fi
if [ -f "$out/test.log" ]; then grep -v '^[0-9]* passed, [0-9]* failed$' "$out/test.log" || true; fi
passed=$(grep -c '^PASS' "$out/RESULTS" 2>/dev/null || true)
failed=$(grep -c '^FAIL' "$out/RESULTS" 2>/dev/null || true)
passed=${passed:-0}
failed=${failed:-0}
if [ "$rc" -ne 0 ]; then
    if [ "$rc" -ne "$failed" ]; then
        # The container did not report on its own: a crash, a hang (timeout: 124) or a boot failure.
        echo "FAIL container: systemd-nspawn exited with $rc (timeout ${timeout_s}s: 124)"
        failed=$((failed + 1))
    fi
    echo
    echo "--- container journal (last 150 lines) ---"
    tail -150 "$out/journal.log" 2>/dev/null || echo "(no journal)"
    echo "--- container console (last 40 lines) ---"
    tail -40 "$work/console.log"
fi
echo "e2e: $(($(date +%s) - start))s"
echo "$passed passed, $failed failed"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]
