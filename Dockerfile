# tuneserve image: API, worker and migrate commands share it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU wheel of torch; the default index would pull a multi-GB CUDA build.
# For a GPU worker image, build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /srv/tuneserve
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY tuner ./tuner
COPY app ./app
COPY examples ./examples
RUN pip install -c constraints.txt .

RUN useradd --create-home --uid 1000 tuner && mkdir -p /data && chown tuner /data
USER tuner
ENV TUNER_ARTIFACTS_DIR=/data/artifacts TUNER_UPLOADS_DIR=/data/uploads
EXPOSE 8000
CMD ["tuner", "serve", "--workers", "0"]
