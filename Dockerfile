# ratedispatch worker image: docker build -t ratedispatch . && docker run ratedispatch worker
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ratedispatch ./ratedispatch
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RATEDISPATCH_METRICS_PORT=9108
COPY --from=build /wheels /wheels
# Only the wheels built above are installed (--no-index): there is nothing to pin.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels ratedispatch \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin ratedispatch
USER 10001
WORKDIR /home/ratedispatch
EXPOSE 9108
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RATEDISPATCH_METRICS_PORT', '9108') + '/healthz', timeout=2)"]
ENTRYPOINT ["ratedispatch"]
CMD ["worker"]
