#!/usr/bin/env bash
# Failover behind a real load balancer, with the reference configurations of
# deploy/ and the real npm: a primary and two replicas behind HAProxy (and
# nginx, when installed); the primary is killed with SIGKILL; installs through
# the load balancer keep working and publishes fail with a clear error;
# `npme promote-to-primary --repoint` on replica 1 and a reload of the load
# balancer with the new primary bring publishes back, and they reach
# replica 2; the old primary comes back as a replica of the new one and
# converges. Also checks deploy/npme.service with systemd-analyze when there.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/replication_lib.sh"
source "$(dirname "$0")/failover_lib.sh"

command -v haproxy >/dev/null 2>&1 ||
  fail "haproxy is not installed: this test runs deploy/haproxy.cfg with Debian's haproxy (apt-get install haproxy)"
HAVE_NGINX=0
if have_tool nginx "the nginx half of this test (deploy/nginx.conf)"; then
  HAVE_NGINX=1
fi
INSTALL_RUNS=20

if command -v systemd-analyze >/dev/null 2>&1; then
  step "deploy/npme.service passes systemd-analyze verify"
  # A root with the unit, the system's own units and an executable at the
  # ExecStart path: verify checks that the command exists.
  root="$T/systemd-root"
  mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/bin"
  # ExecReload's /bin/kill, as on the machine it is installed on.
  printf '#!/bin/sh\nexec /usr/bin/env kill "$@"\n' >"$root/bin/kill"
  chmod 755 "$root/bin/kill"
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
  printf '#!/bin/sh\nexec %q "$@"\n' "$NPME" >"$root/usr/local/bin/npme"
  chmod 755 "$root/usr/local/bin/npme"
  cp "$DEPLOY/npme.service" "$root/etc/systemd/system/npme.service"
  out="$(systemd-analyze verify --man=no --root="$root" /etc/systemd/system/npme.service 2>&1)" ||
    fail "systemd-analyze verify failed: $out"
  # Unknown keys and bad values are only warnings: there must be none.
  assert_eq "" "$out" "systemd-analyze's warnings about deploy/npme.service"
  rm -rf "$root"
else
  info "systemd-analyze not installed: deploy/npme.service not verified"
fi

# One admin token for the three instances, so that --repoint can use one
# token file (`admin.token` is a setting; --offline before the first start).
ADMIN_TOKEN_FILE="$T/admin.token"
openssl rand -hex 24 >"$ADMIN_TOKEN_FILE"
chmod 600 "$ADMIN_TOKEN_FILE"
for name in primary replica1 replica2; do
  mkdir -p "$T/$name"
  "$NPME" --root "$T/$name" settings set --offline "admin.token=$(cat "$ADMIN_TOKEN_FILE")" >/dev/null ||
    fail "cannot set admin.token of $name offline"
done

start_instance primary
start_instance replica1
start_instance replica2
add_user primary alice alice-password-1
TOKEN="$(create_token primary alice)"
make_replica replica1 primary
make_replica replica2 primary

start_haproxy primary replica1 replica2
LB="${REGISTRY[lb]}"
step "every instance's registry.url is the load balancer's URL"
for name in primary replica1 replica2; do
  run_npme --root "$T/$name" settings set "registry.url=$LB" >/dev/null
done
if ((HAVE_NGINX)); then
  start_nginx primary replica1 replica2
fi

step "publish and install through the load balancer"
make_package "$T/pkg-dep" fo-dep 1.0.0
make_package "$T/pkg-app" fo-lib 1.0.0 fo-dep@^1.0.0
(cd "$T/pkg-dep" && npm_lb lb "$TOKEN" "$T/cache-publish" -- publish) >/dev/null
(cd "$T/pkg-app" && npm_lb lb "$TOKEN" "$T/cache-publish" -- publish) >/dev/null
wait_synced replica1 primary
wait_synced replica2 primary
mkdir -p "$T/app"
echo '{"name":"app","version":"1.0.0","private":true}' >"$T/app/package.json"
(cd "$T/app" && npm_lb lb "$TOKEN" "$T/cache-0" -- install fo-lib) >/dev/null
lock="$T/app/package-lock.json"
assert_eq 1.0.0 "$(jq -r '.packages["node_modules/fo-dep"].version' "$lock")" "fo-dep installed through the LB"
assert_contains "$(jq -r '.packages["node_modules/fo-lib"].resolved' "$lock")" "$LB/fo-lib/-/" \
  "tarball URL (the load balancer's)"
assert_eq "$(sri_sha512 "$(tarball_path primary fo-lib 1.0.0)")" \
  "$(jq -r '.packages["node_modules/fo-lib"].integrity' "$lock")" "integrity of fo-lib"

step "reads are spread over every instance, writes go to the primary"
declare -A before_reads=()
for name in primary replica1 replica2; do
  before_reads[$name]="$(packument_requests "$name")"
