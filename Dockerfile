# watcherd in a container: the same `watcherd run`, config by file and ${ENV}, JSON logs on
# stdout, probes on /healthz and /readyz (SPEC §9). Example pod: config/k8s-pod.yaml.
#
#   docker build -t watcherd .
#   docker run --rm -v "$PWD/config/sidecar.toml:/etc/watcherd/watcherd.toml:ro" \
#     -e WATCHERD_TOKEN=... -e HOOK_TOKEN=... watcherd
#
# Linted by hadolint (tests/ops/test_container.py); no container engine runs in CI.

FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    WATCHERD_CONFIG=/etc/watcherd/watcherd.toml \
    STATE_DIRECTORY=/var/lib/watcherd

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 watcherd \
 && useradd --system --uid 10001 --gid watcherd --no-create-home \
      --home-dir /var/lib/watcherd --shell /usr/sbin/nologin watcherd \
 && install -d -o watcherd -g watcherd -m 0750 /var/lib/watcherd \
 && install -d -m 0755 /etc/watcherd

WORKDIR /src
COPY pyproject.toml README.md ./
COPY watcherd ./watcherd
RUN pip install --no-cache-dir . \
 && rm -rf /src

WORKDIR /var/lib/watcherd
USER 10001:10001

# The API: bind it to 0.0.0.0:8765 in the config (api = "0.0.0.0:8765") so probes reach it.
EXPOSE 8765
VOLUME ["/var/lib/watcherd"]

# Docker's own health check (Kubernetes ignores it and uses the pod's probes).
ENV WATCHERD_HEALTHCHECK_URL=http://127.0.0.1:8765/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['WATCHERD_HEALTHCHECK_URL'], timeout=4)"]

# Docker sends SIGTERM on stop: watcherd drains runs for shutdown_timeout, so give
# `docker stop --time` (or terminationGracePeriodSeconds) more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["watcherd", "run"]
