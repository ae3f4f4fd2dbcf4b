#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# build-tcpkali.sh SRC OUT: builds tcpkali (https://github.com/satori-com/tcpkali, a load
# generator written by others, used by `make bench` as a peer client) from a copy of its source
# that is already on this machine, out of tree, into OUT/tcpkali. Nothing of tcpkali is committed
# here. SRC is a git work tree, a bare/mirror git directory (its HEAD is exported), or an unpacked
# source tree. Needs autoconf, automake, libtool, bison and flex (Debian packages).
set -euo pipefail
src=${1:?usage: build-tcpkali.sh SRC OUT}
out=${2:?usage: build-tcpkali.sh SRC OUT}
if [ ! -e "$src" ]; then
    echo "bench-tcpkali: no tcpkali source at $src (set TCPKALI_SRC to a clone of github.com/satori-com/tcpkali)" >&2
    exit 1
fi
for tool in autoreconf automake libtoolize bison flex; do
    command -v $tool >/dev/null || { echo "bench-tcpkali: $tool not found (apt-get install autoconf automake libtool bison flex)" >&2; exit 1; }
done
tree="$out/src"
rm -rf "$tree"
mkdir -p "$tree"
if [ -f "$src/configure.ac" ]; then
    cp -a "$src/." "$tree/"
elif git --git-dir="$src" rev-parse --verify -q HEAD >/dev/null; then
    git --git-dir="$src" archive HEAD | tar -x -C "$tree"
    git --git-dir="$src" rev-parse HEAD >"$out/commit"
else
    echo "bench-tcpkali: $src is neither a source tree (no configure.ac) nor a git directory" >&2
    exit 1
fi
# tcpkali includes <sys/sysctl.h>, which glibc dropped in 2.32; it calls sysctlbyname() only where
# configure found it (not on Linux), so an empty header in its place is all it needs.
compat="$(cd "$out" && pwd)/compat"
mkdir -p "$compat/sys"
if ! echo '#include <sys/sysctl.h>' | cc -E -x c - >/dev/null 2>&1; then
    echo '/* empty: glibc >= 2.32 has no sys/sysctl.h (see bench/build-tcpkali.sh) */' >"$compat/sys/sysctl.h"
fi
cd "$tree"
autoreconf -i >../autoreconf.log 2>&1 || { tail -20 ../autoreconf.log >&2; exit 1; }
./configure CPPFLAGS="-I$compat" >../configure.log 2>&1 || { tail -20 ../configure.log >&2; exit 1; }
make -j"$(nproc)" >../make.log 2>&1 || { tail -30 ../make.log >&2; exit 1; }
cp src/tcpkali ../tcpkali
echo "bench-tcpkali: built $(cd .. && pwd)/tcpkali ($(../tcpkali --version 2>&1 | head -1))"
