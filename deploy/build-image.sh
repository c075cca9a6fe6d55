#!/bin/sh
# deploy/build-image.sh BINARY [TAG]: the sky container image
# (deploy/Containerfile) from BINARY, usually target/release/sky, and the
# shared libraries it links, found with ldd and copied to the same paths.
# The image's copy of the binary loses its debug info (strip --strip-debug:
# a panic's backtrace still names functions; BINARY keeps the line tables).
# TAG defaults to localhost/sky:latest. Builds with podman, or with the
# command in $CONTAINER_ENGINE (docker, buildah) that takes the same flags.
set -eu

bin=${1:?usage: deploy/build-image.sh BINARY [TAG]}
tag=${2:-localhost/sky:latest}
engine=${CONTAINER_ENGINE:-podman}
here=$(cd "$(dirname "$0")" && pwd)

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT

mkdir -p "$ctx/rootfs/usr/local/bin"
cp "$bin" "$ctx/rootfs/usr/local/bin/sky"
strip --strip-debug "$ctx/rootfs/usr/local/bin/sky"

# ldd names each library and the dynamic loader by absolute path; a
# library it cannot find is an error, not a smaller image.
libs=$(ldd "$bin") || { echo "build-image: ldd $bin failed" >&2; exit 1; }
if echo "$libs" | grep -q 'not found'; then
  echo "build-image: $bin links libraries this host lacks:" >&2
  echo "$libs" | grep 'not found' >&2
  exit 1
fi
echo "$libs" | tr ' \t' '\n\n' | grep '^/' | sort -u | while read -r lib; do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done

"$engine" build --quiet --file "$here/Containerfile" --tag "$tag" "$ctx"
