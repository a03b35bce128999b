#!/usr/bin/env bash
# The white-list policy with npme add-package / remove-package, and the
# edges of reset-follower: --offline, --wait timing out (exit 7).
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"

start_instance primary
start_instance replica
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"
for p in wl-a wl-b; do
  make_package "$T/$p" "$p" 1.0.0
  (cd "$T/$p" && npm_as primary "$TOKEN" -- publish) >/dev/null
done

step "white-list policy: nothing but users and tokens until a package is added"
make_replica replica primary white-list
wait_synced replica primary
http GET "${REGISTRY[replica]}/wl-a" -H "Authorization: Bearer $TOKEN"
assert_eq 404 "$HTTP_STATUS" "wl-a before add-package (the token itself replicated: no 401)"

step "npme add-package fetches the package at once"
out="$(run_npme --root "$T/replica" --json add-package wl-a)"
assert_eq true "$(jq -r .fetched <<<"$out")" "fetched"
assert_eq "wl-a" "$(cat "$T/replica/data/whitelist")" "data/whitelist"
http GET "${REGISTRY[replica]}/wl-a" -H "Authorization: Bearer $TOKEN"
assert_eq 200 "$HTTP_STATUS" "wl-a after add-package"
assert_file_exists "$(tarball_path replica wl-a 1.0.0)"

step "changes of listed packages follow; others don't"
make_package "$T/wl-a2" wl-a 1.1.0
(cd "$T/wl-a2" && npm_as primary "$TOKEN" -- publish) >/dev/null
make_package "$T/wl-b2" wl-b 1.1.0
(cd "$T/wl-b2" && npm_as primary "$TOKEN" -- publish) >/dev/null
wait_synced replica primary
assert_eq "$(content_digest primary "$TOKEN" wl-a)" "$(content_digest replica "$TOKEN" wl-a)" "wl-a follows"
http GET "${REGISTRY[replica]}/wl-b" -H "Authorization: Bearer $TOKEN"
assert_eq 404 "$HTTP_STATUS" "wl-b is not followed"

step "npme remove-package stops following it"
run_npme --root "$T/replica" remove-package wl-a 2>/dev/null
assert_eq "" "$(cat "$T/replica/data/whitelist")" "data/whitelist after remove-package"
make_package "$T/wl-a3" wl-a 1.2.0
(cd "$T/wl-a3" && npm_as primary "$TOKEN" -- publish) >/dev/null
wait_synced replica primary
assert_not_contains "$(content_digest replica "$TOKEN" wl-a)" "1.2.0" "versions after remove-package"
expect_exit 1 "$NPME" --root "$T/replica" remove-package wl-a >/dev/null 2>&1

step "reset-follower --wait gives up with exit 7 when it can't catch up in time"
run_npme --root "$T/replica" settings set upstream.url=http://127.0.0.1:9 >/dev/null
expect_exit 7 "$NPME" --root "$T/replica" reset-follower --wait --timeout 2 >/dev/null 2>&1

step "reset-follower --offline: refused while running, empties the file when stopped"
run_npme --root "$T/replica" settings set "upstream.url=${REGISTRY[primary]}" >/dev/null
wait_synced replica primary
expect_exit 6 "$NPME" --root "$T/replica" reset-follower --offline >/dev/null 2>&1
stop_instance replica
[[ -s "$T/replica/data/sequence" ]] || fail "data/sequence is empty after a clean stop"
run_npme --root "$T/replica" reset-follower --offline 2>/dev/null
assert_eq 0 "$(stat -c %s "$T/replica/data/sequence")" "size of data/sequence after --offline"
start_instance replica
wait_synced replica primary
# A package taken off the white-list stays as it was: it is no longer followed, not deleted.
assert_not_contains "$(content_digest replica "$TOKEN" wl-a)" "1.2.0" "wl-a after the full resync"
assert_contains "$(content_digest replica "$TOKEN" wl-a)" "wl-a version 1.1.0" "wl-a after the full resync"
stop_instance replica
stop_instance primary
echo "PASS: $TEST_NAME"
