#!/usr/bin/env bash
# Public packages through an uplink, with the real npm client against a
# stand-in uplink: read-through installs with integrity kept, the
# dependency-confusion guard (local and private names never fetched, no
# publish over an uplink name), one uplink request for 100 concurrent
# misses, revalidation when a new version appears upstream, stale serving
# while the uplink is down, white-list + add-package (--no-deps,
# --prefetch then the uplink unplugged), --from-lockfile, npm audit
# forwarding without private names.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/uplink_lib.sh"

start_uplink up
uplink_publish up pub-b 1.2.0
uplink_publish up pub-b 2.0.0
uplink_publish up pub-a 1.0.0 pub-b@^1.0.0
uplink_publish up pub-c 1.0.0
uplink_publish up @corp/secret 9.9.9
uplink_publish up wl-y 1.0.0
uplink_publish up wl-x 1.0.0 wl-y@^1.0.0
uplink_publish up wl-z 1.0.0

start_uplink_instance reg up '"uplink.private":"@corp/*","uplink.maxage":"300"'
R="${REGISTRY[reg]}"
add_user reg alice alice-password-1
TOKEN="$(create_token reg alice)"

step "read-through: npm install of a public package and its dependency"
new_app "$T/app"
(cd "$T/app" && npm_as reg "" -- install pub-a) >/dev/null
lock="$T/app/package-lock.json"
assert_eq "$(uplink_integrity up pub-a 1.0.0)" "$(jq -r '.packages["node_modules/pub-a"].integrity' "$lock")" \
  "integrity of pub-a in the lockfile"
assert_eq "$(uplink_integrity up pub-b 1.2.0)" "$(jq -r '.packages["node_modules/pub-b"].integrity' "$lock")" \
  "integrity of pub-b (the dependency) in the lockfile"
http GET "$R/pub-a" -H 'Accept: application/json'
assert_eq "$R/pub-a/-/pub-a-1.0.0.tgz" "$(jq -r '.versions["1.0.0"].dist.tarball' <<<"$HTTP_BODY")" \
  "tarball URL is under registry.url"
assert_eq null "$(jq -r '._uplink' <<<"$HTTP_BODY")" "_uplink is not served"
assert_eq fake-uplink "$(jq -r '.versions["1.0.0"]._npmUser.name' <<<"$HTTP_BODY")" "_npmUser kept"
full_etag="$(curl -sS -o /dev/null -D - -H 'Accept: application/json' "$R/pub-a" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')"
abbrev_etag="$(curl -sS -o /dev/null -D - -H 'Accept: application/vnd.npm.install-v1+json' "$R/pub-a" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')"
assert_ne "$full_etag" "$abbrev_etag" "ETag of the abbreviated form (differs from the full one)"
wait_until 10 "read-through added pub-a and its dependency to data/whitelist" \
  bash -c "grep -qx pub-a '$T/reg/data/whitelist' && grep -qx pub-b '$T/reg/data/whitelist'"
status="$(uplink_status reg)"
assert_eq up "$(jq -r .state <<<"$status")" "uplink state"
assert_eq 2 "$(jq -r .names <<<"$status")" "names held from the uplink"
assert_eq 1 "$(uplink_count up /pub-a/-/pub-a-1.0.0.tgz)" "uplink requests for pub-a's tarball"

step "the confusion guard: a local name is never fetched, a private one never asked"
make_package "$T/conf" conf-name 1.0.0
(cd "$T/conf" && npm_as reg "$TOKEN" -- publish) >/dev/null
uplink_publish up conf-name 5.0.0
new_app "$T/app-conf"
(cd "$T/app-conf" && npm_as reg "" -- install conf-name) >/dev/null
assert_eq 1.0.0 "$(jq -r .version "$T/app-conf/node_modules/conf-name/package.json")" \
  "npm install got the local conf-name, not the uplink's 5.0.0"
assert_eq 0 "$(uplink_count up /conf-name)" "uplink requests for the local name"
http GET "$R/@corp%2fsecret"
expect_json_error 404
assert_contains "$HTTP_BODY" "private" "the 404 says why"
assert_eq 0 "$(uplink_count up /@corp/secret)" "uplink requests for the private name"
make_package "$T/evil" pub-b 3.0.0
out="$(cd "$T/evil" && npm_as reg "$TOKEN" -- publish 2>&1)" && fail "a publish over an uplink name succeeded"
assert_contains "$out" "E403" "npm's error for a publish over an uplink name"
assert_contains "$out" "comes from the uplink" "the message says why"
http PUT "$R/-/package/pub-b/dist-tags/evil" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' --data-binary '"1.2.0"'
expect_json_error 403

