#!/usr/bin/env bash
# The Python environment of the real-client interop tests (tests/support/xmpp_client.py): a virtualenv
# with slixmpp and its dependencies at pinned versions, from PyPI.
#
#   tests/support/pyenv.sh [DIR]     # DIR defaults to $XMPPTAP_PYENV, else <repo>/target/pyenv
#
# Idempotent and safe to run concurrently (a lock file beside DIR): creates the virtualenv with
# `python3 -m venv` when it is missing or broken, installs the pinned packages when the stamp file
# says they are not there yet, and prints the environment's python path as the only line on stdout
# (progress goes to stderr). `PYTHON=/path/to/python3` picks the interpreter that creates the venv.
set -euo pipefail

repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-${XMPPTAP_PYENV:-$repo/target/pyenv}}"
python="${PYTHON:-python3}"

# Every package, transitive ones too, pinned: a fresh machine gets exactly what the tests were written
# against. slixmpp 1.17.0 ships a binary wheel for CPython 3.11 on x86_64 Linux (its JID code is Rust).
requirements=(
    slixmpp==1.17.0
    aiodns==4.0.4
    pycares==5.2.1
    cffi==2.1.1
    pycparser==3.12
    pyasn1==0.6.5
    pyasn1-modules==0.4.2
)
stamp_text="${requirements[*]}"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

stamp="$venv/.xmpptap-requirements"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    :
else
    echo "pyenv.sh: creating virtualenv $venv with $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi

if [ "$(cat "$stamp" 2>/dev/null || true)" != "$stamp_text" ]; then
    echo "pyenv.sh: installing ${requirements[*]}" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet "${requirements[@]}" >&2
    "$venv/bin/python" -c 'import slixmpp, sys; print("pyenv.sh: slixmpp", slixmpp.__version__, "on Python", sys.version.split()[0], file=sys.stderr)'
    printf '%s' "$stamp_text" >"$stamp"
fi

echo "$venv/bin/python"
