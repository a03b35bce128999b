#!/usr/bin/env bash
# Replicas never talk to the uplink: a miss on a replica is asked of its
# upstream by name, the primary fetches and stores it (the document then
# arrives through the feed), along a chain too; tarballs of uplink copies
# come on demand through the upstream; npm audit goes through the upstream.
# An upstream.url that is not an npme instance is named as such.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"
source "$(dirname "$0")/uplink_lib.sh"

start_uplink up
uplink_publish up rep-b 1.0.0
uplink_publish up rep-a 1.0.0 rep-b@^1.0.0
uplink_publish up chain-pkg 2.0.0
start_uplink_instance primary up
start_instance replica
make_replica replica primary
run_npme --root "$T/replica" settings set auth.installs=none >/dev/null

step "a miss on the replica is fetched by the primary and served by the replica"
new_app "$T/app"
(cd "$T/app" && npm_as replica "" -- install rep-a) >/dev/null
assert_eq "$(uplink_integrity up rep-a 1.0.0)" "$(jq -r '.packages["node_modules/rep-a"].integrity' "$T/app/package-lock.json")" \
  "integrity of rep-a installed from the replica"
assert_eq 1 "$(db_query primary "select count(*) from docs where id = 'rep-a'")" "the primary holds rep-a"
assert_eq "" "$("$NPME" --root "$T/replica" settings get uplink.url)" "the replica has no uplink.url"
assert_file_exists "$T/primary/packages/rep-a/-/rep-a-1.0.0.tgz"
assert_file_exists "$T/replica/packages/rep-a/-/rep-a-1.0.0.tgz"
http GET "${REGISTRY[replica]}/rep-a" -H 'Accept: application/json'
assert_contains "$(jq -r '.versions["1.0.0"].dist.tarball' <<<"$HTTP_BODY")" "${REGISTRY[replica]}/" \
  "the replica hands out its own tarball URLs"
wait_synced replica primary
assert_eq "$(db_query primary "select rev from docs where id = 'rep-b'")" \
  "$(db_query replica "select rev from docs where id = 'rep-b'")" "the replica's copy has the primary's revision"

step "along a chain: leaf -> replica -> primary -> uplink"
start_instance leaf
make_replica leaf replica
run_npme --root "$T/leaf" settings set auth.installs=none >/dev/null
new_app "$T/app2"
(cd "$T/app2" && npm_as leaf "" -- install chain-pkg) >/dev/null
assert_eq 2.0.0 "$(jq -r .version "$T/app2/node_modules/chain-pkg/package.json")" "installed from the chain's end"
assert_eq 1 "$(db_query primary "select count(*) from docs where id = 'chain-pkg'")" "the primary holds chain-pkg"
assert_eq 1 "$(db_query replica "select count(*) from docs where id = 'chain-pkg'")" "the middle holds chain-pkg"

step "tarballs of uplink copies the primary does not hold are not copied by followers"
uplink_publish up lazy-pkg 1.0.0
uplink_publish up lazy-pkg 1.1.0
http GET "${REGISTRY[primary]}/lazy-pkg"
wait_synced replica primary
assert_file_missing "$T/replica/packages/lazy-pkg/-/lazy-pkg-1.0.0.tgz"
assert_eq 0 "$(uplink_count up /lazy-pkg/-/lazy-pkg-1.0.0.tgz)" "the follower made the primary fetch nothing"
http GET "${REGISTRY[replica]}/lazy-pkg/-/lazy-pkg-1.0.0.tgz"
assert_eq 200 "$HTTP_STATUS" "a tarball asked of the replica comes through the primary"
assert_eq 1 "$(uplink_count up /lazy-pkg/-/lazy-pkg-1.0.0.tgz)" "one uplink request for it"

step "npm audit from the replica goes through the primary to the uplink"
uplink_control up POST reset-log >/dev/null
(cd "$T/app" && npm_as replica "" -- audit --json) >/dev/null 2>&1 || true
assert_contains "$(uplink_control up GET audits)" "rep-a" "the audit reached the uplink"

step "an upstream that is not an npme instance is named as such"
start_instance wrong
run_npme --root "$T/wrong" settings set "upstream.url=${UPLINK[up]}" upstream.secret=0123456789abcdef0123 \
  upstream.policy=mirror >/dev/null
not_npme() { "$NPME" --root "$T/wrong" status --json | jq -e '.follower.last_error | contains("uplink.url")'; }
wait_until 30 "the follower says the upstream is not npme and to use uplink.url" not_npme

stop_instance wrong
stop_instance leaf
stop_instance replica
stop_instance primary
