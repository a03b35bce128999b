# `npme settings` and `npme status` against a running instance: list, get,
# set (all forms, npmE names), secrets, bad input that must change nothing
# (file byte for byte, running values), the admin API's own errors, --offline,
# and the status document.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$T/main"
SETTINGS="$ROOT/settings.json"
start_instance main
ADMIN_TOKEN="$(jq -r '."admin.token"' "$SETTINGS")"

# settings_doc — every setting with secrets revealed, straight from the API:
# what the running instance uses.
settings_doc() {
  curl -sS --max-time 10 -H "Authorization: Bearer $ADMIN_TOKEN" "$ADMIN_URL/api/v1/settings?reveal=true" |
    jq -S -c '.settings | map({(.key): .value}) | add'
}

# get KEY [flags...] — `npme settings get`, stdout only.
get() {
  "$NPME" settings get "$@" --root "$ROOT"
}

# snapshot — remembers the settings file and the running values.
snapshot() {
  cp -p "$SETTINGS" "$T/settings.before"
  RUNNING_BEFORE="$(settings_doc)"
}

# unchanged WHAT — the settings file is byte for byte what snapshot saw, and
# so are the running values.
unchanged() {
  cmp "$T/settings.before" "$SETTINGS" || fail "$1: settings.json changed"
  info "ok: settings.json byte for byte unchanged"
  # Compared whole, shown only as a diff: the document holds the secrets.
  local after
  after="$(settings_doc)"
  if [[ "$after" != "$RUNNING_BEFORE" ]]; then
    diff <(jq . <<<"$RUNNING_BEFORE") <(jq . <<<"$after") >&2 || true
    fail "$1: the running settings changed"
  fi
  info "ok: running settings unchanged ($(jq length <<<"$after") keys)"
}

# refused_set 'MESSAGE PARTS|...' ARGS... — `settings set ARGS` exits 2 with
# each part in the message (human and --json), and nothing changes.
refused_set() {
  local parts="$1" part
  shift
  snapshot
  expect_exit 2 run_npme settings set "$@" --root "$ROOT"
  IFS='|' read -r -a part <<<"$parts"
  local p
  for p in "${part[@]}"; do
    assert_contains "$LAST_OUTPUT" "$p" "error message of 'settings set $*'"
  done
  expect_exit 2 run_npme settings set "$@" --root "$ROOT" --json
  jq -e '.error.code | type == "string"' <<<"$LAST_STDOUT" >/dev/null ||
    fail "--json error is not {\"error\":{\"code\":...}}: $LAST_STDOUT"
  for p in "${part[@]}"; do
    assert_contains "$(jq -r .error.message <<<"$LAST_STDOUT")" "$p" "--json error message of 'settings set $*'"
  done
  unchanged "settings set $*"
}

# patch BODY_ARGS... — PATCH /api/v1/settings with curl (admin token unless
# the arguments bring their own Authorization header).
patch() {
  http PATCH "$ADMIN_URL/api/v1/settings" -H 'Content-Type: application/json' "$@"
}

# error_shape — the last response is exactly {"error":{"code":str,"message":str}}.
error_shape() {
  jq -e '(keys == ["error"]) and (.error | (keys == ["code", "message"]) and (.code | type == "string")
         and (.message | type == "string" and length > 0))' <<<"$HTTP_BODY" >/dev/null ||
    fail "error body is not {\"error\":{\"code\",\"message\"}}: $HTTP_BODY"
  info "ok: error body has code '$(jq -r .error.code <<<"$HTTP_BODY")'"
}

step "settings list: a table with every key and its npmE name"
expect_exit 0 run_npme settings list --root "$ROOT"
LIST="$LAST_STDOUT"
assert_eq "KEY VALUE NPME NAME" "$(head -n 1 <<<"$LIST" | tr -s ' ')" "table header"
for row in "publication all allowpublishes" "upstream.policy white-list remote_policy" \
  "auth.installs scoped authfetch, authglobal" "upstream.url - couch_url_remote" \
  "storage.data $ROOT/data data_host_path" "storage.metadata $ROOT/couchdb couchdb_host_path" \
  "storage.packages $ROOT/packages packages_host_path" "registry.url $REGISTRY_URL canonical_url" \
  "secret ******** -" "admin.token ******** -"; do
  assert_contains "$(tr -s ' ' <<<"$LIST")" "$row" "settings list row"
