#!/usr/bin/env bash
# Check (and, as root, install) the Debian packages napari / Qt 6 need to open windows,
# including Xvfb, which pytest-xvfb starts for the GUI tests.
# Usage: scripts/system-deps.sh [--strict]   (--strict: exit 1 if anything is still missing)
set -euo pipefail

PACKAGES=(xvfb libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libxcb-image0
          libxcb-render-util0 libxcb-xinerama0 libxcb-randr0 libxcb-shape0 libxcb-cursor0
          libgl1 libegl1 libfontconfig1 libdbus-1-3)
strict=0
[[ "${1:-}" == "--strict" ]] && strict=1

if ! command -v dpkg >/dev/null 2>&1; then
    # Not Debian/Ubuntu: we cannot check package names, only the one binary tests need.
    if command -v Xvfb >/dev/null 2>&1; then exit 0; fi
    echo "system-deps: Xvfb not found; install it (and the Qt 6 xcb libraries) with your" \
         "package manager to run the GUI tests." >&2
    exit "$strict"
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ "$(id -u)" -eq 0 ]]; then
    echo "system-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    exit 0
fi

echo "system-deps: missing Debian packages for napari / Qt 6 / Xvfb. Install them with:" >&2
echo "    sudo apt-get install -y ${missing[*]}" >&2
exit "$strict"
