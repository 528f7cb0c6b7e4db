#!/usr/bin/env bash
# postgres service: refuse missing or placeholder passwords, then hand over to the image's entrypoint.
# Checked on every start, not only on the first (when init-databases.sh creates the roles).
set -euo pipefail
MSAFLOW_SERVICE=postgres
. "$(dirname "${BASH_SOURCE[0]}")/secrets.sh"
require_secrets POSTGRES_PASSWORD MLFLOW_DB_PASSWORD OPTUNA_DB_PASSWORD PREFECT_DB_PASSWORD
exec docker-entrypoint.sh "$@"