step "100 concurrent misses of one name make one uplink request"
curls=()
for i in $(seq 1 100); do
  curl -sS -o /dev/null -w '%{http_code}\n' --max-time 30 \
    -H 'Accept: application/vnd.npm.install-v1+json' "$R/pub-c" >"$T/concurrent.$i" &
  curls+=($!)
done
wait "${curls[@]}" || true
cat "$T"/concurrent.* >"$T/concurrent.codes"
assert_eq "100" "$(grep -c '^200$' "$T/concurrent.codes")" "200 answers"
assert_eq 1 "$(uplink_count up /pub-c)" "uplink packument requests for pub-c"

step "a version the copy lacks is fetched at once; after maxage, new versions appear"
uplink_publish up pub-c 1.1.0
http GET "$R/pub-c/1.1.0"
assert_eq 200 "$HTTP_STATUS" "GET /pub-c/1.1.0 right after the uplink got it"
uplink_publish up pub-c 1.2.0
run_npme --root "$T/reg" settings set uplink.maxage=1 >/dev/null
sleep 1.2
has_120() { curl -sS -H 'Accept: application/json' "$R/pub-c" | jq -e '.versions["1.2.0"]'; }
wait_until 20 "pub-c@1.2.0 appears after revalidation" has_120
new_app "$T/app-c"
(cd "$T/app-c" && npm_as reg "" -- install pub-c@1.2.0) >/dev/null
assert_eq 1.2.0 "$(jq -r .version "$T/app-c/node_modules/pub-c/package.json")" "installed the new version"
# Nothing revalidates on its own from here (maxage 300 s): the refresh does.
run_npme --root "$T/reg" settings set uplink.maxage=300 >/dev/null
uplink_publish up pub-c 1.3.0
expect_exit 0 "$NPME" --root "$T/reg" refresh pub-c --json
assert_eq pub-c "$(jq -r .name <<<"$LAST_STDOUT")" "npme refresh answered for pub-c"
http GET "$R/pub-c" -H 'Accept: application/json'
assert_eq 1.3.0 "$(jq -r '."dist-tags".latest' <<<"$HTTP_BODY")" "the refreshed copy has the new version"

step "white-list policy: add-package with and without dependencies"
start_uplink_instance wl up '"uplink.policy":"white-list"'
http GET "${REGISTRY[wl]}/wl-x"
expect_json_error 404
assert_contains "$HTTP_BODY" "white-list" "the 404 says why"
assert_eq 0 "$(uplink_count up /wl-x)" "uplink requests for a name not white-listed"
expect_exit 0 "$NPME" --root "$T/wl" add-package wl-z --no-deps --json
assert_eq '["wl-z"]' "$(jq -c '[.packages[].name]' <<<"$LAST_STDOUT")" "--no-deps took the name alone"
expect_exit 0 "$NPME" --root "$T/wl" add-package 'wl-x@^1' --prefetch --json
assert_eq '["wl-x","wl-y"]' "$(jq -c '[.packages[].name] | sort' <<<"$LAST_STDOUT")" "the dependency closure"
assert_eq 2 "$(jq -r .tarballs <<<"$LAST_STDOUT")" "tarballs prefetched"
assert_eq "wl-x wl-y wl-z" "$(grep -v '^#' "$T/wl/data/whitelist" | sort | xargs)" "the white-list"
expect_exit 1 "$NPME" --root "$T/wl" add-package does-not-exist --json
assert_contains "$(jq -r '.errors[0].message' <<<"$LAST_STDOUT")" "not in this registry" "error for a missing name"
expect_exit 2 "$NPME" --root "$T/wl" add-package

step "--from-lockfile imports exactly the lockfile's versions with their tarballs"
start_uplink_instance air up
expect_exit 0 "$NPME" --root "$T/air" add-package --from-lockfile "$lock" --json
assert_eq '["pub-a@1.0.0","pub-b@1.2.0"]' "$(jq -c '[.packages[] | "\(.name)@\(.version)"] | sort' <<<"$LAST_STDOUT")" \
  "versions imported"
assert_file_exists "$T/air/packages/pub-a/-/pub-a-1.0.0.tgz"
assert_file_exists "$T/air/packages/pub-b/-/pub-b-1.2.0.tgz"
jq '.packages["node_modules/pub-b"].integrity = "sha512-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=="' \
  "$lock" >"$T/bad-lock.json"
