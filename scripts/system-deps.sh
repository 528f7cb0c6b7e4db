#!/usr/bin/env bash
# Debian packages the slow suite needs: Chromium (the MLflow UI in a real browser), docker-compose v1
# (validates docker-compose.yml without an engine), espeak-ng + sox (speech for the audio extractor).
# PostgreSQL is already running on every machine of this project. Idempotent; needs root and apt.
set -euo pipefail
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
[ ${#need[@]} -eq 0 ] && { echo "system packages present"; exit 0; }
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing system packages ${need[*]} (install them with apt-get as root); their tests will skip" >&2
  exit 0
fi
echo "installing ${need[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
