# costproc: OTLP traces in (gRPC 4317, HTTP 4318), cost per job out to Prometheus (9464),
# health on 13133. Without --config it serves the bundled default, config/costproc.yaml;
# mount your own and run `serve --config /etc/costproc/costproc.yaml`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 costproc \
    && useradd --system --uid 10001 --gid costproc --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin costproc

WORKDIR /src
# The package, and config/ because costproc/defaults/costproc.yaml links to the bundled
# config there; building the package copies it in.
COPY pyproject.toml README.md ./
COPY config ./config
COPY costproc ./costproc
# README's install command, without the virtualenv and not editable: nothing here edits
# the source.
RUN pip install --no-cache-dir .

WORKDIR /
USER 10001:10001
EXPOSE 4317 4318 9464 13133

# The slim image has no curl: ask the health check endpoint with the Python at hand.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:13133/', timeout=3)"]

ENTRYPOINT ["costproc"]
CMD ["serve"]
