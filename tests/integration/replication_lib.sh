# Helpers for the replication tests (sourced after lib.sh).

# make_replica REPLICA UPSTREAM [POLICY] — points REPLICA's follower at
# UPSTREAM's registry with UPSTREAM's secret, read-only publication.
make_replica() {
  local replica="$1" upstream="$2" policy="${3:-mirror}"
  local secret
  secret="$("$NPME" --root "$T/$upstream" settings get secret --reveal)"
  run_npme --root "$T/$replica" settings set "upstream.url=${REGISTRY[$upstream]}" \
    "upstream.secret=$secret" "upstream.policy=$policy" publication=read-only >/dev/null ||
    fail "cannot make $replica a replica of $upstream"
}

# update_seq INSTANCE — the instance's update_seq as its status reports it.
update_seq() {
  "$NPME" --root "$T/$1" status --json | jq -r '.update_seq'
}

# wait_synced REPLICA UPSTREAM [SECONDS] — waits until REPLICA's follower has
# applied everything UPSTREAM had when called, and is caught up.
wait_synced() {
  local replica="$1" upstream="$2" limit="${3:-60}"
  local target status i
  target="$(update_seq "$upstream")"
  for ((i = 0; i < limit * 10; i++)); do
    status="$("$NPME" --root "$T/$replica" status --json)"
    if [[ "$(jq -r '.follower.state' <<<"$status")" == caught-up ]] &&
      (($(jq -r '.follower.sequence' <<<"$status") >= target)); then
      info "ok: $replica caught up with $upstream at seq $target"
      return 0
    fi
    sleep 0.1
  done
  fail "$replica did not catch up with $upstream (seq $target) in $limit s: $(jq -c .follower <<<"$status")"
}

# content_digest INSTANCE TOKEN PACKAGE... — per package: dist-tags, and each
# version with its integrity and deprecation (no revisions: those are per
# instance), from full packuments.
content_digest() {
  digest_instance "$@" | grep -v ' rev ' || true
}

# tarball_requests INSTANCE — tarball GETs the instance has served (metrics).
# A follower preparing a large window takes its tarballs through the bulk
# route instead ("POST /_bulk"): count what it fetched with tarballs_fetched.
tarball_requests() {
  curl -sS "${ADMIN[$1]}/metrics" |
    awk '/^npme_http_requests_total\{route="tarball"/ { n += $2 } END { print n + 0 }'
}

# tarballs_fetched REPLICA — tarballs REPLICA's follower has downloaded and
# committed since the instance started, by single GETs and bulk answers.
tarballs_fetched() {
  "$NPME" --root "$T/$1" status --json | jq -r '.follower.tarballs_fetched'
}

# bulk_publish INSTANCE TOKEN LIST — PUTs every body of a gen_packages.js
# list (4 at a time); every one must get 201.
bulk_publish() {
  local instance="$1" token="$2" list="$3"
  local url="${REGISTRY[$instance]}"
  info "publishing $(wc -l <"$list") bodies to $instance"
  awk -v u="$url" '{ n = $1; sub("/", "%2f", n); print u "/" n, $3 }' "$list" |
    BULK_TOKEN="$token" xargs -P 4 -n 2 sh -c 'curl -sS -o /dev/null -w "%{http_code}\n" -X PUT \
      -H "Content-Type: application/json" -H "Authorization: Bearer $BULK_TOKEN" --data-binary "@$1" "$0"' \
      >"$T/bulk.status"
  local bad
  bad="$(grep -vc '^201$' "$T/bulk.status" || true)"
  [[ "$bad" == 0 ]] || fail "bulk publish: $bad of $(wc -l <"$T/bulk.status") answers were not 201"
}

# verify_tarballs INSTANCE TOKEN NAME... — every version's tarball file on
# INSTANCE exists and matches the integrity its packument states.
verify_tarballs() {
  local instance="$1" token="$2"
  shift 2
  local name version integrity
  for name in "$@"; do
    while read -r version integrity; do
      local file
      file="$(tarball_path "$instance" "$name" "$version")"
      [[ -f "$file" ]] || fail "$instance: tarball of $name@$version is missing"
      [[ "$(sri_sha512 "$file")" == "$integrity" ]] || fail "$instance: tarball of $name@$version does not match"
    done < <(curl -sS -H "Authorization: Bearer $token" "${REGISTRY[$instance]}/${name/\//%2f}" |
      jq -r '.versions | to_entries[] | "\(.key) \(.value.dist.integrity)"')
  done
  info "ok: every tarball of $# packages on $instance matches its integrity"
}
