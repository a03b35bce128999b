#!/usr/bin/env bash
# The admin console in a real browser (Debian's chromium driven by
# puppeteer-core: fixtures/console_browser.mjs), against a primary and a
# replica following it, with the real npm client where the console's
# actions show: sign-in refused and accepted; the security headers and an
# inline script the CSP stops; publication set read-only on the Settings
# page makes npm publish fail with E403, and set back lets it through; a
# bad value shows its error at the field and leaves settings.json byte for
# byte; the replica's follower reset from the Dashboard returns to
# caught-up; a token created on the Users page works with npm until it is
# revoked there; a page of another origin posting with the operator's
# cookie is refused and changes nothing; a snapshot created from the
# Dashboard lands verified in snapshot.dir; the pages fit a phone; a
# package white-listed on a white-list replica's Dashboard is fetched at
# once, and removed; a secret
# is revealed by the server; a user is added and removed; the replica is
# promoted from its Dashboard with the primary fenced, and takes npm's
# publishes; an ended session and a stopped instance get a message, not a
# blank page. Every
# step saves a screenshot in the build folder (console-screenshots/).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/replication_lib.sh"

require_browser
start_instance main
start_instance mirror
add_user main alice alice-password-1
TOKEN="$(create_token main alice)"
make_package "$T/p1" console-pkg 1.0.0
(cd "$T/p1" && npm_as main "$TOKEN" -- publish) >/dev/null || fail "the first publish failed"
make_replica mirror main
wait_synced mirror main
# A replica that takes only the packages white-listed on it.
start_instance picky
make_replica picky main white-list

step "the console's headers, and an inline script the CSP stops"
OUT="$(console_browser main headers)"
assert_contains "$(jq -r .csp <<<"$OUT")" "default-src 'self'" "the CSP the browser got"

step "sign-in: a wrong token is refused at the form; the admin token opens the dashboard"
console_browser main signin-wrong >/dev/null
console_browser main dashboard primary dashboard-primary >/dev/null
EVENTS="$("$NPME" --root "$T/main" audit --json)"
assert_eq 1 "$(jq '[.events[] | select(.action == "console.signin" and .result == "refused")] | length' <<<"$EVENTS")" \
  "refused sign-ins in the audit log"
assert_eq 1 "$(jq '[.events[] | select(.action == "console.signout")] | length' <<<"$EVENTS")" \
  "sign-outs in the audit log"

step "publication=read-only from the Settings page: npm publish fails with E403; back to all: it succeeds"
console_browser main set-setting publication read-only >/dev/null
assert_eq read-only "$("$NPME" --root "$T/main" settings get publication)" "publication after the page saved it"
make_package "$T/p2" console-pkg 1.1.0
expect_exit 1 in_dir "$T/p2" npm_as main "$TOKEN" -- publish
assert_contains "$LAST_OUTPUT" "E403" "npm publish to the instance the console made read-only"
console_browser main set-setting publication all >/dev/null
expect_exit 0 in_dir "$T/p2" npm_as main "$TOKEN" -- publish
EVENTS="$("$NPME" --root "$T/main" audit --json)"
assert_eq 2 "$(jq '[.events[] | select(.action == "settings.change" and .actor == "console (admin token)")] | length' <<<"$EVENTS")" \
  "settings changes by the console in the audit log"

step "a bad value: the field shows the API's message; settings.json is unchanged byte for byte"
SUM_BEFORE="$(sha256sum <"$T/main/settings.json")"
OUT="$(console_browser main bad-setting registry.max_body lots "expected a size")"
assert_contains "$(jq -r .error <<<"$OUT")" "registry.max_body" "the field's error names the setting"
assert_eq "$SUM_BEFORE" "$(sha256sum <"$T/main/settings.json")" "settings.json after the refused save"

step "the replica's follower reset from the Dashboard returns to caught-up"
OUT="$(console_browser mirror reset-follower)"
info "follower states the page showed: $(jq -c .states <<<"$OUT")"
wait_synced mirror main
EVENTS="$("$NPME" --root "$T/mirror" audit --json)"
assert_eq 1 "$(jq '[.events[] | select(.action == "follower.reset" and .actor == "console (admin token)")] | length' <<<"$EVENTS")" \
  "the reset in the replica's audit log"

step "a token created on the Users page works with npm until it is revoked there"
OUT="$(console_browser main token-create alice)"
ID="$(jq -r .id <<<"$OUT")"
NEW_TOKEN="$(jq -r .token <<<"$OUT")"
note_secret "$NEW_TOKEN"
expect_exit 0 npm_as main "$NEW_TOKEN" -- whoami
assert_contains "$LAST_STDOUT" alice "npm whoami with the console's token"
console_browser main token-revoke "$ID" >/dev/null
expect_exit 1 npm_as main "$NEW_TOKEN" -- whoami
assert_contains "$LAST_OUTPUT" "E401" "npm whoami with the revoked token"

