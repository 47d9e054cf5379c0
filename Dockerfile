# kat_scheduler's image: the locked runtime only (no dev tools), run as a dedicated non-root user.
# The default command is a boefje worker; docker-compose.yml runs the other processes from the same image.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
# The dependencies first: this layer is rebuilt only when the lock changes. CI installs the same
# way with the same script (.ci/runtime-install).
COPY requirements.txt ./
COPY scripts/install-runtime.sh scripts/
RUN sh scripts/install-runtime.sh python requirements
# Then the package itself, without dependencies: only the locked versions are ever installed.
COPY . .
RUN sh scripts/install-runtime.sh python package

RUN useradd --system --create-home --home-dir /home/scheduler --uid 10001 --user-group --no-log-init scheduler
USER scheduler
# A folder the processes may write to (the embedded run's state, beat's files): not the source.
WORKDIR /home/scheduler

# The default command's worker answers a ping over the broker: unhealthy when the worker hangs or
# lost its broker. Other commands bring their own check (docker-compose.yml: `kat-scheduler heartbeat`
# for beat and the listener, Flower's /healthcheck). One line each: .ci/runtime-install runs both.
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 CMD celery -A kat_scheduler inspect ping --destination "boefjes@$HOSTNAME" --timeout 10 || exit 1
CMD ["celery", "-A", "kat_scheduler", "worker", "-Q", "boefjes", "--hostname", "boefjes@%h", "--loglevel", "INFO"]
