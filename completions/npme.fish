# fish completion for npme. Install as
# /usr/share/fish/vendor_completions.d/npme.fish (or ~/.config/fish/completions/).
# Kept in sync with the parser by tests/integration/test_docs.sh.

# Prints the subcommand path and positional arguments typed so far, one word a
# line, skipping options and their values. Unlike __fish_use_subcommand, the
# DIR of `npme --root DIR <TAB>` is not taken for a subcommand.
function __npme_words
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l skip 0
    for token in $tokens
        if test $skip -eq 1
            set skip 0
            continue
        end
        switch $token
            case --root --config --admin-url --admin-token-file --cacert --registry-listen --admin-listen --email --user -o --output --dir --compression --keep --keep-within --timeout --from-lockfile --to --since --limit
                set skip 1
            case '-*'
            case '*'
                echo $token
        end
    end
end

# True when the words typed so far are exactly $argv.
function __npme_at
    set -l words (__npme_words)
    test "$words" = "$argv"
end

# True when the words typed so far start with $argv.
function __npme_in
    set -l words (__npme_words)
    test (count $words) -ge (count $argv); or return 1
    for i in (seq (count $argv))
        test "$words[$i]" = "$argv[$i]"; or return 1
    end
end

# True when no subcommand has been typed yet.
function __npme_needs_command
    test (count (__npme_words)) -eq 0
end

complete -c npme -f

# Global options, accepted before or after any subcommand.
complete -c npme -l root -x -a '(__fish_complete_directories (commandline -ct))' -d 'Embedded instance under DIR'
complete -c npme -l config -r -F -d 'Settings file (default /etc/npme/settings.json)'
complete -c npme -l admin-url -x -d 'Admin API URL (default from the settings file)'
complete -c npme -l admin-token-file -r -F -d 'File holding the admin token'
complete -c npme -l cacert -r -F -d 'CA bundle (PEM) trusted for an https admin API'
complete -c npme -l json -d 'Print one JSON document on stdout'
complete -c npme -s q -l quiet -d 'Print only errors'
complete -c npme -l no-color -d 'No colors (also NO_COLOR)'
complete -c npme -l yes -d 'Skip confirmations'
complete -c npme -l version -d 'Print the version and exit'
complete -c npme -s h -l help -d 'Print help and exit'

# Subcommands.
complete -c npme -n __npme_needs_command -a serve -d 'Run an instance: registry, admin API and follower'
complete -c npme -n __npme_needs_command -a status -d 'Show role, publication, upstream, counts and health'
complete -c npme -n __npme_needs_command -a replicas -d 'Show the followers of this instance: position, lag, synchronous or not'
complete -c npme -n __npme_needs_command -a settings -d 'Read and change settings'
complete -c npme -n __npme_needs_command -a user -d 'Registry users for npm login'
complete -c npme -n __npme_needs_command -a token -d 'Registry access tokens'
complete -c npme -n __npme_needs_command -a snapshot -d 'Create, list, inspect, verify and prune snapshots'
complete -c npme -n __npme_needs_command -a restore -d "Restore a snapshot into the instance's directories"
complete -c npme -n __npme_needs_command -a reset-follower -d 'Resync from the upstream'
complete -c npme -n __npme_needs_command -a add-package -d 'Take packages from the uplink (or white-list them on a replica)'
complete -c npme -n __npme_needs_command -a remove-package -d 'Remove a package from the white-list (stop updating it)'
complete -c npme -n __npme_needs_command -a refresh -d 'Revalidate a package held from the uplink now'
complete -c npme -n __npme_needs_command -a promote-to-primary -d 'Make this replica the primary'
complete -c npme -n __npme_needs_command -a ha -d 'Automatic failover on etcd: status, switchover, pause, resume'
complete -c npme -n __npme_needs_command -a doctor -d "Check an instance's data as a whole and repair it"
complete -c npme -n __npme_needs_command -a audit -d 'Show the audit log'
complete -c npme -n __npme_needs_command -a console -d "Print the admin console's URL"

# npme serve
complete -c npme -n '__npme_in serve' -l registry-listen -x -d 'host:port for the registry'
complete -c npme -n '__npme_in serve' -l admin-listen -x -d 'host:port for the admin API'

