# GET /metrics on the admin port: Prometheus text exposition format, valid
# line by line; request counters by route and status that count exactly the
# requests made here; publishes; package and version gauges that match what
# was published (and what `npme status` says).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT="$T/main"
start_instance main
add_user main alice 'alice-password-1'
TOKEN="$(create_token main alice)"

# scrape — GET /metrics from loopback without a token; validates the format
# and leaves the text in METRICS.
METRICS=""
scrape() {
  local headers="$T/metrics.headers"
  local status
  status="$(curl -sS --max-time 10 -D "$headers" -o "$T/metrics.txt" -w '%{http_code}' "$ADMIN_URL/metrics")" ||
    fail "GET /metrics: curl failed"
  [[ "$status" == 200 ]] || fail "GET /metrics answered $status: $(head -c 300 "$T/metrics.txt")"
  grep -qi '^content-type: text/plain; version=0.0.4' "$headers" ||
    fail "GET /metrics: Content-Type is not text/plain; version=0.0.4: $(grep -i '^content-type' "$headers")"
  node "$T/validate.js" "$T/metrics.txt" || fail "GET /metrics is not valid Prometheus text (see above)"
  METRICS="$(cat "$T/metrics.txt")"
}

# sample NAME_WITH_LABELS — the value of one sample of the last scrape; 0 when
# the sample is absent (counters for a label set not seen yet).
sample() {
  local wanted="$1"
  awk -v w="$wanted" '$1 == w { print $2; found = 1 } END { if (!found) print 0 }' <<<"$METRICS"
}

# The exposition format, checked line by line: "# HELP name text",
# "# TYPE name type" (once per family, before its samples), and samples
# "name{label="value",...} value" whose name belongs to a declared family.
cat >"$T/validate.js" <<'EOF'
const fs = require('fs');
const text = fs.readFileSync(process.argv[2], 'utf8');
const problems = [];
if (!text.endsWith('\n')) problems.push('the text does not end with a newline');
const name = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const help = new RegExp(`^# HELP (${name}) (.*)$`);
const type = new RegExp(`^# TYPE (${name}) (counter|gauge|histogram|summary|untyped)$`);
const labelValue = '"(?:[^"\\\\\\n]|\\\\[\\\\"n])*"';
const label = `[a-zA-Z_][a-zA-Z0-9_]*=${labelValue}`;
const sample = new RegExp(
  `^(${name})(\\{(?:${label}(?:,${label})*,?)?\\})? ` +
  `([-+]?(?:[0-9]*\\.?[0-9]+(?:[eE][-+]?[0-9]+)?|NaN|[-+]?Inf))( [-+]?[0-9]+)?$`);
const types = new Map(), helps = new Set(), seen = new Set();
let samples = 0;
text.replace(/\n$/, '').split('\n').forEach((line, i) => {
  const where = `line ${i + 1} '${line}'`;
  let m;
  if ((m = help.exec(line))) {
    if (helps.has(m[1])) problems.push(`${where}: second HELP for ${m[1]}`);
    helps.add(m[1]);
  } else if ((m = type.exec(line))) {
    if (types.has(m[1])) problems.push(`${where}: second TYPE for ${m[1]}`);
    if (seen.has(m[1])) problems.push(`${where}: TYPE after samples of ${m[1]}`);
    types.set(m[1], m[2]);
  } else if (line.startsWith('#')) {
    problems.push(`${where}: a comment that is neither HELP nor TYPE`);
  } else if ((m = sample.exec(line))) {
    samples++;
    // Summaries and histograms have _sum, _count (and _bucket) samples.
    const base = m[1].replace(/_(sum|count|bucket)$/, '');
    const family = !types.has(m[1]) && ['summary', 'histogram'].includes(types.get(base)) ? base : m[1];
    if (!types.has(family)) problems.push(`${where}: sample of ${family} without a TYPE before it`);
    if (types.get(family) === 'counter' && !family.endsWith('_total'))
      problems.push(`${where}: counter ${family} does not end in _total`);
    if (types.get(family) === 'counter' && Number(m[3]) < 0) problems.push(`${where}: negative counter`);
    const key = m[1] + (m[2] || '');
    if (seen.has(key)) problems.push(`${where}: duplicate sample ${key}`);
    seen.add(key);
    seen.add(family);
  } else {
    problems.push(`${where}: not a HELP, TYPE or sample line`);
  }
});
for (const family of types.keys())
  if (!helps.has(family)) problems.push(`${family} has a TYPE but no HELP`);
if (samples === 0) problems.push('no samples');
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log(`    ok: ${samples} samples in ${types.size} families, format valid`);
EOF

step "a first scrape: valid format, the families of an empty instance"
scrape
for family in "npme_http_requests_total counter" "npme_publishes_total counter" "npme_packages gauge" \
  "npme_versions gauge" "npme_follower_sequence gauge" "npme_follower_lag_seconds gauge" "npme_follower_up gauge" \
  "npme_connections_open gauge" "npme_connections_refused_total counter"; do
  assert_contains "$METRICS" "# TYPE $family" "metrics"
done
# The scrape itself holds an admin connection (the CLI's earlier ones may not be gone yet).
[[ "$(sample 'npme_connections_open{listener="admin"}')" -ge 1 ]] ||
  fail "npme_connections_open{listener=\"admin\"} is not at least 1 during a scrape"
assert_eq 0 "$(sample 'npme_connections_refused_total{listener="registry"}')" "registry connections refused"
assert_eq 0 "$(sample npme_publishes_total)" "npme_publishes_total before any publish"
assert_eq 0 "$(sample npme_packages)" "npme_packages before any publish"
assert_eq 0 "$(sample npme_versions)" "npme_versions before any publish"

