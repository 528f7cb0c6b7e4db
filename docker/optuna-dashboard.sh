#!/usr/bin/env bash
# optuna-dashboard service: the `optuna-dashboard URL` CLI would put the DB password in argv, so the
# storage URL goes through the environment to optuna_dashboard.run_server (optuna_dashboard_server.py).
set -euo pipefail
MSAFLOW_SERVICE=optuna-dashboard
here="$(dirname "${BASH_SOURCE[0]}")"
. "$here/secrets.sh"
require_secrets OPTUNA_DB_PASSWORD
OPTUNA_STORAGE="$(pg_url postgresql+psycopg2 "${OPTUNA_DB_USER:-optuna}" "$OPTUNA_DB_PASSWORD" optuna)"
export OPTUNA_STORAGE
unset OPTUNA_DB_PASSWORD
exec python "$here/optuna_dashboard_server.py" "$@"
