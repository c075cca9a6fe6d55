#!/usr/bin/env bash
# The peer: coturn answering STUN Binding requests, against the node's
# registrations and pings, in one run on this machine.
#
#   benches/peer-coturn.sh [--duration SECS]
#
# Installs coturn from Debian if it is missing (needs root), builds the node
# in release mode, and runs benches/spec6.py coturn: coturn STUN-only on
# 127.0.0.1:3478 pinned to core 1 with one relay thread, then `sky node
# --shards 1` (its shard on core 1) once per engine (io_uring, recvmmsg);
# the load generator on core 0 in all.
# Prints markdown rows with the ratios. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v turnserver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends coturn >/dev/null
    # The package enables a system-wide TURN server; we only want the binary.
    systemctl disable --now coturn >/dev/null 2>&1 || true
  else
    echo "peer-coturn.sh: coturn is missing and cannot be installed (needs root and apt-get)" >&2
    exit 2
  fi
fi
cargo build --release --locked
exec python3 benches/spec6.py coturn "$@"
