#!/usr/bin/env bash
# Install or upgrade Millwright as a systemd service from a source checkout.
#
# Idempotent: run it again to upgrade. The config (/etc/millwright) and the
# outbox (/var/lib/millwright) are never touched by an upgrade. Each version is
# built into its own virtual environment under /opt/millwright/releases/ and
# only becomes /opt/millwright/current after `millwright check` has accepted
# the config with it, so a failed upgrade leaves the running version in place.
set -euo pipefail

SERVICE_USER=millwright
UNIT=millwright.service

usage() {
    cat <<'EOF'
Usage: sudo systemd/install.sh [options]

Installs (or upgrades) Millwright: a system user 'millwright', a virtual
environment under /opt/millwright, the example config at
/etc/millwright/millwright.toml (only if none exists), the outbox directory
/var/lib/millwright, and the systemd unit millwright.service (enabled).

Options:
  --root DIR        install under DIR instead of / (staging and tests);
                    also MILLWRIGHT_ROOT=DIR
  --source DIR      the Millwright source checkout (default: this script's checkout)
  --python PY       interpreter for the virtual environment, Python >= 3.11,
                    64-bit (default: python3; also MILLWRIGHT_PYTHON)
  --pip-args ARGS   extra pip arguments, e.g. "--no-index --find-links /media/wheels"
                    for an offline install (also MILLWRIGHT_PIP_ARGS)
  --no-user         do not create the user or chown anything (MILLWRIGHT_SKIP_USERADD=1)
  --no-systemctl    do not call systemctl (MILLWRIGHT_SKIP_SYSTEMCTL=1)
  --start           start (or restart) the service now; without it a running
                    service is restarted, a stopped one is left stopped
  -h, --help        this text
EOF
}

say() { printf 'millwright-install: %s\n' "$*"; }
die() { printf 'millwright-install: error: %s\n' "$*" >&2; exit 1; }

ROOT="${MILLWRIGHT_ROOT:-}"
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${MILLWRIGHT_PYTHON:-python3}"
PIP_ARGS="${MILLWRIGHT_PIP_ARGS:-}"
CREATE_USER=1
USE_SYSTEMCTL=1
START=0
[[ "${MILLWRIGHT_SKIP_USERADD:-0}" == 1 ]] && CREATE_USER=0
[[ "${MILLWRIGHT_SKIP_SYSTEMCTL:-0}" == 1 ]] && USE_SYSTEMCTL=0

while (($#)); do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --source) SOURCE="${2:?--source needs a directory}"; shift 2 ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --pip-args) PIP_ARGS="${2?--pip-args needs a value}"; shift 2 ;;
        --no-user) CREATE_USER=0; shift ;;
        --no-systemctl) USE_SYSTEMCTL=0; shift ;;
        --start) START=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

ROOT="${ROOT%/}"
if [[ -n "$ROOT" ]]; then
    mkdir -p "$ROOT"
    ROOT="$(cd "$ROOT" && pwd)"
fi
OPT="$ROOT/opt/millwright"
ETC="$ROOT/etc/millwright"
STATE="$ROOT/var/lib/millwright"
UNIT_DIR="$ROOT/etc/systemd/system"
CONFIG="$ETC/millwright.toml"

# --- preflight: fail before changing anything ---------------------------------
if [[ -z "$ROOT" && "$(id -u)" -ne 0 ]]; then
    die "run as root (sudo $0), or pass --root DIR to stage the install in a directory"
fi
for needed in pyproject.toml config/millwright.toml systemd/millwright.service; do
    [[ -f "$SOURCE/$needed" ]] || die "$SOURCE/$needed not found; pass --source with a Millwright checkout"
done
command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found; install Python 3.11+ or pass --python"
"$PYTHON" - <<'EOF' || die "'$PYTHON' cannot be used (see above)"
import struct, sys
if sys.version_info < (3, 11):
    sys.exit(f"Python {sys.version.split()[0]} is too old; Millwright needs 3.11 or newer")
if struct.calcsize("P") != 8:
    sys.exit("this is a 32-bit Python: onnxruntime has no 32-bit ARM wheels; "
             "install a 64-bit OS (e.g. Raspberry Pi OS 64-bit, Bookworm)")
try:
    import ensurepip, venv  # noqa: F401
except ImportError:
    sys.exit("the venv module is missing; on Debian/Raspberry Pi OS: apt install python3-venv")
EOF
if ((CREATE_USER)) && ! command -v useradd >/dev/null && ! getent passwd "$SERVICE_USER" >/dev/null; then
    die "useradd not found; create the user '$SERVICE_USER' yourself or pass --no-user"
fi
if ((USE_SYSTEMCTL)) && ! command -v systemctl >/dev/null; then
    die "systemctl not found; this installer targets systemd (pass --no-systemctl to skip it)"
fi

mkdir -p "$OPT/releases"
# One installer at a time: two concurrent upgrades would race on 'current'.
if command -v flock >/dev/null; then
    exec 9>"$OPT/.install.lock"
    flock -n 9 || die "another install is running (lock $OPT/.install.lock)"
fi

# --- user and directories ---------------------------------------------------------
if ((CREATE_USER)); then
    if getent passwd "$SERVICE_USER" >/dev/null; then
        say "user '$SERVICE_USER' exists"
    else
        useradd --system --user-group --home-dir /var/lib/millwright --no-create-home \
            --shell /usr/sbin/nologin --comment "Millwright gateway" "$SERVICE_USER"
        say "created system user '$SERVICE_USER'"
    fi
