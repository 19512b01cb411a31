#!/usr/bin/env bash
# Runs xmpptap's whole test suite. The interop tests start real Prosody servers, decode captures with
# tshark and log in with the slixmpp client, so this installs those first when they are missing
# (Debian/Ubuntu packages with apt-get, using sudo when not root; slixmpp into target/pyenv from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v prosody >/dev/null 2>&1 || missing+=(prosody)
dpkg -s lua-unbound >/dev/null 2>&1 || missing+=(lua-unbound)
command -v tshark >/dev/null 2>&1 || missing+=(tshark)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "tests/run.sh: installing ${missing[*]}" >&2
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi

tests/support/pyenv.sh >/dev/null

exec cargo test --locked "$@"
