# bash completion for npme                                 -*- shell-script -*-
#
# Install as /usr/share/bash-completion/completions/npme, or source it from
# ~/.bashrc. Works with or without the bash-completion package.
# Kept in sync with the parser by tests/integration/test_docs.sh.

# Options that are accepted before or after any subcommand.
_npme_global_options='--root --config --admin-url --admin-token-file --cacert --json -q --quiet --no-color --yes --version -h --help'

# Every setting key and npmE name, for `settings get`, `set` and `unset`.
_npme_setting_keys='registry.url canonical_url registry.listen registry.max_body registry.max_connections_per_client
  registry.trusted_proxies registry.tls_cert registry.tls_key admin.listen admin.max_connections_per_client admin.tls_cert admin.tls_key admin.token admin.console_idle secret
  upstream.url couch_url_remote upstream.secret remote_shared_fetch_secret upstream.policy remote_policy upstream.ca_file
  publication allowpublishes auth.installs authfetch authglobal
  uplink.url uplink.token uplink.policy read_through_cache uplink.private uplink.ca_file proxy.ca_file uplink.maxage uplink.audit
  replication.sync_replicas replication.sync_timeout replication.sync_mode replication.follower_timeout
  ha.etcd ha.cluster ha.ttl ha.loop ha.max_lag ha.url ha.etcd_ca ha.etcd_cert ha.etcd_key ha.etcd_user ha.etcd_password
  network.http_proxy proxy_url network.ca_file
  storage.metadata couchdb_host_path storage.packages packages_host_path storage.data data_host_path storage.min_free
  audit.max_size audit.keep snapshot.dir scrub.interval'

# Prints the allowed values of setting key $1 when it is a choice.
_npme_setting_values() {
  case $1 in
    upstream.policy | remote_policy) echo 'mirror white-list' ;;
    publication | allowpublishes) echo 'all read-only scoped' ;;
    auth.installs) echo 'scoped all none' ;;
    authfetch | authglobal) echo 'scoped all none true false' ;;
    uplink.policy) echo 'read-through white-list' ;;
    read_through_cache) echo 'read-through white-list yes no' ;;
    uplink.audit) echo 'public-only all off' ;;
    replication.sync_mode) echo 'strict relaxed' ;;
  esac
}

# Returns 0 when option $1 takes a value in the next word.
_npme_takes_value() {
  case $1 in
    --root | --config | --admin-url | --admin-token-file | --cacert | --registry-listen | --admin-listen | --email | --user)
      return 0
      ;;
    -o | --output | --dir | --compression | --keep | --keep-within | --timeout | --from-lockfile | --to | --since | --limit)
      return 0
      ;;
  esac
  return 1
}

# Sets COMPREPLY to the words of $1 that start with $2.
_npme_reply() {
  local IFS=$' \t\n'
  # shellcheck disable=SC2207
  COMPREPLY=($(compgen -W "$1" -- "$2"))
}

