#!/usr/bin/env bash
# Runs xmpptap's whole test suite. The interop tests start real Prosody servers, so this installs
# them first when they are missing (Debian/Ubuntu; uses sudo when not root).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prosody >/dev/null 2>&1 || missing+=(prosody)
dpkg -s lua-unbound >/dev/null 2>&1 || missing+=(lua-unbound)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "tests/run.sh: installing ${missing[*]}" >&2
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

exec cargo test --locked "$@"
