#!/usr/bin/env bash
# Start-up checks for the compose services' secrets. Source it from an entrypoint, or run it:
#   bash docker/secrets.sh VAR [VAR ...]     exit 0 if every VAR is set to a real value, else exit 2
# A value that still reads "change-me" (the placeholders of .env.example) is refused, so a stack brought up
# with an unedited .env never runs with passwords that are printed in the repository.
# Secrets travel in the environment, never in argv: anyone on the host can read a process's command line
# (ps, /proc/PID/cmdline), while its environment is readable only by its own user and root.

# require_secrets VAR...: one "error:" line per bad variable on stderr, then exit 2 if any was bad.
require_secrets() {
  local name value bad=0
  for name in "$@"; do
    value="${!name-}"
    if [ -z "$value" ]; then
      echo "error: $name is not set: set it in .env (see .env.example)" >&2
      bad=1
    elif [[ "${value,,}" == *change-me* ]]; then
      echo "error: $name still holds the placeholder from .env.example ('change-me...'): set a real secret in .env" >&2
      bad=1
    fi
  done
  if [ "$bad" -ne 0 ]; then
    echo "error: refusing to start ${MSAFLOW_SERVICE:-this service} with missing or placeholder secrets" >&2
    exit 2
  fi
}

# urlencode STRING: percent-encode everything but RFC 3986 unreserved characters (a password may hold @ : /).
# Pure bash builtins, so the secret never appears on a command line.
urlencode() {
  local LC_ALL=C s="$1" out="" c i
  for ((i = 0; i < ${#s}; i++)); do
    c="${s:i:1}"
    case "$c" in
      [A-Za-z0-9._~-]) out+="$c" ;;
      *) printf -v c '%%%02X' "'$c"; out+="$c" ;;
    esac
  done
  printf '%s' "$out"
}

# pg_url DRIVER USER PASSWORD DB: SQLAlchemy URL of a database on the compose postgres service.
pg_url() {
  printf '%s://%s:%s@%s/%s' "$1" "$(urlencode "$2")" "$(urlencode "$3")" "${MSAFLOW_DB_HOST:-postgres:5432}" "$4"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  if [ "$#" -eq 0 ]; then
    echo "usage: $0 VAR [VAR ...]" >&2
    exit 2
  fi
  require_secrets "$@"
fi
