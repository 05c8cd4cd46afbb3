# watcherd in a container: the same `watcherd run`, config by file and ${ENV}, JSON logs on
# stdout, probes on /healthz and /readyz (SPEC §9). Example pod: config/k8s-pod.yaml.
#
#   docker build -t watcherd:0.1.0 .
#   docker run --rm --read-only -v "$PWD/config/sidecar.toml:/etc/watcherd/watcherd.toml:ro" \
#     -e WATCHERD_TOKEN=... -e HOOK_TOKEN=... watcherd:0.1.0
#
# Offline, on another base (any image with python3 >= 3.11 and its venv module): put wheels of
# watcherd and every dependency into ./wheels (.dockerignore lets that folder through), then
#   docker build --build-arg BASE_IMAGE=localhost/watcherd-base:bookworm --build-arg WHEELS=wheels .
#
# Linted by hadolint (tests/ops/test_container.py); built and run with podman, on a Debian base
# made with debootstrap, by tests/ops/test_image.py.

ARG BASE_IMAGE=python:3.12-slim-bookworm

# ── build: a virtualenv in /opt/watcherd; neither the sources nor the wheels reach the image ──
FROM ${BASE_IMAGE} AS build

# A folder of the build context holding wheels of watcherd and every dependency: when set,
# nothing comes from the index (--no-index). Empty: watcherd is built from the sources here
# and its dependencies come from the index.
ARG WHEELS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/watcherd/bin:$PATH

WORKDIR /src
COPY . .
RUN python3 -m venv /opt/watcherd \
 && if [ -n "$WHEELS" ]; then \
      pip install --no-cache-dir --no-index --find-links "/src/$WHEELS" "/src/$WHEELS"/watcherd-*.whl; \
    else \
      pip install --no-cache-dir /src; \
    fi \
 && watcherd --help > /dev/null

# ── the image ──────────────────────────────────────────────────────────────────────────────
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8 \
    VIRTUAL_ENV=/opt/watcherd \
    PATH=/opt/watcherd/bin:$PATH \
    WATCHERD_CONFIG=/etc/watcherd/watcherd.toml \
    STATE_DIRECTORY=/var/lib/watcherd

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 watcherd \
 && useradd --system --uid 10001 --gid watcherd --no-create-home \
      --home-dir /var/lib/watcherd --shell /usr/sbin/nologin watcherd \
 && install -d -o watcherd -g watcherd -m 0750 /var/lib/watcherd \
 && install -d -m 0755 /etc/watcherd

# Owned by root and compiled at install time: nothing is written outside the state directory,
# so the root filesystem may be read-only (readOnlyRootFilesystem, `--read-only`).
COPY --from=build /opt/watcherd /opt/watcherd

WORKDIR /var/lib/watcherd
USER 10001:10001

# The API: bind it to 0.0.0.0:8765 in the config (api = "0.0.0.0:8765") so probes reach it.
EXPOSE 8765
VOLUME ["/var/lib/watcherd"]

# Docker's own health check (Kubernetes ignores it and uses the pod's probes; podman keeps it
# with `podman build --format docker`).
ENV WATCHERD_HEALTHCHECK_URL=http://127.0.0.1:8765/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['WATCHERD_HEALTHCHECK_URL'], timeout=4)"]

# Docker sends SIGTERM on stop: watcherd drains runs for shutdown_timeout, so give
# `docker stop --time` (or terminationGracePeriodSeconds) more than that. watcherd is PID 1
# and reaps the orphans of its commands' children itself: no init (tini) is needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["watcherd", "run"]
