#!/usr/bin/env bash
# Makes sure Debian's Chromium and ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver) are
# installed: the UI tests (tests/ui) open Netron, the Prefect UI, the MLflow UI and optuna-dashboard
# in headless Chromium driven by selenium, and tests/formats reads a saved .sima.json with Netron's own
# reader under Debian's nodejs. Does nothing when all three are present; otherwise runs
# `apt-get update` once and installs Debian's chromium, chromium-driver and nodejs (needs root, as in CI;
# no stdin is read). No browser is downloaded from anywhere else.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/node ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure_browser: /usr/bin/chromium, /usr/bin/chromedriver or /usr/bin/node missing; run:" \
       "sudo apt-get install -y chromium chromium-driver nodejs" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "ensure_browser: installing Debian's chromium, chromium-driver and nodejs (apt-get)"
apt-get update -qq
apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core nodejs </dev/null
echo "ensure_browser: $(/usr/bin/chromium --version 2>&1 | head -n1 || true); $(/usr/bin/chromedriver --version 2>&1 | head -n1 || true)"