# npme settings list|get|set|unset
complete -c npme -n '__npme_at settings' -a list -d 'List every setting with its value and npmE name'
complete -c npme -n '__npme_at settings' -a get -d "Print one setting's value alone on a line"
complete -c npme -n '__npme_at settings' -a set -d 'Change settings KEY=VALUE... all or nothing'
complete -c npme -n '__npme_at settings' -a unset -d 'Return settings to their defaults KEY... all or nothing'
complete -c npme -n '__npme_in settings list; or __npme_in settings get' -l reveal -d 'Show secrets instead of ********'
complete -c npme -n '__npme_in settings list; or __npme_in settings get; or __npme_in settings set; or __npme_in settings unset' -l offline -d 'Use the settings file of a stopped instance'

set -l __npme_settings \
    registry.url 'URL clients use, written into tarball URLs' \
    canonical_url 'npmE name of registry.url' \
    registry.listen 'host:port of the registry' \
    registry.max_body 'Largest accepted request body, e.g. 64M' \
    registry.max_connections_per_client 'Open connections one client address may hold on the registry; 0 = no cap' \
    registry.trusted_proxies 'Address ranges of load balancers whose X-Forwarded-For names the client' \
    registry.tls_cert "Certificate chain (PEM) for the registry's HTTPS; empty = plain HTTP" \
    registry.tls_key 'Private key (PEM) of registry.tls_cert' \
    admin.listen 'host:port of the admin API' \
    admin.max_connections_per_client 'Open connections one client address may hold on the admin API; 0 = no cap' \
    admin.tls_cert "Certificate chain (PEM) for the admin API's HTTPS; empty = plain HTTP" \
    admin.tls_key 'Private key (PEM) of admin.tls_cert' \
    admin.token 'Bearer token of the admin API' \
    admin.console_idle 'Seconds a console session lasts unused' \
    secret 'Secret used between services' \
    upstream.url 'Registry URL of the instance to follow' \
    couch_url_remote 'npmE name of upstream.url' \
    upstream.secret "The upstream's secret" \
    remote_shared_fetch_secret 'npmE name of upstream.secret' \
    upstream.policy 'mirror or white-list' \
    remote_policy 'npmE name of upstream.policy' \
    upstream.ca_file 'CA bundle (PEM) trusted for upstream.url and the failover members' \
    publication 'Which publishes are accepted' \
    allowpublishes 'npmE name of publication' \
    auth.installs 'Which reads need a token' \
    authfetch 'npmE name of auth.installs' \
    authglobal 'npmE name of auth.installs' \
    uplink.url 'Registry public packages come from; empty = none' \
    uplink.token 'Bearer token sent to the uplink' \
    uplink.policy 'read-through or white-list' \
    read_through_cache 'npmE name of uplink.policy (yes/no)' \
    uplink.private 'Scopes and name globs never taken from the uplink' \
    uplink.ca_file 'CA bundle (PEM) trusted for uplink.url' \
    proxy.ca_file 'Other name of uplink.ca_file' \
    uplink.maxage 'Seconds before an uplink packument is revalidated' \
    uplink.audit 'npm audit requests: public-only, all or off' \
    replication.sync_replicas 'Followers that must apply a write before it is acknowledged; 0 = asynchronous' \
    replication.sync_timeout 'Seconds a write waits for synchronous followers (10 or 10s)' \
    replication.sync_mode 'Too few synchronous followers: strict (refuse) or relaxed (degrade)' \
    replication.follower_timeout 'Seconds before a silent follower is shown gone' \
    ha.etcd 'etcd endpoints for automatic failover; empty = manual failover' \
    ha.cluster 'Name of the cluster in etcd (keys under /npme/<cluster>/)' \
    ha.ttl "Seconds of the leader's lease (10 or 10s)" \
    ha.loop 'Seconds between two rounds of the failover loop' \
    ha.max_lag 'Changes a member may lag and still lead' \
    ha.url "This instance's registry URL as the other members reach it" \
    ha.etcd_ca "CA bundle (PEM) for etcd's TLS" \
    ha.etcd_cert 'Client certificate (PEM) for etcd' \
    ha.etcd_key 'Key (PEM) of ha.etcd_cert' \
    ha.etcd_user 'etcd user (etcd auth enabled)' \
    ha.etcd_password 'Password of ha.etcd_user' \
    network.http_proxy 'Outbound HTTP(S) proxy' \
    proxy_url 'npmE name of network.http_proxy' \
    network.ca_file 'Extra CA bundle (PEM) for outbound TLS' \
    storage.metadata 'Metadata directory' \
    couchdb_host_path 'npmE name of storage.metadata' \
    storage.packages 'Packages directory' \
    packages_host_path 'npmE name of storage.packages' \
    storage.data 'Data directory' \
    data_host_path 'npmE name of storage.data' \
    storage.min_free 'Free space below which a directory is reported low' \
    audit.max_size 'Size of data/audit.log at which it is rotated, e.g. 10M' \
    audit.keep 'Rotated audit logs kept' \
    snapshot.dir 'Directory the admin console creates snapshots in and lists' \
    scrub.interval 'Seconds between two scrubs in npme serve; 0 = off'
