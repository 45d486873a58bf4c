#!/usr/bin/env bash
# Runs on: developer and CI machines (never in spicebox). Input: this checkout and, when present,
# the shared QXL recordings in ../shared/recordings (trusted developer files).
#
# Builds the renderer's QXL decoder fuzzer (renderer/fuzz/) with clang and libFuzzer under ASan
# and UBSan, writes its seed corpus from guestsim's scenarios and the shared recordings, and
# fuzzes for SECONDS (default 600). Exits non-zero on a finding; the crashing input is left in
# build-fuzz/findings/ with the command to reproduce it.
#
#   tools/fuzz-decoder.sh [SECONDS]      e.g. `make fuzz-smoke` runs it for 60 s
#
# Environment: FUZZ_BUILD (default build-fuzz), FUZZ_JOBS (parallel fuzz processes, default 1),
# CXX (default clang++).
set -euo pipefail

seconds="${1:-600}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "fuzz-decoder.sh: SECONDS must be a positive whole number, got '$seconds'" >&2
  exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${FUZZ_BUILD:-$root/build-fuzz}"
cxx="${CXX:-clang++}"
jobs="${FUZZ_JOBS:-1}"
recordings="$root/../shared/recordings"

if ! command -v "$cxx" >/dev/null; then
  echo "fuzz-decoder.sh: $cxx not found; install clang and libclang-rt-dev (tools/install-deps.sh)" >&2
  exit 2
fi

mkdir -p "$out/obj" "$out/seeds" "$out/corpus" "$out/findings"

common=(-std=c++20 -g -O1 -Wall -Wextra -Werror -I"$root" -fno-omit-frame-pointer
        $(pkg-config --cflags spice-protocol spdlog))
sanitize=(-fsanitize=address,undefined -fno-sanitize-recover=undefined)
# Alignment reports stay recoverable so that renderer/fuzz/ubsan-suppressions.txt can name known,
# reported ones; every other UBSan report aborts, and any alignment report not listed there is
# still a finding (UBSAN_OPTIONS below turns a printed report into a failure).
libs=($(pkg-config --libs spdlog fmt))

# Compiles one source into $out/obj when it, a header of the code it includes (renderer/,
# broker/qxl/, base/, ipc/) or this script (the flags) is newer than its object. $1: source,
# $2: object name, the rest: extra flags.
compile() {
  local src="$root/$1" obj="$out/obj/$2.o"
  shift 2
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$root/tools/fuzz-decoder.sh" -nt "$obj" ] ||
    [ -n "$(find "$root/renderer" "$root/broker/qxl" "$root/base" "$root/ipc" -name '*.h' \
      -newer "$obj" -print -quit)" ]; then
    echo "  CXX $src"
    "$cxx" "${common[@]}" "$@" -c "$src" -o "$obj"
  fi
}

echo "fuzz-decoder.sh: building in $out"
# The code under test carries the fuzzer's coverage instrumentation.
fuzzed=(-fsanitize=fuzzer-no-link "${sanitize[@]}" -fsanitize-recover=alignment)
compile renderer/qxl-decode.cpp qxl-decode "${fuzzed[@]}"
compile broker/qxl/memslot.cpp memslot "${fuzzed[@]}"
compile renderer/fuzz/decode-fuzz.cpp decode-fuzz "${fuzzed[@]}"
"$cxx" -fsanitize=fuzzer "${sanitize[@]}" "$out/obj/decode-fuzz.o" "$out/obj/qxl-decode.o" \
  "$out/obj/memslot.o" "${libs[@]}" -o "$out/spicebox-decode-fuzz"

# The seed generator: sanitised but not instrumented for coverage.
compile broker/qxl/memslot.cpp seeds-memslot "${sanitize[@]}"
compile tools/guestsim/materialise.cpp seeds-materialise "${sanitize[@]}"
compile tools/guestsim/scenario.cpp seeds-scenario "${sanitize[@]}"
compile tools/guestsim/spice-record.cpp seeds-spice-record "${sanitize[@]}"
compile renderer/fuzz/make-seeds.cpp seeds-main "${sanitize[@]}"
"$cxx" "${sanitize[@]}" "$out"/obj/seeds-*.o "${libs[@]}" $(pkg-config --libs liblzma) \
  -o "$out/spicebox-decode-fuzz-seeds"

# Seeds are rebuilt every run: cheap, and they follow the scenarios and the materialiser.
rm -rf "$out/seeds" && mkdir -p "$out/seeds"
recs=()
if [ -d "$recordings" ]; then
  for f in "$recordings"/*.rec.xz; do [ -e "$f" ] && recs+=("$f"); done
else
  echo "fuzz-decoder.sh: NOTE: $recordings not found; seeding from the scenarios only" >&2
fi
"$out/spicebox-decode-fuzz-seeds" "$out/seeds" "${recs[@]}"

export UBSAN_OPTIONS="suppressions=$root/renderer/fuzz/ubsan-suppressions.txt:print_stacktrace=1:halt_on_error=1"

# Earlier findings first: each must run clean under this build's sanitizers.
regressions=("$root"/renderer/fuzz/regressions/*.bin)
if [ -e "${regressions[0]}" ]; then
  echo "fuzz-decoder.sh: replaying ${#regressions[@]} regression inputs (renderer/fuzz/regressions/)"
  "$out/spicebox-decode-fuzz" "${regressions[@]}" >"$out/regressions.log" 2>&1 || {
    cat "$out/regressions.log" >&2
    echo "fuzz-decoder.sh: a regression input fails again; see above" >&2
    exit 1
  }
fi

echo "fuzz-decoder.sh: fuzzing for ${seconds}s (corpus $out/corpus, seeds $out/seeds)"
# -max_len is fuzz-image.h MAX_INPUT_SIZE (header + RAM_SIZE + VRAM_SIZE).
# New inputs go to corpus/ (kept between runs); seeds/ is read only. A finding stops the run,
# exits non-zero and leaves findings/crash-* (or leak-*, timeout-*, oom-*).
parallel=()
[ "$jobs" -gt 1 ] && parallel=(-jobs="$jobs" -workers="$jobs")
status=0
"$out/spicebox-decode-fuzz" "$out/corpus" "$out/seeds" \
  -max_total_time="$seconds" -max_len=$((9 + 65536 + 262144)) -timeout=10 -rss_limit_mb=2048 \
  "${parallel[@]}" -artifact_prefix="$out/findings/" -print_final_stats=1 || status=$?
if [ "$status" -ne 0 ]; then
  echo "fuzz-decoder.sh: FINDING (exit $status): see $out/findings/. Reproduce with" >&2
  echo "  $out/spicebox-decode-fuzz $out/findings/<file>" >&2
  echo "minimise with -minimize_crash=1 -runs=10000, then add it under renderer/fuzz/regressions/" >&2
fi
exit "$status"
