# CTest driver: prepares one recording, runs spicebox-replay-check on it and
# compares the command count libspice-server consumed with the
# "commands: N" line of the recording's independent .stats.txt.
# -D CHECK=... REWRITE=... RECORDINGS=... NAME=... MODE=original|rewritten WORK=... XZ=...
if(NOT IS_DIRECTORY "${RECORDINGS}")
  message("SKIPPED: ../shared/recordings not found (${RECORDINGS})")
  return()
endif()
file(MAKE_DIRECTORY "${WORK}")
set(rec "${WORK}/${NAME}-${MODE}.rec")
if(MODE STREQUAL "original")
  # libspice-server reads with fscanf/fread from a FILE*: decompress first.
  execute_process(COMMAND "${XZ}" -dc "${RECORDINGS}/${NAME}.rec.xz" OUTPUT_FILE "${rec}"
                  RESULT_VARIABLE rc)
else()
  execute_process(COMMAND "${REWRITE}" "${RECORDINGS}/${NAME}.rec.xz" "${rec}" RESULT_VARIABLE rc)
endif()
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "preparing ${rec} failed: ${rc}")
endif()
execute_process(COMMAND "${CHECK}" "${rec}" OUTPUT_VARIABLE out ERROR_VARIABLE err
                RESULT_VARIABLE rc)
file(REMOVE "${rec}")
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "spicebox-replay-check did not consume ${NAME} (${MODE}): exit ${rc}")
endif()
file(STRINGS "${RECORDINGS}/${NAME}.stats.txt" expected REGEX "^commands: [0-9]+$" LIMIT_COUNT 1)
string(REGEX MATCH "commands: [0-9]+" got "${out}")
if(NOT expected OR NOT got STREQUAL expected)
  message(FATAL_ERROR "${NAME} (${MODE}): libspice-server consumed '${got}', stats say '${expected}'")
endif()
