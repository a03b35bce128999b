#!/usr/bin/env bash
# HTTPS on both listeners (registry.tls_cert/key, admin.tls_cert/key), with
# a CA, an intermediate and certificates made here by the openssl command:
# TLS 1.2+ only with forward-secret ciphers; the real npm client publishes
# and installs over https with `cafile`; the CLI checks the admin API's
# certificate (--cacert); a follower follows over https with
# upstream.ca_file; SIGHUP swaps the certificate for new connections while
# an open keep-alive connection goes on with the old one; a broken file on
# reload keeps the old certificate and says so in the log and npme status.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$NPME_SOURCE_DIR/tests/integration/replication_lib.sh"

PKI="$T/pki"
mkdir -p "$PKI"
step "make a root CA, an intermediate and two server certificates (localhost, 127.0.0.1)"
(
  cd "$PKI"
  ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
  ec root.key
  openssl req -x509 -new -key root.key -out root.pem -days 30 -subj "/CN=npme test root CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  ec inter.key
  openssl req -new -key inter.key -out inter.csr -subj "/CN=npme test intermediate CA" 2>/dev/null
  printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >inter.ext
  openssl x509 -req -in inter.csr -CA root.pem -CAkey root.key -set_serial 0x100 -days 30 \
    -extfile inter.ext -out inter.pem 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >leaf.ext
  for n in 1 2; do
    ec "leaf$n.key"
    openssl req -new -key "leaf$n.key" -out "leaf$n.csr" -subj "/CN=localhost" 2>/dev/null
    openssl x509 -req -in "leaf$n.csr" -CA inter.pem -CAkey inter.key -set_serial "0x$n$n$n$n" -days 20 \
      -extfile leaf.ext -out "leaf$n.crt" 2>/dev/null
    cat "leaf$n.crt" inter.pem >"chain$n.pem" # the leaf, then the intermediate
  done
  cp chain1.pem server.pem
  cp leaf1.key server.key
  chmod 600 server.key leaf1.key leaf2.key
)
CA="$PKI/root.pem"

step "registry.tls_cert without registry.tls_key: npme serve refuses to start, saying why"
mkdir -p "$T/half"
expect_exit 0 run_npme settings set --offline "registry.tls_cert=$PKI/server.pem" --root "$T/half"
expect_exit 2 run_npme serve --root "$T/half" --registry-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
assert_contains "$LAST_OUTPUT" "registry.tls_cert and registry.tls_key go together" "a lone certificate"
expect_exit 0 run_npme settings set --offline "registry.tls_key=$PKI/leaf2.key" --root "$T/half"
expect_exit 2 run_npme serve --root "$T/half" --registry-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
assert_contains "$LAST_OUTPUT" "does not belong to the certificate" "a key of another certificate"
expect_exit 2 run_npme settings set --offline registry.tls_key=relative/key.pem --root "$T/half"
assert_contains "$LAST_OUTPUT" "expected an absolute path" "a relative key path"

step "an instance with HTTPS on both listeners"
mkdir -p "$T/main"
expect_exit 0 run_npme settings set --offline "registry.tls_cert=$PKI/server.pem" "registry.tls_key=$PKI/server.key" \
  "admin.tls_cert=$PKI/server.pem" "admin.tls_key=$PKI/server.key" --root "$T/main"
