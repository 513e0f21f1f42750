#!/bin/sh
# Pin compose/Dockerfile's base image to the digest the registry serves for its tag now,
# or refresh that pin. The Dockerfile names the base by Python minor version
# (ARG PYTHON_IMAGE=python:3.11-slim-bookworm): every build then gets the newest patch
# release and Debian security fixes, and two builds may differ. Pinned, the line reads
# python:3.11-slim-bookworm@sha256:…, builds are reproducible, and you take updates by
# running this again:
#
#   ./compose/pin-base-image.sh           # pin, or move the pin to what the tag is now
#   docker compose -f compose/docker-compose.yml build --pull
#   git diff compose/Dockerfile           # review, test, commit
#
# The digest is read from Docker Hub's registry API (an anonymous pull token, then the
# tag's manifest), never typed in: the pin is the multi-platform index digest, so amd64
# and arm64 builds pin the same release. Needs curl and network access; changes nothing
# unless it read a well-formed digest.
set -eu

dockerfile="${1:-$(cd "$(dirname "$0")" && pwd)/Dockerfile}"
registry="https://registry-1.docker.io"
auth="https://auth.docker.io/token"

fail() {
    echo "pin-base-image: $*" >&2
    exit 1
}

[ "$(grep -c '^ARG PYTHON_IMAGE=' "$dockerfile")" = 1 ] || fail "$dockerfile: expected one 'ARG PYTHON_IMAGE=' line"
current="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$dockerfile")"
image="${current%%@*}"             # the tag, without a digest pinned earlier
name="${image%:*}"
tag="${image##*:}"
[ "$name" != "$image" ] || fail "'$image' has no tag"
case "$name" in
    */*) repository="$name" ;;
    *) repository="library/$name" ;;  # an official image
esac

token="$(curl -fsSL "$auth?service=registry.docker.io&scope=repository:$repository:pull" \
    | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p')" || fail "no pull token from $auth"
[ -n "$token" ] || fail "no pull token from $auth"

digest="$(curl -fsSI \
    -H "Authorization: Bearer $token" \
    -H "Accept: application/vnd.oci.image.index.v1+json" \
    -H "Accept: application/vnd.docker.distribution.manifest.list.v2+json" \
    "$registry/v2/$repository/manifests/$tag" \
    | tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p')" \
    || fail "could not read the manifest of $image from $registry"
printf '%s\n' "$digest" | grep -Eqx 'sha256:[0-9a-f]{64}' || fail "no digest for $image from $registry (got '$digest')"

pinned="$image@$digest"
if [ "$pinned" = "$current" ]; then
    echo "unchanged: $pinned"
    exit 0
fi
tmp="$dockerfile.tmp.$$"
sed "s|^ARG PYTHON_IMAGE=.*|ARG PYTHON_IMAGE=$pinned|" "$dockerfile" > "$tmp"
mv "$tmp" "$dockerfile"
echo "pinned:  $pinned"
[ "$current" = "$image" ] || echo "was:     $current"
