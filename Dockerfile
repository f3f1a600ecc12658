# FastSwitch image: `fastswitch serve {kvstore,scheduler,worker}`, `fastswitch-bench`, and the
# health probe `python -m servekit.healthcheck`. See docs/compose.md.
#
#   docker build -t fastswitch .                                   # CPU (torch +cpu wheel)
#   docker build -t fastswitch:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://pypi.org/simple .        # CUDA (PyPI's torch is CUDA)
#
# Offline: wheels in build/wheels/ (scripts/compose-smoke.sh puts them there with `pip download`)
# are installed with --no-index, so the build needs no network at all (`docker build
# --network none`). Without them, pip reads PIP_INDEX_URL and TORCH_INDEX_URL.
# Plain Dockerfile syntax: builds with BuildKit and with the legacy builder alike.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# Python >= 3.11 with venv; CUDA bases (Ubuntu) come without it.
FROM ${BASE_IMAGE} AS python
RUN if ! python3 -c 'import ensurepip, tomllib, venv' >/dev/null 2>&1; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
         python3 python3-venv python3-pip ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'

FROM python AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# The glob keeps the COPY valid when build/wheels does not exist; its wheels land in /src.
COPY pyproject.toml build/wheel[s] /src/
# Pinned dependencies first, in a layer of their own that source changes do not invalidate.
RUN set -eu; \
    if ls /src/*.whl >/dev/null 2>&1; then \
      set -- --no-index --find-links /src; \
    else \
      set -- --index-url "$PIP_INDEX_URL" --extra-index-url "$TORCH_INDEX_URL"; \
    fi; \
    python3 -m venv /opt/fastswitch; \
    python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /src/requirements.txt; \
    /opt/fastswitch/bin/pip install "$@" -r /src/requirements.txt; \
    /opt/fastswitch/bin/python -c 'import torch; print("torch", torch.__version__)'
COPY . /src/
RUN set -eu; \
    if ls /src/*.whl >/dev/null 2>&1; then \
      set -- --no-index --find-links /src; \
    else \
      set -- --index-url "$PIP_INDEX_URL"; \
    fi; \
    /opt/fastswitch/bin/pip install "$@" --no-deps /src; \
    /opt/fastswitch/bin/pip check; \
    /opt/fastswitch/bin/fastswitch --help >/dev/null

FROM python
# Metadata first and the one big layer last: with the vfs storage driver every step copies the
# whole file system, so steps after the venv would each cost a copy of it.
RUN useradd --create-home --uid 10001 --user-group fastswitch
ENV PATH=/opt/fastswitch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Exec form: the service is PID 1 and gets SIGTERM itself (its ordered shutdown frees the
# shared memory). `docker run IMAGE serve kvstore --help`.
ENTRYPOINT ["fastswitch"]
CMD ["--help"]
LABEL org.opencontainers.image.title=fastswitch
USER fastswitch
COPY --from=build /opt/fastswitch /opt/fastswitch
