#!/usr/bin/env bash
# RPO 0 with synchronous replication (issue 11): replication.sync_replicas=1,
# a primary and one replica; 20 rounds with a fixed seed, each a burst of
# concurrent publishes (raw PUTs of npm's publish body, and the real npm in
# some rounds) with `kill -9` of the primary at a random point. Every
# publish acknowledged without the npm-notice of an unconfirmed write must
# be in the replica's own database, with the same dist.integrity, at the
# moment of the kill. The primary restarts on its root between rounds and
# the replica follows it again; in the end both hold the same content.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"
source "$(dirname "$0")/sync_lib.sh"

ROUNDS="${NPME_KILL9_ROUNDS:-20}"
RANDOM=1111 # fixed seed: the same plan (sizes, writers, kill points) every run
NOTICE="not yet confirmed by a synchronous replica"

start_instance primary
start_instance replica
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"
make_replica replica primary
wait_synced replica primary
ID_R="$(instance_id replica)"
set_settings primary replication.sync_replicas=1 replication.sync_timeout=5s

# Plan every round first (only the main shell draws from RANDOM, so the plan
# depends on the seed alone): per round, the number of publishes, writers,
# whether the real npm takes part, and the kill point (after K answers, then
# a few more milliseconds).
declare -a P_COUNT=() P_WRITERS=() P_NPM=() P_KILL_AFTER=() P_KILL_MS=()
for ((r = 1; r <= ROUNDS; r++)); do
  P_COUNT[r]=$((8 + RANDOM % 8))
  P_WRITERS[r]=$((2 + RANDOM % 3))
  P_NPM[r]=$((r % 5 == 1 ? 2 : 0)) # rounds 1, 6, 11, 16: two publishes by npm
  # npm rounds are killed late, so that npm's publishes (slow to start) are
  # usually answered first.
  if ((P_NPM[r] > 0)); then
    P_KILL_AFTER[r]=$((P_COUNT[r] - 1 - RANDOM % 3))
  else
    P_KILL_AFTER[r]=$((RANDOM % P_COUNT[r]))
  fi
  P_KILL_MS[r]=$((RANDOM % 60))
done

step "prepare the publish bodies of $ROUNDS rounds"
# Per round, 3 packages with several versions each (fixtures/gen_packages.js:
# real tarballs, npm's publish body); item j is version j/3 of package j%3,
# so that concurrent writers publish versions of the same packages.
for ((r = 1; r <= ROUNDS; r++)); do
  mkdir -p "$T/round-$r"
  per=$(((P_COUNT[r] + 2) / 3))
  node "$FIXTURES/gen_packages.js" "$T/round-$r/gen" 3 "$per" "k9-$r" 1 2
  mapfile -t lines <"$T/round-$r/gen/list"
  : >"$T/round-$r/items"
  for ((j = 0; j < P_COUNT[r]; j++)); do
    if ((j < P_NPM[r])); then
      make_package "$T/round-$r/npm-$j" "k9-npm-$r-$j" 1.0.0
      printf 'npm k9-npm-%s-%s 1.0.0 %s\n' "$r" "$j" "$T/round-$r/npm-$j" >>"$T/round-$r/items"
    else
      printf 'raw %s\n' "${lines[$(((j % 3) * per + j / 3))]}" >>"$T/round-$r/items"
    fi
  done
done
info "bodies ready"