_npme() {
  local cur prev i word
  COMPREPLY=()
  cur=${COMP_WORDS[COMP_CWORD]-}
  prev=${COMP_WORDS[COMP_CWORD - 1]-}

  # An option written with its value after '=': bash splits the word at '='
  # (COMP_WORDBREAKS), so the option is two words back; without that
  # splitting it is a prefix of the current word.
  local option=$prev
  if [[ $prev == '=' && $COMP_CWORD -ge 2 ]]; then
    option=${COMP_WORDS[COMP_CWORD - 2]-}
  elif [[ $cur == --*=* ]]; then
    option=${cur%%=*}
    cur=${cur#*=}
  fi
  if [[ $option == -* ]] && _npme_takes_value "$option"; then
    case $option in
      --root)
        compopt -o filenames 2>/dev/null
        local IFS=$'\n'
        # shellcheck disable=SC2207
        COMPREPLY=($(compgen -d -- "$cur"))
        ;;
      --dir)
        compopt -o filenames 2>/dev/null
        local IFS=$'\n'
        # shellcheck disable=SC2207
        COMPREPLY=($(compgen -d -- "$cur"))
        ;;
      --compression)
        _npme_reply 'zstd gzip none' "$cur"
        ;;
      -o | --output | --config | --admin-token-file | --cacert | --from-lockfile)
        compopt -o filenames 2>/dev/null
        local IFS=$'\n'
        # shellcheck disable=SC2207
        COMPREPLY=($(compgen -f -- "$cur"))
        ;;
    esac
    # URLs, addresses, e-mail addresses, user names, instance ids and numbers: nothing to offer.
    return 0
  fi

  # The subcommand path typed so far (`settings get`) and the positional
  # arguments after it, skipping options and their values.
  local -a path=() args=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=${COMP_WORDS[i]}
    if [[ $word == '=' ]]; then
      continue
    fi
    if [[ $word == -* ]]; then
      if _npme_takes_value "$word" && [[ ${COMP_WORDS[i + 1]-} != '=' ]]; then
        ((i++))
      elif [[ ${COMP_WORDS[i + 1]-} == '=' ]]; then
        ((i += 2))
      fi
      continue
    fi
    case "${path[*]}" in
      '') path+=("$word") ;;
      settings | user | token | snapshot | ha)
        if [[ ${#path[@]} -eq 1 ]]; then
          path+=("$word")
        else
          args+=("$word")
        fi
        ;;
      *) args+=("$word") ;;
    esac
  done

  local command=${path[*]}
  local options=''
  case $command in
    '') options='' ;;
    serve) options='--registry-listen --admin-listen' ;;
    'settings list' | 'settings get') options='--reveal --offline' ;;
    'settings set' | 'settings unset') options='--offline' ;;
    'user add') options='--email --password-stdin' ;;
    'token create') options='--user --read-only --expires --cidr' ;;
    'snapshot create') options='-o --output --dir --compression' ;;
    'snapshot list') options='--dir' ;;
    'snapshot prune') options='--dir --keep --keep-within --dry-run' ;;
    restore) options='--force --dry-run --as-replica' ;;
    reset-follower) options='--offline --wait --timeout' ;;
    add-package) options='--no-deps --prefetch --from-lockfile --timeout' ;;
    promote-to-primary) options='--force --wait-timeout --fence --fence-token-file --repoint --repoint-token-file --upstream-url' ;;
    'ha switchover') options='--to --timeout' ;;
    doctor) options='--offline --full --repair --timeout' ;;
    audit) options='--since --limit' ;;
    console) options='--open' ;;
  esac

  if [[ $cur == -* ]]; then
    _npme_reply "$options $_npme_global_options" "$cur"
    return 0
  fi

  case $command in
    '') _npme_reply 'serve status replicas settings user token snapshot restore reset-follower add-package remove-package refresh promote-to-primary ha doctor audit console' "$cur" ;;
    settings) _npme_reply 'list get set unset' "$cur" ;;
    user) _npme_reply 'add list remove' "$cur" ;;
    token) _npme_reply 'create list revoke' "$cur" ;;
    snapshot) _npme_reply 'create list inspect verify prune' "$cur" ;;
    ha) _npme_reply 'status switchover pause resume' "$cur" ;;
    'snapshot inspect' | 'snapshot verify' | restore)
      if [[ ${#args[@]} -eq 0 ]]; then
        compopt -o filenames 2>/dev/null
        local IFS=$'\n'
        # shellcheck disable=SC2207
        COMPREPLY=($(compgen -f -- "$cur"))
      fi
      ;;
    'settings get')
      if [[ ${#args[@]} -eq 0 ]]; then
        _npme_reply "$_npme_setting_keys" "$cur"
      fi
      ;;
    'settings unset')
      _npme_reply "$_npme_setting_keys" "$cur"
      ;;
    'settings set')
      # KEY=VALUE: after '=' offer the key's values, before it the keys.
      local key=''
      if [[ $prev == '=' && $COMP_CWORD -ge 2 ]]; then
        key=${COMP_WORDS[COMP_CWORD - 2]-}
      elif [[ $cur == *=* ]]; then
        key=${cur%%=*}
        cur=${cur#*=}
      fi
      if [[ -n $key ]]; then
        _npme_reply "$(_npme_setting_values "$key")" "$cur"
      else
        local keys='' k
        for k in $_npme_setting_keys; do
          keys+="$k= "
        done
        _npme_reply "$keys" "$cur"
        compopt -o nospace 2>/dev/null
      fi
      ;;
  esac
  return 0
}

complete -F _npme npme
