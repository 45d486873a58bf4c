#!/usr/bin/env bash
# Runs on: developer and CI machines (never in spicebox). Input: this checkout and, when present,
# the shared QXL recordings in ../shared/recordings (trusted developer files).
#
# Builds spicebox's libFuzzer targets with clang, ASan and UBSan (a CMake build with
# SPICEBOX_FUZZ=ON in build-asan/, the same build as make test's sanitized tests), replays each target's regression inputs, then fuzzes each
# target for SECONDS, FUZZ_PARALLEL targets at a time. Prints each target's run count; exits
# non-zero on a finding, naming the target and the input that crashed it.
#
#   tools/fuzz.sh SECONDS [TARGET...]   every target when none is named
#   tools/fuzz.sh --list                the targets
#
#   make fuzz-smoke (the end of make test)   tools/fuzz.sh 30
#   a longer run                             tools/fuzz.sh 3600
#
# Targets (the harness that says what each input means is beside each):
#   decode          renderer/fuzz/  the renderer's QXL decoder over a guest-memory image
#   link            netproxy/fuzz/  a client's link stage (header, link message, auth, ticket),
#                                   then the linked channel's messages
#   messages        netproxy/fuzz/  a client's data messages on each channel (selector byte)
#   peer-renderer   broker/fuzz/    the broker reading one datagram from a compromised renderer
#   peer-netproxy   broker/fuzz/    the broker reading one datagram from a compromised netproxy
#
# Seeds: committed in DIR/seeds/TARGET/ (netproxy, broker), or for decode made afresh on every run
# from guestsim's scenarios and the shared recordings. Regressions: DIR/regressions/TARGET-*.bin
# (decode: renderer/fuzz/regressions/*.bin), replayed first; each must run clean.
#
# In FUZZ_BUILD, per target: corpus/TARGET/ (inputs found, kept between runs), findings/TARGET/
# (crash-*, leak-*, timeout-*, oom-*), logs/TARGET.log.
#
# Environment: FUZZ_BUILD (default build-asan), FUZZ_PARALLEL (targets fuzzed at once, default 2:
# CI and the usual machine have two cores, and each libFuzzer process uses one), FUZZ_BUILD_JOBS
# (compile jobs, default nproc), CC and CXX (default clang and clang++, used when FUZZ_BUILD is
# first configured).
set -euo pipefail

ALL_TARGETS=(decode link messages peer-renderer peer-netproxy)

usage() {
  echo "usage: tools/fuzz.sh SECONDS [TARGET...]   (targets: ${ALL_TARGETS[*]})" >&2
  echo "       tools/fuzz.sh --list" >&2
  exit 2
}

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${ALL_TARGETS[@]}"
  exit 0
