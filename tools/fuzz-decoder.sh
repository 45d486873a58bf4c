#!/usr/bin/env bash
# Runs on: developer and CI machines. Kept for old habits: the renderer's QXL decoder fuzzer alone,
# now one target of tools/fuzz.sh (which builds every fuzzer, replays the regressions, fuzzes).
#
#   tools/fuzz-decoder.sh [SECONDS]      same as: tools/fuzz.sh SECONDS decode (default 600)
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/fuzz.sh" "${1:-600}" decode