done
for ((i = 0; i < 9; i++)); do
  curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "$LB/fo-lib" || fail "GET $LB/fo-lib failed"
done
for name in primary replica1 replica2; do
  served=$(($(packument_requests "$name") - ${before_reads[$name]}))
  ((served > 0)) || fail "$name answered none of 9 packument GETs through HAProxy"
  info "ok: $name answered $served of 9 packument GETs"
done
assert_eq 2 "$(db_query primary "select count(*) from docs where id like 'fo-%'")" "packages on the primary"
if ((HAVE_NGINX)); then
  for name in primary replica1 replica2; do
    before_reads[$name]="$(packument_requests "$name")"
  done
  for ((i = 0; i < 9; i++)); do
    curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "${REGISTRY[nginx]}/fo-lib" ||
      fail "GET through nginx failed"
  done
  for name in primary replica1 replica2; do
    served=$(($(packument_requests "$name") - ${before_reads[$name]}))
    ((served > 0)) || fail "$name answered none of 9 packument GETs through nginx"
  done
  info "ok: nginx spreads reads over the three instances"
  make_package "$T/pkg-ngx" @corp/fo-ngx 1.0.0
  (cd "$T/pkg-ngx" && npm_lb nginx "$TOKEN" "$T/cache-publish" -- publish) >/dev/null
  http GET "${REGISTRY[primary]}/@corp%2ffo-ngx" -H "Authorization: Bearer $TOKEN"
  assert_eq 200 "$HTTP_STATUS" "a scoped publish through nginx reached the primary"
  wait_synced replica1 primary
  wait_synced replica2 primary
fi

kill9_instance primary
OLD_PRIMARY_ADDRESS="$(hostport primary)"

step "GETs right after the kill (before the health check notices) are retried on a replica"
for ((i = 0; i < 6; i++)); do
  code="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$LB/fo-dep")"
  assert_eq 200 "$code" "GET $i through HAProxy"
done
# HAProxy's log: actconn/feconn/beconn/srv_conn/retries, "+" when redispatched.
retried="$(grep -cE ' [0-9]+/[0-9]+/[0-9]+/[0-9]+/\+[1-9][0-9]* [0-9]+/[0-9]+ "GET ' "$T/haproxy.log" || true)"
((retried > 0)) || fail "no GET was retried on another instance (HAProxy log: $T/haproxy.log)"
info "ok: $retried GETs went to the dead primary and were answered by a replica"

step "$INSTALL_RUNS npm installs through HAProxy during the outage, each with a fresh cache"
start_s=$SECONDS
for ((i = 1; i <= INSTALL_RUNS; i++)); do
  dir="$T/outage-$i"
  mkdir -p "$dir"
  echo '{"name":"outage","version":"1.0.0","private":true}' >"$dir/package.json"
  if ! (cd "$dir" && npm_lb lb "$TOKEN" "$T/cache-outage-$i" -- install fo-lib) >"$dir.log" 2>&1; then
    cat "$dir.log" >&2
    fail "npm install $i of $INSTALL_RUNS through the load balancer failed during the outage"
  fi
  [[ "$(jq -r .version "$dir/node_modules/fo-dep/package.json")" == 1.0.0 ]] ||
    fail "install $i did not install fo-dep"
done
info "ok: $INSTALL_RUNS of $INSTALL_RUNS installs succeeded in $((SECONDS - start_s)) s"

step "npm publish through HAProxy fails with a clear error"
make_package "$T/pkg-new" fo-new 1.0.0
expect_exit 1 in_dir "$T/pkg-new" npm_lb lb "$TOKEN" "$T/cache-publish" -- publish
assert_contains "$LAST_OUTPUT" "503" "npm's error"
assert_contains "$LAST_OUTPUT" "no primary is available for writes" "npm's error"
if ((HAVE_NGINX)); then
  step "through nginx too: reads work, publishes get the same error"
  for ((i = 0; i < 6; i++)); do
    http GET "${REGISTRY[nginx]}/fo-lib" -H "Authorization: Bearer $TOKEN"
    assert_eq 200 "$HTTP_STATUS" "GET fo-lib through nginx"
    tarball="$(jq -r '.versions["1.0.0"].dist.tarball' <<<"$HTTP_BODY")"
    http GET "${REGISTRY[nginx]}${tarball#"$LB"}" -H "Authorization: Bearer $TOKEN"
    assert_eq 200 "$HTTP_STATUS" "GET the fo-lib tarball through nginx"
  done
  expect_exit 1 in_dir "$T/pkg-new" npm_lb nginx "$TOKEN" "$T/cache-publish" -- publish
  assert_contains "$LAST_OUTPUT" "no primary is available for writes" "npm's error through nginx"
fi

