#!/usr/bin/env bash
# Makes sure Debian's Chromium and ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver) are
# installed: the UI tests (tests/ui) open Netron, the Prefect UI, the MLflow UI and optuna-dashboard
# in headless Chromium driven by selenium. Does nothing when both are present; otherwise runs
# `apt-get update` once and installs Debian's chromium and chromium-driver (needs root, as in CI;
# no stdin is read). No browser is downloaded from anywhere else.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure_browser: /usr/bin/chromium or /usr/bin/chromedriver missing; run:" \
       "sudo apt-get install -y chromium chromium-driver" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "ensure_browser: installing Debian's chromium and chromium-driver (apt-get)"
apt-get update -qq
apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core </dev/null
echo "ensure_browser: $(/usr/bin/chromium --version 2>&1 | head -n1 || true); $(/usr/bin/chromedriver --version 2>&1 | head -n1 || true)"
