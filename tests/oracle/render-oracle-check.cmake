# CTest driver: renders one shared recording with spicebox-render-oracle (libspice-server's own
# worker) at the command where the real spice-gtk client took its screenshot, and requires the
# snapshot to equal that screenshot (../shared/recordings/NAME.png) pixel for pixel, as the
# recording's .stats.txt says the live server's output did.
# -D ORACLE=... RECORDINGS=... NAME=... AT=... WORK=... XZ=...
if(NOT IS_DIRECTORY "${RECORDINGS}")
  message("SKIPPED: ../shared/recordings not found (${RECORDINGS})")
  return()
endif()
file(MAKE_DIRECTORY "${WORK}")
set(rec "${WORK}/render-oracle-${NAME}.rec")
set(prefix "${WORK}/render-oracle-${NAME}")
file(REMOVE "${prefix}-${AT}.png")
# libspice-server reads with fscanf/fread from a FILE*: decompress first.
execute_process(COMMAND "${XZ}" -dc "${RECORDINGS}/${NAME}.rec.xz" OUTPUT_FILE "${rec}"
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "decompressing ${RECORDINGS}/${NAME}.rec.xz failed: ${rc}")
endif()
execute_process(COMMAND "${ORACLE}" "${rec}" --at ${AT} --out-prefix "${prefix}"
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
file(REMOVE "${rec}")
message("${out}${err}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "spicebox-render-oracle failed on ${NAME}: exit ${rc}")
endif()
string(REGEX MATCH "primary after command ${AT}: [0-9]+x[0-9]+ written to [^\n]*" line "${out}")
if(NOT line)
  message(FATAL_ERROR "spicebox-render-oracle printed no snapshot line for command ${AT}")
endif()
execute_process(COMMAND "${ORACLE}" --compare "${prefix}-${AT}.png" "${RECORDINGS}/${NAME}.png"
                OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
message("${out}${err}")
if(NOT out MATCHES "differing pixels: 0 of ")
  message(FATAL_ERROR "${NAME}: libspice-server's primary after command ${AT} differs from the "
                      "real client's screenshot ${NAME}.png (kept: ${prefix}-${AT}.png)")
endif()
file(REMOVE "${prefix}-${AT}.png")