step "promote replica1; --repoint makes replica2 follow it"
epoch_before="$("$NPME" --root "$T/replica1" status --json | jq -r .epoch)"
expect_exit 0 "$NPME" --root "$T/replica1" promote-to-primary --yes \
  --repoint "${ADMIN[replica2]}" --repoint-token-file "$ADMIN_TOKEN_FILE"
status="$("$NPME" --root "$T/replica1" status --json)"
assert_eq primary "$(jq -r .role <<<"$status")" "role of replica1"
assert_eq all "$(jq -r .publication <<<"$status")" "publication of replica1"
assert_eq "" "$(jq -r .upstream.url <<<"$status")" "upstream of replica1"
(($(jq -r .epoch <<<"$status") > epoch_before)) || fail "epoch of replica1 not raised: $(jq -r .epoch <<<"$status")"
info "ok: epoch $epoch_before -> $(jq -r .epoch <<<"$status")"
status="$("$NPME" --root "$T/replica2" status --json)"
assert_eq "${REGISTRY[replica1]}" "$(jq -r .upstream.url <<<"$status")" "upstream of replica2"

reload_haproxy replica1 "$OLD_PRIMARY_ADDRESS" replica2

step "publish through HAProxy succeeds and reaches replica2"
(cd "$T/pkg-new" && npm_lb lb "$TOKEN" "$T/cache-publish" -- publish) >/dev/null
make_package "$T/pkg-lib2" fo-lib 1.1.0 fo-dep@^1.0.0
(cd "$T/pkg-lib2" && npm_lb lb "$TOKEN" "$T/cache-publish" -- publish) >/dev/null
wait_synced replica2 replica1
PACKAGES=(fo-dep fo-lib fo-new)
((HAVE_NGINX)) && PACKAGES+=(@corp/fo-ngx)
digest="$(content_digest replica1 "$TOKEN" "${PACKAGES[@]}")"
assert_contains "$digest" "fo-new version 1.0.0" "content of the new primary"
assert_contains "$digest" "fo-lib tag latest=1.1.0" "content of the new primary"
assert_eq "$digest" "$(content_digest replica2 "$TOKEN" "${PACKAGES[@]}")" "content of replica2"
mkdir -p "$T/app2"
echo '{"name":"app2","version":"1.0.0","private":true}' >"$T/app2/package.json"
(cd "$T/app2" && npm_lb lb "$TOKEN" "$T/cache-after" -- install fo-lib fo-new) >/dev/null
assert_eq 1.1.0 "$(jq -r .version "$T/app2/node_modules/fo-lib/package.json")" "fo-lib installed after the failover"
if ((HAVE_NGINX)); then
  reload_nginx replica1 "$OLD_PRIMARY_ADDRESS" replica2
  make_package "$T/pkg-ngx2" @corp/fo-ngx 1.1.0
  (cd "$T/pkg-ngx2" && npm_lb nginx "$TOKEN" "$T/cache-publish" -- publish) >/dev/null
  http GET "${REGISTRY[replica1]}/@corp%2ffo-ngx" -H "Authorization: Bearer $TOKEN"
  assert_eq 1.1.0 "$(jq -r '."dist-tags".latest' <<<"$HTTP_BODY")" "publish through nginx reached the new primary"
fi

step "the old primary comes back and rejoins as a replica of the new primary"
start_instance primary
use_listen_address primary
secret="$("$NPME" --root "$T/replica1" settings get secret --reveal)"
run_npme --root "$T/primary" settings set "upstream.url=${REGISTRY[replica1]}" "upstream.secret=$secret" \
  upstream.policy=mirror publication=read-only >/dev/null
run_npme --root "$T/primary" reset-follower --wait --timeout 60 >/dev/null
wait_synced primary replica1
status="$("$NPME" --root "$T/primary" status --json)"
assert_eq replica "$(jq -r .role <<<"$status")" "role of the old primary"
assert_eq read-only "$(jq -r .publication <<<"$status")" "publication of the old primary"
assert_eq "$(content_digest replica1 "$TOKEN" "${PACKAGES[@]}")" \
  "$(content_digest primary "$TOKEN" "${PACKAGES[@]}")" "content of the old primary"
verify_tarballs primary "$TOKEN" "${PACKAGES[@]}"
reload_haproxy replica1 primary replica2
for name in replica1 primary replica2; do
  before_reads[$name]="$(packument_requests "$name")"
done
for ((i = 0; i < 9; i++)); do
  curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "$LB/fo-new" || fail "GET $LB/fo-new failed"
done
for name in replica1 primary replica2; do
  served=$(($(packument_requests "$name") - ${before_reads[$name]}))
  ((served > 0)) || fail "$name answered none of 9 packument GETs after the rejoin"
done
info "ok: the three instances serve reads again"

if ((HAVE_NGINX)); then
  stop_nginx
fi
stop_haproxy
# The upstream first: it ends its followers' long polls at once.
stop_instance replica1
stop_instance replica2
stop_instance primary