done
assert_eq 53 "$(wc -l <<<"$LIST")" "lines of settings list (header + 52 keys)"
# Columns are aligned: the value column starts at the same offset on every row.
VALUE_COLUMN="$(head -n 1 <<<"$LIST" | grep -bo 'VALUE' | cut -d: -f1)"
while IFS= read -r line; do
  key="${line%% *}"
  rest="${line#"$key"}"
  spaces="${rest%%[! ]*}"
  assert_eq "$VALUE_COLUMN" "$((${#key} + ${#spaces}))" "value column of row '$key'"
done < <(tail -n +2 <<<"$LIST")
assert_not_contains "$LIST" "$ADMIN_TOKEN" "settings list (must not show the admin token)"

step "settings list --json: one document, secrets redacted unless --reveal"
expect_exit 0 run_npme settings list --json --root "$ROOT"
LIST_JSON="$LAST_STDOUT"
assert_eq 52 "$(jq '.settings | length' <<<"$LIST_JSON")" "settings in list --json"
assert_eq "registry.url registry.listen registry.max_body registry.max_connections_per_client registry.trusted_proxies registry.tls_cert registry.tls_key admin.listen admin.max_connections_per_client admin.tls_cert admin.tls_key admin.token admin.console_idle secret upstream.url upstream.secret upstream.policy upstream.ca_file publication auth.installs uplink.url uplink.token uplink.policy uplink.private uplink.ca_file uplink.maxage uplink.audit replication.sync_replicas replication.sync_timeout replication.sync_mode replication.follower_timeout ha.etcd ha.cluster ha.ttl ha.loop ha.max_lag ha.url ha.etcd_ca ha.etcd_cert ha.etcd_key ha.etcd_user ha.etcd_password network.http_proxy network.ca_file storage.metadata storage.packages storage.data storage.min_free audit.max_size audit.keep snapshot.dir scrub.interval" \
  "$(jq -r '[.settings[].key] | join(" ")' <<<"$LIST_JSON")" "keys in display order"
assert_eq '["allowpublishes"]' "$(jq -c '.settings[] | select(.key == "publication") | .aliases' <<<"$LIST_JSON")" \
  "aliases of publication"
assert_eq '["authfetch","authglobal"]' \
  "$(jq -c '.settings[] | select(.key == "auth.installs") | .aliases' <<<"$LIST_JSON")" "aliases of auth.installs"
assert_eq "********" "$(jq -r '.settings[] | select(.key == "admin.token") | .value' <<<"$LIST_JSON")" "admin.token in list"
assert_eq "true" "$(jq -r '.settings[] | select(.key == "secret") | .secret' <<<"$LIST_JSON")" "secret flagged secret"
assert_not_contains "$LIST_JSON" "$ADMIN_TOKEN" "settings list --json"
expect_exit 0 run_npme settings list --json --reveal --root "$ROOT"
assert_eq "$ADMIN_TOKEN" "$(jq -r '.settings[] | select(.key == "admin.token") | .value' <<<"$LAST_STDOUT")" \
  "admin.token in list --reveal"

step "settings get: the value alone; secrets only with --reveal"
assert_eq "all" "$(get publication)" "settings get publication"
assert_eq "all" "$(get allowpublishes)" "settings get allowpublishes (npmE name)"
assert_eq "$REGISTRY_URL" "$(get registry.url)" "settings get registry.url"
assert_eq "$(printf 'white-list\n' | od -c)" "$(get remote_policy | od -c)" "exact bytes of settings get remote_policy"
assert_eq "********" "$(get secret)" "settings get secret"
assert_eq "********" "$(get admin.token)" "settings get admin.token"
SECRET="$(get secret --reveal)"
assert_eq "$(jq -r .secret "$SETTINGS")" "$SECRET" "settings get secret --reveal"
[[ "$SECRET" =~ ^[A-Za-z0-9]{36}$ ]] || fail "secret '$SECRET' is not 36 random characters"
assert_eq "$ADMIN_TOKEN" "$(get admin.token --reveal)" "settings get admin.token --reveal"
assert_eq "" "$(get upstream.secret)" "settings get upstream.secret (empty is not redacted)"
expect_exit 0 run_npme settings get publication --json --root "$ROOT"
assert_eq "publication all true" "$(jq -r '"\(.key) \(.value) \(.default)"' <<<"$LAST_STDOUT")" "settings get --json"

