# hamjax serve in a container: python:3.11-slim, a non-root user, a HEALTHCHECK on /healthz.
#
# Build (from the repository root; nothing here needs a registry beyond the base image):
#   docker build -t hamjax-serve:0.1.0 .
#
# Two ways to give it a model (the default command serves /models/model.onnx):
#
# 1. Mounted at run time (one image, any model): mount a folder holding model.onnx (and
#    model.stats.json, the drift reference written beside it) read-only at /models:
#      docker run --rm -p 8000:8000 -v "$PWD/exported:/models:ro" \
#        -e HAMJAX_TOKEN="$(openssl rand -hex 32)" hamjax-serve:0.1.0
#    This is what deploy/kubernetes/deployment.yaml does, with a PersistentVolumeClaim.
#
# 2. Baked in at build time: put the files in a folder inside the build context and name it with
#    the MODEL_DIR build argument; its contents are copied to /models:
#      docker build --build-arg MODEL_DIR=exported -t hamjax-serve-mlp:0.1.0 .
#    The default MODEL_DIR, deploy/models, holds only its README, so the plain build bakes in no model.
#
# A container binds 0.0.0.0, so hamjax serve requires a bearer token there: set HAMJAX_TOKEN
# (the command reads it with --token-env). Other arguments follow the image name, replacing CMD:
#      docker run ... hamjax-serve:0.1.0 /models/cnn.onnx --host 0.0.0.0 --token-env HAMJAX_TOKEN --max-batch 64
# Runtime threads default to the container's CPU quota (docker run --cpus 2 -> 2 threads).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HAMJAX_DATA_DIR=/var/lib/hamjax

RUN groupadd --system --gid 10001 hamjax \
    && useradd --system --uid 10001 --gid hamjax --home-dir /home/hamjax --create-home hamjax \
    && mkdir -p /models /var/lib/hamjax \
    && chown hamjax:hamjax /var/lib/hamjax

WORKDIR /src
COPY pyproject.toml README.md LICENSE CITATION.cff ./
COPY hamjax ./hamjax
COPY transforms ./transforms
RUN pip install ".[serve]" && rm -rf /src

ARG MODEL_DIR=deploy/models
COPY --chown=hamjax:hamjax ${MODEL_DIR}/ /models/

USER 10001:10001
WORKDIR /home/hamjax
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["hamjax", "serve"]
CMD ["/models/model.onnx", "--host", "0.0.0.0", "--port", "8000", "--token-env", "HAMJAX_TOKEN"]
