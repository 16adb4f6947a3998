#!/usr/bin/env bash
# System packages the tests need beyond pip: a real RTSP server (Debian's gst-rtsp-server, driven by the
# system python3) for the live-source tests, and systemd's systemd-analyze to verify the service unit.
# Does nothing when they are already installed.
set -euo pipefail
packages=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good systemd)
if dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
