#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# echod end to end, inside a throwaway systemd container (started by Tests/e2e/run.sh): installs
# the .debs (echod.deb, echoload.deb and, when present, echod-previous.deb, the previous release's
# single package, in DEBDIR), then drives echod.socket / echod.service with systemctl and echoload, as a user would.
#
# Each scenario prints "PASS name" or "FAIL name: first failed check"; the exit status is the
# number of failed scenarios. Writes RESULTS (one "PASS|FAIL name" line each) to $OUT.
#
# systemd 252 notes (../shared/notes/systemd-testing.md): "systemctl reload" may return before
# READY=1, so every reload is followed by polling ActiveState; "systemd-analyze verify" exits 0
# on warnings, so its output is what is tested.
set -u
DEBDIR=${1:?usage: inside.sh DEBDIR OUTDIR}
OUT=${2:?usage: inside.sh DEBDIR OUTDIR}
DEB=$DEBDIR/echod.deb
DEB_LOAD=$DEBDIR/echoload.deb
DEB_PREVIOUS=$DEBDIR/echod-previous.deb
TARGET=127.0.0.1:7
DROPIN_DIR=/etc/echod/echod.conf.d
DROPIN=$DROPIN_DIR/50-e2e.conf
UNIT_DIR=/lib/systemd/system
passed=0
failed=0
: >"$OUT/RESULTS"

# --- scenario bookkeeping ------------------------------------------------------------------------

scenario_name=""
scenario_error=""
scenario_start=0

begin() {
    scenario_name=$1
    scenario_error=""
    scenario_start=$(date +%s%N)
    # journalctl --after-cursor (252) skipped entries here; a microsecond --since does not.
    since="@$(date +%s.%6N)"
    echo
    echo "=== $scenario_name"
}

# fail MESSAGE: records the scenario's first failure (later checks still run and log).
fail() {
    echo "  check failed: $*"
    [ -n "$scenario_error" ] || scenario_error=$*
}

end() {
    local tenths took
    tenths=$((($(date +%s%N) - scenario_start) / 100000000))
    took=$((tenths / 10)).$((tenths % 10))
    if [ -z "$scenario_error" ]; then
        passed=$((passed + 1))
        echo "PASS $scenario_name (${took}s)"
        echo "PASS $scenario_name" >>"$OUT/RESULTS"
    else
        failed=$((failed + 1))
        echo "FAIL $scenario_name: $scenario_error (${took}s)"
        echo "FAIL $scenario_name: $scenario_error" >>"$OUT/RESULTS"
        echo "  --- journal of this scenario:"
        journalctl -q --no-pager -o short-monotonic --since="$since" 2>/dev/null | tail -60 | sed 's/^/  | /'
    fi
}

# --- helpers -------------------------------------------------------------------------------------

prop() { systemctl show -P "$2" "$1"; }

# expect_prop UNIT PROPERTY VALUE
expect_prop() {
    local v
    v=$(prop "$1" "$2")
    [ "$v" = "$3" ] || fail "$1 $2=$v, expected $3"
}