step "publishes are counted (refused ones are not)"
make_publish_body "$T/a1" npme-it-metrics-a 1.0.0 "$T/a1.json"
make_publish_body "$T/a2" npme-it-metrics-a 1.1.0 "$T/a2.json"
make_publish_body "$T/b1" @npme-it/metrics-b 1.0.0 "$T/b1.json"
put_json "$(pkg_url npme-it-metrics-a)" "$T/a1.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish a 1.0.0"
put_json "$(pkg_url npme-it-metrics-a)" "$T/a2.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish a 1.1.0"
put_json "$(pkg_url @npme-it/metrics-b)" "$T/b1.json" "$TOKEN"
assert_eq 201 "$HTTP_STATUS" "publish b 1.0.0"
put_json "$(pkg_url npme-it-metrics-a)" "$T/a1.json" "$TOKEN"
assert_eq 403 "$HTTP_STATUS" "republish of a 1.0.0"
put_json "$(pkg_url npme-it-metrics-a)" "$T/a2.json"
assert_eq 401 "$HTTP_STATUS" "anonymous publish"
scrape
assert_eq 3 "$(sample npme_publishes_total)" "npme_publishes_total after 3 publishes and 2 refusals"
assert_eq 3 "$(sample 'npme_http_requests_total{route="publish",status="201"}')" "publish requests answered 201"
assert_eq 1 "$(sample 'npme_http_requests_total{route="publish",status="403"}')" "publish requests answered 403"
assert_eq 1 "$(sample 'npme_http_requests_total{route="publish",status="401"}')" "publish requests answered 401"

step "packument requests are counted by status, exactly"
BEFORE_200="$(sample 'npme_http_requests_total{route="packument",status="200"}')"
BEFORE_404="$(sample 'npme_http_requests_total{route="packument",status="404"}')"
BEFORE_TARBALL="$(sample 'npme_http_requests_total{route="tarball",status="200"}')"
for i in 1 2 3 4 5; do
  http GET "$(pkg_url npme-it-metrics-a)" -H 'Accept: application/json'
  assert_eq 200 "$HTTP_STATUS" "packument GET $i"
done
http GET "$(pkg_url npme-it-metrics-a)" -H 'Accept: application/vnd.npm.install-v1+json'
http GET "$(pkg_url @npme-it/metrics-b)" -H "Authorization: Bearer $TOKEN"
assert_eq 200 "$HTTP_STATUS" "scoped packument GET"
http GET "$(pkg_url npme-it-metrics-missing)"
assert_eq 404 "$HTTP_STATUS" "GET of a missing package"
http GET "$(pkg_url npme-it-metrics-missing-2)"
http GET "$REGISTRY_URL/npme-it-metrics-a/-/npme-it-metrics-a-1.0.0.tgz"
assert_eq 200 "$HTTP_STATUS" "tarball GET"
scrape
assert_eq $((BEFORE_200 + 7)) "$(sample 'npme_http_requests_total{route="packument",status="200"}')" \
  "packument requests answered 200 (+7)"
assert_eq $((BEFORE_404 + 2)) "$(sample 'npme_http_requests_total{route="packument",status="404"}')" \
  "packument requests answered 404 (+2)"
assert_eq $((BEFORE_TARBALL + 1)) "$(sample 'npme_http_requests_total{route="tarball",status="200"}')" \
  "tarball requests answered 200 (+1)"
# Scrapes and admin API calls are not registry requests.
BEFORE="$(grep '^npme_http_requests_total' <<<"$METRICS")"
expect_exit 0 run_npme status --root "$ROOT"
scrape
assert_eq "$BEFORE" "$(grep '^npme_http_requests_total' <<<"$METRICS")" "request counters after scrapes and admin calls"

step "the real npm client: one publish, installs and views are counted"
make_package "$T/c1" npme-it-metrics-c 1.0.0
expect_exit 0 in_dir "$T/c1" npm_as main "$TOKEN" -- publish
scrape
assert_eq 4 "$(sample npme_publishes_total)" "npme_publishes_total after npm publish"
BEFORE_200="$(sample 'npme_http_requests_total{route="packument",status="200"}')"
expect_exit 0 npm_as main "" -- view npme-it-metrics-c version
scrape
AFTER_200="$(sample 'npme_http_requests_total{route="packument",status="200"}')"
((AFTER_200 > BEFORE_200)) || fail "npm view did not count a packument request ($BEFORE_200 -> $AFTER_200)"
info "ok: packument 200 count $BEFORE_200 -> $AFTER_200 after npm view"

step "npme_packages and npme_versions match what was published and npme status"
assert_eq 3 "$(sample npme_packages)" "npme_packages"
assert_eq 4 "$(sample npme_versions)" "npme_versions"
expect_exit 0 run_npme status --json --root "$ROOT"
assert_eq "$(jq -r .counts.packages <<<"$LAST_STDOUT")" "$(sample npme_packages)" "npme_packages vs status"
assert_eq "$(jq -r .counts.versions <<<"$LAST_STDOUT")" "$(sample npme_versions)" "npme_versions vs status"
assert_eq "$(jq -r .counts.tarball_bytes <<<"$LAST_STDOUT")" "$(sample npme_tarball_bytes)" "npme_tarball_bytes vs status"
assert_eq "$(db_seq main)" "$(sample npme_update_seq)" "npme_update_seq vs the change log"
assert_eq 0 "$(sample npme_follower_up)" "npme_follower_up on a primary"

step "/metrics is not served on the registry port"
http GET "$REGISTRY_URL/metrics"
assert_ne 200 "$HTTP_STATUS" "GET /metrics on the registry port"
assert_not_contains "$HTTP_BODY" "npme_http_requests_total" "registry answer to /metrics"
stop_instance main
