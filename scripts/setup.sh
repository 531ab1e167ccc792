#!/usr/bin/env bash
# Shared set-up for scripts/demo and scripts/test: system packages, a virtualenv, the project.
# Usage: source scripts/setup.sh "<debian packages>" "<pip extras>"
set -euo pipefail

MILLWRIGHT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MILLWRIGHT_VENV:-$MILLWRIGHT_ROOT/.venv}"

need_packages() {
    # Install the Debian packages whose commands are missing (apt-get update once, first).
    local missing=() pkg cmd
    for pair in $1; do
        pkg="${pair%%:*}"; cmd="${pair##*:}"
        command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
        sudo="sudo"
    fi
    say "installing the Debian packages ${missing[*]} (apt-get)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

ensure_venv() {
    # A virtualenv with the project installed editable, with the given extras.
    # Says what it does; quiet when there is nothing to do (the usual case after the first run).
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the virtualenv $(shown "$VENV") (first run only)"
        python3 -m venv "$VENV" || { need_packages "python3-venv:__none__"; python3 -m venv "$VENV"; }
    fi
    local stamp="$VENV/.millwright-installed"
    local want
    want="$(sha256sum < "$MILLWRIGHT_ROOT/pyproject.toml" | cut -c1-16)-$extras"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        say "installing Millwright and its libraries (extras: $extras) into $(shown "$VENV"); about a minute the first time"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
        # setuptools' notice on every editable install of a flat layout (folders named like
        # the packages take precedence) is information only; its warnings still show.
        PYTHONWARNINGS="ignore:Editable installation${PYTHONWARNINGS:+,$PYTHONWARNINGS}" \
            "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
            -e "$MILLWRIGHT_ROOT[$extras]"
        echo "$want" > "$stamp"
        say "installed: $(shown "$VENV/bin/millwright") (\`source $(shown "$VENV")/bin/activate\` puts it on your PATH)"
    fi
}

say() {
    # One line of progress on stderr, marked as the set-up's own.
    echo "setup: $*" >&2
}

shown() {
    # A path as the user would type it from the checkout: relative when it is inside it.
    case "$1" in
        "$MILLWRIGHT_ROOT"/*) echo "${1#"$MILLWRIGHT_ROOT"/}" ;;
        *) echo "$1" ;;
    esac
}
