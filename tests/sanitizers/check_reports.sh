#!/usr/bin/env bash
# Fails when the sanitizer build left any report in DIR (ASan, UBSan and
# LeakSanitizer write there, one file per process: see CMakeLists.txt), and
# prints each. Runs last (a ctest fixture's cleanup), after every test.
set -euo pipefail
dir="$1"
shopt -s nullglob
reports=("$dir"/*)
if ((${#reports[@]} == 0)); then
  echo "no sanitizer report"
  exit 0
fi
for report in "${reports[@]}"; do
  echo "=== $report"
  cat "$report"
done
echo "FAIL: ${#reports[@]} sanitizer report(s) in $dir" >&2
exit 1