step "a page of another origin posting with the operator's cookie is refused and changes nothing"
TOKENS_BEFORE="$("$NPME" --root "$T/main" token list --json | jq -c '[.tokens[].id]')"
USERS_BEFORE="$("$NPME" --root "$T/main" user list --json | jq -c '[.users[].name]')"
OUT="$(console_browser main cross-site)"
assert_eq forbidden "$(jq -r .answer.error.code <<<"$OUT")" "the answer to the cross-site form"
assert_eq "$TOKENS_BEFORE" "$("$NPME" --root "$T/main" token list --json | jq -c '[.tokens[].id]')" "tokens after the cross-site posts"
assert_eq "$USERS_BEFORE" "$("$NPME" --root "$T/main" user list --json | jq -c '[.users[].name]')" "users after the cross-site posts"
EVENTS="$("$NPME" --root "$T/main" audit --json)"
# The cookie went along (127.0.0.1 on another port is the same site): the
# CSRF checks refused the requests, not a missing session.
(($(jq '[.events[] | select(.action == "console.csrf" and .result == "refused")] | length' <<<"$EVENTS") >= 2)) ||
  fail "the audit log does not show both cross-site requests refused by the CSRF check: $(jq -c '[.events[] | select(.action == "console.csrf")]' <<<"$EVENTS")"

step "a snapshot created from the replica's Dashboard lands in snapshot.dir, verified"
console_browser mirror set-setting snapshot.dir "$T/snapshots" >/dev/null
OUT="$(console_browser mirror snapshot)"
info "$(jq -r .line <<<"$OUT") (progress seen: $(jq -c .progress <<<"$OUT"))"
SNAPSHOT="$(ls "$T"/snapshots/npme-snapshot-*)"
assert_eq 1 "$(wc -l <<<"$SNAPSHOT")" "snapshots in snapshot.dir"
expect_exit 0 "$NPME" snapshot verify "$SNAPSHOT"
assert_eq replica "$("$NPME" snapshot inspect "$SNAPSHOT" --json | jq -r .role)" "the snapshot's role"
assert_eq 2 "$("$NPME" snapshot inspect "$SNAPSHOT" --json | jq -r .counts.versions)" "versions in the snapshot"
assert_eq "npme serve" "$("$NPME" snapshot inspect "$SNAPSHOT" --json | jq -r .reported_state.admin_url)" \
  "the state the snapshot records (the instance's own)"
(($(jq '.progress | length' <<<"$OUT") >= 1)) || fail "the page showed no progress while the snapshot was being created"
EVENTS="$("$NPME" --root "$T/mirror" audit --json)"
assert_eq 1 "$(jq '[.events[] | select(.action == "snapshot.create" and .result == "ok" and .actor == "console (admin token)")] | length' <<<"$EVENTS")" \
  "the snapshot in the replica's audit log"

step "the pages on a phone-sized window"
VIEWPORT=390x844 console_browser mirror phone >/dev/null

step "the README's screenshots: the replica's Dashboard and the Settings page"
console_browser mirror readme >/dev/null
assert_file_exists "$SHOTS/readme-dashboard.png"
assert_file_exists "$SHOTS/readme-settings.png"

step "a white-list replica: a package added on its Dashboard is fetched at once; removed, it is no longer listed"
expect_exit 1 npm_as picky "$TOKEN" -- view console-pkg version
console_browser picky whitelist-add console-pkg >/dev/null
assert_eq console-pkg "$(cat "$T/picky/data/whitelist")" "picky's white-list"
expect_exit 0 npm_as picky "$TOKEN" -- view console-pkg version
assert_eq 1.1.0 "$LAST_STDOUT" "console-pkg's latest version on the white-list replica"
console_browser picky whitelist-remove console-pkg >/dev/null
assert_eq "" "$(cat "$T/picky/data/whitelist")" "picky's white-list after the removal"
stop_instance picky

step "Settings reveals a secret by asking the server; users are added and removed on the Users page"
assert_eq "$(jq -r '."admin.token"' "$T/main/settings.json")" "$(console_browser main reveal admin.token | jq -r .value)" \
  "the admin token the Reveal button showed"
console_browser main user-add-remove bob bob-password-1 >/dev/null
note_secret bob-password-1
assert_eq alice "$("$NPME" --root "$T/main" user list --json | jq -r '[.users[].name] | join(" ")')" "users after adding and removing bob"
assert_eq 2 "$("$NPME" --root "$T/main" audit --json | jq '[.events[] | select((.action == "user.add" or .action == "user.remove") and .target == "bob" and .actor == "console (admin token)")] | length')" \
  "bob's addition and removal in the audit log"

step "the replica promoted from its Dashboard, fencing the primary first"
OUT="$(console_browser mirror promote "${ADMIN[main]}" "$(jq -r '."admin.token"' "$T/main/settings.json")")"
info "$(jq -r .banner <<<"$OUT")"
assert_eq read-only "$("$NPME" --root "$T/main" settings get publication)" "the old primary, fenced"
assert_eq primary "$("$NPME" --root "$T/mirror" status --json | jq -r .role)" "the promoted replica's role"
make_package "$T/p3" console-pkg 1.2.0
expect_exit 0 in_dir "$T/p3" npm_as mirror "$TOKEN" -- publish

step "an ended session and a stopped instance: a message, not a blank page"
console_browser main session-expired >/dev/null
console_browser mirror unreachable "${INSTANCE_PID[mirror]}" >/dev/null
wait "${INSTANCE_PID[mirror]}" 2>/dev/null || true
unset 'INSTANCE_PID[mirror]'
