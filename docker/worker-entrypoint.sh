#!/usr/bin/env bash
# Prefect worker container: make sure the work pool exists with the right concurrency, register the
# deployments of prefect.yaml (working directory /app), then become the worker.
set -euo pipefail
pool="${PREFECT_WORK_POOL:-gpu}"
if [ -n "${GPU_POOL_CONCURRENCY:-}" ]; then
  msaflow serve --setup-pool --pool "$pool" --concurrency "$GPU_POOL_CONCURRENCY"
else
  msaflow serve --setup-pool --pool "$pool"          # concurrency = torch.cuda.device_count(), min 1
fi
msaflow serve --deploy
exec prefect worker start --pool "$pool" --type process --with-healthcheck "$@"
