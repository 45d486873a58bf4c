# Included by ctest after the Catch2-discovered guestsim tests are defined.
# Catch2 2.x cannot skip, so the recording tests print "SKIPPED: ..." when the
# shared recordings are absent; this turns that line into a CTest "Skipped"
# status so the summary shows it instead of a silent pass.
set_tests_properties(real-recordings-match-independent-stats truncated-real-recording
                     real-recordings-reserialise-byte-identical
                     materialise-every-command-of-the-real-recordings
                     PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED: ")