# wait_prop UNIT PROPERTY VALUE SECONDS: polls (0.1 s) until the property has the value.
wait_prop() {
    local deadline v
    deadline=$(($(date +%s) + $4))
    while :; do
        v=$(prop "$1" "$2")
        [ "$v" = "$3" ] && return 0
        [ "$(date +%s)" -ge "$deadline" ] && { fail "$1 $2=$v after $4 s, expected $3"; return 1; }
        sleep 0.1
    done
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls the command until it succeeds.
wait_for() {
    local seconds=$1 deadline=$(($(date +%s) + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -ge "$deadline" ] && { fail "timed out after ${seconds}s waiting for: $what"; return 1; }
        sleep 0.1
    done
}

# journal_has PATTERN [journalctl options]: the journal since the scenario began has PATTERN.
journal_has() {
    local pattern=$1
    shift
    journalctl -q --no-pager --since="$since" "$@" 2>/dev/null | grep -q -- "$pattern"
}

expect_journal() {
    local pattern=$1
    shift
    wait_for 5 "journal line '$pattern'" journal_has "$pattern" "$@"
}

# echo_check [CONNECTIONS]: echoload pingpong against echod.socket; every byte verified.
echo_check() {
    local out
    if ! out=$(echoload pingpong "$TARGET" --connections "${1:-2}" --size 512 --duration 500ms --warmup 0 \
        --quiet 2>&1); then
        fail "echoload pingpong (${1:-2} connections) failed: $(echo "$out" | tail -3 | tr '\n' ' ')"
        return 1
    fi
}

# held_connections N: at least N established connections to port 7 (server side).
held_connections() { [ "$(ss -Htn state established '( sport = :7 )' | wc -l)" -ge "$1" ]; }

accepted() { prop echod.service StatusText | sed -n 's/.* \([0-9][0-9]*\) accepted.*/\1/p'; }

accepted_at_least() { local a; a=$(accepted); [ -n "$a" ] && [ "$a" -ge "$1" ]; }

# set_dropin TEXT: the test's drop-in in /etc/echod/echod.conf.d (empty: removed).
set_dropin() {
    if [ -n "$1" ]; then printf '%b' "$1" >"$DROPIN"; else rm -f "$DROPIN"; fi
}

# reload_and_wait: systemctl reload, then ActiveState back to active (252 may return early).
reload_and_wait() {
    systemctl reload echod.service || fail "systemctl reload echod returned $?"
    wait_prop echod.service ActiveState active 10
}

# stop_service: systemctl stop echod.service, without its note that echod.socket can start it
# again (which is the point).
stop_service() {
    local out rc
    out=$(systemctl stop echod.service 2>&1)
    rc=$?
    echo "$out" | grep -v -e '^Warning: Stopping echod.service' -e '^  echod.socket$' -e '^$'
    [ "$rc" -eq 0 ] || fail "systemctl stop echod returned $rc"
}

socket_listening() {
    expect_prop echod.socket ActiveState active
    expect_prop echod.socket SubState listening
}

# --- scenarios -----------------------------------------------------------------------------------

# dpkg_install ARGS...: dpkg -i, output indented; a failure fails the scenario.
dpkg_install() {
    local log
    if ! log=$(DEBIAN_FRONTEND=noninteractive dpkg "$@" 2>&1); then
        fail "dpkg $* failed: $(echo "$log" | tail -3 | tr '\n' ' ')"
    fi
    echo "$log" | sed 's/^/  dpkg: /'
}

# owner FILE: the package dpkg says FILE belongs to.
owner() { dpkg -S "$1" 2>/dev/null | sed -n 's/^\([^:]*\): .*/\1/p' | head -1; }

# options_of: every --long-option named in the text on stdin, one per line, sorted.
options_of() { grep -o -e '--[a-z][a-z0-9-]*' | sort -u; }

# man_text MANPAGE: the page rendered wide (no line is broken or hyphenated inside an option).
man_text() { MANWIDTH=1000 man -l "$1" 2>/dev/null; }

# option_definitions MANPAGE: the options the page defines (a line that starts with "--opt" or
# "-o, --opt"), not those it merely mentions (systemctl --now in an example).
option_definitions() {
    man_text "$1" | sed -n 's/^ *\(-[a-zA-Z][^,]*, \)\{0,1\}\(--[a-z][a-z0-9-]*\).*/\2/p' | sort -u
}

# help_matches_man MANPAGE COMMAND...: every option COMMAND --help lists appears in the man page.
# Adds the options to $help_options (not a subshell: fail must reach the scenario).
help_options=""
help_matches_man() {
    local man=$1 opts man_opts o
    shift
    opts=$("$@" --help 2>&1 | options_of)
    [ -n "$opts" ] || fail "$* --help lists no option"
    man_opts=$(man_text "$man" | options_of)
    for o in $opts; do
        [ "$o" = --help ] && continue
        echo "$man_opts" | grep -qx -- "$o" || fail "$* --help lists $o, $(basename "$man") does not"
    done
    help_options="$help_options
$opts"
}

scenario_install() {
    begin "packages install: echod alone serves (socket enabled and listening), echoload is its own package"
    local f port_range
    port_range=$(tr -s '\t ' ' ' </proc/sys/net/ipv4/ip_local_port_range)
    dpkg_install -i "$DEB"
    for f in /usr/sbin/echod $UNIT_DIR/echod.service $UNIT_DIR/echod.socket \
        /usr/lib/sysctl.d/60-echod.conf /etc/echod/echod.conf /usr/share/man/man8/echod.8.gz \
        /usr/share/man/man5/echod.conf.5.gz /usr/share/bash-completion/completions/echod; do
        [ -e "$f" ] || fail "$f not installed by the echod package"
    done
    # A server does not get the client or its tuning.
    for f in /usr/bin/echoload /usr/share/man/man1/echoload.1.gz /usr/share/doc/echoload; do
        [ ! -e "$f" ] || fail "$f installed by the echod package"
    done
    grep -qx /etc/echod/echod.conf /var/lib/dpkg/info/echod.conffiles || fail "echod.conf is not a conffile"
    [ "$(systemctl is-enabled echod.socket)" = enabled ] || fail "echod.socket is $(systemctl is-enabled echod.socket), not enabled"
    socket_listening
    expect_prop echod.service ActiveState inactive
    ss -Hltn 'sport = :7' | grep -q '127.0.0.1:7' || fail "nothing listens on 127.0.0.1:7"
    # The postinst applied the sysctl drop-in: its one setting, and nothing client-side. In a
    # container only the network namespace's keys can be written.
    [ "$(cat /proc/sys/net/core/somaxconn)" = 16384 ] || fail "net.core.somaxconn=$(cat /proc/sys/net/core/somaxconn), expected 16384"
    [ "$(tr -s '\t ' ' ' </proc/sys/net/ipv4/ip_local_port_range)" = "$port_range" ] \
        || fail "installing echod changed ip_local_port_range to $(cat /proc/sys/net/ipv4/ip_local_port_range) (was $port_range)"
    local keys
    keys=$(sed -n 's/^-\{0,1\}\([a-z][a-z0-9_.-]*\) *=.*/\1/p' /usr/lib/sysctl.d/60-echod.conf | tr '\n' ' ')
    [ "$keys" = "net.core.somaxconn " ] || fail "60-echod.conf sets [$keys], expected net.core.somaxconn only"
    MANWIDTH=200 man -l /usr/share/man/man8/echod.8.gz 2>&1 | grep -q 'RFC 862 echo daemon' || fail "man echod(8) does not render"
    # The client, on its own.
    dpkg_install -i "$DEB_LOAD"
    for f in /usr/bin/echoload /usr/share/man/man1/echoload.1.gz \
        /usr/share/doc/echoload/examples/60-echoload-sysctl.conf /usr/share/bash-completion/completions/echoload; do
        [ -e "$f" ] || fail "$f not installed by the echoload package"
    done
    [ "$(owner /usr/bin/echoload)" = echoload ] || fail "/usr/bin/echoload belongs to '$(owner /usr/bin/echoload)'"
    [ ! -e /etc/sysctl.d/60-echoload-sysctl.conf ] && [ ! -e /usr/lib/sysctl.d/60-echoload-sysctl.conf ] \
        || fail "the echoload sysctl example was installed as a live setting"
    [ "$(tr -s '\t ' ' ' </proc/sys/net/ipv4/ip_local_port_range)" = "$port_range" ] \
        || fail "installing echoload changed ip_local_port_range"
    echo_check 2
    end
}

scenario_help_man() {
    begin "every option of --help is in the man pages, and every option a man page defines is in some --help"
    local page sub o
    for page in echod echoload; do
        help_options=""
        if [ $page = echod ]; then
            help_matches_man /usr/share/man/man8/echod.8.gz echod
            page=/usr/share/man/man8/echod.8.gz
        else
            help_matches_man /usr/share/man/man1/echoload.1.gz echoload
            for sub in $(echoload --help | sed -n '/^SUBCOMMANDS:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p'); do
                help_matches_man /usr/share/man/man1/echoload.1.gz echoload "$sub"
            done
            page=/usr/share/man/man1/echoload.1.gz
        fi
        # The page's header names the release the package is.
        local release
        release=$(dpkg-query -W -f='${Version}' "$(dpkg -S "$page" | cut -d: -f1)" | sed 's/-[^-]*$//')
        zcat "$page" | grep -q "^\.TH .* \"echo[a-z]* $release\"" || fail "$(basename "$page")'s .TH does not name release $release: $(zcat "$page" | grep '^\.TH')"
        for o in $(option_definitions $page); do
            [ "$o" = --help ] && continue
            echo "$help_options" | grep -qx -- "$o" || fail "$(basename $page) defines $o, no --help lists it"
        done
    done
    end
}

scenario_analyze() {
    begin "systemd-analyze verify is silent, security exposure within threshold"
    local out score
    out=$(systemd-analyze verify $UNIT_DIR/echod.socket $UNIT_DIR/echod.service 2>&1)
    [ -z "$out" ] || fail "systemd-analyze verify printed: $out"
    # The exposure we promise is at most 0.4; --threshold is on the 0-100 scale (score x 10).
    if ! out=$(systemd-analyze security --offline=yes --threshold=4 $UNIT_DIR/echod.service 2>&1); then
        fail "systemd-analyze security --threshold=4 (exposure above 0.4): $(echo "$out" | tail -3)"
    fi
    score=$(echo "$out" | sed -n 's/.*Overall exposure level for echod.service: \([0-9.]*\).*/\1/p')
    echo "  exposure: $score"
    echo "$score" >"$OUT/exposure"
    [ -n "$score" ] || fail "no exposure score in: $out"
    end
}

scenario_activation() {
    begin "socket activation: first connection starts echod, active only after READY=1, live STATUS"
    systemctl stop echod.socket
    ! ss -Hltn 'sport = :7' | grep -q . || fail "port 7 still listening with echod.socket stopped"
    systemctl start echod.socket || fail "systemctl start echod.socket returned $?"
    socket_listening
    sleep 0.3
    expect_prop echod.service ActiveState inactive
    expect_prop echod.service Type notify
    # PID1's own debug log shows the order: READY=1 received, then start -> running.
    systemctl log-level debug
    echo_check 2
    systemctl log-level info
    expect_prop echod.service ActiveState active
    expect_prop echod.service SubState running
    local ready running
    ready=$(journalctl -q --no-pager --since="$since" -o cat _PID=1 \
        | grep -n 'echod.service: Got notification message from PID .*READY=1' | head -1 | cut -d: -f1)
    running=$(journalctl -q --no-pager --since="$since" -o cat _PID=1 \
        | grep -n 'echod.service: Changed start -> running' | head -1 | cut -d: -f1)
    if [ -z "$ready" ] || [ -z "$running" ]; then
        fail "PID1 log lacks READY=1 ($ready) or start -> running ($running)"
    elif [ "$ready" -gt "$running" ]; then
        fail "echod.service went running before READY=1 arrived"
    fi
    expect_journal "serving" -u echod.service
    # STATUS= every 2 s: the figures follow the traffic.
    wait_for 5 "StatusText with 2 accepted" accepted_at_least 2
    local status
    status=$(prop echod.service StatusText)
    echo "  StatusText: $status"
    [[ $status =~ ^event\ model,\ [0-9]+\ workers:\ [0-9]+\ open,\ [0-9]+\ accepted,\ .*echoed,\ .*/s,\ timeouts:\ [0-9]+\ idle,\ [0-9]+\ send,\ refused:\ [0-9]+\ per-source,\ [0-9]+\ rate,\ [0-9]+\ table-full,\ udp:\ [0-9]+\ received,\ [0-9]+\ echoed\ \(.*\),\ dropped:\ [0-9]+\ reflector-port,\ [0-9]+\ own-port,\ [0-9]+\ truncated,\ [0-9]+\ per-source,\ [0-9]+\ cap,\ [0-9]+\ busy,\ [0-9]+\ error$ ]] \
        || fail "StatusText '$status' is not the live summary (the shipped socket unit passes a UDP socket too)"
    echo_check 3
    wait_for 5 "StatusText with 5 accepted" accepted_at_least 5
    echo "  StatusText: $(prop echod.service StatusText)"
    end
}

scenario_datagram() {
    begin "the shipped socket unit's UDP socket: datagrams start echod and are echoed, beside the stream socket"
    stop_service
    systemctl reset-failed echod.service 2>/dev/null
    expect_prop echod.service ActiveState inactive
    local out
    # The first datagrams wait in the socket's queue while echod starts; every one comes back.
    out=$(echoload udp "$TARGET" --rate 200/s --connections 2 --duration 1s --warmup 0 --quiet 2>&1) \
        || fail "echoload udp failed: $(echo "$out" | tail -3 | tr '\n' ' ')"
    expect_prop echod.service ActiveState active
    expect_journal "listen.datagram=127.0.0.1:7" -u echod.service
    echo_check 2
    wait_for 5 "StatusText counting the UDP echoes" \
        sh -c "systemctl show -P StatusText echod | grep -Eq 'udp: [1-9][0-9]* received, [1-9][0-9]* echoed'"
    echo "  StatusText: $(prop echod.service StatusText)"
    wait_for 5 "echod.prom counting the UDP echoes" grep -q '^echod_udp_datagrams_echoed_total [1-9]' /run/echod/echod.prom
    end
}

scenario_reload() {
    begin "reload applies a changed configuration"
    local pid
    pid=$(prop echod.service MainPID)
    set_dropin '[Server]\nMaxConnections=123\nLogLevel=debug\n'
    reload_and_wait
    expect_prop echod.service MainPID "$pid"
    expect_journal "configuration reloaded.*max_connections=123" -u echod.service
    echo_check 2
    end
}

scenario_reload_broken() {
    begin "reload of a broken configuration keeps the running one, reason in the journal"
    local pid
    pid=$(prop echod.service MainPID)
    set_dropin '[Server]\nModle=fork\n'
    reload_and_wait
    expect_prop echod.service MainPID "$pid"
    expect_journal "reload failed; keeping the running configuration" -u echod.service -p err
    expect_journal "$DROPIN:2" -u echod.service -p err
    echo_check 2
    journalctl -q --no-pager --since="$since" -u echod.service -p err -o cat | sed 's/^/  journal: /'
    set_dropin ''
    reload_and_wait
    end
}

# unit_processes: processes in echod.service's cgroup (read from /proc: the container's cgroup
# mount is v1 or v2 depending on the host).
unit_processes() { grep -l '/echod\.service$' /proc/[0-9]*/cgroup 2>/dev/null | wc -l; }

# main_threads: threads of echod's main process.
main_threads() { sed -n 's/^Threads:[[:space:]]*//p' "/proc/$(prop echod.service MainPID)/status"; }

# stop_with_connections [MODEL]: systemctl stop while echoload holds 8 idle connections; echod
# drains them (KillMode=mixed: only echod gets SIGTERM; in the fork model it forwards it to its
# children, in the thread model it interrupts its threads with SIGUSR2).
stop_with_connections() {
    local holder procs threads held_out status
    held_out=$(mktemp)
    echoload hold "$TARGET" --connections 8 --duration 2s --json --quiet >"$held_out" 2>/dev/null &
    holder=$!
    wait_for 5 "8 connections established" held_connections 8
    procs=$(unit_processes)
    threads=$(main_threads)
    echo "  holding 8 connections: echod.service has $procs processes, the main one $threads threads"
    case ${1:-} in
    fork) [ "$procs" -ge 9 ] || fail "fork model: $procs processes for 8 connections" ;;
    thread) [ "$threads" -ge 9 ] || fail "thread model: $threads threads for 8 connections" ;;
    event) [ "$procs" -eq 1 ] || fail "event model: $procs processes" ;;
    esac
    stop_service
    # echoload's own report counts: all 8 were established, and the stop ended each of them with
    # a clean FIN (a premature close, as echoload sees it, since its probe comes at the end):
    # no reset, I/O error, timeout or wrong byte. (Exit status 1 is the expected "not clean".)
    wait "$holder"
    python3 - "$held_out" <<'PY' || fail "echoload hold across the stop: $(tail -c 600 "$held_out" | tr '\n' ' ')"
