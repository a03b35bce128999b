#!/usr/bin/env bash
# Keeps the man pages and the shell completions in sync with the real parser.
#
# Walks `npme --help`, `npme SUB --help`, `npme SUB SUBSUB --help` (CLI11's
# "Subcommands:" and "Options:" sections) and checks that every subcommand
# path and every long flag is documented in man/ (the page of its group, or
# npme.1 for global options) and offered by the bash, zsh and fish
# completions; that every setting key and npmE name the binary knows is in
# npme-settings(1) and the completions; and that npme.1 lists every exit code.
# The commands come from --help, not from a list in this file, so a new
# subcommand or flag without docs fails here.
#
# Environment:
#   NPME             the npme binary under test (required)
#   NPME_SOURCE_DIR  the source tree (defaults to ../.. of this file)
#
# Optional tools: man and groff (render the pages and check for warnings;
# without them the roff source is read directly), zsh and fish (syntax checks;
# fish also runs the completions). Bash's completion is always run.

set -euo pipefail

: "${NPME:?NPME must point at the npme binary}"
NPME_SOURCE_DIR="${NPME_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
MAN_DIR="$NPME_SOURCE_DIR/man"
BASH_COMPLETION="$NPME_SOURCE_DIR/completions/npme.bash"
ZSH_COMPLETION="$NPME_SOURCE_DIR/completions/_npme"
FISH_COMPLETION="$NPME_SOURCE_DIR/completions/npme.fish"
EXIT_CODES=(0 1 2 3 4 5 6 7 130)

if [[ ! -x "$NPME" ]]; then
  echo "FAIL: NPME='$NPME' is not an executable" >&2
  exit 1
fi

T="$(mktemp -d "${TMPDIR:-/tmp}/npme-docs.XXXXXX")"
trap 'rm -rf "$T"' EXIT

PROBLEMS=()
CHECKS=0

problem() {
  PROBLEMS+=("$*")
}

check() {
  CHECKS=$((CHECKS + 1))
}

for file in "$MAN_DIR/npme.1" "$BASH_COMPLETION" "$ZSH_COMPLETION" "$FISH_COMPLETION"; do
  if [[ ! -f "$file" ]]; then
    echo "FAIL: missing $file" >&2
    exit 1
  fi
done

HAVE_MAN=0
if command -v man >/dev/null 2>&1; then
  HAVE_MAN=1
fi
HAVE_FISH=0
if command -v fish >/dev/null 2>&1; then
  HAVE_FISH=1
fi

# ---------------------------------------------------------------------------
# The parser, walked through --help.

# Prints the first column of the entries of section $1 ("Options",
# "Subcommands") of a CLI11 help text read from stdin. Entries are indented by
# two spaces; wrapped descriptions are indented further.
help_section() {
  awk -v want="$1:" '
    /^[^ ].*:$/ { in_section = ($0 == want); next }
    in_section && /^  [^ ]/ { print $1 }
  '
}

# Prints the long flags (--name) of the option column read from stdin
# ("-q,--quiet", "--root").
long_flags() {
  tr ',' '\n' | grep -E '^--[[:alnum:]]' || true
}

declare -a PATHS=()           # "" for npme itself, "settings", "settings get", ...
declare -A FLAGS_OF=()        # ":path" -> space-separated long flags (":" for npme)
GLOBAL_FLAGS=""