fi
install -d -m 0755 "$OPT" "$OPT/releases" "$OPT/doc" "$UNIT_DIR"
install -d -m 0750 "$ETC" "$STATE"
if ((CREATE_USER)); then
    chown "root:$SERVICE_USER" "$ETC"
    chown "$SERVICE_USER:$SERVICE_USER" "$STATE"
fi

# --- the release: one virtual environment per source version ----------------------
STAGE="$(mktemp -d)"
RELEASE_TMP=""
cleanup() {
    rm -rf "$STAGE"
    # A half-built release must never be mistaken for a good one.
    if [[ -n "$RELEASE_TMP" ]]; then rm -rf "$RELEASE_TMP"; fi
}
trap cleanup EXIT

# Build from a clean copy: pip builds in the source tree otherwise (build/, *.egg-info).
tar -C "$SOURCE" --exclude=.git --exclude=.venv --exclude=venv --exclude=build \
    --exclude=dist --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.pyc' \
    --exclude=.pytest_cache --exclude=.ruff_cache -cf - . | tar -C "$STAGE" -xf -

RELEASE_NAME="$("$PYTHON" - "$STAGE" <<'EOF'
import hashlib, pathlib, sys, tomllib
root = pathlib.Path(sys.argv[1])
version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
digest = hashlib.sha256()
for path in sorted(p for p in root.rglob("*") if p.is_file()):
    digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
print(f"{version}-{digest.hexdigest()[:12]}")
EOF
)"
RELEASE="$OPT/releases/$RELEASE_NAME"
PREVIOUS="$(readlink "$OPT/current" 2>/dev/null || true)"
PREVIOUS="${PREVIOUS##*/}"

if [[ -f "$RELEASE/.complete" ]]; then
    say "release $RELEASE_NAME is already built"
else
    rm -rf "$RELEASE"
    RELEASE_TMP="$RELEASE"
    say "building release $RELEASE_NAME in $RELEASE"
    "$PYTHON" -m venv "$RELEASE"
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    "$RELEASE/bin/python" -m pip install --quiet --disable-pip-version-check \
        $PIP_ARGS "$STAGE" || die "pip install failed (see above); nothing was changed"
    "$RELEASE/bin/millwright" --help >/dev/null || die "the new release does not start"
    touch "$RELEASE/.complete"
    RELEASE_TMP=""
fi
[[ -f "$SOURCE/docs/operations.md" ]] && install -m 0644 "$SOURCE/docs/operations.md" "$OPT/doc/"

# --- config: installed once, never overwritten ------------------------------------
if [[ -e "$CONFIG" ]]; then
    say "keeping existing config $CONFIG"
else
    # The example keeps its outbox beside the checkout; a service keeps it in its
    # StateDirectory, the only place the unit lets it write.
    sed -E 's|^data_dir[[:space:]]*=.*$|data_dir = "/var/lib/millwright"   # the outbox (the unit'"'"'s StateDirectory)|' \
        "$SOURCE/config/millwright.toml" >"$STAGE/millwright.toml"
    install -m 0640 "$STAGE/millwright.toml" "$CONFIG"
    ((CREATE_USER)) && chown "root:$SERVICE_USER" "$CONFIG"
    say "installed example config $CONFIG: edit it for your devices and cloud broker"
fi

# --- check the config with the new release before it goes live --------------------
check=("$RELEASE/bin/millwright" check --config "$CONFIG")
if ((CREATE_USER)) && [[ "$(id -u)" -eq 0 ]] && command -v runuser >/dev/null; then
    # As the service user, so unreadable certificate or password files show up now.
    check=(runuser -u "$SERVICE_USER" -- "${check[@]}")
fi
if ! "${check[@]}"; then
    if [[ -n "$PREVIOUS" ]]; then
        die "'millwright check' rejected $CONFIG with release $RELEASE_NAME; release $PREVIOUS stays active. Fix the config and run the installer again"
    fi
    die "'millwright check' rejected $CONFIG; fix it and run the installer again"
fi

# --- go live: switch 'current' atomically, install the unit ------------------------
ln -sfn "releases/$RELEASE_NAME" "$OPT/current.new"
mv -T "$OPT/current.new" "$OPT/current"
install -m 0644 "$SOURCE/systemd/millwright.service" "$UNIT_DIR/$UNIT"
say "release $RELEASE_NAME is current"

# Keep the new release and the one before it (for a quick rollback), remove older ones.
for dir in "$OPT"/releases/*/; do
    name="$(basename "$dir")"
    [[ "$name" == "$RELEASE_NAME" || "$name" == "$PREVIOUS" ]] && continue
    rm -rf "$dir"
    say "removed old release $name"
done

if ((USE_SYSTEMCTL)); then
    if [[ -n "$ROOT" ]]; then
        systemctl --root="$ROOT" --quiet enable "$UNIT"
    else
        systemctl daemon-reload
        systemctl --quiet enable "$UNIT"
        if ((START)); then
            systemctl restart "$UNIT"
            say "started $UNIT"
        elif systemctl --quiet is-active "$UNIT"; then
            systemctl restart "$UNIT"
            say "restarted $UNIT with release $RELEASE_NAME"
        else
            say "enabled $UNIT; start it with: sudo systemctl start millwright"
        fi
    fi
fi
say "done. Status: millwright status --config $CONFIG ; logs: journalctl -u millwright -f"