step "settings set: KEY=VALUE, KEY VALUE, several pairs at once"
expect_exit 0 run_npme settings set publication=scoped --root "$ROOT"
assert_contains "$LAST_OUTPUT" "changed publication" "set output"
assert_eq scoped "$(get publication)" "publication after KEY=VALUE"
assert_eq scoped "$(jq -r .publication "$SETTINGS")" "publication in settings.json"
expect_exit 0 run_npme settings set publication all --root "$ROOT"
assert_eq all "$(get publication)" "publication after KEY VALUE"
expect_exit 0 run_npme settings set --json upstream.policy=mirror auth.installs=none registry.max_body=32M --root "$ROOT"
assert_eq '["auth.installs","registry.max_body","upstream.policy"]' "$(jq -c '.changed | sort' <<<"$LAST_STDOUT")" \
  "changed keys of a three-pair set"
assert_eq "mirror none 32M" "$(get upstream.policy) $(get auth.installs) $(get registry.max_body)" "values after three pairs"
expect_exit 0 run_npme settings set --json upstream.policy=mirror --root "$ROOT"
assert_eq '[]' "$(jq -c '.changed' <<<"$LAST_STDOUT")" "changed keys of a set to the current value"
assert_eq 600 "$(stat -c '%a' "$SETTINGS")" "mode of settings.json after set"

step "settings unset: back to the default, out of the file; all or nothing"
expect_exit 0 run_npme settings set publication=scoped registry.max_body=16M --root "$ROOT"
expect_exit 0 run_npme settings unset publication --root "$ROOT"
assert_contains "$LAST_OUTPUT" "publication is back to its default" "unset output"
assert_eq all "$(get publication)" "publication after unset"
assert_eq null "$(jq '.publication' "$SETTINGS")" "publication in settings.json after unset"
expect_exit 0 run_npme settings get publication --json --root "$ROOT"
assert_eq true "$(jq -r .default <<<"$LAST_STDOUT")" "publication shown as a default"
expect_exit 0 run_npme settings unset --json publication --root "$ROOT"
assert_eq '[]' "$(jq -c .changed <<<"$LAST_STDOUT")" "changed keys of an unset of a default"
before="$(cat "$SETTINGS")"
expect_exit 2 run_npme settings unset registry.max_body no.such.key --root "$ROOT"
assert_contains "$LAST_OUTPUT" "no.such.key" "error of an unknown key"
expect_exit 2 run_npme settings unset admin.token --root "$ROOT"
assert_contains "$LAST_OUTPUT" "cannot be unset" "error of unsetting admin.token"
expect_exit 2 run_npme settings unset secret --root "$ROOT"
assert_eq "$before" "$(cat "$SETTINGS")" "settings.json after refused unsets"
expect_exit 0 run_npme settings unset registry.max_body --root "$ROOT"
assert_eq 64M "$(get registry.max_body)" "registry.max_body after unset"
# Through the admin API: null in PATCH; npmE names work too.
expect_exit 0 run_npme settings set allowpublishes=read-only --root "$ROOT"
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"allowpublishes":null}'
assert_eq 200 "$HTTP_STATUS" "PATCH with null for an npmE name"
assert_eq '["publication"]' "$(jq -c .changed <<<"$HTTP_BODY")" "changed keys of PATCH null"
assert_eq all "$(get publication)" "publication after PATCH null"
assert_eq 600 "$(stat -c '%a' "$SETTINGS")" "mode of settings.json after unset"

