#!/usr/bin/env bash
# libarchive is the fast archive decryptor (design.md section 8); it is a system library, not a wheel.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libarchive\.so\.13'; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libarchive13 >/dev/null
elif command -v brew >/dev/null; then
  brew install libarchive
else
  echo "medlake needs the libarchive shared library (Debian/Ubuntu: apt-get install libarchive13)" >&2
  exit 1
fi
