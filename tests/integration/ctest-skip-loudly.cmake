# Included by ctest after the Catch2-discovered replay tests are defined. Catch2 2.x cannot skip,
# so the recording tests print "SKIPPED: ..." when ../shared/recordings is absent; this turns that
# line into a CTest "Skipped" status so the summary shows it instead of a silent pass.
set_tests_properties(replay-console replay-windows PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED: ")