import json, sys
j = json.load(open(sys.argv[1]))
c, e = j["connections"], j["errors"]
ok = (c["established"] == 8 and e["premature_closes"] == 8 and e["mismatches"] == 0
      and e["timeouts"] == 0 and e["short_reads"] == 0 and not e["io"])
sys.exit(0 if ok else 1)
PY
    rm -f "$held_out"
    expect_prop echod.service ActiveState inactive
    expect_prop echod.service Result success
    expect_prop echod.service ExecMainStatus 0
    socket_listening
    expect_journal "stopped" -u echod.service
}

scenario_stop() {
    begin "stop: Result=success, socket keeps listening, next connection starts echod again"
    local pid
    pid=$(prop echod.service MainPID)
    stop_with_connections
    echo_check 2
    expect_prop echod.service ActiveState active
    [ "$(prop echod.service MainPID)" != "$pid" ] || fail "MainPID did not change after stop and reactivation"
    end
}

# scenario_model MODEL: the whole cycle under the hardened unit with Model=MODEL.
scenario_model() {
    local model=$1
    begin "Model=$model under the hardened unit: activation, echo, status, reload, stop"
    stop_service
    systemctl reset-failed echod.service 2>/dev/null  # an earlier scenario's failure stays there
    set_dropin "[Server]\nModel=$model\n"
    expect_prop echod.service ActiveState inactive
    echo_check 4
    expect_prop echod.service ActiveState active
    local out
    out=$(echoload stream "$TARGET" --connections 2 --duration 500ms --warmup 0 --quiet 2>&1) \
        || fail "echoload stream failed: $(echo "$out" | tail -2 | tr '\n' ' ')"
    wait_for 5 "StatusText of the $model model" sh -c "systemctl show -P StatusText echod | grep -q '^$model model'"
    echo "  StatusText: $(prop echod.service StatusText)"
    # The same figures for scrapers, in /run/echod (RuntimeDirectory=), readable by others.
    # (rewritten with each STATUS= line, every 2 s: the connections above show within 5 s)
    wait_for 5 "/run/echod/echod.prom of the $model model" grep -q "^echod_info{.*model=\"$model\"} 1$" /run/echod/echod.prom
    wait_for 5 "echod.prom counting the accepted connections" grep -q '^echod_connections_accepted_total [1-9]' /run/echod/echod.prom
    [ "$(stat -c %a /run/echod/echod.prom)" = 644 ] || fail "echod.prom mode $(stat -c %a /run/echod/echod.prom)"
    local pid
    pid=$(prop echod.service MainPID)
    reload_and_wait
    expect_prop echod.service MainPID "$pid"
    echo_check 4
    stop_with_connections "$model"
    [ ! -e /run/echod/echod.prom ] || fail "/run/echod/echod.prom left after the stop"
    set_dropin ''
    end
}

