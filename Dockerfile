# vlm-gateway container. CPU by default (python:3.11-slim, CPU wheels of torch):
#   docker build -t vlm-gateway .
# For NVIDIA GPUs set both build arguments, BASE (a CUDA runtime image) and TORCH_INDEX (the
# matching PyTorch wheel index):
#   docker build -t vlm-gateway:cuda --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Models come from a mounted Hugging Face cache (-v ~/.cache/huggingface:/home/gateway/.cache/huggingface)
# or a mounted checkpoint directory (--model /models/NAME).
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Python on bases without it (the CUDA images). The user gets whatever UID is free: the CUDA
# Ubuntu images already have `ubuntu` with UID 1000. The Hugging Face cache directory exists and
# belongs to the user, so a named volume mounted there (compose.yaml) is writable: Docker
# copies the ownership of an existing mount point, but creates a missing one as root.
RUN (command -v python3 >/dev/null || (apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
        && rm -rf /var/lib/apt/lists/*)) \
    && (id -u gateway >/dev/null 2>&1 || useradd --create-home --shell /bin/sh gateway) \
    && install -d -o gateway -g gateway /home/gateway/.cache /home/gateway/.cache/huggingface

WORKDIR /app
# Dependencies first, from pyproject.toml alone, so editing the sources does not reinstall
# torch. torch and torchvision come from TORCH_INDEX, pinned as the Makefile's TORCH_PINS.
COPY pyproject.toml ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --index-url ${TORCH_INDEX} torch==2.14.1 torchvision==0.29.1 \
    && /opt/venv/bin/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt torch==2.14.1 torchvision==0.29.1 \
    && rm /tmp/requirements.txt

# Then the sources, and the package itself without dependencies. Editable on purpose: the
# gateway reads config/ next to its package directory.
COPY README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
COPY config ./config
RUN /opt/venv/bin/pip install --no-deps -e .

USER gateway
# gateway/settings.py reads VLM_GATEWAY_HOST and VLM_GATEWAY_PORT; in a container it must
# listen on all addresses. `docker run -e VLM_GATEWAY_PORT=...` moves the port (and the check).
ENV PATH=/opt/venv/bin:$PATH VLM_GATEWAY_HOST=0.0.0.0 VLM_GATEWAY_PORT=8000
EXPOSE ${VLM_GATEWAY_PORT}
# Healthy once the model is loaded and has answered its warm-up (/ready); loading may take long.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/ready' % os.environ.get('VLM_GATEWAY_PORT', '8000'), timeout=4).status != 200)"]
# The model: --model ARG after the image name, or -e VLM_GATEWAY_MODEL=... (default
# Qwen/Qwen3-VL-2B-Instruct).
ENTRYPOINT ["vlm-gateway", "serve"]
