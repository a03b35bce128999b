#!/usr/bin/env bash
# A large tarball is streamed from its file, never held whole: 20 clients
# fetching a 200 MB tarball at once each get every byte, and the server's
# peak RSS stays under 100 MB (it held the whole file once per request
# before: 16 clients of a 40 MB tarball took it to 642 MB). A client
# revalidating with the ETag gets 304.
# Publishing streams too: the body of a 40 MB publish goes to a file as it
# arrives and its attachment is decoded from there into the staging file,
# so one publish peaks at no more than the tarball + 32 MB (it peaked at
# 226 MB, 5.6x the tarball, holding body, base64 string and bytes at once),
# and 4 at once stay under 250 MB.
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

# big_publish_body DIR NAME — a package whose tarball holds 40 MB of random
# bytes (it does not compress), and its publish body DIR.json.
big_publish_body() {
  local dir="$1" name="$2"
  make_package "$dir" "$name" 1.0.0
  head -c $((40 * 1048576)) /dev/urandom >"$dir/index.js"
  make_tarball "$dir" "$dir.tgz"
  publish_body "$dir/package.json" "$dir.tgz" "$REGISTRY_URL" >"$dir.json"
}

# publishes_fit INSTANCE LIMIT_MB WHAT — the instance's peak RSS is under LIMIT_MB.
publishes_fit() {
  local hwm
  hwm="$(awk '/^VmHWM:/ {print $2}' "/proc/${INSTANCE_PID[$1]}/status")"
  info "server peak RSS after $3: $((hwm / 1024)) MB (VmHWM)"
  if [[ -n "${ASAN_OPTIONS:-}" ]]; then
    info "not judging the RSS under AddressSanitizer"
  else
    ((hwm < $2 * 1024)) || fail "server peak RSS $((hwm / 1024)) MB after $3 (want < $2 MB)"
    info "ok: under $2 MB"
  fi
}

# served_intact NAME DIR — the registry serves exactly DIR.tgz as NAME@1.0.0.
served_intact() {
  local name="$1" dir="$2"
  assert_eq "$(sha256sum <"$dir.tgz" | cut -d' ' -f1)" \
    "$(curl -sS --fail "$REGISTRY_URL/$name/-/$name-1.0.0.tgz" | sha256sum | cut -d' ' -f1)" "sha256 of $name's tarball"
}

step "one publish of a 40 MB tarball, on a fresh server: peak RSS under 40 + 32 MB"
start_instance pub1
add_user pub1 bea 'bea-password-1'
TOKEN="$(create_token pub1 bea)"
big_publish_body "$T/one" big-one
info "body $(($(stat -c %s "$T/one.json") / 1048576)) MB, tarball $(($(stat -c %s "$T/one.tgz") / 1048576)) MB"
stop_instance pub1
start_instance pub1 # the peak counts from here: the publish alone
put_json "$(pkg_url big-one)" "$T/one.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish of big-one (40 MB)"
publishes_fit pub1 $((40 + 32)) "one 40 MB publish"
served_intact big-one "$T/one"
[[ -z "$(ls -A "$T/pub1/packages/.staging")" ]] || fail "files left in the staging directory: $(ls -A "$T/pub1/packages/.staging")"
stop_instance pub1

step "four 40 MB publishes at once, on a fresh server: peak RSS under 250 MB"
start_instance pub4
add_user pub4 bea 'bea-password-1'
TOKEN="$(create_token pub4 bea)"
for i in 1 2 3 4; do
  big_publish_body "$T/four$i" "big-four-$i"
done
stop_instance pub4
start_instance pub4
PUBLISHERS=()
for i in 1 2 3 4; do
  (curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $TOKEN" --data-binary "@$T/four$i.json" "$(pkg_url "big-four-$i")" >"$T/status.$i") &
  PUBLISHERS+=("$!")
  STARTED_PIDS+=("$!")
done
for pid in "${PUBLISHERS[@]}"; do
  wait "$pid" || fail "a publish's curl failed"
done
for i in 1 2 3 4; do
  assert_eq 201 "$(cat "$T/status.$i")" "publish of big-four-$i"
  served_intact "big-four-$i" "$T/four$i"
done
publishes_fit pub4 250 "four 40 MB publishes at once"
stop_instance pub4
echo "PASS: $TEST_NAME"
