#!/usr/bin/env bash
# The Debian package: cpack builds it from the build directory; its control
# fields, file list, owners and modes are what the README promises; lintian
# finds no error; the binary extracted from it (dpkg-deb -x) serves a
# publish and an install with the real npm. In CI (a throwaway machine), or
# with NPME_TEST_SYSTEM_INSTALL=1, it is also installed for real: the npme
# user, the directories and settings file with their owners and modes, the
# service enabled and not started, the service's command serving as the npme
# user, and remove and purge leaving the data alone.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for tool in cpack dpkg-deb lintian; do
  have_tool "$tool" "the Debian package" || skip_test "$tool is not installed (scripts/deps installs it)"
done
BUILD="$(cd "$(dirname "$NPME")" && pwd)"
[[ -f "$BUILD/CPackConfig.cmake" ]] || fail "no CPackConfig.cmake in $BUILD"
VERSION="$("$NPME" --version | awk '{print $NF}')"
ARCH="$(dpkg --print-architecture)"

step "cpack -G DEB in $BUILD"
(cd "$BUILD" && cpack -G DEB -B "$T/pkg") >"$T/cpack.log" 2>&1 || fail "cpack failed: $(tail -n 30 "$T/cpack.log")"
DEB="$T/pkg/npme_${VERSION}_${ARCH}.deb"
assert_file_exists "$DEB"
info "built $(basename "$DEB") ($(stat -c %s "$DEB") bytes)"

step "control fields: the project's version, the libraries and tools it needs"
assert_eq npme "$(dpkg-deb -f "$DEB" Package)" "Package"
assert_eq "$VERSION" "$(dpkg-deb -f "$DEB" Version)" "Version (npme --version)"
assert_eq "$ARCH" "$(dpkg-deb -f "$DEB" Architecture)" "Architecture"
DEPENDS="$(dpkg-deb -f "$DEB" Depends)"
info "Depends: $DEPENDS"
for dep in libc6 libcurl4 libarchive13 libsqlite3-0 libssl3 adduser init-system-helpers sensible-utils; do
  assert_contains "$DEPENDS" "$dep" "Depends"
done

