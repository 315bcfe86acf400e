# vlm-gateway container. CPU by default; for NVIDIA GPUs build with
#   docker build --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# Models come from a mounted Hugging Face cache (-v ~/.cache/huggingface:/home/gateway/.cache/huggingface)
# or a mounted checkpoint directory (--model /models/NAME).
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN (command -v python3 >/dev/null || (apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && rm -rf /var/lib/apt/lists/*)) \
    && useradd --create-home --uid 1000 gateway

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
COPY config ./config
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -e .
# Editable on purpose: the gateway reads config/ next to its package directory.-index-url ${TORCH_INDEX} torch torchvision \
    && /opt/venv/bin/pip install -e .
# Editable on purpose: the gateway reads config/ next to its package directory.

USER gateway
ENV PATH=/opt/venv/bin:$PATH VLM_GATEWAY_HOST=0.0.0.0 VLM_GATEWAY_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"
ENTRYPOINT ["vlm-gateway", "serve"]
CMD ["--model", "Qwen/Qwen3-VL-2B-Instruct"]