fi
[ $# -ge 1 ] || usage
seconds="$1"
shift
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "fuzz.sh: SECONDS must be a positive whole number, got '$seconds'" >&2
  usage
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  if ! [[ " ${ALL_TARGETS[*]} " == *" $t "* ]]; then
    echo "fuzz.sh: unknown target '$t'" >&2
    usage
  fi
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${FUZZ_BUILD:-$root/build-asan}"
parallel="${FUZZ_PARALLEL:-2}"
build_jobs="${FUZZ_BUILD_JOBS:-$(nproc)}"
recordings="$root/../shared/recordings"
if ! [[ "$parallel" =~ ^[0-9]+$ ]] || [ "$parallel" -eq 0 ]; then
  echo "fuzz.sh: FUZZ_PARALLEL must be a positive whole number, got '$parallel'" >&2
  exit 2
fi

# Where each target's sources, seeds and regressions are, and its largest input.
target_dir() {
  case "$1" in
    decode) echo renderer/fuzz ;;
    link | messages) echo netproxy/fuzz ;;
    peer-renderer | peer-netproxy) echo broker/fuzz ;;
  esac
}
seeds_of() {
  if [ "$1" = decode ]; then
    echo "$out/seeds/decode"
  else
    echo "$root/$(target_dir "$1")/seeds/$1"
  fi
}
regressions_of() {
  local dir
  dir="$root/$(target_dir "$1")/regressions"
  if [ "$1" = decode ]; then
    compgen -G "$dir/*.bin" || true
  else
    compgen -G "$dir/$1-*.bin" || true
  fi
}
max_len_of() {
  case "$1" in
    # renderer/fuzz/fuzz-image.h MAX_INPUT_SIZE: header + RAM_SIZE + VRAM_SIZE.
    decode) echo $((9 + 65536 + 262144)) ;;
    # A link stage (settings byte, 16-byte header, at most MAX_LINK_MESS_SIZE = 4096, 4-byte
    # mechanism, 128-byte ticket) with room for messages after it.
    link) echo 8192 ;;
    # Two of the largest message (main: maxClientMessageSize, 2112 bytes, and an 18-byte header)
    # and more: longer streams only repeat the same stateless parse, and slow every run.
    messages) echo 4500 ;;
    # ipc/limits.h MAX_FRAME_BYTES and one word more: datagrams just past the limit are tried too.
    peer-renderer | peer-netproxy) echo $((128 * 1024 + 8)) ;;
  esac
}
ubsan_options_of() {
  # Every UBSan check stops the run (none is recoverable in this build): a finding is fixed, not
  # suppressed.
  echo "print_stacktrace=1:halt_on_error=1"
}

if ! command -v "${CXX:-clang++}" >/dev/null; then
  echo "fuzz.sh: ${CXX:-clang++} not found; install clang and libclang-rt-14-dev" \
    "(tools/install-deps.sh)" >&2
  exit 2
fi

# --- Build ---
echo "fuzz.sh: building ${targets[*]} in $out"
mkdir -p "$out"
configure=(-DSPICEBOX_FUZZ=ON)
# The compilers only when the build is new: changing them later would reconfigure from scratch.
[ -f "$out/CMakeCache.txt" ] || configure+=(-DCMAKE_BUILD_TYPE=Debug
  -DCMAKE_C_COMPILER="${CC:-clang}" -DCMAKE_CXX_COMPILER="${CXX:-clang++}")
cmake -S "$root" -B "$out" "${configure[@]}" >"$out/configure.log" 2>&1 || {
  cat "$out/configure.log" >&2
  echo "fuzz.sh: configuring $out failed; see above" >&2
  exit 2
}
cmake_targets=()
for t in "${targets[@]}"; do cmake_targets+=("spicebox-$t-fuzz"); done
[[ " ${targets[*]} " == *" decode "* ]] && cmake_targets+=(spicebox-decode-fuzz-seeds)
cmake --build "$out" -j "$build_jobs" --target "${cmake_targets[@]}"

