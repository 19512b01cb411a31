#!/usr/bin/env bash
# One command that shows what xmpptap does: two real Prosody servers (a.test, b.test) federate through
# xmpptap with STARTTLS and Server Dialback, and xmpptap's transcript is printed live.
#
#   examples/federation-demo.sh
#   examples/federation-demo.sh --rules examples/rules/delay.toml --ping-interval 1   # more xmpptap flags
#
# On Debian/Ubuntu with Rust installed. It installs what is missing (prosody, lua-unbound; apt-get, with sudo
# when not root), builds xmpptap, and runs examples/federation_demo.rs. Everything runs on loopback addresses
# (127.90.1.x) with ephemeral ports and is stopped at the end (or on Ctrl-C). The transcript is kept in
# ./federation-demo.jsonl.
set -euo pipefail

cd "$(dirname "$0")/.."

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
[ -t 1 ] && [ -z "${NO_COLOR:-}" ] || say() { printf '==> %s\n' "$*"; }
die() {
    printf 'federation-demo: %s\n' "$*" >&2
    exit 1
}

command -v cargo >/dev/null || die "cargo not found: install Rust first (https://rustup.rs)"

# --- 1. Prosody and lua-unbound (Prosody's resolver; without it Prosody cannot use the demo's DNS server).
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
if command -v dpkg-query >/dev/null; then
    for pkg in prosody lua-unbound; do
        installed "$pkg" || missing+=("$pkg")
    done
elif ! command -v prosody >/dev/null; then
    die "prosody not found and this is not a Debian-like system: install Prosody 0.12 and lua-unbound yourself"
fi
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing ${missing[*]}: run as root, or install sudo"
        sudo=(sudo)
    fi
    say "Installing ${missing[*]} (apt-get${sudo:+ via sudo})"
    "${sudo[@]}" apt-get update -q || die "apt-get update failed"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q prosody lua-unbound ||
        die "apt-get install prosody lua-unbound failed"
else
    say "prosody and lua-unbound are installed"
fi

# The Debian package may have started a system-wide Prosody. The demo does not touch it: its own two
# instances listen on 127.90.1.x with ephemeral ports, so nothing conflicts.
system_pid=""
for pidfile in /run/prosody/prosody.pid /var/run/prosody/prosody.pid; do
    if [ -r "$pidfile" ]; then
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
            system_pid=$pid
            break
        fi
    fi
done
if [ -n "$system_pid" ]; then
    say "A system-wide Prosody is running (pid $system_pid, the Debian package's service). Leaving it alone:" \
        "the demo runs its own two instances on 127.90.1.x with ephemeral ports, so they do not conflict."
fi

# --- 2. Build xmpptap, then run the demo against that binary.
say "Building xmpptap and the demo (cargo build)"
cargo build --bins --example federation_demo || die "cargo build failed"
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
export XMPPTAP_BIN="${target_dir:-target}/debug/xmpptap"
[ -x "$XMPPTAP_BIN" ] || die "built, but no binary at $XMPPTAP_BIN"

say "Running the demo (cargo run --example federation_demo)"
export XMPPTAP_DEMO_ARGS="$*"
exec cargo run --quiet --example federation_demo
