#!/usr/bin/env bash
# Opt-in: installs express@4 through a read-through instance whose uplink is
# a real public registry, with an empty npm cache, and checks that every
# integrity in package-lock.json equals the public registry's. Skipped
# (exit 77) unless NPME_TEST_PUBLIC_REGISTRY names a registry URL, e.g.
#   NPME_TEST_PUBLIC_REGISTRY="$(npm config get registry)" ctest -R uplink_public
if [[ -z "${NPME_TEST_PUBLIC_REGISTRY:-}" ]]; then
  echo "SKIP: set NPME_TEST_PUBLIC_REGISTRY to a registry URL to run this opt-in test"
  exit 77
fi
source "$(dirname "$0")/lib.sh"

public="${NPME_TEST_PUBLIC_REGISTRY%/}"
mkdir -p "$T/pub"
printf '{"uplink.url":"%s","auth.installs":"none"}\n' "$public" >"$T/pub/settings.json"
start_instance pub

step "npm install express@4 through the read-through instance (empty npm cache)"
mkdir -p "$T/app"
echo '{"name":"app","version":"1.0.0","private":true}' >"$T/app/package.json"
(cd "$T/app" && npm_as pub "" -- install express@4) >/dev/null
node -e 'require(process.argv[1])' "$T/app/node_modules/express" || fail "express does not load"
count=0
while IFS=$'\t' read -r path integrity; do
  name="${path##*node_modules/}"
  version="$(jq -r --arg p "$path" '.packages[$p].version' "$T/app/package-lock.json")"
  expected="$(curl -sS --max-time 60 -H 'Accept: application/vnd.npm.install-v1+json' "$public/${name/\//%2f}" |
    jq -r --arg v "$version" '.versions[$v].dist.integrity')"
  [[ "$expected" == "$integrity" ]] || fail "$name@$version: lockfile integrity $integrity, public registry $expected"
  count=$((count + 1))
done < <(jq -r '.packages | to_entries[] | select(.key != "") | "\(.key)\t\(.value.integrity)"' "$T/app/package-lock.json")
((count > 50)) || fail "only $count packages installed"
info "ok: $count lockfile integrities equal the public registry's"
status="$("$NPME" --root "$T/pub" status --json)"
info "uplink: $(jq -c .uplink <<<"$status")"
stop_instance pub
