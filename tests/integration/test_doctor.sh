#!/usr/bin/env bash
# npme doctor against instances made with real npm publishes and then
# damaged by hand: each defect is found, named, and repaired or reported
# lost. A replica repairs from its upstream (online, while its memory holds
# the damaged tarball: installs get the right bytes afterwards), an instance
# with an uplink from the uplink; a primary without either reports its
# tarballs lost. Offline: a truncated tarball, a flipped byte (found by the
# record's tag, and by --full), a deleted tarball, an extra file
# (quarantined), a bad data/sequence, a settings file with mode 0644, and a
# database with a page of garbage (reported, never touched). The scrub
# (scrub.interval) is seen in /metrics and in the log.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"
source "$(dirname "$0")/uplink_lib.sh"

# sha256 FILE — the SHA-256 of FILE in hex.
sha256() {
  sha256sum "$1" | cut -d' ' -f1
}

# metric INSTANCE NAME — the value of an unlabelled metric in /metrics.
metric() {
  curl -sS --max-time 10 "${ADMIN[$1]}/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}

# scrub_ran INSTANCE — true once a scrub round has finished.
scrub_ran() {
  [[ "$(metric "$1" npme_scrub_runs_total)" -ge 1 ]]
}

# scrub_defects_are INSTANCE N — true when npme_scrub_defects is N.
scrub_defects_are() {
  [[ "$(metric "$1" npme_scrub_defects)" == "$2" ]]
}

start_instance a
add_user a alice alice-password-1
TOKEN="$(create_token a alice)"
step "publish with npm: pkg-a 1.0.0 and 1.1.0, pkg-b, @s/pkg-c"
make_package "$T/src/pkg-a" pkg-a 1.0.0
(cd "$T/src/pkg-a" && npm_as a "$TOKEN" -- publish) >/dev/null
make_package "$T/src/pkg-a" pkg-a 1.1.0
(cd "$T/src/pkg-a" && npm_as a "$TOKEN" -- publish) >/dev/null
make_package "$T/src/pkg-b" pkg-b 1.0.0
(cd "$T/src/pkg-b" && npm_as a "$TOKEN" -- publish) >/dev/null
make_package "$T/src/pkg-c" @s/pkg-c 1.0.0
(cd "$T/src/pkg-c" && npm_as a "$TOKEN" -- publish --access public) >/dev/null

step "a sound instance: online, default and --full"
expect_exit 0 run_npme --root "$T/a" doctor
assert_eq "summary: checked 3 packages, 4 versions and 4 tarballs (0 hashed in full); no defects" \
  "$LAST_STDOUT" "doctor output"
expect_exit 0 run_npme --root "$T/a" doctor --full --json
assert_eq "true 4 0" "$(jq -r '"\(.ok) \(.counts.hashed) \(.defects | length)"' <<<"$LAST_STDOUT")" \
  "ok, hashed, defects of --full --json"
expect_exit 6 run_npme --root "$T/a" doctor --offline
assert_contains "$LAST_OUTPUT" "is running" "--offline beside a running instance"

step "a replica repairs from its upstream, and drops what its memory holds"
start_instance r
make_replica r a
wait_synced r a
R_FILE="$(tarball_path r pkg-a 1.0.0)"
GOOD_SHA="$(sha256 "$(tarball_path a pkg-a 1.0.0)")"
GOOD_SIZE="$(stat -c %s "$R_FILE")"
http GET "${REGISTRY[r]}/pkg-a/-/pkg-a-1.0.0.tgz"
assert_eq "$GOOD_SHA" "$(sha256 "$HTTP_BODY_FILE")" "served by the replica (now in its memory)"
head -c 10 "$(tarball_path a pkg-a 1.0.0)" >"$R_FILE.tmp" && mv "$R_FILE.tmp" "$R_FILE"
rm "$(tarball_path r pkg-b 1.0.0)"
# The registry looks at a cached tarball's file again at most a second after
# it last did (as nginx's open_file_cache_valid): then it serves the change.
sleep 1.2
http GET "${REGISTRY[r]}/pkg-a/-/pkg-a-1.0.0.tgz"
assert_eq "$(sha256 "$R_FILE")" "$(sha256 "$HTTP_BODY_FILE")" "served: what is on disk, not the copy in memory"
expect_exit 5 run_npme --root "$T/r" doctor
assert_eq "damaged pkg-a@1.0.0 pkg-a/-/pkg-a-1.0.0.tgz: 10 bytes, but $GOOD_SIZE were committed (the store's record)
missing pkg-b@1.0.0 pkg-b/-/pkg-b-1.0.0.tgz: the tarball does not exist
summary: checked 3 packages, 4 versions and 3 tarballs (0 hashed in full); 2 defects: 0 repaired, 2 remaining" \
  "$LAST_STDOUT" "doctor on the damaged replica"
assert_contains "$LAST_OUTPUT" "npme: error: doctor: 2 defects remain (npme doctor --repair repairs what it can)" \
  "the error line"
expect_exit 0 run_npme --root "$T/r" doctor --repair --json
QUARANTINE="$(jq -r .quarantine <<<"$LAST_STDOUT")"
assert_eq "damaged pkg-a@1.0.0 pkg-a/-/pkg-a-1.0.0.tgz: 10 bytes, but $GOOD_SIZE were committed (the store's record); repaired: fetched again from the upstream ${REGISTRY[a]} and checked against dist.integrity; the damaged file is kept in $QUARANTINE/packages/pkg-a/-/pkg-a-1.0.0.tgz
missing pkg-b@1.0.0 pkg-b/-/pkg-b-1.0.0.tgz: the tarball does not exist; repaired: fetched again from the upstream ${REGISTRY[a]} and checked against dist.integrity" \
  "$(jq -r '.defects[] | "\(.kind) \(.id) \(.path): \(.detail); repaired: \(.action)"' <<<"$LAST_STDOUT")" \
  "what --repair --json reports"
assert_eq "2 0 0" "$(jq -r '"\(.counts.repaired) \(.counts.remaining) \(.counts.lost)"' <<<"$LAST_STDOUT")" \
  "repaired, remaining, lost"
assert_eq 10 "$(stat -c %s "$QUARANTINE/packages/pkg-a/-/pkg-a-1.0.0.tgz")" "size of the damaged copy kept"
assert_eq "$GOOD_SHA" "$(sha256 "$R_FILE")" "the replica's file after the repair"
http GET "${REGISTRY[r]}/pkg-a/-/pkg-a-1.0.0.tgz"
assert_eq "$GOOD_SHA" "$(sha256 "$HTTP_BODY_FILE")" "served by the replica after the repair"
new_app "$T/app-r"
(cd "$T/app-r" && npm_as r "" -- install pkg-a@1.0.0 pkg-b@1.0.0) >/dev/null
assert_eq "$(sri_sha512 "$(tarball_path a pkg-a 1.0.0)")" \
  "$(jq -r '.packages["node_modules/pkg-a"].integrity' "$T/app-r/package-lock.json")" "npm install from the replica"
expect_exit 0 run_npme --root "$T/r" doctor
stop_instance r

step "the scrub: scrub.interval=1 on the primary, seen in /metrics and the log"
assert_eq 0 "$(metric a npme_scrub_interval_seconds)" "npme_scrub_interval_seconds by default"
assert_eq 0 "$(metric a npme_scrub_runs_total)" "npme_scrub_runs_total by default"
expect_exit 2 run_npme --root "$T/a" settings set scrub.interval=daily
assert_contains "$LAST_OUTPUT" "invalid value 'daily' for scrub.interval: expected a whole number of seconds" \
  "a bad scrub.interval"
run_npme --root "$T/a" settings set scrub.interval=1s >/dev/null
assert_eq 1 "$("$NPME" --root "$T/a" settings get scrub.interval)" "scrub.interval"
wait_until 20 "a scrub ran" scrub_ran a
assert_eq 0 "$(metric a npme_scrub_defects)" "npme_scrub_defects of a sound instance"
assert_eq 1 "$(metric a npme_scrub_interval_seconds)" "npme_scrub_interval_seconds"
assert_ne "0.000" "$(metric a npme_scrub_last_run_timestamp_seconds)" "npme_scrub_last_run_timestamp_seconds"
rm "$(tarball_path a @s/pkg-c 1.0.0)"
wait_until 20 "the scrub found the deleted tarball" scrub_defects_are a 1
wait_until 10 "the scrub logged it" grep -qF \
  "npme: scrub: missing @s/pkg-c@1.0.0 @s/pkg-c/-/pkg-c-1.0.0.tgz: the tarball does not exist" "$T/a.serve.log"
run_npme --root "$T/a" settings set scrub.interval=0 >/dev/null
stop_instance a

step "offline, a primary without upstream or uplink: truncated, flipped, deleted, extra, sequence, settings"
B_SIZE="$(stat -c %s "$(tarball_path a pkg-b 1.0.0)")"
truncate -s 10 "$(tarball_path a pkg-b 1.0.0)"
FLIPPED="$(tarball_path a pkg-a 1.1.0)"
node -e 'const fs = require("fs"); const b = fs.readFileSync(process.argv[1]); b[100] ^= 1; fs.writeFileSync(process.argv[1], b)' "$FLIPPED"
INTEGRITY_A11="$(db_query a "$PACKUMENTS select json_extract(body, '\$.versions.\"1.1.0\".dist.integrity') from packuments where id = 'pkg-a'")"
INTEGRITY_B="$(db_query a "$PACKUMENTS select json_extract(body, '\$.versions.\"1.0.0\".dist.integrity') from packuments where id = 'pkg-b'")"
mkdir -p "$T/a/packages/extra/-"
echo extra >"$T/a/packages/extra/-/extra-1.0.0.tgz"
printf 'garbage\n' >"$T/a/data/sequence"
chmod 0644 "$T/a/settings.json"
# By default pkg-b is refused for its size alone; --full hashes it.
EXPECTED_HEAD="missing @s/pkg-c@1.0.0 @s/pkg-c/-/pkg-c-1.0.0.tgz: the tarball does not exist
damaged pkg-a@1.1.0 pkg-a/-/pkg-a-1.1.0.tgz: its bytes do not match dist.integrity $INTEGRITY_A11"
EXPECTED_TAIL="orphan extra/-/extra-1.0.0.tgz: no version refers to this file (6 bytes)
sequence $T/a/data/sequence: holds 'garbage\\x0a', not a change number and a newline (or nothing): the follower cannot start
settings $T/a/settings.json: mode 0644, but it holds the admin token and the secrets: it must be 0600"
expect_exit 5 run_npme --root "$T/a" doctor --offline
assert_eq "$EXPECTED_HEAD
damaged pkg-b@1.0.0 pkg-b/-/pkg-b-1.0.0.tgz: 10 bytes, but $B_SIZE were committed (the store's record)
$EXPECTED_TAIL
summary: checked 3 packages, 4 versions and 3 tarballs (1 hashed in full); 6 defects: 0 repaired, 6 remaining" \
  "$LAST_STDOUT" "doctor --offline (the flipped byte found by the record's tag)"
expect_exit 5 run_npme --root "$T/a" doctor --offline --full
assert_eq "$EXPECTED_HEAD
damaged pkg-b@1.0.0 pkg-b/-/pkg-b-1.0.0.tgz: its bytes do not match dist.integrity $INTEGRITY_B (10 bytes, but $B_SIZE were committed)
$EXPECTED_TAIL
summary: checked 3 packages, 4 versions and 3 tarballs (3 hashed in full); 6 defects: 0 repaired, 6 remaining" \
  "$LAST_STDOUT" "doctor --offline --full"
expect_exit 3 run_npme --root "$T/a" doctor
assert_contains "$LAST_OUTPUT" "for a stopped instance use 'npme doctor --offline'" "online doctor of a stopped instance"

step "offline --repair: quarantine, sequence, settings repaired; the tarballs are lost"
expect_exit 5 run_npme --root "$T/a" doctor --offline --repair --json
REPORT="$LAST_STDOUT"
QUARANTINE="$(jq -r .quarantine <<<"$REPORT")"
assert_contains "$QUARANTINE" "$T/a/data/quarantine/" "the quarantine folder"
assert_eq "missing @s/pkg-c@1.0.0 false true lost: this instance has no upstream and no uplink to fetch it from (restore it from a snapshot, or publish a new version)
damaged pkg-a@1.1.0 false true lost: this instance has no upstream and no uplink to fetch it from (restore it from a snapshot, or publish a new version)
damaged pkg-b@1.0.0 false true lost: this instance has no upstream and no uplink to fetch it from (restore it from a snapshot, or publish a new version)
orphan null true false moved to $QUARANTINE/packages/extra/-/extra-1.0.0.tgz
sequence null true false emptied (the old file is $QUARANTINE/data/sequence): a replica resyncs from its upstream's first change, fetching only what differs
settings null true false mode set to 0600" \
  "$(jq -r '.defects[] | "\(.kind) \(.id) \(.repaired) \(.lost) \(.action)"' <<<"$REPORT")" "the repairs"
assert_eq "6 3 3 3 false" \
  "$(jq -r '"\(.counts.defects) \(.counts.repaired) \(.counts.remaining) \(.counts.lost) \(.ok)"' <<<"$REPORT")" \
  "defects, repaired, remaining, lost, ok"
assert_eq extra "$(cat "$QUARANTINE/packages/extra/-/extra-1.0.0.tgz")" "the orphan, kept"
assert_file_missing "$T/a/packages/extra"
assert_eq "garbage" "$(cat "$QUARANTINE/data/sequence")" "the old sequence, kept"
assert_eq "" "$(cat "$T/a/data/sequence")" "data/sequence after the repair"
assert_eq 600 "$(stat -c %a "$T/a/settings.json")" "mode of settings.json"
expect_exit 5 run_npme --root "$T/a" doctor --offline
assert_eq "missing @s/pkg-c@1.0.0 @s/pkg-c/-/pkg-c-1.0.0.tgz: the tarball does not exist
damaged pkg-a@1.1.0 pkg-a/-/pkg-a-1.1.0.tgz: its bytes do not match dist.integrity $INTEGRITY_A11
damaged pkg-b@1.0.0 pkg-b/-/pkg-b-1.0.0.tgz: 10 bytes, but $B_SIZE were committed (the store's record)
summary: checked 3 packages, 4 versions and 3 tarballs (1 hashed in full); 3 defects: 0 repaired, 3 remaining" \
  "$LAST_STDOUT" "what is left: the lost tarballs"

step "a database with a page of garbage: reported, never touched"
DB="$T/a/couchdb/registry.sqlite"
ROOT_PAGE="$(sqlite3 -readonly "$DB" "select rootpage from sqlite_master where name = 'sqlite_autoindex_docs_1'")"
dd if=/dev/urandom of="$DB" bs=4096 seek=$((ROOT_PAGE - 1)) count=1 conv=notrunc status=none
DB_SHA="$(sha256 "$DB")"
expect_exit 5 run_npme --root "$T/a" doctor --offline --repair
first="$(head -n 1 <<<"$LAST_STDOUT")"
assert_contains "$first" "database $DB: SQLite's integrity check failed: " "the database line"
assert_contains "$first" "; see the README runbook 'Check and repair an instance'; not repaired: a damaged database is never repaired in place (restore a snapshot, or resync a replica from its upstream)" \
  "the database line names the runbook"
assert_eq "summary: checked 0 packages, 0 versions and 0 tarballs (0 hashed in full); 1 defect: 0 repaired, 1 remaining; skipped the change log, tarball and orphan checks: the database is damaged" \
  "$(tail -n 1 <<<"$LAST_STDOUT")" "the summary"
assert_eq "$DB_SHA" "$(sha256 "$DB")" "the database file after doctor --repair"

step "an instance with an uplink: a public package's tarball comes back from the uplink, a local one is lost"
start_uplink up
uplink_publish up pub-x 1.0.0
start_uplink_instance u up
add_user u bob bob-password-1
U_TOKEN="$(create_token u bob)"
new_app "$T/app-u"
(cd "$T/app-u" && npm_as u "" -- install pub-x) >/dev/null
make_package "$T/src/local-y" local-y 1.0.0
(cd "$T/src/local-y" && npm_as u "$U_TOKEN" -- publish) >/dev/null
X_FILE="$(tarball_path u pub-x 1.0.0)"
X_SHA="$(sha256 "$X_FILE")"
X_SIZE="$(stat -c %s "$X_FILE")"
http GET "${REGISTRY[u]}/pub-x/-/pub-x-1.0.0.tgz"
assert_eq "$X_SHA" "$(sha256 "$HTTP_BODY_FILE")" "pub-x served (now in memory)"
printf 'not a tarball' >"$X_FILE"
rm "$(tarball_path u local-y 1.0.0)"
expect_exit 5 run_npme --root "$T/u" doctor --repair
QUARANTINE="$(echo "$T/u/data/quarantine"/*)"
assert_eq "missing local-y@1.0.0 local-y/-/local-y-1.0.0.tgz: the tarball does not exist; lost: cannot fetch it from the uplink ${UPLINK[up]}: published on this instance, so the uplink has no copy
damaged pub-x@1.0.0 pub-x/-/pub-x-1.0.0.tgz: 13 bytes, but $X_SIZE were committed (the store's record); repaired: fetched again from the uplink ${UPLINK[up]} and checked against dist.integrity; the damaged file is kept in $QUARANTINE/packages/pub-x/-/pub-x-1.0.0.tgz
summary: checked 2 packages, 2 versions and 1 tarball (0 hashed in full); 2 defects: 1 repaired, 1 remaining (1 lost)" \
  "$LAST_STDOUT" "doctor --repair on the instance with an uplink"
assert_eq "$X_SHA" "$(sha256 "$X_FILE")" "pub-x's file after the repair"
http GET "${REGISTRY[u]}/pub-x/-/pub-x-1.0.0.tgz"
assert_eq "$X_SHA" "$(sha256 "$HTTP_BODY_FILE")" "pub-x served after the repair"
new_app "$T/app-u2"
(cd "$T/app-u2" && npm_as u "" -- install pub-x) >/dev/null
assert_eq "$(uplink_integrity up pub-x 1.0.0)" \
  "$(jq -r '.packages["node_modules/pub-x"].integrity' "$T/app-u2/package-lock.json")" "npm install of pub-x"
stop_instance u
