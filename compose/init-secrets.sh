#!/bin/sh
# Create the secrets the compose stack reads, once:
#   compose/secrets/admin_token              the proxy's admin/webhook token (Alertmanager
#                                            sends it as Bearer; `ollama-sidecar` CLI needs it)
#   compose/secrets/grafana_admin_password   Grafana's `admin` password
#   compose/secrets/session_key              the key of hashed session labels, the same on
#                                            every proxy replica (labels agree across them)
# Existing files are kept (delete one and re-run to rotate it, then restart the stack).
#
# The directory is 0700 so other users on this host cannot read the secrets; the files
# are 0644 because the containers read them as their own non-root users through a bind
# mount, where only the file's own mode counts.
set -eu

dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 700 "$dir"

new_secret() {
    path="$dir/$1"
    if [ -s "$path" ]; then
        echo "kept    $path"
        return
    fi
    # 32 random bytes as 64 hex characters, no trailing newline.
    token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    if [ "${#token}" -ne 64 ]; then
        echo "init-secrets: could not read 32 random bytes from /dev/urandom" >&2
        exit 1
    fi
    (umask 077 && printf '%s' "$token" > "$path.tmp")
    chmod 644 "$path.tmp"
    mv "$path.tmp" "$path"
    echo "created $path"
}

new_secret admin_token
new_secret session_key
new_secret grafana_admin_password
