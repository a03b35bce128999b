# Helpers of the snapshot tests (sourced after lib.sh).

# publish_fast INSTANCE TOKEN NAME VERSION [EXTRA_MB] — publishes with curl
# (the body npm would send); EXTRA_MB adds that many MiB of random bytes.
publish_fast() {
  local instance="$1" token="$2" name="$3" version="$4" mb="${5:-0}"
  local dir="$T/src/${name//\//_}-$version"
  make_package "$dir" "$name" "$version"
  local stage
  stage="$(mktemp -d "$T/pack.XXXXXX")"
  mkdir -p "$stage/package"
  cp "$dir/package.json" "$dir/index.js" "$stage/package/"
  if [[ "$mb" -gt 0 ]]; then
    head -c "$((mb * 1048576))" /dev/urandom >"$stage/package/blob.bin"
  fi
  tar -cf - -C "$stage" --owner=0 --group=0 --numeric-owner package | gzip -1 >"$dir.tgz"
  rm -rf "$stage"
  publish_body "$dir/package.json" "$dir.tgz" "${REGISTRY[$instance]}" >"$dir.json"
  local status
  status="$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $token" --data-binary "@$dir.json" "${REGISTRY[$instance]}/${name/\//%2f}")"
  rm -f "$dir.json"
  [[ "$status" == 200 || "$status" == 201 ]] || fail "publish $name@$version answered $status"
}

# tree_listing DIR — every path under DIR with its type and sha256 (what
# "untouched" means).
tree_listing() {
  local dir="$1"
  [[ -e "$dir" ]] || { echo "<missing $dir>"; return 0; }
  (cd "$dir" && find . -printf '%y %p\n' | LC_ALL=C sort && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum)
}

# instance_listing ROOT — the three host directories of an instance (the
# lock and runtime files excluded).
instance_listing() {
  local root="$1" d
  for d in couchdb packages data; do
    echo "== $d"
    # The audit log is the instance's history, carried over by a restore,
    # not part of what a snapshot holds.
    tree_listing "$root/$d" | grep -v -E 'instance\.lock|runtime\.json|audit\.(log|lock)' || true
  done
}

# wait_for_path PATH PID — polls until PATH exists (or PID exits); returns 1 if it never appeared.
wait_for_path() {
  local path="$1" pid="$2" i
  for ((i = 0; i < 3000; i++)); do
    compgen -G "$path" >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.005
  done
  return 1
}
