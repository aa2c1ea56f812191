# syntax=docker/dockerfile:1
# One image for every chronoshard process: the operator (chronoshard-operator) and the shard pod's
# containers (chronoshard-node, chronoshard-cache, chronoshard-predictor); pod specs pick the
# process with `command`. The builder stage makes the wheel and a virtualenv with every dependency
# at the version in requirements.lock; the final stage gets only that virtualenv.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Dependencies change less often than code, but the lock alone cannot be installed without the
# wheel's metadata, so the whole (small) source is copied at once; .dockerignore keeps it small.
COPY pyproject.toml README.md VERSION requirements.lock ./
COPY hack/build-venv.sh hack/build-venv.sh
COPY operator/ operator/
COPY shardnode/ shardnode/
# The same script tests/unit/test_dockerfile.py runs, so the test exercises these steps. pip is not
# needed at run time; dropping it from the venv shrinks the final image's attack surface.
RUN hack/build-venv.sh /src /opt/chronoshard python3 \
    && /opt/chronoshard/bin/python -m pip uninstall --quiet --yes pip

FROM ${PYTHON_IMAGE}
# The release: the VERSION file (docker build --build-arg VERSION="$(cat VERSION)"); tests/unit/test_version.py
# fails when this default differs from it.
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="chronoshard" \
      org.opencontainers.image.description="Kubernetes operator and shard nodes for sharded, encrypted storage" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
# Bytecode is compiled at install time; the root filesystem is read-only in the pod, so Python must
# not try to write .pyc files. Unbuffered output keeps logs in order when a process dies.
ENV PATH=/opt/chronoshard/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/chronoshard /opt/chronoshard
# 65532 is the conventional "nonroot" uid/gid (distroless); the chart's securityContext uses it too.
USER 65532:65532
WORKDIR /tmp
# 8080 operator health, 9090 operator metrics, 7400-7402 the shard pod's node/cache/predictor.
EXPOSE 8080 9090 7400 7401 7402
CMD ["chronoshard-operator"]
