# One image for every city-vitals service; the command picks the service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY ingest ./ingest
COPY rules ./rules
COPY services ./services
RUN pip install . && useradd --system --uid 10001 city-vitals
USER city-vitals
ENTRYPOINT ["city-vitals"]
CMD ["--help"]