# writer ROUND W — publishes the round's items j with j % writers == W, in
# order; logs "kind name version status notice integrity" per item (status
# 000 when no answer came, "npm-0"/"npm-1" for npm's exit code).
writer() {
  local r="$1" w="$2" j kind name version file status notice integrity
  local log="$T/round-$r/log-$w"
  local -a items
  mapfile -t items <"$T/round-$r/items"
  for ((j = w; j < P_COUNT[r]; j += P_WRITERS[r])); do
    read -r kind name version file <<<"${items[j]}"
    if [[ "$kind" == npm ]]; then
      local out="$T/round-$r/npm-$j.out" rc=0
      (cd "$file" && npm_as primary "$TOKEN" -- publish --json >"$out.json" 2>"$out") 2>/dev/null || rc=$?
      notice=0
      grep -q "$NOTICE" "$out" && notice=1
      integrity="$(jq -r 'if has("integrity") then .integrity else (.[] | .integrity) end' "$out.json" 2>/dev/null || true)"
      printf 'npm %s %s npm-%s %s %s\n' "$name" "$version" "$rc" "$notice" "${integrity:--}" >>"$log"
    else
      local headers="$file.headers"
      status="$(curl -s -D "$headers" -o /dev/null -w '%{http_code}' --max-time 30 -X PUT \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data-binary "@$file" "${REGISTRY[primary]}/${name/\//%2f}")" || true
      notice=0
      grep -qi "^npm-notice:.*$NOTICE" "$headers" 2>/dev/null && notice=1
      printf 'raw %s %s %s %s %s\n' "$name" "$version" "${status:-000}" "$notice" "$(body_integrity "$file")" >>"$log"
    fi
  done
}

# store_digest INSTANCE — per package of this test: dist-tags and every
# version with its integrity, from the instance's own database (one query).
store_digest() {
  db_query "$1" "$PACKUMENTS select id, json_extract(body, '\$.\"dist-tags\"'),
      (select group_concat(key || '=' || json_extract(value, '\$.dist.integrity'), ' ')
         from json_each(body, '\$.versions'))
    from packuments where id like 'k9-%' order by id"
}

# verify_store_tarballs INSTANCE — every version of those packages has its
# tarball file, matching its integrity (one node process for all of them).
verify_store_tarballs() {
  local instance="$1" name version integrity count
  while read -r name version integrity; do
    printf '%s %s\n' "$(tarball_path "$instance" "$name" "$version")" "$integrity"
  done < <(db_query "$instance" "$PACKUMENTS select docs.id || ' ' || v.key || ' ' || json_extract(v.value, '\$.dist.integrity')
             from packuments as docs, json_each(docs.body, '\$.versions') as v where docs.id like 'k9-%'") >"$T/tarballs.list"
  count="$(wc -l <"$T/tarballs.list")"
  # shellcheck disable=SC2016 # JavaScript, not shell
  node -e '
    const fs = require("fs"), crypto = require("crypto");
    let bad = 0;
    for (const line of fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)) {
      const [file, integrity] = line.split(" ");
      let actual = "missing";
      try { actual = "sha512-" + crypto.createHash("sha512").update(fs.readFileSync(file)).digest("base64"); } catch (e) {}
      if (actual !== integrity) { console.error(`${file}: ${actual}, expected ${integrity}`); bad++; }
    }
    process.exit(bad ? 1 : 0);' "$T/tarballs.list" || fail "tarballs on $instance do not match their integrity (above)"
  info "ok: $count tarballs on $instance match their integrity"
}

answers() {
  cat "$T/round-$1"/log-* 2>/dev/null | wc -l
}

TOTAL_OK=0 TOTAL_NOTICE=0 TOTAL_LOST=0 TOTAL_REFUSED=0 NPM_OK=0
start_s=$SECONDS
for ((r = 1; r <= ROUNDS; r++)); do
  step "round $r of $ROUNDS: ${P_COUNT[r]} publishes (${P_NPM[r]} by npm) by ${P_WRITERS[r]} writers," \
    "kill -9 after ${P_KILL_AFTER[r]} answers + ${P_KILL_MS[r]} ms"
  if ((r > 1)); then
    start_instance primary
    make_replica replica primary
  fi
  wait_until 30 "the primary counts the replica as synchronous" is_synchronous primary "$ID_R"
  declare -a WRITER_PIDS=()
  for ((w = 0; w < P_WRITERS[r]; w++)); do
    : >"$T/round-$r/log-$w"
    writer "$r" "$w" &
    WRITER_PIDS+=("$!")
    STARTED_PIDS+=("$!")
  done
  for ((i = 0; i < 1200; i++)); do
    (($(answers "$r") >= P_KILL_AFTER[r])) && break
    sleep 0.02
  done
  sleep "$(printf '0.%03d' "${P_KILL_MS[r]}")"
  kill9_instance primary
  for pid in "${WRITER_PIDS[@]}"; do
    wait "$pid" || true
  done

  # What the replica holds right now is what a promotion would keep.
  ok=0 noticed=0 lost=0 refused=0
  while read -r kind name version status notice integrity; do
    if [[ "$status" == 201 || "$status" == 200 || "$status" == npm-0 ]]; then
      if [[ "$notice" == 1 ]]; then
        noticed=$((noticed + 1))
        continue
      fi
      [[ "$integrity" == sha512-* ]] ||
        fail "round $r: $kind publish of $name@$version succeeded but its integrity is unknown ('$integrity')"
      actual="$(stored_integrity replica "$name" "$version")"
      if [[ "$actual" != "$integrity" ]]; then
        cat "$T/round-$r"/log-* >&2
        fail "round $r: $kind publish of $name@$version was acknowledged without a notice" \
          "but the replica has '${actual:-nothing}' (expected $integrity)"
      fi
      ok=$((ok + 1))
      [[ "$kind" == npm ]] && NPM_OK=$((NPM_OK + 1))
    elif [[ "$status" == 000 || "$status" == npm-* ]]; then
      lost=$((lost + 1))
    else
      refused=$((refused + 1))
      info "round $r: $kind publish of $name@$version answered $status"
    fi
  done < <(cat "$T/round-$r"/log-*)
  info "round $r: $ok acknowledged and on the replica, $noticed acknowledged with the notice," \
    "$lost without an answer, $refused refused"
  TOTAL_OK=$((TOTAL_OK + ok))
  TOTAL_NOTICE=$((TOTAL_NOTICE + noticed))
  TOTAL_LOST=$((TOTAL_LOST + lost))
  TOTAL_REFUSED=$((TOTAL_REFUSED + refused))
done
info "$ROUNDS rounds in $((SECONDS - start_s)) s: $TOTAL_OK acknowledged publishes all on the replica" \
  "($NPM_OK by npm), $TOTAL_NOTICE with the notice, $TOTAL_LOST cut by the kill, $TOTAL_REFUSED refused"
((TOTAL_OK > 0)) || fail "no publish was acknowledged in $ROUNDS rounds"
((NPM_OK > 0)) || fail "no npm publish was acknowledged in $ROUNDS rounds"
((TOTAL_LOST > 0)) || fail "no kill landed in the middle of a burst in $ROUNDS rounds"

step "the primary restarts once more; the replica converges to the same content"
start_instance primary
make_replica replica primary
wait_synced replica primary
store_digest primary >"$T/digest.primary"
store_digest replica >"$T/digest.replica"
[[ -s "$T/digest.primary" ]] || fail "no k9-* package in the primary's database"
diff "$T/digest.primary" "$T/digest.replica" >&2 || fail "the replica's content differs from the primary's (diff above)"
info "ok: the replica holds what the primary holds ($(wc -l <"$T/digest.primary") packages)"
verify_store_tarballs replica
stop_instance replica
stop_instance primary
echo "PASS: $TEST_NAME"
