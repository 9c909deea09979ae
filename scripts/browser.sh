#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/browser), driven by Playwright with
# executable_path: nothing is downloaded by Playwright. Idempotent; needs root or sudo once.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "scripts/browser.sh: chromium is missing and there is no root or sudo to install it;" \
       "run: sudo apt-get install chromium" >&2
  exit 1
fi
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq chromium >/dev/null