# scenario_processes: Processes=4 behind the socket under the hardened unit: more connections
# than one process may hold ([Limits] NoFile=1024 makes that cheap: about 950 each), the sums in
# systemctl status, a reload that every worker applies, and a stop that drains them all.
scenario_processes() {
    begin "Processes=4 under the hardened unit: 2500 connections over 4 processes, status, reload, stop"
    stop_service
    systemctl reset-failed echod.service 2>/dev/null
    set_dropin "[Server]\nProcesses=4\n[Limits]\nNoFile=1024\n"
    echo_check 4
    expect_prop echod.service ActiveState active
    local pid procs held_out holder w soft
    pid=$(prop echod.service MainPID)
    procs=$(unit_processes)
    [ "$procs" -eq 5 ] || fail "Processes=4: $procs processes in echod.service, expected the supervisor and 4 workers"
    held_out=$(mktemp)
    # Held for 30 s once all are open: long enough for what follows on a slow box; the stop ends
    # the hold early (each connection closed cleanly by the drain), and echoload waits out the rest.
    echoload hold "$TARGET" --connections 2500 --duration 30s --json --quiet >"$held_out" 2>/dev/null &
    holder=$!
    wait_for 60 "2500 connections established" held_connections 2500
    wait_for 5 "StatusText: 2500 open over 4 processes" \
        sh -c "systemctl show -P StatusText echod | grep -q '4 processes.*: 2500 open'"
    echo "  StatusText: $(prop echod.service StatusText)"
    systemctl status echod.service --no-pager 2>&1 | head -12 | sed 's/^/  | /'
    for w in $(cat "/proc/$pid/task/$pid/children"); do
        soft=$(sed -n 's/^Max open files *\([0-9]*\) .*/\1/p' "/proc/$w/limits")
        [ "$soft" = 1024 ] || fail "worker $w: open-file limit $soft, expected 1024"
    done
    reload_and_wait
    expect_prop echod.service MainPID "$pid"
    expect_journal "configuration reloaded.*processes=4" -u echod.service
    echo_check 4
    stop_service
    wait "$holder"
    python3 - "$held_out" <<'PY' || fail "echoload hold across the stop: $(tail -c 600 "$held_out" | tr '\n' ' ')"
import json, sys
j = json.load(open(sys.argv[1]))
c, e = j["connections"], j["errors"]
ok = (c["established"] == 2500 and e["premature_closes"] == 2500 and e["mismatches"] == 0
      and e["timeouts"] == 0 and e["short_reads"] == 0 and not e["io"])
sys.exit(0 if ok else 1)
PY
    rm -f "$held_out"
    expect_prop echod.service Result success
    expect_prop echod.service ExecMainStatus 0
    [ "$(unit_processes)" -eq 0 ] || fail "processes left in echod.service after the stop"
    socket_listening
    set_dropin ''
    end
}

