#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time over a working copy of its
# seed corpus, so that the source tree is never written.
# Usage: run_target.sh BINARY SOURCE_DIR WORK_DIR ARTIFACT_DIR SECONDS [libFuzzer flag...]
#   BINARY        the built target, named fuzz_<name>
#   SOURCE_DIR    tests/fuzz (holds corpus/<name>/ and <name>.dict)
#   WORK_DIR      the working corpus goes to WORK_DIR/<name>/ (seeded from corpus/<name>/
#                 on every run; what the target finds is added there, and kept for
#                 the next run unless NPME_FUZZ_FRESH=1, which starts from the seeds)
#   ARTIFACT_DIR  a crash, leak or timeout input goes to ARTIFACT_DIR/<name>/
# Exits 0 when the run ends without a finding, 1 after one (its reproducer
# path printed), 2 on a usage or setup error.
set -euo pipefail

if (($# < 5)); then
  sed -n '2,12p' "$0" >&2
  exit 2
fi
binary=$1 source_dir=$2 work_dir=$3 artifact_dir=$4 seconds=$5
shift 5
name=$(basename "$binary")
name=${name#fuzz_}

seeds="$source_dir/corpus/$name"
if [[ ! -d "$seeds" ]] || [[ -z "$(ls -A "$seeds")" ]]; then
  echo "fuzz: error: no seed corpus in '$seeds'" >&2
  exit 2
fi
corpus="$work_dir/$name"
artifacts="$artifact_dir/$name"
if [[ "${NPME_FUZZ_FRESH:-0}" == 1 ]]; then
  rm -rf "$corpus"
fi
mkdir -p "$corpus" "$artifacts"
cp -f "$seeds"/* "$corpus"/

flags=(
  -max_total_time="$seconds"
  -timeout=30          # one input running this long is a finding (a hang)
  -rss_limit_mb=2560
  -max_len=262144      # seeds are small; a publish body with a tarball is the largest
  -print_final_stats=1
  -artifact_prefix="$artifacts/"
)
if [[ -f "$source_dir/$name.dict" ]]; then
  flags+=(-dict="$source_dir/$name.dict")
fi

before=$(find "$artifacts" -type f ! -name last-run.log | sort)
log="$artifacts/last-run.log"
echo "fuzz: $name for ${seconds}s over $corpus ($(find "$corpus" -type f | wc -l) inputs), log $log"
rc=0
"$binary" "${flags[@]}" "$@" "$corpus" >"$log" 2>&1 || rc=$?
after=$(find "$artifacts" -type f ! -name last-run.log | sort)
new=$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$after") | sed '/^$/d')
grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
if ((rc != 0)) || [[ -n "$new" ]]; then
  tail -n 60 "$log" >&2
  echo "fuzz: $name FOUND A PROBLEM (exit $rc); reproducer(s):" >&2
  if [[ -n "$new" ]]; then
    while IFS= read -r path; do
      echo "  $path" >&2
    done <<<"$new"
  else
    grep -E 'Test unit written to|artifact_prefix' "$log" >&2 || echo "  (none written; see $log)" >&2
  fi
  echo "fuzz: reproduce with: $binary <reproducer>" >&2
  exit 1
fi
echo "fuzz: $name ok"