expect_exit 1 "$NPME" --root "$T/air" add-package --from-lockfile "$T/bad-lock.json" --json
assert_contains "$(jq -c .errors <<<"$LAST_STDOUT")" "pub-b@1.2.0" "a lockfile integrity that differs is refused"
echo '{"lockfileVersion":1,"dependencies":{}}' >"$T/v1-lock.json"
expect_exit 2 "$NPME" --root "$T/air" add-package --from-lockfile "$T/v1-lock.json"
assert_contains "$LAST_OUTPUT" "lockfileVersion 1" "a v1 lockfile is refused with advice"

step "npm audit is forwarded to the uplink without private or local names"
make_package "$T/inner" @corp/inner 1.0.0
(cd "$T/inner" && npm_as reg "$TOKEN" -- publish) >/dev/null
(cd "$T/app" && npm_as reg "$TOKEN" -- install @corp/inner conf-name) >/dev/null
uplink_control up POST reset-log >/dev/null
(cd "$T/app" && npm_as reg "$TOKEN" -- audit --json) >"$T/audit.out" 2>&1 || true
audits="$(uplink_control up GET audits)"
assert_contains "$audits" "pub-a" "the audit forwarded public names"
assert_not_contains "$audits" "@corp/inner" "the audit forwarded no private name"
assert_not_contains "$audits" "conf-name" "the audit forwarded no locally published name"
start_instance plain
http POST "${REGISTRY[plain]}/-/npm/v1/security/advisories/bulk" -H 'Content-Type: application/json' --data-binary '{"a":["1.0.0"]}'
expect_json_error 404
assert_contains "$HTTP_BODY" "no uplink" "audit without an uplink says why"

step "the uplink down: held names are served (installs keep working), misses fail fast with 502"
stop_uplink up
run_npme --root "$T/reg" settings set uplink.maxage=1 >/dev/null
sleep 1.2
rm -rf "$T/npm-cache"
new_app "$T/app-down"
(cd "$T/app-down" && npm_as reg "" -- install pub-a) >/dev/null
assert_eq 1.0.0 "$(jq -r .version "$T/app-down/node_modules/pub-a/package.json")" "installed with the uplink down"
new_app "$T/app-wl"
(cd "$T/app-wl" && npm_as wl "" -- install wl-x) >/dev/null
assert_eq 1.0.0 "$(jq -r .version "$T/app-wl/node_modules/wl-y/package.json")" \
  "a --prefetch'ed closure installs with the uplink unplugged"
rm -rf "$T/npm-cache"
mkdir -p "$T/app-air"
jq 'del(.packages["node_modules/@corp/inner"], .packages["node_modules/conf-name"]) |
    .packages[""].dependencies = {"pub-a": "^1.0.0"}' "$lock" >"$T/app-air/package-lock.json"
jq '.dependencies = {"pub-a": "^1.0.0"}' "$T/app/package.json" >"$T/app-air/package.json"
(cd "$T/app-air" && npm_as air "" -- ci) >/dev/null
assert_eq 1.2.0 "$(jq -r .version "$T/app-air/node_modules/pub-b/package.json")" \
  "npm ci from the lockfile-seeded instance with the uplink unplugged"
with_warning() { curl -sS -D - -o /dev/null -H 'Accept: application/json' "$R/pub-a" | grep -qi '^Warning: 110'; }
wait_until 20 "a held name past maxage is served with a Warning" with_warning
start="$(date +%s%N)"
code="$(curl -sS -o "$T/miss.body" -w '%{http_code}' --max-time 30 "$R/never-fetched")"
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
assert_eq 502 "$code" "a miss while the uplink is down (never a 404)"
assert_contains "$(cat "$T/miss.body")" "uplink" "the 502 says why"
((elapsed_ms < 10000)) || fail "the miss took $elapsed_ms ms"
info "ok: the miss failed in $elapsed_ms ms"
status="$(uplink_status reg)"
assert_ne null "$(jq -r .last_error <<<"$status")" "status shows the uplink's last error"
metrics="$(curl -sS "${ADMIN[reg]}/metrics")"
assert_contains "$metrics" 'npme_uplink_requests_total{result="stale"}' "metrics count stale serves"
assert_contains "$metrics" 'npme_uplink_request_seconds_count' "metrics have the uplink latency"

step "instances stop cleanly"
stop_instance reg
stop_instance wl
stop_instance air
stop_instance plain
