#!/bin/bash
# SPDX licence headers: every source file of the project starts with
# "SPDX-License-Identifier: Apache-2.0" in its own comment syntax (LICENSE at the root has the
# text; debian/copyright says the same in Debian's machine-readable form).
#
# Usage: scripts/spdx.sh --check   lists the files without the header, exit 1 if there are any
#        scripts/spdx.sh --apply   adds the header where it is missing (idempotent)
#        scripts/spdx.sh --list    lists the files the header applies to, with their syntax
# Run from anywhere inside the repository; it works on the files git tracks (plus, with
# SPDX_INCLUDE_UNTRACKED=1, files not yet added), so build folders never count.
#
# Where the header goes: on the first line, except after the lines that must stay first: a
# shebang ("#!"), Python's coding cookie, Package.swift's "// swift-tools-version:" line and a man
# page's preprocessor line ('\" t). The header is one comment line; a blank separator follows
# unless the next line is already blank or a comment.
#
# Which files: code, scripts, build files, units, configuration and man pages (the list in
# syntax_of). Not: LICENSE, debian/copyright (it is the licence statement), debian/changelog,
# debian/control and debian/source/* (formats without a free comment line first), documentation
# (*.md), data (*.json, *.svg, *.csv) and dot-files (.gitignore, .swift-format: JSON).
set -euo pipefail

readonly ID="SPDX-License-Identifier: Apache-2.0"
# The header counts when it appears in this many first lines (room for a shebang, a tools-version
# line and a short comment above it).
readonly HEAD_LINES=10

usage() {
    echo "usage: $0 --check | --apply | --list" >&2
    exit 64
}

# syntax_of FILE: the comment leader for FILE ("//", "#", '.\"'), or nothing when the header does
# not apply to it.
syntax_of() {
    local f=$1 base first
    base=${f##*/}
    case $f in
    LICENSE | debian/copyright | debian/changelog | debian/control | debian/source/* | debian/*.lintian-overrides) return ;;
    esac
    case $base in
    .* | *.md | *.json | *.svg | *.csv | *.txt | *.png) return ;;
    *.swift | *.c | *.h | *.modulemap) echo "//"; return ;;
    *.py | *.sh | *.bash | *.service | *.socket | *.conf | *.conf.example | *.toml | *.yml | *.yaml | Makefile | *.mk | rules) echo "#"; return ;;
    *.postinst | *.postrm | *.preinst | *.prerm | *.install | *.links | *.dirs | *.docs | *.examples | *.manpages | *.maintscript) echo "#"; return ;;
    *.[1-8]) echo '.\"'; return ;;
    esac
    # No telling extension: a script says what it is on its first line.
    first=$(head -c 200 "$f" | head -1)
    case $first in
    '#!'*) echo "#" ;;
    esac
}

# has_header FILE: the identifier is in the first HEAD_LINES lines.
has_header() { head -n "$HEAD_LINES" "$1" | grep -q "$ID"; }

# keep_first FILE: how many leading lines must stay above the header.
keep_first() {
    local f=$1 n=0 line
    line=$(sed -n 1p "$f")
    case $line in
    '#!'* | '// swift-tools-version'* | "'\\\" "*) n=1 ;;
    esac
    # PEP 263: the coding cookie must be on line 1 or 2.
    if sed -n "$((n + 1))p" "$f" | grep -Eq '^[ \t\f]*#.*coding[:=][ \t]*[-_.a-zA-Z0-9]+'; then
        n=$((n + 1))
    fi
    echo "$n"
}

# apply FILE LEADER: inserts the header line, keeping mode and the lines that must stay first.
apply() {
    local f=$1 leader=$2 n next tmp
    n=$(keep_first "$f")
    next=$(sed -n "$((n + 1))p" "$f")
    tmp=$(mktemp "$f.spdx.XXXXXX")
    {
        [ "$n" -eq 0 ] || head -n "$n" "$f"
        printf '%s %s\n' "$leader" "$ID"
        # Separate the header from what follows, unless that is a blank line or a comment
        # already (then the header simply joins the file's opening comment block).
        case $next in
        "" | "$leader"*) ;;
        *) [ "$leader" = '.\"' ] || echo ;;
        esac
        tail -n "+$((n + 1))" "$f"
    } >"$tmp"
    chmod --reference="$f" "$tmp"
    mv "$tmp" "$f"
}

files() {
    if [ "${SPDX_INCLUDE_UNTRACKED:-0}" = 1 ]; then
        git ls-files --cached --others --exclude-standard
    else
        git ls-files --cached
    fi
}

[ $# -eq 1 ] || usage
mode=$1
case $mode in --check | --apply | --list) ;; *) usage ;; esac
cd "$(git rev-parse --show-toplevel)"

missing=0
while IFS= read -r f; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    leader=$(syntax_of "$f")
    [ -n "$leader" ] || continue
    case $mode in
    --list) printf '%-3s %s\n' "$leader" "$f" ;;
    --check)
        if ! has_header "$f"; then
            echo "$f"
            missing=$((missing + 1))
        fi
        ;;
    --apply)
        if ! has_header "$f"; then
            apply "$f" "$leader"
            echo "added: $f"
        fi
        ;;
    esac
done < <(files)

if [ "$mode" = --check ] && [ "$missing" -gt 0 ]; then
    echo "spdx: $missing file(s) above lack '$ID' in their first $HEAD_LINES lines (scripts/spdx.sh --apply adds it)" >&2
    exit 1
fi
exit 0
