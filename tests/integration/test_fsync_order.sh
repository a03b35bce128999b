#!/usr/bin/env bash
# What a crash test cannot see: kill -9 keeps the page cache, so those tests
# would pass with every fsync removed. This one records the system calls of
# a publish and of follower batches (strace -f -y) and checks their order:
# the staged tarball is fsynced (a large batch: its file system syncfs'd),
# then renamed into place, its directory synced, then the database's
# write-ahead log synced by the committing thread, and only then, on a
# replica, data/sequence renamed into place.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"

TRACED_CALLS=fsync,fdatasync,syncfs,rename,renameat,renameat2
if ! strace -f -qq -e trace=fsync -o /dev/null true 2>"$T/strace.err"; then
  skip_test "strace cannot trace here (ptrace not permitted?): $(cat "$T/strace.err")"
fi

declare -A STRACE_PID=()

# start_traced NAME — `npme serve` for instance NAME under strace, its trace
# in $T/NAME.trace; sets REGISTRY[NAME], ADMIN[NAME] and INSTANCE_PID[NAME]
# (npme's own pid; strace's is STRACE_PID[NAME]).
start_traced() {
  local name="$1" root="$T/$1" i
  step "start instance '$name' under strace"
  mkdir -p "$root"
  traced -f -y -qq -s 512 -e trace="$TRACED_CALLS" -o "$T/$name.trace" \
    "$NPME" serve --root "$root" --registry-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >>"$T/$name.serve.log" 2>&1 &
  STRACE_PID[$name]=$!
  STARTED_PIDS+=("$!")
  for ((i = 0; i < 600; i++)); do
    kill -0 "${STRACE_PID[$name]}" 2>/dev/null || fail "npme serve for '$name' exited before it was ready"
    [[ -s "$root/data/runtime.json" ]] && break
    sleep 0.1
  done
  [[ -s "$root/data/runtime.json" ]] || fail "npme serve for '$name' did not write runtime.json within 60 s"
  INSTANCE_PID[$name]="$(jq -r .pid "$root/data/runtime.json")"
  # Killed at exit too: strace killed alone would leave it running, detached.
  STARTED_PIDS+=("${INSTANCE_PID[$name]}")
  REGISTRY[$name]="$(jq -r .listen_url "$root/data/runtime.json")"
  ADMIN[$name]="$(jq -r .admin_url "$root/data/runtime.json")"
  REGISTRY_URL="${REGISTRY[$name]}"
  ADMIN_URL="${ADMIN[$name]}"
  info "npme pid ${INSTANCE_PID[$name]} under strace pid ${STRACE_PID[$name]}, registry ${REGISTRY[$name]}"
}

# stop_traced NAME — SIGTERM to npme; strace exits with its exit status.
stop_traced() {
  local name="$1" rc=0
  step "stop instance '$name'"
  kill -TERM "${INSTANCE_PID[$name]}"
  wait "${STRACE_PID[$name]}" || rc=$?
  assert_eq 0 "$rc" "exit status of npme serve '$name' (through strace)"
  info "$(grep -c . "$T/$name.trace") traced calls"
}

# follower_control REPLICA stop|start
follower_control() {
  curl -sS -f -X POST -H "Authorization: Bearer $(jq -r '."admin.token"' "$T/$1/settings.json")" \
    "${ADMIN[$1]}/api/v1/follower/$2" >/dev/null || fail "follower/$2 on $1 failed"
}

# check_order INSTANCE [--sequence] NAME@VERSION... — fsync_order.js on the
# instance's trace, for those tarballs.
check_order() {
  local instance="$1"
  shift
  local root
  root="$(realpath "$T/$instance")"
  local extra=()
  if [[ "$1" == --sequence ]]; then
    extra=(--sequence "$root/data/sequence")
    shift
  fi
  local files=() spec name
  for spec in "$@"; do
    name="${spec%@*}"
    files+=("$root/packages/$name/-/${name##*/}-${spec##*@}.tgz")
  done
  node "$FIXTURES/fsync_order.js" "$T/$instance.trace" --packages "$root/packages" \
    --wal "$root/couchdb/registry.sqlite-wal" "${extra[@]}" "${files[@]}" >"$T/order.out" 2>&1 || {
    cat "$T/order.out" >&2
    fail "durability order broken on $instance"
  }
  sed 's/^/    /' "$T/order.out"
}

start_traced primary
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"

step "a publish: tarball fsync < rename < directory fsync < WAL sync (the commit)"
make_package "$T/pkg" npme-it-fsync 1.0.0
expect_exit 0 in_dir "$T/pkg" npm_as primary "$TOKEN" -- publish
publish_body_file="$T/pub.json"
make_publish_body "$T/scoped" @fsync/scoped 2.0.0 "$publish_body_file"
put_json "$(pkg_url @fsync/scoped)" "$publish_body_file" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish of @fsync/scoped"

start_traced replica
REGISTRY_URL="${REGISTRY[primary]}" # publishes go to the primary
make_replica replica primary
wait_synced replica primary

step "a small follower batch (3 packages): each file fsynced before its rename, sequence after the commit"
follower_control replica stop
SMALL=()
for i in 1 2 3; do
  make_publish_body "$T/small-$i" "npme-it-small-$i" 1.0.0 "$T/small-$i.json"
  put_json "$(pkg_url "npme-it-small-$i")" "$T/small-$i.json" "$TOKEN"
  assert_eq 201 "$HTTP_STATUS" "publish of npme-it-small-$i"
  SMALL+=("npme-it-small-$i@1.0.0")
done
follower_control replica start
wait_synced replica primary

step "a large follower batch (24 packages): one syncfs before the renames, sequence after the commit"
follower_control replica stop
node "$FIXTURES/gen_packages.js" "$T/gen" 24 1 fsync-bulk 1 2 >/dev/null
bulk_publish primary "$TOKEN" "$T/gen/list"
mapfile -t LARGE < <(awk '{ print $1 "@" $2 }' "$T/gen/list")
follower_control replica start
wait_synced replica primary

stop_traced replica
stop_traced primary

step "the order, from the traces"
check_order primary npme-it-fsync@1.0.0 @fsync/scoped@2.0.0
check_order replica --sequence npme-it-fsync@1.0.0 @fsync/scoped@2.0.0 "${SMALL[@]}"
check_order replica --sequence "${LARGE[@]}"
grep -F "syncfs(" "$T/replica.trace" | grep -qF "<$(realpath "$T/replica/packages")>" ||
  fail "the large batch was not flushed with syncfs (did it go file by file?)"
info "ok: the large batch used syncfs"
echo "PASS: $TEST_NAME"
