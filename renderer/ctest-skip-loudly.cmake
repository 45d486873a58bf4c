# Included by ctest after the Catch2-discovered renderer tests are defined.
# Catch2 2.x cannot skip, so the recording test prints "SKIPPED: ..." when the
# shared recordings are absent; this turns that line into a CTest "Skipped"
# status so the summary shows it instead of a silent pass.
set_tests_properties(decode-every-command-of-the-real-recordings
                     PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED: ")