walk() {
  local path="$*"
  local help rc=0
  help="$("$NPME" "$@" --help 2>&1)" || rc=$?
  if [[ $rc -ne 0 ]]; then
    problem "'npme${path:+ $path} --help' exited $rc"
    return
  fi
  if [[ $# -gt 4 ]]; then
    problem "subcommands nest deeper than 4 levels at 'npme $path'"
    return
  fi
  PATHS+=("$path")
  local flags
  flags="$(printf '%s\n' "$help" | help_section Options | long_flags | tr '\n' ' ')"
  FLAGS_OF[":$path"]="${flags% }"
  local sub
  while read -r sub; do
    [[ -n "$sub" ]] && walk "$@" "$sub"
  done < <(printf '%s\n' "$help" | help_section Subcommands)
}

walk
GLOBAL_FLAGS="${FLAGS_OF[":"]}"

if [[ ${#PATHS[@]} -lt 2 ]]; then
  echo "FAIL: found no subcommands in '$NPME --help':" >&2
  "$NPME" --help >&2 || true
  exit 1
fi
if [[ -z "$GLOBAL_FLAGS" ]]; then
  echo "FAIL: found no options in '$NPME --help'" >&2
  exit 1
fi

printf 'parser: %d commands\n' "$((${#PATHS[@]} - 1))"
for path in "${PATHS[@]}"; do
  printf '  npme%s: %s\n' "${path:+ $path}" "${FLAGS_OF[":$path"]:-(no options)}"
done

# ---------------------------------------------------------------------------
# The man pages as text.

# Prints roff source $1 as plain text: section headings at column 0, the
# rest indented, font and character escapes removed. Used without man(1).
roff_text() {
  awk '
    function unescape(s) {
      gsub(/\\f(\[[A-Z]*\]|[BIRP])/, "", s)
      gsub(/\\-/, "-", s)
      gsub(/\\\(aq/, "\047", s)
      gsub(/\\e/, "\\\\", s)
      gsub(/\\[&%]/, "", s)
      return s
    }
    # Joins the macro arguments of line s (quotes group words) with sep.
    function macro_args(s, sep,   i, c, quoted, word, has, out, n) {
      sub(/^\.[A-Za-z]+ */, "", s)
      for (i = 1; i <= length(s); i++) {
        c = substr(s, i, 1)
        if (c == "\"") { quoted = !quoted; has = 1; continue }
        if (c == " " && !quoted) {
          if (has) { out = out (n++ ? sep : "") word; word = ""; has = 0 }
          continue
        }
        word = word c; has = 1
      }
      if (has) out = out (n++ ? sep : "") word
      return unescape(out)
    }
    /^\.\\"/ { next }
    /^\.S[HS]( |$)/ { print macro_args($0, " "); next }
    /^\.(B|I|SM|SB)( |$)/ { print " " macro_args($0, " "); next }
    /^\.(BR|RB|BI|IB|IR|RI)( |$)/ { print " " macro_args($0, ""); next }
    /^[.\047]/ { next }
    { print " " unescape($0) }
  ' "$1"
}

# Prints man page $1 as text: rendered by man(1) when it is installed (which
# also checks that it renders), else from its source.
page_text() {
  if [[ $HAVE_MAN -eq 1 ]]; then
    LC_ALL=C.UTF-8 LANG=C.UTF-8 MANWIDTH=250 MAN_KEEP_FORMATTING='' man -l "$1" 2>/dev/null | sed -e 's/.\x08//g'
  else
    roff_text "$1"
  fi
}

declare -A PAGE=()   # page file -> its text on one line, spaces squeezed

load_page() {
  local file="$1"
  if [[ ! -f "$file" ]]; then
    PAGE["$file"]=""
    return 1
  fi
  if [[ -n "${PAGE[$file]+set}" ]]; then
    return 0
  fi
  PAGE["$file"]="$(page_text "$file" | tr '\n' ' ' | tr -s ' ')"
}

for page in "$MAN_DIR"/*.1; do
  check
  if [[ $HAVE_MAN -eq 1 ]]; then
    if ! warnings="$(LC_ALL=C.UTF-8 MANWIDTH=80 man -l "$page" 2>&1 >/dev/null)"; then
      problem "man -l $(basename "$page") failed: $warnings"
    elif [[ -n "$warnings" ]]; then
      problem "man -l $(basename "$page") warns: $warnings"
    fi
  fi
  if command -v groff >/dev/null 2>&1; then
    warnings="$(groff -man -Tutf8 -ww -z "$page" 2>&1)" || true
    if [[ -n "$warnings" ]]; then
      problem "groff warns about $(basename "$page"): $warnings"
    fi
  fi
  load_page "$page" || true
done

# True when text $1 contains flag $2 as a whole word.
has_flag() {
  grep -qE -- "(^|[^[:alnum:]-])$2([^[:alnum:]-]|$)" <<<"$1"
}

# True when text $1 contains phrase $2.
has_phrase() {
  grep -qF -- "$2" <<<"$1"
}

# ---------------------------------------------------------------------------
# Completions, as text and as behaviour.

BASH_TEXT="$(cat "$BASH_COMPLETION")"
ZSH_TEXT="$(cat "$ZSH_COMPLETION")"
FISH_TEXT="$(cat "$FISH_COMPLETION")"

check
if ! bash -n "$BASH_COMPLETION" 2>"$T/bash-n"; then
  problem "bash -n completions/npme.bash: $(cat "$T/bash-n")"
fi
check
if command -v zsh >/dev/null 2>&1; then
  if ! zsh -n "$ZSH_COMPLETION" 2>"$T/zsh-n"; then
    problem "zsh -n completions/_npme: $(cat "$T/zsh-n")"
  fi
else
  echo "note: zsh not installed, skipping its syntax check"
fi
if ! grep -q '^#compdef npme' "$ZSH_COMPLETION"; then
  problem "completions/_npme does not start with '#compdef npme'"
fi
check
if [[ $HAVE_FISH -eq 1 ]]; then
  if ! fish --no-config -n "$FISH_COMPLETION" 2>"$T/fish-n"; then
    problem "fish -n completions/npme.fish: $(cat "$T/fish-n")"
  fi
else
  echo "note: fish not installed, skipping its syntax check and run"
fi

# Prints what bash completes for the words $@ (the last one being completed),
# one candidate a line.
bash_complete() {
  (
    set +e
    # shellcheck source=/dev/null
    source "$BASH_COMPLETION"
    COMP_WORDS=(npme "$@")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMP_LINE="${COMP_WORDS[*]}"
    COMP_POINT=${#COMP_LINE}
    COMPREPLY=()
    _npme npme "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
    printf '%s\n' "${COMPREPLY[@]}"
  )
}

# Prints what fish completes for the command line $1, one candidate a line.
fish_complete() {
  # shellcheck disable=SC2016 # $argv is fish's, expanded by fish
  HOME="$T" XDG_CONFIG_HOME="$T/xdg" fish --no-config -c \
    'source $argv[1]; complete -C $argv[2]' "$FISH_COMPLETION" "$1" | cut -f1
}

declare -A BASH_CACHE=() FISH_CACHE=()

# Checks that the completions offer word $2 for the line "npme $1 <prefix>",
# where the prefix is "--" for flags and empty for subcommands.
check_completes() {
  local path="$1" word="$2" what="$3"
  local prefix=""
  [[ "$word" == --* ]] && prefix="--"
  local line="npme${path:+ $path} $prefix"
  local -a words=()
  [[ -n "$path" ]] && read -r -a words <<<"$path"
  local key=":$path|$prefix"
  if [[ -z "${BASH_CACHE[$key]+set}" ]]; then
    BASH_CACHE["$key"]="$(bash_complete "${words[@]}" "$prefix" 2>&1)"
  fi
  check
  if ! grep -qxF -- "$word" <<<"${BASH_CACHE[$key]}"; then
    problem "bash completion: '$line<TAB>' does not offer $what '$word'"
  fi
  if [[ $HAVE_FISH -eq 1 ]]; then
    if [[ -z "${FISH_CACHE[$key]+set}" ]]; then
      FISH_CACHE["$key"]="$(fish_complete "$line" 2>&1)"
    fi
    check
    if ! grep -qxF -- "$word" <<<"${FISH_CACHE[$key]}"; then
      problem "fish completion: '$line<TAB>' does not offer $what '$word'"
    fi
  fi
}

# ---------------------------------------------------------------------------
# Every subcommand path: in its page, in npme.1 and in the completions.

NPME_PAGE="$MAN_DIR/npme.1"
for path in "${PATHS[@]}"; do
  [[ -z "$path" ]] && continue
  read -r -a words <<<"$path"
  group="${words[0]}"
  last="${words[-1]}"
  page="$MAN_DIR/npme-$group.1"
  parent="${path% *}"
  [[ "$parent" == "$path" ]] && parent=""

  check
  if ! load_page "$page"; then
    problem "man: no page man/npme-$group.1 for 'npme $group'"
  elif ! has_phrase "${PAGE[$page]}" "npme $path"; then
    problem "man: man/npme-$group.1 does not describe 'npme $path'"
  fi
  if [[ ${#words[@]} -eq 1 ]]; then
    check
    if ! has_phrase "${PAGE[$NPME_PAGE]}" "npme $group"; then
      problem "man: npme.1 does not list the command 'npme $group'"
    fi
    check
    if ! has_phrase "${PAGE[$NPME_PAGE]}" "npme-$group(1)"; then
      problem "man: npme.1 does not refer to npme-$group(1)"
    fi
  fi

  check
  if ! grep -qE "(^|[^[:alnum:]_.-])$last([^[:alnum:]_.-]|$)" <<<"$BASH_TEXT"; then
    problem "bash completion: no '$last' (npme $path)"
  fi
  check
  if ! grep -qE "['\"]$last:" <<<"$ZSH_TEXT"; then
    problem "zsh completion: no '$last:' entry (npme $path)"
  fi
  check
  if ! grep -qE -- "-a $last([^[:alnum:]_.-]|$)" <<<"$FISH_TEXT"; then
    problem "fish completion: no '-a $last' (npme $path)"
  fi
  check_completes "$parent" "$last" "the subcommand"
done

# ---------------------------------------------------------------------------
# Every long flag: in the right page and in the completions.

for path in "${PATHS[@]}"; do
  for flag in ${FLAGS_OF[":$path"]}; do
    where="npme${path:+ $path}"
    page="$NPME_PAGE"
    if [[ -n "$path" ]] && ! has_flag "$GLOBAL_FLAGS" "$flag"; then
      page="$MAN_DIR/npme-${path%% *}.1"
    fi
    check
    if load_page "$page" && ! has_flag "${PAGE[$page]}" "$flag"; then
      problem "man: $(basename "$page") does not document $flag ($where)"
    fi
    check
    if ! has_flag "$BASH_TEXT" "$flag"; then
      problem "bash completion: no $flag ($where)"
    fi
    check
    if ! has_flag "$ZSH_TEXT" "$flag"; then
      problem "zsh completion: no $flag ($where)"
    fi
    check
    if ! grep -qE -- "-l ${flag#--}([^[:alnum:]-]|$)" <<<"$FISH_TEXT"; then
      problem "fish completion: no '-l ${flag#--}' ($where)"
    fi
    check_completes "$path" "$flag" "the option"
  done
done

# ---------------------------------------------------------------------------
# The other way round: no flag in an OPTIONS section or a completion that the
# parser does not have (docs must not run ahead of the code).

declare -A KNOWN_FLAG=()
for path in "${PATHS[@]}"; do
  for flag in ${FLAGS_OF[":$path"]}; do
    KNOWN_FLAG["$flag"]=1
  done
done

# Reports each flag read from stdin that the parser does not know; $1 says
# where it was found.
check_known() {
  local flag
  while read -r flag; do
    [[ -z "$flag" ]] && continue
    check
    if [[ -z "${KNOWN_FLAG[$flag]+set}" ]]; then
      problem "$1 has $flag, which no 'npme ... --help' lists"
    fi
  done < <(sort -u)
}

# Prints the flags that open the entries of the OPTIONS sections of page $1.
option_tags() {
  page_text "$1" | awk '
    /^[^ \t]/ { in_section = ($0 ~ /OPTIONS$/); next }
    in_section && match($0, /^[ \t]+(-[[:alnum:]], )?--[[:alnum:]][[:alnum:]-]*/) {
      tag = substr($0, RSTART, RLENGTH)
      sub(/^.*--/, "--", tag)
      print tag
    }
  '
}

# (Process substitution, not a pipe: check_known must run in this shell.)
for page in "$MAN_DIR"/*.1; do
  check_known "man: $(basename "$page") OPTIONS" < <(option_tags "$page")
done
check_known "bash completion" < <(grep -oE -- '--[[:alnum:]][[:alnum:]-]*' "$BASH_COMPLETION")
check_known "zsh completion" < <(grep -oE -- '--[[:alnum:]][[:alnum:]-]*' "$ZSH_COMPLETION")
check_known "fish completion" < <(grep -E '^[[:space:]]*complete .*-c npme' "$FISH_COMPLETION" |
  grep -oE -- ' -l [[:alnum:]][[:alnum:]-]*' | sed -E 's/^ -l /--/')

# ---------------------------------------------------------------------------
# Every exit code in the EXIT STATUS section of npme.1.

exit_section="$(page_text "$NPME_PAGE" | awk '
  /^[^ \t]/ { in_section = ($0 ~ /^EXIT STATUS/); next }
  in_section && /^[ \t]+[0-9]+([ \t]|$)/ { print $1 }
')"
for code in "${EXIT_CODES[@]}"; do
  check
  if ! grep -qxF "$code" <<<"$exit_section"; then
    problem "man: npme.1 EXIT STATUS does not list exit code $code"
  fi
done

# ---------------------------------------------------------------------------
# Every setting key and npmE name the binary knows: in npme-settings.1 and in
# the completions. An empty settings file gives every key its default.

mkdir -p "$T/instance"
printf '{}\n' >"$T/instance/settings.json"
if ! settings_table="$("$NPME" --root "$T/instance" settings list --offline 2>"$T/settings.err")"; then
  problem "'npme settings list --offline' failed: $(cat "$T/settings.err")"
  settings_table=""
fi
# KEY  VALUE  NPME NAME: the key is the first column; the npmE names start
# where the header's "NPME NAME" starts (values may hold spaces).
settings_words="$(awk '
  NR == 1 { column = index($0, "NPME NAME"); next }
  column > 0 {
    print $1
    n = split(substr($0, column), names, /[ ,]+/)
    for (i = 1; i <= n; i++) if (names[i] != "" && names[i] != "-") print names[i]
  }
' <<<"$settings_table")"
if [[ -n "$settings_table" && -z "$settings_words" ]]; then
  problem "cannot read the keys from 'npme settings list --offline': $settings_table"
fi
SETTINGS_PAGE="$MAN_DIR/npme-settings.1"
load_page "$SETTINGS_PAGE" || true
settings_count=0
while read -r name; do
  [[ -z "$name" ]] && continue
  settings_count=$((settings_count + 1))
  pattern="(^|[^[:alnum:]_.-])${name//./\\.}([^[:alnum:]_-]|$)"
  check
  if ! grep -qE -- "$pattern" <<<"${PAGE[$SETTINGS_PAGE]}"; then
    problem "man: npme-settings.1 does not document the setting '$name'"
  fi
  for shell in bash zsh fish; do
    case $shell in
      bash) text="$BASH_TEXT" ;;
      zsh) text="$ZSH_TEXT" ;;
      fish) text="$FISH_TEXT" ;;
    esac
    check
    if ! grep -qE -- "$pattern" <<<"$text"; then
      problem "$shell completion: no setting '$name'"
    fi
  done
done <<<"$settings_words"
printf 'settings: %d keys and npmE names\n' "$settings_count"
if [[ $settings_count -eq 0 ]]; then
  problem "found no settings in 'npme settings list --offline'"
fi

# ---------------------------------------------------------------------------

if [[ ${#PROBLEMS[@]} -gt 0 ]]; then
  printf '\nFAIL: docs out of sync with the parser (%d of %d checks):\n' "${#PROBLEMS[@]}" "$CHECKS" >&2
  printf '  - %s\n' "${PROBLEMS[@]}" >&2
  exit 1
fi
printf 'ok: %d checks (man: %s, zsh: %s, fish: %s)\n' "$CHECKS" \
  "$([[ $HAVE_MAN -eq 1 ]] && echo rendered || echo source)" \
  "$(command -v zsh >/dev/null 2>&1 && echo syntax || echo skipped)" \
  "$([[ $HAVE_FISH -eq 1 ]] && echo run || echo skipped)"