step "settings set accepts the npmE names"
expect_exit 0 run_npme settings set allowpublishes=read-only --root "$ROOT"
assert_eq read-only "$(get publication)" "publication after allowpublishes=read-only"
expect_exit 0 run_npme settings set remote_policy=white-list --root "$ROOT"
assert_eq white-list "$(get upstream.policy)" "upstream.policy after remote_policy=white-list"
expect_exit 0 run_npme settings set remote_policy=mirror --root "$ROOT"
assert_eq mirror "$(get upstream.policy)" "upstream.policy after remote_policy=mirror"
expect_exit 0 run_npme settings set authfetch=true --root "$ROOT"
assert_eq all "$(get auth.installs)" "auth.installs after authfetch=true"
expect_exit 0 run_npme settings set authglobal=false --root "$ROOT"
assert_eq scoped "$(get auth.installs)" "auth.installs after authglobal=false"
expect_exit 0 run_npme settings set canonical_url=https://npm.example.com/ allowpublishes=all --root "$ROOT"
assert_eq https://npm.example.com "$(get registry.url)" "registry.url after canonical_url= (trailing / dropped)"
assert_eq all "$(get publication)" "publication after allowpublishes=all"
jq -e 'keys - ["registry.url","registry.max_body","admin.token","secret","upstream.policy","publication","auth.installs"] == []' \
  "$SETTINGS" >/dev/null || fail "settings.json holds other keys than the canonical ones: $(cat "$SETTINGS")"
info "ok: settings.json keeps canonical keys only"

step "canonical_url applies live: tarball URLs follow it"
TOKEN_USER=alice
add_user main "$TOKEN_USER" 'alice-password-1'
TOKEN="$(create_token main "$TOKEN_USER")"
make_publish_body "$T/p1" npme-it-set-a 1.0.0 "$T/p1.json"
put_json "$(pkg_url npme-it-set-a)" "$T/p1.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish of npme-it-set-a 1.0.0"
http GET "$(pkg_url npme-it-set-a)" -H 'Accept: application/json'
assert_eq "https://npm.example.com/npme-it-set-a/-/npme-it-set-a-1.0.0.tgz" \
  "$(jq -r '.versions["1.0.0"].dist.tarball' <<<"$HTTP_BODY")" "tarball URL after canonical_url"
expect_exit 0 run_npme settings set "canonical_url=$REGISTRY_URL" --root "$ROOT"
http GET "$(pkg_url npme-it-set-a)" -H 'Accept: application/json'
assert_eq "$REGISTRY_URL/npme-it-set-a/-/npme-it-set-a-1.0.0.tgz" \
  "$(jq -r '.versions["1.0.0"].dist.tarball' <<<"$HTTP_BODY")" "tarball URL after canonical_url back"

step "setting a listen address says a restart is needed"
snapshot
expect_exit 0 run_npme settings set registry.listen=127.0.0.1:18080 --root "$ROOT"
assert_contains "$LAST_OUTPUT" "restart" "output of settings set registry.listen"
assert_eq 127.0.0.1:18080 "$(jq -r '."registry.listen"' "$SETTINGS")" "registry.listen in settings.json"
expect_exit 0 run_npme settings set --json admin.listen=127.0.0.1:18800 --root "$ROOT"
assert_eq "true" "$(jq -r .restart_required <<<"$LAST_STDOUT")" "restart_required of settings set admin.listen"
# The running instance keeps serving where it is until restarted.
http GET "$REGISTRY_URL/-/ping"
assert_eq 200 "$HTTP_STATUS" "ping on the old address"
expect_exit 0 run_npme settings set --json publication=all auth.installs=scoped --root "$ROOT"
assert_eq "false" "$(jq -r .restart_required <<<"$LAST_STDOUT")" "restart_required of a live setting"
# Port 0 again, for the restart below.
expect_exit 0 run_npme settings set registry.listen=127.0.0.1:0 admin.listen=127.0.0.1:0 --root "$ROOT"

