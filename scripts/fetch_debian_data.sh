#!/usr/bin/env bash
# Extracts Debian's opencv-doc (natural photos + digits.png for the zoo) into .cache/opencv-doc.
# Uses `apt-get download` + `dpkg -x`, so nothing is installed system-wide; `apt-get update`
# runs first when the package lists do not know opencv-doc yet (needs root, as in CI).
set -euo pipefail
dest="${1:-.cache/opencv-doc}"
data="$dest/usr/share/doc/opencv-doc/examples/data"
if [ -f "$data/digits.png" ] || [ -f "$data/digits.png.gz" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && apt-get download opencv-doc >/dev/null 2>&1); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
  else
    echo "opencv-doc: run 'sudo apt-get update' once, then 'make data' again" >&2
  fi
  (cd "$tmp" && apt-get download opencv-doc)
fi
rm -rf "$dest.partial" && mkdir -p "$dest.partial"
dpkg -x "$tmp"/opencv-doc_*.deb "$dest.partial"
rm -rf "$dest" && mv "$dest.partial" "$dest"
echo "opencv-doc data in $data"
