#!/usr/bin/env bash
# Remove the Millwright service installed by systemd/install.sh.
#
# By default the config (/etc/millwright) and the outbox (/var/lib/millwright,
# which may still hold events the cloud has not received) are kept; --purge
# removes them and the 'millwright' user too.
set -euo pipefail

SERVICE_USER=millwright
UNIT=millwright.service

usage() {
    cat <<'EOF'
Usage: sudo systemd/uninstall.sh [options]

Stops and disables millwright.service, removes the unit and /opt/millwright.
Keeps /etc/millwright and /var/lib/millwright (the outbox) unless --purge.

Options:
  --root DIR      uninstall from DIR instead of / (also MILLWRIGHT_ROOT=DIR)
  --purge         also remove the config, the outbox and the 'millwright' user
  --no-user       never touch the user (MILLWRIGHT_SKIP_USERADD=1)
  --no-systemctl  do not call systemctl (MILLWRIGHT_SKIP_SYSTEMCTL=1)
  -h, --help      this text
EOF
}

say() { printf 'millwright-uninstall: %s\n' "$*"; }
die() { printf 'millwright-uninstall: error: %s\n' "$*" >&2; exit 1; }

ROOT="${MILLWRIGHT_ROOT:-}"
PURGE=0
TOUCH_USER=1
USE_SYSTEMCTL=1
[[ "${MILLWRIGHT_SKIP_USERADD:-0}" == 1 ]] && TOUCH_USER=0
[[ "${MILLWRIGHT_SKIP_SYSTEMCTL:-0}" == 1 ]] && USE_SYSTEMCTL=0

while (($#)); do
    case "$1" in
        --root) ROOT="${2:?--root needs a directory}"; shift 2 ;;
        --purge) PURGE=1; shift ;;
        --no-user) TOUCH_USER=0; shift ;;
        --no-systemctl) USE_SYSTEMCTL=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

ROOT="${ROOT%/}"
if [[ -z "$ROOT" && "$(id -u)" -ne 0 ]]; then
    die "run as root (sudo $0), or pass --root DIR"
fi
OPT="$ROOT/opt/millwright"
ETC="$ROOT/etc/millwright"
STATE="$ROOT/var/lib/millwright"
UNIT_FILE="$ROOT/etc/systemd/system/$UNIT"

if ((USE_SYSTEMCTL)) && command -v systemctl >/dev/null && [[ -f "$UNIT_FILE" ]]; then
    if [[ -n "$ROOT" ]]; then
        systemctl --root="$ROOT" --quiet disable "$UNIT" || true
    else
        # Stopping flushes what it can to the cloud (bounded by TimeoutStopSec).
        systemctl --quiet disable --now "$UNIT" || true
    fi
    say "stopped and disabled $UNIT"
fi
rm -f "$UNIT_FILE"
rm -rf "$ROOT/etc/systemd/system/$UNIT.d"
if ((USE_SYSTEMCTL)) && [[ -z "$ROOT" ]] && command -v systemctl >/dev/null; then
    systemctl daemon-reload
fi
rm -rf "$OPT"
say "removed the unit and $OPT"

if ((PURGE)); then
    rm -rf "$ETC" "$STATE"
    say "purged $ETC and $STATE (config and outbox)"
    if ((TOUCH_USER)) && getent passwd "$SERVICE_USER" >/dev/null; then
        userdel "$SERVICE_USER"
        say "removed user '$SERVICE_USER'"
    fi
else
    [[ -d "$ETC" ]] && say "kept the config in $ETC"
    [[ -d "$STATE" ]] && say "kept the outbox in $STATE (events not yet delivered stay there)"
    say "use --purge to remove them and the user"
fi