scenario_broken_start() {
    begin "broken configuration at start: the unit fails with file:line in status and journal"
    stop_service
    local restarts
    restarts=$(prop echod.service NRestarts)
    set_dropin '[Server]\nModle=fork\n'
    if systemctl start echod.service 2>/dev/null; then fail "systemctl start succeeded"; fi
    expect_prop echod.service ActiveState failed
    expect_prop echod.service Result exit-code
    expect_prop echod.service ExecMainStatus 78
    sleep 0.5  # RestartSec= is 100ms: a restart (which 78 must not cause) would show by now
    expect_prop echod.service NRestarts "$restarts"
    expect_journal "$DROPIN:2: unknown key 'Modle'" -u echod.service -p err
    local status
    status=$(systemctl status --no-pager -l -n 20 echod.service 2>&1)
    echo "$status" | sed 's/^/  | /'
    echo "$status" | grep -q "$DROPIN:2" || fail "systemctl status does not show $DROPIN:2"
    socket_listening
    set_dropin ''
    systemctl reset-failed echod.service
    echo_check 2
    end
}

scenario_watchdog() {
    begin "watchdog: a hung worker stops the pings and systemd restarts echod"
    stop_service
    set_dropin '[Debug]\nWatchdogTestTrigger=yes\n'
    echo_check 2
    local pid restarts watchdog
    pid=$(prop echod.service MainPID)
    restarts=$(prop echod.service NRestarts)
    watchdog=$(prop echod.service WatchdogUSec)
    echo "  WatchdogUSec=$watchdog MainPID=$pid NRestarts=$restarts"
    expect_journal "WatchdogTestTrigger=yes" -u echod.service
    systemctl kill -s SIGUSR1 --kill-who=main echod.service
    expect_journal "hanging a worker" -u echod.service
    wait_for 30 "NRestarts above $restarts" sh -c "[ \$(systemctl show -P NRestarts echod) -gt $restarts ]"
    wait_prop echod.service ActiveState active 10
    [ "$(prop echod.service MainPID)" != "$pid" ] || fail "MainPID unchanged after the watchdog restart"
    expect_journal "withholding watchdog ping" -u echod.service -p err
    expect_journal "echod.service: Watchdog timeout"
    set_dropin ''
    systemctl restart echod.service
    echo_check 2
    end
}

