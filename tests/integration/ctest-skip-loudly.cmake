# Included by ctest after the Catch2-discovered tests of this directory are defined. Catch2 2.x
# cannot skip, so the recording tests print "SKIPPED: ..." when ../shared/recordings is absent;
# this turns that line into a CTest "Skipped" status so the summary shows it instead of a silent
# pass.
set_tests_properties(replay-console replay-windows PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED: ")
set_tests_properties(
  "spicy-screenshot: console recording at its screenshot point equals the real client's"
  "spicy-screenshot: windows recording at its screenshot point equals the real client's"
  PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED: ")
set_tests_properties(
  "recordings: spicebox-view --headless in shared-memory mode ends with the device's picture"
  PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED: ")
