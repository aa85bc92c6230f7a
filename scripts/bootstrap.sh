#!/usr/bin/env bash
# Set up everything mpseal needs on a fresh Debian/Ubuntu machine: system packages
# (when run as root and missing), a virtualenv in .venv, and mpseal with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(openssl qemu-system-arm firmware-microbit-micropython postgresql valgrind chromium)

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "mpseal bootstrap: installing Debian packages: ${need_apt[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "mpseal bootstrap: missing Debian packages (install them as root): ${need_apt[*]}" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[test]"

# The virtual Raspberry Pi Pico's emulator (rp2040js), pinned by package-lock.json.
if command -v npm >/dev/null; then
    (cd src/mpseal/device/rp2emu && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
else
    echo "mpseal bootstrap: npm is missing: the virtual Pico (mpseal sim create --board rp2) needs Node.js >= 18 and npm" >&2
fi