scenario_remove() {
    begin "reinstall while running: echod restarted, still serving; dpkg -r stops every unit; purge removes the configuration"
    echo_check 1
    local log pid
    pid=$(prop echod.service MainPID)
    log=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" 2>&1) || fail "dpkg -i (reinstall) failed: $log"
    wait_prop echod.service ActiveState active 10
    [ "$(prop echod.service MainPID)" != "$pid" ] || fail "reinstall did not restart the running echod"
    expect_prop echod.socket ActiveState active
    echo_check 1
    log=$(dpkg -r echod 2>&1) || fail "dpkg -r failed: $log"
    local u
    for u in echod.socket echod.service; do
        [ "$(systemctl is-active $u)" != active ] || fail "$u still active after dpkg -r"
    done
    ! ss -Hltn 'sport = :7' | grep -q . || fail "something still listens on port 7"
    [ ! -e /usr/sbin/echod ] || fail "/usr/sbin/echod left behind"
    [ -e /etc/echod/echod.conf ] || fail "dpkg -r removed the conffile (only purge should)"
    log=$(dpkg --purge echod 2>&1) || fail "dpkg --purge failed: $log"
    [ ! -e /etc/echod ] || fail "/etc/echod left after purge: $(ls -R /etc/echod)"
    [ ! -e /etc/systemd/system/sockets.target.wants/echod.socket ] || fail "enablement symlink left after purge"
    ! pgrep -x echod >/dev/null || fail "an echod process is left"
    # echoload stays, usable without the daemon: it reports the refused connection, non-zero.
    [ -x /usr/bin/echoload ] || fail "removing echod removed echoload"
    echoload --version >/dev/null 2>&1 || fail "echoload --version fails without echod"
    if echoload pingpong "$TARGET" --connections 1 --duration 200ms --warmup 0 --quiet >/dev/null 2>&1; then
        fail "echoload pingpong succeeded with no server"
    fi
    log=$(dpkg --purge echoload 2>&1) || fail "dpkg --purge echoload failed: $log"
    [ ! -e /usr/bin/echoload ] || fail "/usr/bin/echoload left after purge"
    end
}

# Upgrades from the previous release, one package holding both programs (0.1.0), to the split.
scenario_upgrade() {
    begin "upgrade from $(dpkg-deb -f "$DEB_PREVIOUS" Version): echoload moves to its package, the edited conffile stays, echod keeps serving"
    dpkg_install -i "$DEB_PREVIOUS"
    [ "$(owner /usr/bin/echoload)" = echod ] || fail "the previous release's echod does not hold /usr/bin/echoload"
    wait_prop echod.socket SubState listening 10
    echo "# a local edit the upgrade must keep" >>/etc/echod/echod.conf
    echo_check 2
    # As an unattended upgrade does: keep the locally edited conffile without asking.
    dpkg_install --force-confdef --force-confold -i "$DEB" "$DEB_LOAD"
    [ "$(dpkg-query -W -f='${Version}' echod)" = "$(dpkg-deb -f "$DEB" Version)" ] || fail "echod not upgraded"
    [ "$(owner /usr/bin/echoload)" = echoload ] || fail "/usr/bin/echoload belongs to '$(owner /usr/bin/echoload)' after the upgrade"
    [ "$(owner /usr/share/man/man1/echoload.1.gz)" = echoload ] || fail "echoload(1) belongs to '$(owner /usr/share/man/man1/echoload.1.gz)'"
    grep -q '^# a local edit the upgrade must keep$' /etc/echod/echod.conf || fail "the upgrade lost the edit to echod.conf"
    grep -qx /etc/echod/echod.conf /var/lib/dpkg/info/echod.conffiles || fail "echod.conf is no longer a conffile"
    ! grep -q '^-\{0,1\}net.ipv4.ip_local_port_range' /usr/lib/sysctl.d/60-echod.conf || fail "the upgraded sysctl drop-in still sets the port range"
    wait_prop echod.socket ActiveState active 10
    echo_check 2
    # echod alone over the previous release: echoload goes with the old package (NEWS.Debian).
    dpkg --purge echoload >/dev/null 2>&1 || fail "dpkg --purge echoload failed"
    dpkg --purge echod >/dev/null 2>&1 || fail "dpkg --purge echod failed"
    dpkg_install -i "$DEB_PREVIOUS"
    dpkg_install --force-confdef --force-confold -i "$DEB"
    [ ! -e /usr/bin/echoload ] || fail "/usr/bin/echoload left by the upgrade of echod alone (owner '$(owner /usr/bin/echoload)')"
    wait_prop echod.socket ActiveState active 10
    ss -Hltn 'sport = :7' | grep -q '127.0.0.1:7' || fail "nothing listens on 127.0.0.1:7 after the upgrade of echod alone"
    dpkg --purge echod >/dev/null 2>&1 || fail "dpkg --purge echod failed"
    end
}


# --- restart without dropping a connection (issue 15) ---------------------------------------------

# load_clean FILE [ESTABLISHED]: echoload's --json report in FILE is clean: every connection
# established (ESTABLISHED of them, when given), no error of any kind, every byte verified.
load_clean() {
    python3 - "$1" "${2:-0}" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
c, e = j["connections"], j["errors"]
want = int(sys.argv[2])
ok = j["clean"] and e["total"] == 0 and e["premature_closes"] == 0 and not e["io"] and (want == 0 or c["established"] == want)
lat = j.get("latency_us") or {}
print(f"  {j['mode']}: {c['established']} established, {j['traffic']['messages'] if 'messages' in j['traffic'] else ''} messages,"
      f" errors {e['total']} (premature closes {e['premature_closes']}), max latency {lat.get('max', '-')} us")
sys.exit(0 if ok else 1)
PY
}

store_count() { prop echod.service NFileDescriptorStore; }

# restart_keeping MODEL: systemctl restart with the drop-in's Model= set to MODEL; a new MainPID,
# the old one handed its connections over and the new one took them, nothing left in the store.
restart_keeping() {
    local pid
    pid=$(prop echod.service MainPID)
    set_dropin "[Server]\nModel=$1\n"
    local t0 t1
    t0=$(date +%s%N)
    systemctl restart echod.service || fail "systemctl restart echod returned $?"
    t1=$(date +%s%N)
    echo "  restart to Model=$1: systemctl restart took $(((t1 - t0) / 1000000)) ms"
    [ "$(prop echod.service MainPID)" != "$pid" ] || fail "MainPID unchanged after restart"
    wait_for 5 "StatusText of the $1 model" sh -c "systemctl show -P StatusText echod | grep -q '^$1 model'"
    expect_journal "connections handed over" -u echod.service
    expect_journal "took over connections from the previous echod" -u echod.service
    [ "$(store_count)" = 0 ] || fail "NFileDescriptorStore=$(store_count) after the restart, expected 0"
}

