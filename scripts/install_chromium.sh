#!/usr/bin/env bash
# Installs what tests/test_report.py needs to open the HTML report in a real headless browser: the
# system's chromium (Debian's and Ubuntu's package `chromium`, Homebrew's cask on macOS) and the
# `playwright` Python package, which drives that chromium (playwright's own browser download is not
# used, so nothing is fetched from outside the package managers). Without them the browser test skips.
#
#   scripts/install_chromium.sh            # the venv's python is .venv/bin/python (PYTHON=... for another)
set -euo pipefail

PYTHON="${PYTHON:-.venv/bin/python}"

find_chromium() {
    command -v chromium || command -v chromium-browser || command -v google-chrome || true
}

if [ -n "$(find_chromium)" ]; then
    echo "chromium: $(find_chromium) is already installed"
elif command -v apt-get >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "install_chromium: not root and no sudo: run 'apt-get install -y chromium' as root" >&2
            exit 1
        fi
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    # A fresh image may have no package lists yet: update once, only when the first try finds nothing.
    $SUDO apt-get install -y chromium \
        || { $SUDO apt-get update && $SUDO apt-get install -y chromium; }
elif command -v brew >/dev/null; then
    brew install --cask chromium
else
    echo "install_chromium: no apt-get or brew here; install chromium with your package manager" >&2
    exit 1
fi

if [ -z "$(find_chromium)" ]; then
    echo "install_chromium: chromium is still not on PATH" >&2
    exit 1
fi
if ! "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet playwright
fi
echo "chromium $("$(find_chromium)" --version 2>/dev/null | head -n 1) and playwright are ready"
