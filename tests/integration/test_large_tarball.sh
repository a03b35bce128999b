#!/usr/bin/env bash
# A large tarball is streamed from its file, never held whole: 20 clients
# fetching a 200 MB tarball at once each get every byte, and the server's
# peak RSS stays under 100 MB (it held the whole file once per request
# before: 16 clients of a 40 MB tarball took it to 642 MB). A client
# revalidating with the ETag gets 304.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_instance big
add_user big bea 'bea-password-1'
TOKEN="$(create_token big bea)"
make_publish_body "$T/src" big-blob 1.0.0 "$T/publish.json"
put_json "$(pkg_url big-blob)" "$T/publish.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish big-blob@1.0.0"
stop_instance big

step "a 200 MB file in place of the tarball (the registry serves what is on disk)"
FILE="$T/big/packages/big-blob/-/big-blob-1.0.0.tgz"
assert_file_exists "$FILE"
head -c $((200 * 1048576)) /dev/urandom >"$FILE"
WANT="$(sha256sum <"$FILE" | cut -d' ' -f1)"
start_instance big
PID="${INSTANCE_PID[big]}"
URL="$REGISTRY_URL/big-blob/-/big-blob-1.0.0.tgz"

step "20 clients at once, each at 40 MB/s"
CLIENTS=()
for i in $(seq 1 20); do
  (curl -sS --fail --limit-rate 40M "$URL" | sha256sum | cut -d' ' -f1 >"$T/got.$i") &
  CLIENTS+=("$!")
  STARTED_PIDS+=("$!")
done
PEAK_DURING=0
while pgrep -f -- "--limit-rate 40M $URL" >/dev/null; do
  rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")"
  ((rss > PEAK_DURING)) && PEAK_DURING=$rss
  sleep 0.2
done
for pid in "${CLIENTS[@]}"; do
  wait "$pid" || fail "a client's download failed"
done
for i in $(seq 1 20); do
  assert_eq "$WANT" "$(cat "$T/got.$i")" "sha256 of what client $i received"
done
HWM_KB="$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status")"
info "server RSS: peak $((HWM_KB / 1024)) MB (VmHWM), $((PEAK_DURING / 1024)) MB sampled during the transfers"
if [[ -n "${ASAN_OPTIONS:-}" ]]; then
  info "not judging the RSS under AddressSanitizer (its shadow memory and quarantine)"
else
  ((HWM_KB < 100 * 1024)) || fail "server peak RSS $((HWM_KB / 1024)) MB while 20 clients fetched a 200 MB tarball (want < 100 MB)"
  info "ok: peak RSS under 100 MB"
fi

step "HEAD, and a revalidation with the ETag"
curl -sS -I "$URL" | tr -d '\r' >"$T/head"
assert_contains "$(cat "$T/head")" "Content-Length: $((200 * 1048576))" "HEAD of the large tarball"
ETAG="$(sed -n 's/^ETag: //Ip' "$T/head")"
[[ -n "$ETAG" ]] || fail "no ETag on the large tarball: $(cat "$T/head")"
http GET "$URL" -H "If-None-Match: $ETAG"
assert_eq 304 "$HTTP_STATUS" "GET with the large tarball's ETag"
stop_instance big
echo "PASS: $TEST_NAME"