# The container boots its test unit alone, so sockets.target (and dbus.socket with it) is not
# started; a real system has its bus. echod asks it whether a SIGTERM is a restart.
start_bus() {
    systemctl start dbus.socket dbus.service || fail "cannot start the system bus"
    wait_for 5 "the system bus socket" test -S /run/dbus/system_bus_socket
}

scenario_restart() {
    begin "restart keeps every connection and byte: pingpong and stream across event -> event -> thread -> event"
    start_bus
    stop_service
    systemctl reset-failed echod.service 2>/dev/null
    set_dropin '[Server]\nModel=event\n'
    echo_check 2
    local pp st pp_pid st_pid
    pp=$(mktemp)
    st=$(mktemp)
    echoload pingpong "$TARGET" --connections 300 --size 512 --duration 14s --warmup 0 --json --quiet >"$pp" 2>&1 &
    pp_pid=$!
    echoload stream "$TARGET" --connections 40 --size 65536 --duration 14s --warmup 0 --json --quiet >"$st" 2>&1 &
    st_pid=$!
    wait_for 10 "340 connections established" held_connections 340
    sleep 1
    restart_keeping event
    sleep 1
    restart_keeping thread
    sleep 1
    restart_keeping event
    wait "$pp_pid"
    wait "$st_pid"
    load_clean "$pp" 300 || fail "pingpong across the restarts: $(tail -c 400 "$pp" | tr '\n' ' ')"
    load_clean "$st" 40 || fail "stream across the restarts: $(tail -c 400 "$st" | tr '\n' ' ')"
    journalctl -q --no-pager -o short-monotonic -u echod.service --since="$since" \
        | grep -E 'restart requested|connections handed over|took over|serving' | sed 's/^/  | /'
    rm -f "$pp" "$st"
    # A stop is still a graceful stop, and leaves nothing in the store.
    stop_with_connections event
    [ "$(store_count)" = 0 ] || fail "NFileDescriptorStore=$(store_count) after the stop, expected 0"
    expect_journal "stopping gracefully" -u echod.service
    set_dropin ''
    end
}

# scenario_restart_scale N: N idle connections held across a restart; the time from SIGTERM to the
# new READY=1 (systemctl restart returns once the start job is done, which for Type=notify is
# READY=1), and echod's own figure for the hand-over.
scenario_restart_scale() {
    local n=$1 hold hold_pid t0 t1
    begin "restart with $n connections held: all still open after, timed"
    stop_service
    set_dropin '[Server]\nModel=event\n'
    echo_check 1
    hold=$(mktemp)
    echoload hold "$TARGET" --connections "$n" --duration 20s --json --quiet >"$hold" 2>&1 &
    hold_pid=$!
    wait_for 60 "$n connections established" held_connections "$n"
    t0=$(date +%s%N)
    systemctl restart echod.service || fail "systemctl restart returned $?"
    t1=$(date +%s%N)
    echo "  $n connections: systemctl restart took $(((t1 - t0) / 1000000)) ms"
    echo "restart $n $(((t1 - t0) / 1000000))" >>"$OUT/measurements"
    journalctl -q --no-pager -o short-monotonic -u echod.service --since="$since" \
        | grep -E 'restart requested|connections handed over|took over|serving' | sed 's/^/  | /'
    held_connections "$n" || fail "only $(ss -Htn state established '( sport = :7 )' | wc -l) of $n connections established after the restart"
    [ "$(store_count)" = 0 ] || fail "NFileDescriptorStore=$(store_count) after the restart"
    wait "$hold_pid"
    python3 - "$hold" "$n" <<'PY' || fail "echoload hold across the restart: $(tail -c 400 "$hold" | tr '\n' ' ')"
import json, sys
j = json.load(open(sys.argv[1])); n = int(sys.argv[2])
c, e = j["connections"], j["errors"]
print(f"  hold: {c['established']} established, {c.get('held')} held, errors {e['total']}")
sys.exit(0 if j["clean"] and c["established"] == n and e["total"] == 0 else 1)
PY
    rm -f "$hold"
    set_dropin ''
    end
}

# Without a system bus: the unit's ExecStop= hook (root, systemd's private socket) still tells
# echod that a restart is a restart; a SIGTERM without a restart job (systemctl kill) and no bus
# to ask is a graceful stop, the safe default, with the reason in the journal.
scenario_restart_without_bus() {
    begin "no system bus: restart still hands over (ExecStop= hook); SIGTERM outside a restart job stops gracefully"
    stop_service
    systemctl stop dbus.service dbus.socket
    set_dropin ''
    echo_check 2
    local held_out holder
    held_out=$(mktemp)
    echoload hold "$TARGET" --connections 8 --duration 3s --json --quiet >"$held_out" 2>/dev/null &
    holder=$!
    wait_for 5 "8 connections established" held_connections 8
    restart_keeping event
    wait "$holder"
    load_clean "$held_out" 8 || fail "hold across a restart without a bus: $(tail -c 400 "$held_out" | tr '\n' ' ')"
    echoload hold "$TARGET" --connections 8 --duration 2s --json --quiet >"$held_out" 2>/dev/null &
    holder=$!
    wait_for 5 "8 connections established" held_connections 8
    systemctl kill -s SIGTERM --kill-who=main echod.service
    expect_journal "stopping gracefully reason=no system bus" -u echod.service
    wait "$holder"
    python3 - "$held_out" <<'PY' || fail "SIGTERM without a bus: $(tail -c 400 "$held_out" | tr '\n' ' ')"
import json, sys
j = json.load(open(sys.argv[1])); c, e = j["connections"], j["errors"]
print(f"  hold: {c['established']} established, premature closes {e['premature_closes']} (the graceful stop's FIN)")
sys.exit(0 if c["established"] == 8 and e["premature_closes"] == 8 and e["mismatches"] == 0 and not e["io"] else 1)
PY
    rm -f "$held_out"
    wait_prop echod.service ActiveState inactive 10
    [ "$(store_count)" = 0 ] || fail "NFileDescriptorStore=$(store_count)"
    start_bus
    end
}

