#!/usr/bin/env bash
# Prefect worker container: refuse missing or placeholder secrets, build the Optuna storage URL in the
# environment (flow runs inherit it, nothing carries it in argv), make sure the work pool exists with the
# right concurrency, register the deployments of prefect.yaml (working directory /app), then become the worker.
set -euo pipefail
MSAFLOW_SERVICE=prefect-worker
. "$(dirname "${BASH_SOURCE[0]}")/secrets.sh"
require_secrets OPTUNA_DB_PASSWORD PREFECT_API_AUTH_STRING
OPTUNA_STORAGE="$(pg_url postgresql+psycopg2 "${OPTUNA_DB_USER:-optuna}" "$OPTUNA_DB_PASSWORD" optuna)"
export OPTUNA_STORAGE
unset OPTUNA_DB_PASSWORD
pool="${PREFECT_WORK_POOL:-gpu}"
if [ -n "${GPU_POOL_CONCURRENCY:-}" ]; then
  msaflow serve --setup-pool --pool "$pool" --concurrency "$GPU_POOL_CONCURRENCY"
else
  msaflow serve --setup-pool --pool "$pool"          # concurrency = torch.cuda.device_count(), min 1
fi
msaflow serve --deploy
exec prefect worker start --pool "$pool" --type process --with-healthcheck "$@"
