#!/usr/bin/env bash
# mlflow service: the backend URI (with the DB password) reaches `mlflow server` as MLFLOW_BACKEND_STORE_URI,
# never on its command line; mlflow hands it to its workers through the environment too.
set -euo pipefail
MSAFLOW_SERVICE=mlflow
. "$(dirname "${BASH_SOURCE[0]}")/secrets.sh"
require_secrets MLFLOW_DB_PASSWORD
MLFLOW_BACKEND_STORE_URI="$(pg_url postgresql+psycopg2 "${MLFLOW_DB_USER:-mlflow}" "$MLFLOW_DB_PASSWORD" mlflow)"
export MLFLOW_BACKEND_STORE_URI
unset MLFLOW_DB_PASSWORD
exec mlflow server --serve-artifacts --artifacts-destination /data/mlartifacts \
  --host 0.0.0.0 --port 5000 --workers 2 "$@"