mkdir -p "$out/logs"
# The decoder's seeds follow the scenarios and the materialiser: made afresh on every run.
if [[ " ${targets[*]} " == *" decode "* ]]; then
  recs=()
  if [ -d "$recordings" ]; then
    for f in "$recordings"/*.rec.xz; do [ -e "$f" ] && recs+=("$f"); done
  else
    echo "fuzz.sh: NOTE: $recordings not found; seeding decode from the scenarios only" >&2
  fi
  rm -rf "$out/seeds/decode" && mkdir -p "$out/seeds/decode"
  "$out/bin/spicebox-decode-fuzz-seeds" "$out/seeds/decode" "${recs[@]}" \
    >"$out/logs/decode-seeds.log" 2>&1 || {
    cat "$out/logs/decode-seeds.log" >&2
    echo "fuzz.sh: making the decode seeds failed; see above" >&2
    exit 1
  }
fi

# --- One target: replay its regressions, then fuzz. Runs in the background; its report goes to
# logs/TARGET.summary, printed by the caller when it ends, so parallel reports never interleave.
fuzz_target() {
  local t="$1"
  local bin="$out/bin/spicebox-$t-fuzz" log="$out/logs/$t.log" summary="$out/logs/$t.summary"
  local dir
  dir="$(target_dir "$t")"
  export UBSAN_OPTIONS
  UBSAN_OPTIONS="$(ubsan_options_of "$t")"
  mkdir -p "$out/corpus/$t" "$out/findings/$t"
  : >"$summary"

  local regressions=()
  mapfile -t regressions < <(regressions_of "$t")
  if [ ${#regressions[@]} -gt 0 ]; then
    if ! "$bin" "${regressions[@]}" >"$out/logs/$t-regressions.log" 2>&1; then
      local input
      input="$(sed -n 's/^Running: //p' "$out/logs/$t-regressions.log" | tail -n 1)"
      {
        tail -n 30 "$out/logs/$t-regressions.log"
        echo "fuzz.sh: FINDING in $t: regression input ${input#"$root"/} fails again (it ran clean"
        echo "  when it was added); log: $out/logs/$t-regressions.log"
        echo "  reproduce: $bin $input"
      } >>"$summary"
      return 1
    fi
  fi

  local status=0
  # New inputs go to corpus/TARGET (kept between runs); the seeds are only read. -timeout: one
  # input running 10 s is a finding (a loop the parser's limits should stop).
  "$bin" "$out/corpus/$t" "$(seeds_of "$t")" -max_total_time="$seconds" \
    -max_len="$(max_len_of "$t")" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$out/findings/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?

  local runs done_line
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
  if [ "$status" -eq 0 ]; then
    local per_second cov corpus
    per_second="$(sed -n 's/.*exec\/s: \([0-9]*\).*/\1/p' <<<"$done_line")"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")"
    corpus="$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$done_line")"
    echo "fuzz.sh: $t: clean, ${runs:-?} runs in ${seconds} s (${per_second:-?} exec/s)," \
      "coverage ${cov:-?} edges, corpus ${corpus:-?} inputs; ${#regressions[@]} regression inputs" \
      "replayed" >>"$summary"
    return 0
  fi
  local input report
  input="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
  report="$(grep -m 1 -E '^SUMMARY: |runtime error: |assertion failed|ERROR: libFuzzer: ' "$log" ||
    true)"
  {
    tail -n 40 "$log"
    echo "fuzz.sh: FINDING in $t (exit $status) after ${runs:-?} runs: ${report:-see the log}"
    echo "  input:      ${input:-none written (see the log)}"
    echo "  reproduce:  $bin ${input:-}"
    echo "  log:        $log"
    echo "  then minimise it ($bin -minimize_crash=1 -runs=10000 INPUT), fix the parser, and add it"
    if [ "$t" = decode ]; then
      echo "  as $dir/regressions/ATTACK.bin, with a test case named after the attack beside it"
    else
      echo "  as $dir/regressions/$t-ATTACK.bin, with a test case named after the attack beside it"
    fi
  } >>"$summary"
  return 1
}

# --- Fuzz every target, FUZZ_PARALLEL at a time ---
echo "fuzz.sh: fuzzing ${targets[*]} for ${seconds} s each, $parallel at a time"
declare -A target_of_pid=()
failed=()
running=0
started=$SECONDS

# Waits for one target to end and prints its report.
reap_one() {
  local pid status=0
  wait -n -p pid || status=$?
  local t="${target_of_pid[$pid]}"
  cat "$out/logs/$t.summary"
  [ "$status" -eq 0 ] || failed+=("$t")
  running=$((running - 1))
}

for t in "${targets[@]}"; do
  while [ "$running" -ge "$parallel" ]; do reap_one; done
  echo "fuzz.sh: $t: fuzzing (seeds $(seeds_of "$t"), log $out/logs/$t.log)"
  fuzz_target "$t" &
  target_of_pid[$!]="$t"
  running=$((running + 1))
done
while [ "$running" -gt 0 ]; do reap_one; done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: FAILED: findings in ${failed[*]} (see above;" \
    "wall time $((SECONDS - started)) s)" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets clean, ${seconds} s each (wall time $((SECONDS - started)) s)"