step "bad input: exit 2, the key and what is allowed in the message, nothing changed"
refused_set "nosuch|known settings are|publication|allowpublishes" nosuch=1
refused_set "upstream.url|http://|https://" upstream.url=ftp://up.example.com
refused_set "upstream.url|http://|https://" couch_url_remote=not-a-url
refused_set "registry.url|http://|https://" canonical_url=
refused_set "upstream.policy|mirorr|mirror, white-list" remote_policy=mirorr
refused_set "publication|allowed values are all, read-only, scoped" publication=readonly
refused_set "auth.installs|allowed values are scoped, all, none" authfetch=maybe
refused_set "registry.listen|host:port" registry.listen=127.0.0.1
refused_set "admin.listen|host:port" admin.listen=localhost:http
refused_set "storage.data|absolute path" storage.data=relative/data
refused_set "storage.packages|absolute path" packages_host_path=packages
refused_set "registry.max_body|64M" registry.max_body=lots
refused_set "admin.token|16 characters" admin.token=short
# One bad value among several good ones: none of them applies.
refused_set "upstream.policy|mirror, white-list" publication=read-only upstream.policy=mirorr auth.installs=all
refused_set "nosuch" publication=scoped nosuch=1 remote_policy=mirror
# Malformed command lines.
snapshot
expect_exit 2 run_npme settings set publication --root "$ROOT"
expect_exit 2 run_npme settings set a b c --root "$ROOT"
expect_exit 2 run_npme settings set =x --root "$ROOT"
expect_exit 2 run_npme settings set --root "$ROOT"
expect_exit 2 run_npme settings get nosuch --root "$ROOT"
assert_contains "$LAST_OUTPUT" "nosuch" "settings get of an unknown key"
unchanged "malformed settings command lines"

step "admin API: bad PATCH bodies get a JSON 400 and change nothing"
snapshot
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"publication":'
expect_json_error 400
error_shape
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data 'publication=read-only'
expect_json_error 400
error_shape
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '["publication","read-only"]'
expect_json_error 400
error_shape
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"publication":"read-only","upstream.policy":true}'
expect_json_error 400
error_shape
assert_contains "$HTTP_BODY" "upstream.policy" "error of a non-string value"
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"registry.listen":8080}'
expect_json_error 400
error_shape
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"publication":null,"allowpublishes":"all"}'
expect_json_error 400
error_shape
assert_contains "$HTTP_BODY" "both set and unset" "error of a key set and unset at once"
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"admin.token":null}'
expect_json_error 400
error_shape
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"publication":"scoped","no.such":null}'
expect_json_error 400
error_shape
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"publication":"read-only","remote_policy":"mirorr"}'
expect_json_error 400
error_shape
assert_contains "$HTTP_BODY" "mirror, white-list" "error of a policy typo"
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"no.such":"1"}'
expect_json_error 400
error_shape
unchanged "bad PATCH bodies"

step "admin API: missing or wrong admin token (401), oversized body (413)"
snapshot
patch --data '{"publication":"read-only"}'
expect_json_error 401
error_shape
patch -H "Authorization: Bearer wrong-token-wrong-token" --data '{"publication":"read-only"}'
expect_json_error 401
error_shape
patch -H "Authorization: Bearer ${ADMIN_TOKEN}x" --data '{"publication":"read-only"}'
expect_json_error 401
patch -H "Authorization: Basic $(printf 'admin:%s' "$ADMIN_TOKEN" | base64 -w0)" --data '{"publication":"read-only"}'
expect_json_error 401
for path in /api/v1/settings /api/v1/settings/publication /api/v1/status "/api/v1/settings/secret?reveal=true"; do
  http GET "$ADMIN_URL$path"
  expect_json_error 401
  error_shape
  assert_not_contains "$HTTP_BODY" "$SECRET" "401 body of $path"
done
# 2 MiB of valid JSON: refused for its size alone.
node -e 'process.stdout.write(JSON.stringify({publication: "read-only", pad: "x".repeat(2 << 20)}))' >"$T/big.json"
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data-binary "@$T/big.json"
expect_json_error 413
error_shape
unchanged "unauthorized and oversized PATCHes"

