#!/usr/bin/env bash
# A publish onto a full disk: the packages directory on a small tmpfs, filled
# up. The client gets 507 "the registry is out of disk space" (never a path
# of the server), nothing is half-stored, and once space is freed the same
# publish succeeds. Needs root and mount(8) (tmpfs); skipped (77) otherwise.
source "$(dirname "$0")/lib.sh"

SMALL="$T/small"
mkdir -p "$SMALL"
if ! mount -t tmpfs -o size=4m tmpfs "$SMALL" 2>"$T/mount.err"; then
  skip_test "cannot mount a tmpfs ($(cat "$T/mount.err")): run as root"
fi
# Unmounted before lib.sh's cleanup removes $T; the server first.
disk_cleanup() {
  local pid
  for pid in "${STARTED_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  umount -l "$SMALL" 2>/dev/null
}
trap 'disk_rc=$?; set +e; disk_cleanup; (exit $disk_rc); on_exit' EXIT

step "an instance whose packages directory is on a 4 MiB tmpfs"
mkdir -p "$T/main"
run_npme --root "$T/main" settings set --offline "storage.packages=$SMALL/packages" >/dev/null
start_instance main
add_user main alice alice-password-1234
TOKEN="$(create_token main alice)"
make_package "$T/pkg-small" disk-small 1.0.0
in_dir "$T/pkg-small" npm_as main "$TOKEN" -- publish >/dev/null || fail "a small publish failed"

step "fill the device, then publish 600 KiB"
node "$FIXTURES/gen_packages.js" "$T/gen" 1 1 disk-big 600 600 >/dev/null
read -r NAME _ BODY <"$T/gen/list"
avail_kb="$(df --output=avail -k "$SMALL" | tail -n 1 | tr -d ' ')"
fill_kb=$((avail_kb - 200))
dd if=/dev/zero of="$SMALL/filler" bs=1k count="$fill_kb" status=none 2>/dev/null || true
info "free on the device: $(df --output=avail -k "$SMALL" | tail -n 1 | tr -d ' ') KiB"
code="$(curl -s -o "$T/out.json" -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $TOKEN" --data-binary "@$BODY" "$REGISTRY_URL/$NAME")"
assert_eq 507 "$code" "status of a publish onto a full disk"
assert_eq "the registry is out of disk space; nothing was stored" "$(jq -r .error "$T/out.json")" "its error"
if grep -q -e "$T" -e staging "$T/out.json"; then
  fail "the answer names a server path: $(cat "$T/out.json")"
fi
assert_eq 404 "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$REGISTRY_URL/$NAME")" \
  "the package after the refused publish"
assert_eq "" "$(ls -A "$SMALL/packages/.staging")" "files left in the staging directory"
assert_eq "" "$(ls -A "$SMALL/packages" | grep -v -e '^.staging$' -e '^disk-small$' || true)" \
  "other files left in the packages directory"

step "a 2 MiB publish, its body written to the full device as it arrives: 507 too"
node "$FIXTURES/gen_packages.js" "$T/gen-huge" 1 1 disk-huge 2048 2048 >/dev/null
read -r HUGE _ HUGE_BODY <"$T/gen-huge/list"
code="$(curl -s -o "$T/out.json" -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $TOKEN" --data-binary "@$HUGE_BODY" "$REGISTRY_URL/$HUGE")"
assert_eq 507 "$code" "status of a spooled publish onto a full disk"
assert_eq "the registry is out of disk space; nothing was stored" "$(jq -r .error "$T/out.json")" "its error"
assert_eq "" "$(ls -A "$SMALL/packages/.staging")" "files left in the staging directory"
assert_eq 404 "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$REGISTRY_URL/$HUGE")" \
  "the package after the refused publish"

step "npme status and /metrics report the low device"
expect_exit 0 run_npme status --json --root "$T/main"
assert_eq true "$(jq -r '.disk[] | select(.dir == "packages") | .low' <<<"$LAST_STDOUT")" "packages low in status"
assert_eq 3 "$(jq '[.disk[] | select(.free_bytes >= 0 and .total_bytes > 0)] | length' <<<"$LAST_STDOUT")" \
  "host directories measured"
assert_contains "$(jq -r .health <<<"$LAST_STDOUT")" "warning: low disk space: packages"
expect_exit 0 run_npme status --root "$T/main"
assert_contains "$LAST_STDOUT" "(LOW)"
metrics="$(curl -s -H "Authorization: Bearer $(jq -r '."admin.token"' "$T/main/settings.json")" "$ADMIN_URL/metrics")"
assert_contains "$metrics" 'npme_disk_low{dir="packages"} 1'
assert_contains "$metrics" 'npme_disk_free_bytes{dir="packages"}'
expect_exit 0 run_npme settings set storage.min_free=64K --root "$T/main"
expect_exit 0 run_npme status --json --root "$T/main"
assert_eq ok "$(jq -r .health <<<"$LAST_STDOUT")" "health with storage.min_free below the free space"
expect_exit 0 run_npme settings unset storage.min_free --root "$T/main"

step "npm shows the reason"
mkdir -p "$T/pkg-big"
make_package "$T/pkg-big" disk-npm 1.0.0
head -c 700000 /dev/urandom >"$T/pkg-big/blob.bin"
if out="$(in_dir "$T/pkg-big" npm_as main "$TOKEN" -- publish 2>&1)"; then
  fail "npm publish onto a full disk succeeded: $out"
fi
assert_contains "$out" "out of disk space"
# (npm's own log lives under $T: look for the server's directories.)
[[ "$out" != *"$SMALL"* && "$out" != *".staging"* && "$out" != *"$T/main"* ]] || fail "npm shows a server path: $out"

step "space freed: the same publishes succeed, and the server kept running"
rm -f "$SMALL/filler"
code="$(curl -s -o "$T/out.json" -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $TOKEN" --data-binary "@$BODY" "$REGISTRY_URL/$NAME")"
assert_eq 201 "$code" "status of the publish once space is free"
in_dir "$T/pkg-big" npm_as main "$TOKEN" -- publish >/dev/null || fail "npm publish once space is free failed"
mkdir -p "$T/app"
in_dir "$T/app" npm_as main "$TOKEN" -- install disk-small disk-npm "$NAME" >/dev/null ||
  fail "npm install after the full disk failed"
stop_instance main
