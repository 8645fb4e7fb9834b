# txwatch worker and simulator image: `docker compose build` (see docker-compose.yml).
#   docker run txwatch worker          (the default command)
#   docker run txwatch simulate --rate 500
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package is built from: the image does not depend on a
# developer's virtualenv, caches or local data.
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY detectors ./detectors
# package data of streams.localkafka (pyproject.toml, [tool.setuptools.package-dir])
COPY deploy/kafka ./deploy/kafka
RUN pip install . \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/txwatch txwatch

USER txwatch
WORKDIR /var/lib/txwatch
ENV TXWATCH_DATA_DIR=/var/lib/txwatch \
    TXWATCH_METRICS_HOST=0.0.0.0 \
    TXWATCH_METRICS_PORT=9108
EXPOSE 9108
VOLUME ["/var/lib/txwatch"]

# Faust stops cleanly on SIGTERM (docker stop); compose gives it 30 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["txwatch"]
CMD ["worker"]