for i in (seq 1 2 (count $__npme_settings))
    set -l key $__npme_settings[$i]
    set -l help $__npme_settings[(math $i + 1)]
    complete -c npme -n '__npme_at settings get' -a $key -d $help
    complete -c npme -n '__npme_in settings set' -a "$key=" -d $help
    complete -c npme -n '__npme_in settings unset' -a $key -d $help
end
set -e __npme_settings

for value in mirror white-list
    complete -c npme -n '__npme_in settings set' -a "upstream.policy=$value remote_policy=$value"
end
for value in all read-only scoped
    complete -c npme -n '__npme_in settings set' -a "publication=$value allowpublishes=$value"
end
for value in scoped all none
    complete -c npme -n '__npme_in settings set' -a "auth.installs=$value authfetch=$value authglobal=$value"
end
for value in read-through white-list
    complete -c npme -n '__npme_in settings set' -a "uplink.policy=$value read_through_cache=$value"
end
for value in yes no
    complete -c npme -n '__npme_in settings set' -a "read_through_cache=$value"
end
for value in public-only all off
    complete -c npme -n '__npme_in settings set' -a "uplink.audit=$value"
end
for value in strict relaxed
    complete -c npme -n '__npme_in settings set' -a "replication.sync_mode=$value"
end

# npme user add|list|remove
complete -c npme -n '__npme_at user' -a add -d 'Add a user (password from a prompt or --password-stdin)'
complete -c npme -n '__npme_at user' -a list -d 'List users'
complete -c npme -n '__npme_at user' -a remove -d 'Remove a user and revoke their tokens'
complete -c npme -n '__npme_in user add' -l email -x -d 'E-mail address'
complete -c npme -n '__npme_in user add' -l password-stdin -d 'Read the password from standard input'

# npme token create|list|revoke
complete -c npme -n '__npme_at token' -a create -d 'Create a token for a user and print it once'
complete -c npme -n '__npme_at token' -a list -d 'List tokens (ids, users, access; never the tokens)'
complete -c npme -n '__npme_at token' -a revoke -d 'Revoke a token by id'
complete -c npme -n '__npme_in token create' -l user -x -d 'User the token belongs to'
complete -c npme -n '__npme_in token create' -l read-only -d 'Token can install but not publish'
complete -c npme -n '__npme_in token create' -l expires -x -d 'Token stops working after this long (90d, 12h) or at this UTC time'
complete -c npme -n '__npme_in token create' -l cidr -x -d 'Token works only from these client address ranges'

# npme snapshot create|list|inspect|verify|prune
complete -c npme -n '__npme_at snapshot' -a create -d 'Write a verified snapshot of the instance'
complete -c npme -n '__npme_at snapshot' -a list -d 'List the snapshots of a directory'
complete -c npme -n '__npme_at snapshot' -a inspect -d "Print a snapshot's snapshot.json"
complete -c npme -n '__npme_at snapshot' -a verify -d 'Check checksums, the database and every tarball'
complete -c npme -n '__npme_at snapshot' -a prune -d 'Delete the oldest snapshots of a directory'
complete -c npme -n '__npme_in snapshot create' -s o -l output -r -F -d 'Snapshot file to write'
complete -c npme -n '__npme_in snapshot create; or __npme_in snapshot list; or __npme_in snapshot prune' -l dir -x -a '(__fish_complete_directories (commandline -ct))' -d 'Directory of snapshots'
complete -c npme -n '__npme_in snapshot create' -l compression -x -a 'zstd gzip none' -d 'Compression of the tar stream'
complete -c npme -n '__npme_in snapshot inspect; or __npme_in snapshot verify' -F
complete -c npme -n '__npme_in snapshot prune' -l keep -x -d 'Keep the newest N snapshots'
complete -c npme -n '__npme_in snapshot prune' -l keep-within -x -d 'Also keep snapshots younger than DURATION'
complete -c npme -n '__npme_in snapshot prune' -l dry-run -d 'Print what would be deleted'

