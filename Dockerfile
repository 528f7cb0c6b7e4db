# msaflow image: the CLI, flows, Prefect worker, MLflow server and Optuna dashboard in one image.
#   docker build -t msaflow .                                                     # CPU torch (default)
#   docker build -t msaflow:cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
# CUDA torch wheels bring their own CUDA runtime; the host needs the NVIDIA driver and the NVIDIA
# Container Toolkit. BASE_IMAGE may point at another Python 3.11 image (it must provide python3.11 + pip).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC="torch>=2.3,<3"
ARG EXTRAS="postgres,dashboard"
ARG UID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MSAFLOW_HOME=/data/msaflow \
    PREFECT_HOME=/data/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid "${UID}" --shell /usr/sbin/nologin msaflow \
    && mkdir -p /app /data/msaflow /data/prefect /data/mlartifacts \
    && chown -R msaflow:msaflow /app /data

WORKDIR /app

# Torch first from the chosen index, so the project's range never pulls a multi-GB CUDA build by accident.
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"

COPY --chown=msaflow:msaflow pyproject.toml README.md prefect.yaml ./
COPY --chown=msaflow:msaflow msaflow ./msaflow
COPY --chown=msaflow:msaflow models ./models
COPY --chown=msaflow:msaflow tasks ./tasks
COPY --chown=msaflow:msaflow flows ./flows
COPY --chown=msaflow:msaflow feature_store ./feature_store
COPY --chown=msaflow:msaflow experiments ./experiments
COPY --chown=msaflow:msaflow docker ./docker

# Editable install: deployments run with /app as working directory and import msaflow.flows.* from it.
RUN pip install -e ".[${EXTRAS}]" \
    && chmod +x docker/*.sh

USER msaflow
VOLUME ["/data"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["msaflow", "--help"]
