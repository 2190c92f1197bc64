#!/usr/bin/env bash
# Install every Debian and npm package Turnpike needs. Idempotent: quiet and
# fast when everything is already present.
set -euo pipefail

DEB_PKGS=(
  build-essential pkg-config meson ninja-build clang libclang-rt-14-dev
  libmicrohttpd-dev libjansson-dev libsqlite3-dev libcurl4-openssl-dev
  libssl-dev libcmocka-dev libinih-dev libwslay-dev libjemalloc-dev
  softhsm2 libp11-kit-dev prometheus python3 python3-cryptography openssl
  libzstd-dev zstd python3-zstandard python3-stripe
  sqlite3 curl wrk nginx-light
  chromium
)
# Node.js may come from Debian or from nodesource (which bundles npm).
command -v node >/dev/null 2>&1 || DEB_PKGS+=(nodejs)
command -v npm >/dev/null 2>&1 || DEB_PKGS+=(npm)

missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # nginx-light starts a system service on install; the benchmark runs its own.
  $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
fi

# npm packages: the official Stripe SDK and playwright-core, which drives
# Debian's chromium in the browser test (tests/sdk), and an independent ISO
# 8583 implementation (tests/interop).
here=$(cd "$(dirname "$0")/.." && pwd)
for dir in tests/sdk tests/interop; do
  if [ -f "$here/$dir/package.json" ]; then
    if [ ! -d "$here/$dir/node_modules" ] || \
       [ "$here/$dir/package-lock.json" -nt "$here/$dir/node_modules/.package-lock.json" ]; then
      echo "deps: npm ci in $dir" >&2
      (cd "$here/$dir" && if [ -f package-lock.json ]; then npm ci --silent --no-audit --no-fund; else npm install --silent --no-audit --no-fund; fi) >/dev/null
    fi
  fi
done