step "file list, owners and modes"
EXPECTED="$(
  {
    echo "-rwxr-xr-x ./usr/bin/npme"
    echo "-rw-r--r-- ./lib/systemd/system/npme.service"
    echo "-rw-r--r-- ./usr/share/bash-completion/completions/npme"
    echo "-rw-r--r-- ./usr/share/zsh/vendor-completions/_npme"
    echo "-rw-r--r-- ./usr/share/fish/vendor_completions.d/npme.fish"
    echo "-rw-r--r-- ./usr/share/doc/npme/copyright"
    echo "-rw-r--r-- ./usr/share/doc/npme/changelog.gz"
    for page in "$NPME_SOURCE_DIR"/man/*.1; do
      echo "-rw-r--r-- ./usr/share/man/man1/$(basename "$page").gz"
    done
  } | sort -k2
)"
LISTING="$(dpkg-deb -c "$DEB")"
assert_eq "$EXPECTED" "$(awk '$1 !~ /^d/ {print $1, $NF}' <<<"$LISTING" | sort -k2)" "files in the package"
assert_eq "root/root" "$(awk '{print $2}' <<<"$LISTING" | sort -u)" "owner of every entry"
assert_eq "drwxr-xr-x" "$(awk '$1 ~ /^d/ {print $1}' <<<"$LISTING" | sort -u)" "mode of every directory"

step "maintainer scripts: executable POSIX shell"
dpkg-deb -e "$DEB" "$T/control"
for script in postinst prerm postrm; do
  assert_eq 755 "$(stat -c %a "$T/control/$script")" "mode of $script"
  sh -n "$T/control/$script" || fail "$script is not valid sh"
done
assert_file_missing "$T/control/conffiles"

step "lintian: no errors"
if ! lintian --fail-on error --tag-display-limit 0 "$DEB" >"$T/lintian.log" 2>&1; then
  fail "lintian found errors: $(cat "$T/lintian.log")"
fi
sed 's/^/    | /' "$T/lintian.log"
info "ok: lintian, $(grep -c '^E:' "$T/lintian.log" || true) errors, $(grep -c '^W:' "$T/lintian.log" || true) warnings"

step "what the package holds: the unit, the man pages, the completions"
dpkg-deb -x "$DEB" "$T/root"
UNIT="$T/root/lib/systemd/system/npme.service"
assert_contains "$(cat "$UNIT")" "ExecStart=/usr/bin/npme serve --config /etc/npme/settings.json" "the unit's command"
assert_contains "$(cat "$UNIT")" "ReadWritePaths=/var/lib/npme /etc/npme" "the unit's writable paths"
assert_contains "$(cat "$UNIT")" "User=npme" "the unit's user"
assert_not_contains "$(cat "$UNIT")" "/usr/local" "the unit"
assert_contains "$(zcat "$T/root/usr/share/man/man1/npme.1.gz" | head -n 5)" ".TH NPME" "npme(1)"
COMPLETE="$(bash -c "source '$T/root/usr/share/bash-completion/completions/npme' && complete -p npme")"
assert_contains "$COMPLETE" "npme" "bash completion"
assert_eq "npme $VERSION" "$("$T/root/usr/bin/npme" --version)" "the packaged binary's version"

step "the packaged binary serves a publish and an install with npm"
NPME="$T/root/usr/bin/npme"
start_instance deb
add_user deb pat 'pat-password-1'
TOKEN="$(create_token deb pat)"
make_package "$T/src" @deb/hello 1.0.0
(cd "$T/src" && npm_as deb "$TOKEN" -- publish) >"$T/publish.log" 2>&1 || fail "npm publish: $(cat "$T/publish.log")"
mkdir -p "$T/app"
echo '{"name":"app","version":"1.0.0","private":true}' >"$T/app/package.json"
(cd "$T/app" && npm_as deb "$TOKEN" -- install @deb/hello) >"$T/install.log" 2>&1 ||
  fail "npm install: $(cat "$T/install.log")"
assert_eq "1.0.0" "$(cd "$T/app" && node -p 'require("@deb/hello").version')" "the installed package"
http GET "${REGISTRY[deb]}/@deb%2fhello" -H "Authorization: Bearer $TOKEN"
assert_eq "$(jq -r '.versions["1.0.0"].dist.integrity' <<<"$HTTP_BODY")" \
  "$(jq -r '.packages["node_modules/@deb/hello"].integrity' "$T/app/package-lock.json")" "lockfile integrity"
stop_instance deb

# ------------------------------------------------------------ system install
if [[ "${NPME_TEST_SYSTEM_INSTALL:-}" != 1 && -z "${CI:-}" ]]; then
  info "not installing the package on this machine (CI does; NPME_TEST_SYSTEM_INSTALL=1 to do it here)"
  echo "PASS: $TEST_NAME"
  exit 0
fi
[[ "$(id -u)" == 0 ]] || fail "installing the package needs root"
if dpkg-query -W -f='${Status}' npme 2>/dev/null | grep -q installed || getent passwd npme >/dev/null ||
  [[ -e /var/lib/npme || -e /etc/npme ]]; then
  fail "npme is already installed or left data on this machine; the test would touch it"
fi
CLEANUP_COMMANDS+=("dpkg -P npme >/dev/null 2>&1; rm -rf /var/lib/npme /etc/npme; deluser --system npme >/dev/null 2>&1")

step "dpkg -i: the npme user, its directories, a settings file; enabled, not started"
dpkg -i "$DEB" >"$T/dpkg-install.log" 2>&1 || fail "dpkg -i: $(cat "$T/dpkg-install.log")"
sed 's/^/    | /' "$T/dpkg-install.log"
assert_contains "$(cat "$T/dpkg-install.log")" "systemctl start npme" "what the install says"
IFS=: read -r _ _ _ _ _ home shell < <(getent passwd npme)
assert_eq /var/lib/npme "$home" "the npme user's home"
assert_eq /usr/sbin/nologin "$shell" "the npme user's shell"
for dir in /var/lib/npme /var/lib/npme/couchdb /var/lib/npme/packages /var/lib/npme/data /etc/npme; do
  assert_eq "npme:npme 750" "$(stat -c '%U:%G %a' "$dir")" "owner and mode of $dir"
done
assert_eq "npme:npme 600" "$(stat -c '%U:%G %a' /etc/npme/settings.json)" "owner and mode of the settings file"
assert_eq /var/lib/npme/data "$(jq -r '."storage.data"' /etc/npme/settings.json)" "storage.data"
[[ -L /etc/systemd/system/multi-user.target.wants/npme.service ]] || fail "npme.service is not enabled"
info "ok: npme.service enabled"
# (Other tests run their own npme processes meanwhile: look for the service's.)
! pgrep -u npme >/dev/null || fail "a process of the npme user runs after the install: $(pgrep -a -u npme)"
! pgrep -f '^/usr/bin/npme ' >/dev/null || fail "/usr/bin/npme runs after the install: $(pgrep -a -f '^/usr/bin/npme ')"
info "ok: not started"

step "the service's command, as the npme user, serves from /var/lib/npme"
# setpriv execs (runuser would stay between as the parent, and SIGTERM must reach npme).
setpriv --reuid npme --regid npme --init-groups -- /usr/bin/npme serve --config /etc/npme/settings.json \
  --registry-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 >"$T/system.serve.log" 2>&1 &
SERVICE_PID=$!
STARTED_PIDS+=("$SERVICE_PID")
for ((i = 0; i < 200; i++)); do
  [[ -s /var/lib/npme/data/runtime.json ]] && break
  kill -0 "$SERVICE_PID" 2>/dev/null || fail "npme serve as npme exited: $(cat "$T/system.serve.log")"
  sleep 0.1
done
expect_exit 0 /usr/bin/npme --config /etc/npme/settings.json status --json
assert_eq primary "$(jq -r .role <<<"$LAST_STDOUT")" "status of the installed instance"
assert_eq "npme:npme 600" "$(stat -c '%U:%G %a' /etc/npme/settings.json)" "the settings file after the first start"
jq -e '."admin.token" | length > 20' /etc/npme/settings.json >/dev/null || fail "no admin token after the first start"
kill -TERM "$SERVICE_PID"
wait "$SERVICE_PID" || fail "npme serve as npme did not stop cleanly"
assert_eq npme "$(stat -c %U /var/lib/npme/data/instance-id)" "owner of the instance's files"
ID="$(cat /var/lib/npme/data/instance-id)"

step "dpkg -r keeps the data and the settings; dpkg -P too, and says so"
dpkg -r npme >"$T/dpkg-remove.log" 2>&1 || fail "dpkg -r: $(cat "$T/dpkg-remove.log")"
assert_file_missing /usr/bin/npme
assert_eq "$ID" "$(cat /var/lib/npme/data/instance-id)" "the instance after remove"
assert_file_exists /etc/npme/settings.json
dpkg -P npme >"$T/dpkg-purge.log" 2>&1 || fail "dpkg -P: $(cat "$T/dpkg-purge.log")"
assert_contains "$(cat "$T/dpkg-purge.log")" "are kept" "what purge says"
assert_eq "$ID" "$(cat /var/lib/npme/data/instance-id)" "the instance after purge"
assert_file_exists /etc/npme/settings.json
[[ ! -e /etc/systemd/system/multi-user.target.wants/npme.service ]] || fail "the service is still enabled after purge"
info "ok: the service's links are gone"

step "reinstall over the kept data: the same instance, the settings untouched"
BEFORE="$(sha256sum </etc/npme/settings.json)"
dpkg -i "$DEB" >"$T/dpkg-reinstall.log" 2>&1 || fail "dpkg -i again: $(cat "$T/dpkg-reinstall.log")"
assert_eq "$BEFORE" "$(sha256sum </etc/npme/settings.json)" "the settings file after a reinstall"
assert_eq "$ID" "$(cat /var/lib/npme/data/instance-id)" "the instance after a reinstall"
echo "PASS: $TEST_NAME"