start_instance main
[[ "$REGISTRY_URL" == https://127.0.0.1:* ]] || fail "registry URL is not https: $REGISTRY_URL"
[[ "$ADMIN_URL" == https://127.0.0.1:* ]] || fail "admin URL is not https: $ADMIN_URL"
assert_contains "$(cat "$T/main.serve.log")" "(HTTPS)" "the start line"
HOSTPORT="${REGISTRY_URL#https://}"

step "clients that do not know the CA are refused; with it they are served"
rc=0
curl -sS -o /dev/null "$REGISTRY_URL/-/ping" 2>"$T/curl.err" || rc=$?
assert_eq 60 "$rc" "curl without the CA (exit 60: certificate not verified)"
http GET "$REGISTRY_URL/-/ping" --cacert "$CA"
assert_eq 200 "$HTTP_STATUS" "GET /-/ping over https"
rc=0
curl -sS -o /dev/null "http://$HOSTPORT/-/ping" 2>/dev/null || rc=$?
[[ $rc -ne 0 ]] || fail "plain HTTP to the HTTPS port was answered"
http GET "$REGISTRY_URL/-/ping" --cacert "$CA"
assert_eq 200 "$HTTP_STATUS" "served after a plain-HTTP client"

step "TLS 1.2 and 1.3 only, with forward-secret AEAD ciphers"
tls_handshake() { # tls_handshake ARGS... — 0 when a session was set up
  openssl s_client -connect "$HOSTPORT" -servername localhost -CAfile "$CA" "$@" </dev/null >"$T/s_client.out" 2>&1 &&
    grep -q '^    Protocol  *: TLSv1\|^New, TLSv1' "$T/s_client.out"
}
expect_exit 0 tls_handshake -tls1_3
expect_exit 0 tls_handshake -tls1_2
assert_contains "$(cat "$T/s_client.out")" "ECDHE" "the TLS 1.2 cipher"
expect_exit 1 tls_handshake -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0'
expect_exit 1 tls_handshake -tls1 -cipher 'DEFAULT:@SECLEVEL=0'
expect_exit 1 tls_handshake -tls1_2 -cipher 'AES128-SHA:AES256-GCM-SHA384:@SECLEVEL=0'
assert_contains "$(openssl s_client -connect "$HOSTPORT" -showcerts </dev/null 2>/dev/null)" \
  "npme test intermediate CA" "the chain sent (leaf and intermediate)"

step "the CLI checks the admin API's certificate: --cacert, else the instance's own certificate"
printf '%s\n' "$("$NPME" --root "$T/main" settings get admin.token --reveal)" >"$T/admin.token"
chmod 600 "$T/admin.token"
expect_exit 3 run_npme status --admin-url "$ADMIN_URL" --admin-token-file "$T/admin.token"
assert_contains "$LAST_OUTPUT" "TLS certificate is not trusted: SSL certificate problem: unable to get local issuer certificate (pass --cacert" \
  "npme status against an unknown CA"
expect_exit 0 run_npme status --admin-url "$ADMIN_URL" --admin-token-file "$T/admin.token" --cacert "$CA"
expect_exit 0 env NPME_CACERT="$CA" "$NPME" status --admin-url "$ADMIN_URL" --admin-token-file "$T/admin.token"
expect_exit 0 run_npme status --root "$T/main" --json
STATUS="$LAST_STDOUT"
assert_eq "CN=localhost" "$(jq -r .tls.registry.subject <<<"$STATUS")" "status: the registry's certificate"
assert_eq "1111" "$(jq -r .tls.admin.serial <<<"$STATUS")" "status: the admin API's certificate serial"
assert_eq "0" "$(jq '.warnings | length' <<<"$STATUS")" "status warnings on loopback with TLS"
assert_eq "https://$HOSTPORT" "$(jq -r .registry_url <<<"$STATUS")" "registry.url defaults to https"

step "npm publishes and installs over https with cafile; without it npm refuses the certificate"
add_user main alice 'alice password'
TOKEN="$(create_token main alice)"
make_package "$T/pkg" @corp/tls-lib 1.0.0
NPM_CAFILE="$CA" expect_exit 0 in_dir "$T/pkg" npm_as main "$TOKEN" -- publish
http GET "$(pkg_url @corp/tls-lib)" --cacert "$CA" -H "Authorization: Bearer $TOKEN"
assert_contains "$(jq -r '.versions["1.0.0"].dist.tarball' <<<"$HTTP_BODY")" "https://$HOSTPORT/" "tarball URL"
PROJ="$T/project"
mkdir -p "$PROJ"
printf '{"name":"tls-project","version":"1.0.0","private":true}\n' >"$PROJ/package.json"
expect_exit 1 in_dir "$PROJ" npm_as main "$TOKEN" -- install @corp/tls-lib
assert_contains "$LAST_OUTPUT" "UNABLE_TO_GET_ISSUER_CERT_LOCALLY" "npm without cafile"
rm -rf "$PROJ/node_modules" "$PROJ/package-lock.json" "$T/npm-cache"
NPM_CAFILE="$CA" expect_exit 0 in_dir "$PROJ" npm_as main "$TOKEN" -- install @corp/tls-lib
assert_eq 1.0.0 "$(jq -r .version "$PROJ/node_modules/@corp/tls-lib/package.json")" "installed over https"

step "a follower follows over https: refused without the CA, caught up with upstream.ca_file"
start_instance replica
make_replica replica main mirror
for ((i = 0; i < 100; i++)); do
  ERR="$("$NPME" --root "$T/replica" status --json | jq -r '.follower.last_error // empty')"
  [[ -z "$ERR" ]] || break
  sleep 0.1
done
assert_contains "$ERR" "certificate" "the follower's error without the CA"
expect_exit 0 run_npme settings set "upstream.ca_file=$CA" --root "$T/replica"
wait_synced replica main
http GET "${REGISTRY[replica]}/@corp%2ftls-lib" -H "Authorization: Bearer $TOKEN"
assert_eq 200 "$HTTP_STATUS" "the package on the replica"

REGISTRY_URL="${REGISTRY[main]}"
step "SIGHUP: new connections get the new certificate, an open keep-alive connection keeps its own"
cat >"$T/reload.js" <<'EOF'
const https = require('https');
const fs = require('fs');
const { execSync } = require('child_process');
const [url, ca, command] = process.argv.slice(2);
const get = (agent) => new Promise((resolve, reject) => {
  const req = https.get(url + '/-/ping', { agent, ca: fs.readFileSync(ca) }, (res) => {
    const serial = res.socket.getPeerCertificate().serialNumber;
    res.resume();
    res.on('end', () => resolve({ status: res.statusCode, reused: req.reusedSocket, serial }));
  });
  req.on('error', reject);
});
(async () => {
  const kept = new https.Agent({ keepAlive: true, maxSockets: 1 });
  const first = await get(kept);
  execSync(command);
  await new Promise((r) => setTimeout(r, 1000));
  const again = await get(kept);
  const fresh = await get(new https.Agent({ keepAlive: false }));
  console.log(JSON.stringify({ first, again, fresh }));
  kept.destroy();
})().catch((e) => { console.error(String(e)); process.exit(1); });
EOF
PID="${INSTANCE_PID[main]}"
expect_exit 0 node "$T/reload.js" "$REGISTRY_URL" "$CA" \
  "cp '$PKI/chain2.pem' '$PKI/server.pem' && cp '$PKI/leaf2.key' '$PKI/server.key' && kill -HUP $PID"
RESULT="$LAST_STDOUT"
assert_eq "1111 1111 true 2222" "$(jq -r '[.first.serial, .again.serial, .again.reused, .fresh.serial] | join(" ")' <<<"$RESULT")" \
  "serials: before, on the kept connection after SIGHUP, on a new one"
assert_eq "200 200 200" "$(jq -r '[.first.status, .again.status, .fresh.status] | map(tostring) | join(" ")' <<<"$RESULT")" \
  "statuses"
assert_contains "$(cat "$T/main.serve.log")" "SIGHUP: registry TLS certificate reloaded" "the log"
kill -0 "$PID" || fail "npme serve ended on SIGHUP"
expect_exit 0 run_npme status --root "$T/main" --json
assert_eq "2222" "$(jq -r .tls.admin.serial <<<"$LAST_STDOUT")" "status: the admin API's new certificate"

step "a broken certificate on SIGHUP: the old one stays, the log and npme status say why"
printf 'not a certificate\n' >"$PKI/server.pem"
kill -HUP "$PID"
for ((i = 0; i < 50; i++)); do
  grep -q "TLS files not reloaded" "$T/main.serve.log" && break
  sleep 0.1
done
assert_contains "$(cat "$T/main.serve.log")" "SIGHUP: registry TLS files not reloaded, still serving the previous certificate" "the log"
http GET "$REGISTRY_URL/-/ping" --cacert "$CA"
assert_eq 200 "$HTTP_STATUS" "served with the previous certificate"
# The CLI no longer finds a certificate to trust in the instance's file: --cacert.
expect_exit 3 run_npme status --root "$T/main"
assert_contains "$LAST_OUTPUT" "TLS certificate is not trusted" "npme status with the instance's file broken"
expect_exit 0 run_npme status --root "$T/main" --cacert "$CA"
assert_contains "$LAST_OUTPUT" "could not be reloaded" "npme status warning"
expect_exit 2 run_npme status --root "$T/main" --cacert "$PKI/server.pem"
assert_contains "$LAST_OUTPUT" "the CA bundle '$PKI/server.pem' cannot be used" "a broken --cacert"
cp "$PKI/chain2.pem" "$PKI/server.pem"
kill -HUP "$PID"
for ((i = 0; i < 50; i++)); do
  [[ "$("$NPME" status --root "$T/main" --json | jq '.warnings | length')" == 0 ]] && break
  sleep 0.1
done
assert_eq 0 "$("$NPME" status --root "$T/main" --json | jq '.warnings | length')" "warnings after a good reload"

info "PASS"