step "admin API: a good PATCH answers with what changed"
patch -H "Authorization: Bearer $ADMIN_TOKEN" --data '{"allowpublishes":"scoped","remote_policy":"white-list"}'
assert_eq 200 "$HTTP_STATUS" "PATCH status"
assert_eq '{"changed":["publication","upstream.policy"],"follower_restart":true,"restart_required":false}' \
  "$(jq -S -c '.changed |= sort' <<<"$HTTP_BODY")" "PATCH answer"
http GET "$ADMIN_URL/api/v1/settings/allowpublishes" -H "Authorization: Bearer $ADMIN_TOKEN"
assert_eq "publication scoped" "$(jq -r '"\(.key) \(.value)"' <<<"$HTTP_BODY")" "GET /api/v1/settings/allowpublishes"
http GET "$ADMIN_URL/api/v1/settings/nosuch" -H "Authorization: Bearer $ADMIN_TOKEN"
expect_json_error 400
error_shape

step "status: human table and --json"
make_publish_body "$T/p2" npme-it-set-a 1.1.0 "$T/p2.json"
make_publish_body "$T/p3" @npme-it/set-b 2.0.0 "$T/p3.json"
expect_exit 0 run_npme settings set publication=all --root "$ROOT"
put_json "$(pkg_url npme-it-set-a)" "$T/p2.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish of npme-it-set-a 1.1.0"
put_json "$(pkg_url @npme-it/set-b)" "$T/p3.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish of @npme-it/set-b 2.0.0"
TARBALL_BYTES=$(($(stat -c %s "$T/p1.tgz") + $(stat -c %s "$T/p2.tgz") + $(stat -c %s "$T/p3.tgz")))
sleep 1
expect_exit 0 run_npme status --json --root "$ROOT"
STATUS="$LAST_STDOUT"
assert_eq primary "$(jq -r .role <<<"$STATUS")" "status role"
assert_eq all "$(jq -r .publication <<<"$STATUS")" "status publication"
assert_eq "2 3 3 $TARBALL_BYTES" \
  "$(jq -r '.counts | "\(.packages) \(.versions) \(.tarballs) \(.tarball_bytes)"' <<<"$STATUS")" \
  "status counts (packages versions tarballs bytes)"
assert_eq "$("$NPME" --version | awk '{print $NF}')" "$(jq -r .version <<<"$STATUS")" "status version"
jq -e '.uptime_seconds | type == "number" and . >= 1' <<<"$STATUS" >/dev/null ||
  fail "status uptime_seconds is not a number >= 1: $STATUS"
info "ok: uptime $(jq .uptime_seconds <<<"$STATUS") s"
assert_eq "$REGISTRY_URL" "$(jq -r .registry_url <<<"$STATUS")" "status registry_url"
assert_eq "" "$(jq -r .upstream.url <<<"$STATUS")" "status upstream.url"
assert_eq white-list "$(jq -r .upstream.policy <<<"$STATUS")" "status upstream.policy"
assert_eq ok "$(jq -r .health <<<"$STATUS")" "status health"
expect_exit 0 run_npme status --root "$ROOT"
TABLE="$(tr -s ' ' <<<"$LAST_STDOUT")"
assert_not_contains "$TABLE" "follower" "status table of a primary (no follower lines)"
for row in "role primary" "publication all" "auth installs scoped" \
  "packages 2" "versions 3" "tarballs 3" "upstream -" \
  "upstream policy white-list" "version $(jq -r .version <<<"$STATUS")" "health ok"; do
  assert_contains "$TABLE" "$row" "status table"
done
UPTIME_RE='uptime [0-9]+ s'
[[ "$TABLE" =~ $UPTIME_RE ]] || fail "status table has no uptime: $TABLE"
info "ok: status table has an uptime"
VALUE_COLUMN="$(grep -m1 '^role ' <<<"$LAST_STDOUT" | grep -bo 'primary' | cut -d: -f1)"
ROW_RE='^([a-z]+( [a-z]+)*)( +)[^ ]'
while IFS= read -r line; do
  [[ "$line" =~ $ROW_RE ]] || fail "status row '$line' is not 'label  value'"
  assert_eq "$VALUE_COLUMN" "$((${#BASH_REMATCH[1]} + ${#BASH_REMATCH[3]}))" "value column of status row '${BASH_REMATCH[1]}'"
