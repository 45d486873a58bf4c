# CTest driver: records a guestsim scenario with `spicebox-guestsim --scenario S --record-out F`
# (offline: no broker, the actions are generated and recorded), replays the file with
# spicebox-replay-check (libspice-server's own replayer) and requires that the replayer read
# exactly the commands guestsim says it wrote. A generator that builds something libspice-server
# cannot parse fails here. (tests/integration/replay-test.cpp does the same through a broker.)
# -D GUESTSIM=... CHECK=... SCENARIO=... ARGS=--count,N,--seed,S (optional) WORK=...
file(MAKE_DIRECTORY "${WORK}")
set(rec "${WORK}/scenario-${SCENARIO}.rec")
string(REPLACE "," ";" args "${ARGS}")
execute_process(COMMAND "${GUESTSIM}" --scenario "${SCENARIO}" --record-out "${rec}" ${args}
                OUTPUT_VARIABLE wrote ERROR_VARIABLE werr RESULT_VARIABLE rc)
message("${wrote}${werr}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "spicebox-guestsim --scenario ${SCENARIO} --record-out failed: exit ${rc}")
endif()
string(REGEX MATCH "commands: [0-9]+" expected "${wrote}")
if(NOT expected)
  message(FATAL_ERROR "spicebox-guestsim printed no 'commands: N' summary")
endif()
# libspice-server 0.15's spice_replay_free_cmd frees no QXL_CMD_MESSAGE body, so under
# -DSPICEBOX_SANITIZE=ON LeakSanitizer reports each message the replayer read. Suppress exactly
# that library leak (full unwinding, so the library frame is seen); anything else still fails.
# TODO(cleanup): spice-replay-check.cpp could g_free() message bodies itself instead.
file(WRITE "${WORK}/lsan-spice-replay.supp" "leak:spice_replay_next_cmd\n")
set(ENV{ASAN_OPTIONS} "$ENV{ASAN_OPTIONS}:fast_unwind_on_malloc=0")
set(ENV{LSAN_OPTIONS} "$ENV{LSAN_OPTIONS}:suppressions=${WORK}/lsan-spice-replay.supp")
execute_process(COMMAND "${CHECK}" "${rec}" OUTPUT_VARIABLE out ERROR_VARIABLE err
                RESULT_VARIABLE rc)
file(REMOVE "${rec}")
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "libspice-server did not read scenario ${SCENARIO} to its end: exit ${rc}")
endif()
string(REGEX MATCH "commands: [0-9]+" got "${out}")
if(NOT got STREQUAL expected)
  message(FATAL_ERROR "scenario ${SCENARIO}: libspice-server read '${got}', guestsim wrote '${expected}'")
endif()
