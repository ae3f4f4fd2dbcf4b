#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# make demo: echod in each model on loopback, driven by echoload; see scripts/demo.py.
set -euo pipefail
BIN=${1:-.build/release}
exec python3 "$(dirname "$0")/demo.py" "$BIN/echod" "$BIN/echoload"
