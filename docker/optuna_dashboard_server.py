"""Optuna dashboard on $OPTUNA_STORAGE (set by optuna-dashboard.sh), so the DB password is not in
argv."""

from __future__ import annotations

import argparse
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--host", default="0.0.0.0"
    )  # inside the container; compose decides what is published
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    storage = os.environ.pop("OPTUNA_STORAGE", "")
    if not storage:
        sys.exit("error: OPTUNA_STORAGE is not set (start this through docker/optuna-dashboard.sh)")
    from optuna_dashboard import run_server

    run_server(storage, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