done <<<"$LAST_STDOUT"

step "status: role becomes replica when upstream.url is set"
expect_exit 0 run_npme settings set --json couch_url_remote=http://127.0.0.1:9/ --root "$ROOT"
assert_eq "true" "$(jq -r .follower_restart <<<"$LAST_STDOUT")" "follower_restart of setting upstream.url"
expect_exit 0 run_npme status --json --root "$ROOT"
assert_eq replica "$(jq -r .role <<<"$LAST_STDOUT")" "status role with an upstream"
assert_eq http://127.0.0.1:9 "$(jq -r .upstream.url <<<"$LAST_STDOUT")" "status upstream.url"
expect_exit 0 run_npme status --root "$ROOT"
assert_contains "$(tr -s ' ' <<<"$LAST_STDOUT")" "role replica" "status table with an upstream"
expect_exit 0 run_npme settings set upstream.url= --root "$ROOT"
expect_exit 0 run_npme status --json --root "$ROOT"
assert_eq primary "$(jq -r .role <<<"$LAST_STDOUT")" "status role after clearing upstream.url"

step "--offline is refused while the instance runs (exit 6, file unchanged)"
snapshot
expect_exit 6 run_npme settings set --offline publication=read-only --root "$ROOT"
assert_contains "$LAST_OUTPUT" "running" "error of settings set --offline on a running instance"
expect_exit 6 run_npme settings set --offline --json publication=read-only --root "$ROOT"
assert_eq precondition "$(jq -r .error.code <<<"$LAST_STDOUT")" "--json error code"
unchanged "settings set --offline on a running instance"

step "--offline on a stopped instance persists and is in effect after start"
stop_instance main
# registry.url was set explicitly above (to this run's port): back to its
# default, so that the restart advertises its new port.
expect_exit 0 run_npme settings unset --offline canonical_url --root "$ROOT"
assert_contains "$LAST_OUTPUT" "registry.url is back to its default" "output of settings unset --offline"
assert_eq null "$(jq '."registry.url"' "$SETTINGS")" "registry.url in settings.json after unset --offline"
expect_exit 0 run_npme settings set --offline publication=read-only remote_policy=mirror --root "$ROOT"
assert_contains "$LAST_OUTPUT" "changed publication" "output of settings set --offline"
assert_eq read-only "$(get publication --offline)" "settings get --offline publication"
assert_eq read-only "$(jq -r .publication "$SETTINGS")" "publication in settings.json"
assert_eq 600 "$(stat -c '%a' "$SETTINGS")" "mode of settings.json after an offline set"
cp -p "$SETTINGS" "$T/settings.before"
expect_exit 2 run_npme settings set --offline publication=read-only upstream.policy=mirorr --root "$ROOT"
assert_contains "$LAST_OUTPUT" "mirror, white-list" "offline error message"
cmp "$T/settings.before" "$SETTINGS" || fail "a refused offline set changed settings.json"
info "ok: settings.json byte for byte unchanged"
# The admin API is down: an online set says so (exit 3) and changes nothing.
expect_exit 3 run_npme settings set publication=all --root "$ROOT"
cmp "$T/settings.before" "$SETTINGS" || fail "a set against a stopped instance changed settings.json"
start_instance main
assert_eq read-only "$(get publication)" "publication after restart"
assert_eq mirror "$(get upstream.policy)" "upstream.policy after restart"
make_publish_body "$T/p4" npme-it-set-a 1.2.0 "$T/p4.json"
put_json "$(pkg_url npme-it-set-a)" "$T/p4.json" "$TOKEN"
expect_json_error 403
assert_contains "$HTTP_BODY" "read-only" "publish after an offline read-only"
stop_instance main
