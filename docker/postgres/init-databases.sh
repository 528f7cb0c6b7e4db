#!/usr/bin/env bash
# Runs once, on the first start of an empty data volume (docker-entrypoint-initdb.d).
# One database and one owner per service: MLflow, Optuna, Prefect. Passwords come from the environment.
set -euo pipefail

create() {
  local user="$1" password="$2" db="$3"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v user="$user" -v password="$password" -v db="$db" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'user', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
SQL
}

create "$MLFLOW_DB_USER" "$MLFLOW_DB_PASSWORD" mlflow
create "$OPTUNA_DB_USER" "$OPTUNA_DB_PASSWORD" optuna
create "$PREFECT_DB_USER" "$PREFECT_DB_PASSWORD" prefect
echo "init-databases: mlflow, optuna, prefect ready"
