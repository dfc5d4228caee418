# Model Nexus: gunicorn + Flask + onnxruntime, CPU only.
# Build: docker build -t model-nexus .      Run: docker run -p 8080:8080 -v nexus-models:/models model-nexus

# --- build stage: make wheels for the project and its dependencies --------------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg setup.py README.md ./
COPY nexus ./nexus
RUN pip wheel --no-cache-dir --wheel-dir /wheels .
# Text models (scikit-learn's TfidfVectorizer through skl2onnx) name the en_US.UTF-8 locale in
# their StringNormalizer, and slim images have only C: build the locale here, copy its archive.
RUN apt-get update && apt-get install -y --no-install-recommends locales \
    && sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' /etc/locale.gen && locale-gen

# --- final stage: no compiler, no pip cache, not root -----------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    NEXUS_MODEL_DIR=/models \
    NEXUS_STATE_DIR=/state
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin nexus
WORKDIR /app
COPY --from=build /usr/lib/locale/locale-archive /usr/lib/locale/locale-archive
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY wsgi.py gunicorn.conf.py ./
COPY --chown=nexus:nexus models /models
# /state: the SQLite database of prediction records and labels (NEXUS_DATABASE_URL=postgresql://... instead for replicas)
RUN mkdir /state && chown nexus:nexus /state
USER nexus
# 8080: HTTP (REST, V2, metrics, console); 8081: gRPC (NEXUS_GRPC_PORT)
EXPOSE 8080 8081
VOLUME ["/models", "/state"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('PORT', '8080'), timeout=2)"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
