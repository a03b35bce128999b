#!/usr/bin/env bash
# Secrets never leak. Every integration test ends with lib.sh's leak_scan
# (its secrets against its logs, audit logs, status, /metrics, error
# answers, npme's error output and snapshot manifests); this test sets
# every kind of secret at once and drives the places they could escape:
# error answers of both ports to requests carrying credentials (none echoes
# an Authorization header), a follower and an uplink failing with their
# secrets set, status, metrics and a snapshot of the instance. URL settings
# refuse user:password@, and say so without repeating the value.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_instance main
add_user main alice 'alice long password'
TOKEN="$(create_token main alice)"
MARKER="npme-leak-marker-$(date +%s%N)"
note_secret "$MARKER"
BASIC="$(printf 'alice:%s' "$MARKER" | base64 -w0)"
UPLINK_TOKEN="uplink-token-$(date +%s%N)"
UPSTREAM_SECRET="upstream-secret-$(date +%s%N)"
ETCD_PASSWORD="etcd-password-$(date +%s%N)"
PROXY_PASSWORD="proxy-password-$(date +%s%N)"
for secret in "$UPLINK_TOKEN" "$UPSTREAM_SECRET" "$ETCD_PASSWORD" "$PROXY_PASSWORD"; do
  note_secret "$secret"
done

step "URL settings refuse credentials, without repeating them"
# "$NPME" itself, not run_npme: the test's trace of the command line is not npme's output.
expect_exit 2 "$NPME" settings set "upstream.url=http://alice:$MARKER@127.0.0.1:9" --root "$T/main"
assert_contains "$LAST_OUTPUT" "a URL with credentials (user:password@)" "the refusal"
assert_not_contains "$LAST_OUTPUT" "$MARKER" "the refusal"
expect_exit 2 "$NPME" settings set "uplink.url=https://x:$MARKER@registry.example" --root "$T/main"
assert_not_contains "$LAST_OUTPUT" "$MARKER" "the refusal"

step "every secret set: an unreachable upstream and uplink that the instance keeps trying"
# Port 9 (discard) is closed on this machine: connection refused, at once.
expect_exit 0 run_npme settings set upstream.url=http://127.0.0.1:9 "upstream.secret=$UPSTREAM_SECRET" \
  uplink.url=http://127.0.0.1:9 "uplink.token=$UPLINK_TOKEN" "ha.etcd_password=$ETCD_PASSWORD" \
  "network.http_proxy=http://proxyuser:$PROXY_PASSWORD@127.0.0.1:9" --root "$T/main"
expect_exit 0 run_npme settings get network.http_proxy --root "$T/main"
assert_eq "********" "$LAST_STDOUT" "network.http_proxy is shown as a secret"
for ((i = 0; i < 100; i++)); do
  [[ -n "$("$NPME" --root "$T/main" status --json | jq -r '.follower.last_error // empty')" ]] && break
  sleep 0.1
done
http GET "$REGISTRY_URL/some-public-package" # through the (failing) uplink
info "the follower's error: $("$NPME" --root "$T/main" status --json | jq -r '.follower.last_error')"

step "error answers of the registry never echo the credentials of the request"
AUTH=(-H "Authorization: Bearer $MARKER")
check_no_echo() { # check_no_echo WHAT — the last answer holds neither the marker nor the token
  if grep -qF -e "$MARKER" -e "$TOKEN" "$HTTP_BODY_FILE"; then
    fail "$1: the answer echoes a credential of the request"
  fi
  info "ok: $1 -> $HTTP_STATUS, no credential in the answer"
}
http GET "$REGISTRY_URL/@corp%2fsecret-lib" "${AUTH[@]}"
check_no_echo "GET with an unknown token (401)"
http GET "$REGISTRY_URL/@corp%2fsecret-lib" -H "Authorization: Basic $BASIC"
check_no_echo "GET with Basic credentials"
http PUT "$REGISTRY_URL/bad-json-lib" "${AUTH[@]}" -H 'Content-Type: application/json' --data "{\"token\": \"$MARKER\""
check_no_echo "PUT with malformed JSON holding the marker (400)"
http PUT "$REGISTRY_URL/-/user/org.couchdb.user:alice" -H 'Content-Type: application/json' \
  --data "{\"name\":\"alice\",\"password\":\"$MARKER\"}"
check_no_echo "login with a wrong password (401)"
http DELETE "$REGISTRY_URL/-/ping" -H "Authorization: Bearer $TOKEN"
check_no_echo "a method the path does not take (405)"
http GET "$REGISTRY_URL/-/whoami" -H "Authorization: Bearer $MARKER" -H "X-Padding: $(head -c 20000 /dev/zero | tr '\0' a)"
check_no_echo "a header too large (431)"

step "error answers of the admin API never echo the credentials of the request"
http GET "$ADMIN_URL/api/v1/status" "${AUTH[@]}"
check_no_echo "a wrong admin token (401)"
ADMIN_TOKEN="$(jq -r '."admin.token"' "$T/main/settings.json")"
http PUT "$ADMIN_URL/api/v1/status" -H "Authorization: Bearer $ADMIN_TOKEN"
check_no_echo "a method the path does not take (405)"
grep -qF "$ADMIN_TOKEN" "$HTTP_BODY_FILE" && fail "the admin 405 echoes the admin token"
http PATCH "$ADMIN_URL/api/v1/settings" -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
  --data "{\"upstream.secret\": \"short\"}"
assert_eq 400 "$HTTP_STATUS" "a secret too short"
assert_not_contains "$HTTP_BODY" "short\"" "the refusal of a secret value"
http GET "$ADMIN_URL/api/v1/settings/upstream.secret" -H "Authorization: Bearer $ADMIN_TOKEN"
assert_eq "********" "$(jq -r .value <<<"$HTTP_BODY")" "a secret through the admin API without ?reveal"

step "a snapshot of the instance (its manifest is scanned at the end)"
mkdir -p "$T/snaps"
expect_exit 0 run_npme --root "$T/main" snapshot create --dir "$T/snaps"
expect_exit 0 run_npme snapshot list --dir "$T/snaps" --json
for secret in "$UPLINK_TOKEN" "$UPSTREAM_SECRET" "$ETCD_PASSWORD" "$PROXY_PASSWORD" "$MARKER"; do
  grep -qF "$secret" "$T/last.stdout" && fail "snapshot list shows a secret (${secret:0:8}…)"
done
info "ok: no secret in snapshot list"

info "PASS (the end-of-test scan checks the logs, audit log, status, /metrics and the snapshot's manifest)"
