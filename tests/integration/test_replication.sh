#!/usr/bin/env bash
# Live replicas with the real npm client: publish on a primary, install from
# a replica; tags, deprecations, unpublishes and tokens propagate; a
# read-only replica refuses publishes; a chain of three converges; a reset of
# an in-sync replica downloads no tarball.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"

start_instance primary
start_instance replica
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"

step "make 'replica' follow 'primary'"
make_replica replica primary
status="$(run_npme --root "$T/replica" status --json)"
assert_eq replica "$(jq -r .role <<<"$status")" "role of the replica"

step "publish on the primary with npm"
make_package "$T/pkg-a" repl-a 1.0.0
make_package "$T/pkg-s" @corp/repl-s 1.0.0
(cd "$T/pkg-a" && npm_as primary "$TOKEN" -- publish) >/dev/null
(cd "$T/pkg-s" && npm_as primary "$TOKEN" -- publish) >/dev/null
make_package "$T/pkg-a2" repl-a 1.1.0
(cd "$T/pkg-a2" && npm_as primary "$TOKEN" -- publish) >/dev/null
wait_synced replica primary

step "the token made on the primary installs from the replica"
mkdir -p "$T/app"
echo '{"name":"app","version":"1.0.0","private":true}' >"$T/app/package.json"
(cd "$T/app" && npm_as replica "$TOKEN" -- install repl-a@1.0.0 @corp/repl-s) >/dev/null
lock="$T/app/package-lock.json"
assert_eq "$(sri_sha512 "$(tarball_path primary repl-a 1.0.0)")" \
  "$(jq -r '.packages["node_modules/repl-a"].integrity' "$lock")" "integrity of repl-a from the replica"
assert_eq "$(sri_sha512 "$(tarball_path primary @corp/repl-s 1.0.0)")" \
  "$(jq -r '.packages["node_modules/@corp/repl-s"].integrity' "$lock")" "integrity of @corp/repl-s"
resolved="$(jq -r '.packages["node_modules/repl-a"].resolved' "$lock")"
assert_contains "$resolved" "${REGISTRY[replica]}/" "tarball URL served by the replica is its own"
assert_eq "$(content_digest primary "$TOKEN" repl-a @corp/repl-s)" \
  "$(content_digest replica "$TOKEN" repl-a @corp/repl-s)" "content of replica and primary"

step "a read-only replica refuses npm publish with E403"
make_package "$T/pkg-b" repl-b 1.0.0
out="$(cd "$T/pkg-b" && npm_as replica "$TOKEN" -- publish 2>&1)" && fail "publish to the replica succeeded"
assert_contains "$out" "E403" "npm's error on the read-only replica"
assert_contains "$out" "read-only" "the message says why"

step "dist-tag, deprecate, unpublish propagate"
npm_as primary "$TOKEN" -- dist-tag add repl-a@1.0.0 stable >/dev/null
npm_as primary "$TOKEN" -- deprecate repl-a@1.0.0 "use 1.1.0" >/dev/null
npm_as primary "$TOKEN" -- unpublish repl-a@1.1.0 >/dev/null 2>&1
npm_as primary "$TOKEN" -- unpublish @corp/repl-s --force >/dev/null 2>&1
wait_synced replica primary
digest="$(content_digest replica "$TOKEN" repl-a @corp/repl-s)"
assert_eq "$(content_digest primary "$TOKEN" repl-a @corp/repl-s)" "$digest" "content after the changes"
assert_contains "$digest" "repl-a tag stable=1.0.0" "dist-tag on the replica"
assert_contains "$digest" "use 1.1.0" "deprecation on the replica"
assert_not_contains "$digest" "repl-a version 1.1.0" "unpublished version gone from the replica"
assert_contains "$digest" "@corp/repl-s 404" "unpublished package gone from the replica"
assert_file_missing "$(tarball_path replica repl-a 1.1.0)"
assert_file_missing "$(tarball_path replica @corp/repl-s 1.0.0)"

step "a token revoked on the primary stops working on the replica"
TOKEN2="$(create_token primary alice)"
wait_synced replica primary
http GET "${REGISTRY[replica]}/-/whoami" -H "Authorization: Bearer $TOKEN2"
assert_eq 200 "$HTTP_STATUS" "whoami with the new token on the replica"
id2="$("$NPME" --root "$T/primary" token list --json | jq -r --arg p "${TOKEN2:0:9}" '.tokens[] | select(.token_prefix == $p) | .id')"
run_npme --root "$T/primary" token revoke "$id2" 2>/dev/null
wait_synced replica primary
http GET "${REGISTRY[replica]}/-/whoami" -H "Authorization: Bearer $TOKEN2"
assert_eq 401 "$HTTP_STATUS" "whoami with the revoked token on the replica"

step "a chain: 'leaf' follows 'replica' follows 'primary'"
start_instance leaf
make_replica leaf replica
make_package "$T/pkg-c" repl-c 2.0.0
(cd "$T/pkg-c" && npm_as primary "$TOKEN" -- publish) >/dev/null
wait_synced replica primary
wait_synced leaf replica
assert_eq "$(content_digest primary "$TOKEN" repl-a repl-c @corp/repl-s)" \
  "$(content_digest leaf "$TOKEN" repl-a repl-c @corp/repl-s)" "content of the chain's end"
mkdir -p "$T/app2"
echo '{"name":"app2","version":"1.0.0","private":true}' >"$T/app2/package.json"
(cd "$T/app2" && npm_as leaf "$TOKEN" -- install repl-c) >/dev/null
assert_eq 2.0.0 "$(jq -r .version "$T/app2/node_modules/repl-c/package.json")" "installed from the chain's end"

step "reset-follower of an in-sync replica downloads no tarball"
before="$(tarball_requests primary)"
fetched_before="$(tarballs_fetched replica)"
run_npme --root "$T/replica" reset-follower --wait --timeout 60 2>/dev/null
after="$(tarball_requests primary)"
assert_eq "$before" "$after" "tarball requests on the primary during the reset"
assert_eq "$fetched_before" "$(tarballs_fetched replica)" "tarballs the replica fetched during the reset"
assert_eq "$(content_digest primary "$TOKEN" repl-a repl-c)" "$(content_digest replica "$TOKEN" repl-a repl-c)" \
  "content after the reset"

step "reset-follower on a primary is refused with exit 6"
expect_exit 6 "$NPME" --root "$T/primary" reset-follower

step "replicas stop cleanly"
stop_instance leaf
stop_instance replica
seq_file="$(cat "$T/replica/data/sequence")"
[[ "$seq_file" =~ ^[0-9]+$ ]] || fail "data/sequence holds '$seq_file'"
stop_instance primary
echo "PASS: $TEST_NAME"