# npme restore FILE
complete -c npme -n '__npme_in restore' -F
complete -c npme -n '__npme_in restore' -l force -d 'Restore over non-empty directories, keeping them aside'
complete -c npme -n '__npme_in restore' -l dry-run -d 'Verify and say what would be done'
complete -c npme -n '__npme_in restore' -l as-replica -d "Seed a replica from the snapshot's update_seq"

# npme reset-follower
complete -c npme -n '__npme_in reset-follower' -l offline -d 'Empty the sequence file of a stopped instance'
complete -c npme -n '__npme_in reset-follower' -l wait -d 'Wait until the follower has caught up'
complete -c npme -n '__npme_in reset-follower' -l timeout -x -d 'Seconds --wait waits (default 600)'

# npme add-package NAME[@RANGE]..., remove-package NAME, refresh NAME
complete -c npme -n '__npme_in add-package' -l no-deps -d 'Take only the named packages, not their dependencies'
complete -c npme -n '__npme_in add-package' -l prefetch -d "Also download the chosen versions' tarballs"
complete -c npme -n '__npme_in add-package' -l from-lockfile -r -F -d 'Import exactly the versions of an npm lockfile'
complete -c npme -n '__npme_in add-package' -l timeout -x -d 'Seconds to wait for the import (default 3600)'

# npme promote-to-primary
complete -c npme -n '__npme_in promote-to-primary' -l force -d 'Promote even if the old primary takes writes or is ahead'
complete -c npme -n '__npme_in promote-to-primary' -l wait-timeout -x -d 'Seconds to wait for catch-up'
complete -c npme -n '__npme_in promote-to-primary' -l fence -x -d 'Admin URL of the old primary to set read-only'
complete -c npme -n '__npme_in promote-to-primary' -l fence-token-file -r -F -d "File with the old primary's admin token"
complete -c npme -n '__npme_in promote-to-primary' -l repoint -x -d 'Admin URL of a replica to follow the new primary'
complete -c npme -n '__npme_in promote-to-primary' -l repoint-token-file -r -F -d "File with the replicas' admin token"
complete -c npme -n '__npme_in promote-to-primary' -l upstream-url -x -d 'Registry URL the repointed replicas follow'

# npme doctor
complete -c npme -n '__npme_in doctor' -l offline -d "Check a stopped instance's directories directly"
complete -c npme -n '__npme_in doctor' -l full -d 'Hash every tarball against dist.integrity'
complete -c npme -n '__npme_in doctor' -l repair -d 'Quarantine orphans, fetch damaged tarballs again, fix data files'
complete -c npme -n '__npme_in doctor' -l timeout -x -d "Seconds to wait for a running instance's check (default 3600)"

# npme console
complete -c npme -n '__npme_in console' -l open -d 'Open the console in a browser'

# npme audit
complete -c npme -n '__npme_in audit' -l since -x -d 'Events at or after this UTC time or this long ago (24h, 7d)'
complete -c npme -n '__npme_in audit' -l limit -x -d 'At most the newest N events (default 1000)'

# npme ha status|switchover|pause|resume
complete -c npme -n '__npme_at ha' -a status -d 'Show the members, the leader and its lease, lags, and who would lead next'
complete -c npme -n '__npme_at ha' -a switchover -d 'Hand the lead over to a member without losing a write'
complete -c npme -n '__npme_at ha' -a pause -d 'Pause automatic failover (promote-to-primary works by hand)'
complete -c npme -n '__npme_at ha' -a resume -d 'Resume automatic failover'
complete -c npme -n '__npme_in ha switchover' -l to -x -d 'Instance id of the member to lead'
complete -c npme -n '__npme_in ha switchover' -l timeout -x -d 'Seconds to wait for the hand-over (default 60)'
