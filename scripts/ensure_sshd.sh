#!/usr/bin/env bash
# Makes sure an OpenSSH server (/usr/sbin/sshd) and client (ssh-keygen) are installed: the devkit
# transport tests (tests/devkit) start a throwaway sshd on 127.0.0.1. Does nothing when both are
# present; otherwise runs `apt-get update` once and installs Debian's openssh-server and
# openssh-client (needs root, as in CI; no stdin is read).
set -euo pipefail
if [ -x /usr/sbin/sshd ] && command -v ssh-keygen >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "ensure_sshd: /usr/sbin/sshd missing; run: sudo apt-get install -y openssh-server openssh-client" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -q --no-install-recommends openssh-server openssh-client </dev/null
mkdir -p /run/sshd
echo "ensure_sshd: $(/usr/sbin/sshd -V 2>&1 | head -n1 || true)"
