# One image for every thermoflow component: `docker run thermoflow <command>`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY thermoflow thermoflow
COPY ingest ingest
COPY processors processors
COPY alerts alerts
COPY simulator simulator
# The dependencies at the versions CI tested (the lock as constraints: no dev tools in the image).
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint requirements.lock .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --create-home thermoflow
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER thermoflow
WORKDIR /app
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["thermoflow"]
CMD ["--help"]
