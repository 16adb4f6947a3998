#!/usr/bin/env bash
# Installs nfnet-daemon as a systemd service from the checkout it is in, which must be /opt/nfnet-stream (the
# unit's ExecStart). README.md, "Running as a service", gives the steps around it; tests/test_systemd.py runs
# them under a real systemd.
#
#   sudo /opt/nfnet-stream/systemd/install.sh [--extras EXTRAS]
#
# --extras: the project's pip extras for the venv, e.g. `onnxruntime` on a box without a GPU (README, "Install").
# pip reads its usual settings: an offline box installs from a directory of wheels with
#   sudo PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels /opt/nfnet-stream/systemd/install.sh
#
# Safe to run again, after a `git pull` or once ROCm has added a `render` group: it never overwrites
# /etc/nfnet-stream/daemon.toml or nfnet-daemon.env, and it does not start, stop or restart the service.
set -euo pipefail

PREFIX=/opt/nfnet-stream
SERVICE_USER=nfnet
# The GPU's device nodes (/dev/kfd, /dev/dri/renderD*) belong to `render` (to `video` on older ROCm), cameras
# (/dev/video*) to `video`. A box without one of them (CPU-only, older ROCm) simply does not need it.
DEVICE_GROUPS=(video render)

extras=""
while [ $# -gt 0 ]; do
    case "$1" in
        --extras) extras="${2:?--extras needs a value, e.g. --extras onnxruntime}"; shift 2 ;;
        --extras=*) extras="${1#--extras=}"; shift ;;
        *) echo "usage: $0 [--extras EXTRAS]" >&2; exit 2 ;;
    esac
done

checkout="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
if [ "$(id -u)" -ne 0 ]; then
    echo "error: run as root (sudo $0)" >&2
    exit 1
fi
if [ "$checkout" != "$(readlink -f "$PREFIX" 2>/dev/null || echo "$PREFIX")" ]; then
    echo "error: the unit runs $PREFIX/.venv/bin/nfnet-daemon; put this checkout there first:" >&2
    echo "  sudo git clone <this repository> $PREFIX && sudo $PREFIX/systemd/install.sh" >&2
    exit 1
fi
cd "$PREFIX"

# The service user: no login, no home of its own (systemd creates /var/lib/nfnet-stream, its StateDirectory=).
if ! getent passwd "$SERVICE_USER" >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/nfnet-stream --no-create-home --shell /usr/sbin/nologin \
        "$SERVICE_USER"
    echo "created system user $SERVICE_USER"
fi
# Device access through the user's own groups, which systemd applies at every start (the unit names none: a
# group the box lacks would fail it with 216/GROUP). Only the groups this box has; run again once ROCm adds one.
for group in "${DEVICE_GROUPS[@]}"; do
    if getent group "$group" >/dev/null; then
        usermod --append --groups "$group" "$SERVICE_USER"
        echo "$SERVICE_USER is in group $group"
    else
        echo "no $group group on this box: skipped (only devices owned by it would need it)"
    fi
done

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install ".${extras:+[$extras]}"

install -d -m 0755 /etc/nfnet-stream
if [ ! -e /etc/nfnet-stream/daemon.toml ]; then
    install -m 0644 configs/edge-rocm.toml /etc/nfnet-stream/daemon.toml
    echo "installed /etc/nfnet-stream/daemon.toml (from configs/edge-rocm.toml): edit it"
fi
if [ ! -e /etc/nfnet-stream/nfnet-daemon.env ]; then
    install -m 0640 -g "$SERVICE_USER" systemd/nfnet-daemon.env.example /etc/nfnet-stream/nfnet-daemon.env
fi
install -m 0644 systemd/nfnet-daemon.service /etc/systemd/system/nfnet-daemon.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "installed nfnet-daemon.service; next: check the configuration, then systemctl enable --now nfnet-daemon"
