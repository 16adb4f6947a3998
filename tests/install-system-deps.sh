#!/usr/bin/env bash
# System packages the tests need beyond pip: a real RTSP server (Debian's gst-rtsp-server, driven by the
# system python3) for the live-source tests; promtool and the server (Debian's prometheus) to check the
# metrics, the Prometheus config and the alert rules, and to run them against a daemon; systemd's
# systemd-analyze to verify the service unit, and systemd-nspawn (systemd-container) with python3-venv to
# install and run it under a real systemd in a container booted from this machine's root; ffmpeg, with which
# nfnet-ceiling and the reliability tests make H.264 videos; Node.js and npm, which install the pinned
# TypeScript compiler and Grafana's schema types that the dashboard is type-checked with. Does nothing when
# they are already installed.
set -euo pipefail
packages=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good prometheus systemd
          systemd-container python3-venv ffmpeg)
# A node and npm from elsewhere (NodeSource, nvm) do as well; dpkg does not know them, and Debian's npm
# conflicts with NodeSource's nodejs, so Debian's are only asked for when either command is missing.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    packages+=(nodejs npm)
fi
if dpkg -s "${packages[@]}" >/dev/null 2>&1; then
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
# The tests start their own servers: on a machine run by systemd the package also starts one; stop it.
if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