# Into the fork model: a child per connection taken over serves it from the restart on.
scenario_restart_into_fork() {
    begin "restart from event into the fork model: its children serve the connections taken over"
    stop_service
    set_dropin '[Server]\nModel=event\n'
    echo_check 2
    local pp pp_pid
    pp=$(mktemp)
    echoload pingpong "$TARGET" --connections 50 --size 512 --duration 4s --warmup 0 --json --quiet >"$pp" 2>&1 &
    pp_pid=$!
    wait_for 10 "50 connections established" held_connections 50
    sleep 1
    restart_keeping fork
    [ "$(unit_processes)" -ge 51 ] || fail "fork model: $(unit_processes) processes for 50 connections taken over"
    wait "$pp_pid"
    load_clean "$pp" 50 || fail "pingpong across the restart into fork: $(tail -c 400 "$pp" | tr '\n' ' ')"
    rm -f "$pp"
    set_dropin ''
    end
}

# The fork model cannot hand its connections over (each lives in its own child): a restart of a
# fork-model echod stops gracefully, as a stop does, and says so.
scenario_restart_fork() {
    begin "restart of the fork model: graceful stop of its children's connections, said in the journal"
    stop_service
    set_dropin '[Server]\nModel=fork\n'
    echo_check 2
    local held_out holder
    held_out=$(mktemp)
    echoload hold "$TARGET" --connections 8 --duration 2s --json --quiet >"$held_out" 2>/dev/null &
    holder=$!
    wait_for 5 "8 connections established" held_connections 8
    systemctl restart echod.service || fail "systemctl restart returned $?"
    expect_journal "this model cannot hand its connections over; stopping gracefully" -u echod.service
    wait "$holder"
    python3 - "$held_out" <<'PY' || fail "fork restart: $(tail -c 400 "$held_out" | tr '\n' ' ')"
import json, sys
j = json.load(open(sys.argv[1])); c, e = j["connections"], j["errors"]
print(f"  hold: {c['established']} established, premature closes {e['premature_closes']}, other errors {e['total'] - e['premature_closes']}")
sys.exit(0 if c["established"] == 8 and e["premature_closes"] == 8 and e["mismatches"] == 0 and not e["io"] else 1)
PY
    rm -f "$held_out"
    [ "$(store_count)" = 0 ] || fail "NFileDescriptorStore=$(store_count) after the fork restart"
    set_dropin ''
    end
}

# An upgrade (the package reinstalled over itself: postinst with a previous version) restarts
# echod.service, which hands its connections over, and leaves echod.socket alone: connections
# made during the upgrade are served too.
scenario_upgrade_keeps() {
    begin "package reinstalled while serving: connections kept, socket not restarted, connects during it served"
    stop_service
    set_dropin ''
    echo_check 2
    local pp pp_pid sock_since connects=0 connect_failures=0 log out
    pp=$(mktemp)
    echoload pingpong "$TARGET" --connections 200 --size 512 --duration 8s --warmup 0 --json --quiet >"$pp" 2>&1 &
    pp_pid=$!
    wait_for 10 "200 connections established" held_connections 200
    sock_since=$(prop echod.socket ActiveEnterTimestampMonotonic)
    DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" >"$OUT/upgrade-dpkg.log" 2>&1 &
    local dpkg_pid=$!
    while kill -0 "$dpkg_pid" 2>/dev/null; do
        connects=$((connects + 1))
        if ! out=$(echoload pingpong "$TARGET" --connections 2 --size 64 --duration 100ms --warmup 0 --quiet 2>&1); then
            connect_failures=$((connect_failures + 1))
            echo "  a short run during the upgrade failed at $(date +%s.%N): $(echo "$out" | tail -4 | tr '\n' ' ')"
        fi
    done
    wait "$dpkg_pid" || fail "dpkg -i (reinstall) failed: $(tail -3 "$OUT/upgrade-dpkg.log" | tr '\n' ' ')"
    echo "  $connects short runs during the upgrade, $connect_failures failed"
    [ "$connect_failures" -eq 0 ] || fail "$connect_failures of $connects connects during the upgrade failed"
    [ "$(prop echod.socket ActiveEnterTimestampMonotonic)" = "$sock_since" ] || fail "the upgrade restarted echod.socket"
    wait "$pp_pid"
    load_clean "$pp" 200 || fail "pingpong across the upgrade: $(tail -c 400 "$pp" | tr '\n' ' ')"
    expect_journal "connections handed over" -u echod.service
    [ "$(store_count)" = 0 ] || fail "NFileDescriptorStore=$(store_count) after the upgrade"
    rm -f "$pp"
    end
}

# --- main ----------------------------------------------------------------------------------------

echo "echod e2e in $(systemd-detect-virt) container, systemd $(systemctl --version | head -1 | cut -d' ' -f2)"
scenario_install
if [ "$failed" -eq 0 ]; then
    scenario_help_man
    scenario_analyze
    scenario_activation
    scenario_datagram
    scenario_reload
    scenario_reload_broken
    scenario_stop
    for model in event thread fork; do scenario_model $model; done
    scenario_restart
    scenario_restart_without_bus
    scenario_restart_into_fork
    scenario_restart_fork
    scenario_upgrade_keeps
    for n in 1000 $(cat "$DEBDIR/restart-scale" 2>/dev/null); do scenario_restart_scale "$n"; done
    scenario_processes
    scenario_broken_start
    scenario_watchdog
    scenario_remove
    if [ -e "$DEB_PREVIOUS" ]; then scenario_upgrade; fi
fi
echo
echo "$passed passed, $failed failed"
exit "$failed"
