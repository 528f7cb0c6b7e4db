#!/usr/bin/env bash
# prefect-server service: DB URL and API basic-auth string from the environment, never from argv.
# With PREFECT_SERVER_API_AUTH_STRING set, every API call but the health probe needs the auth string, so
# reaching port 4200 is no longer enough to start flow runs on the workers.
set -euo pipefail
MSAFLOW_SERVICE=prefect-server
. "$(dirname "${BASH_SOURCE[0]}")/secrets.sh"
require_secrets PREFECT_DB_PASSWORD PREFECT_API_AUTH_STRING
PREFECT_API_DATABASE_CONNECTION_URL="$(pg_url postgresql+asyncpg "${PREFECT_DB_USER:-prefect}" "$PREFECT_DB_PASSWORD" prefect)"
export PREFECT_API_DATABASE_CONNECTION_URL
export PREFECT_SERVER_API_AUTH_STRING="$PREFECT_API_AUTH_STRING"
unset PREFECT_DB_PASSWORD
exec prefect server start --host 0.0.0.0 --port 4200 "$@"
