# The Toil worker image, for people who build with Docker: the same content that
# `toil-arvados images build-worker` builds without a Docker engine (see toil_arvados/images/worker.py).
#
#   docker build -f toil_arvados/images/worker.Dockerfile -t toil-arvados/worker:0.1.0 .
#   arv-keepdocker toil-arvados/worker 0.1.0
#
# Build it from the checkout (or sdist) of the toil-arvados version your leader runs, with the
# toil and arvados-python-client versions the leader has (`pip show toil arvados-python-client`).
# `build-worker --upload` also records these versions on the image's collection, so the leader can
# check them; an image stored with plain arv-keepdocker gets a warning instead of that check.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv nodejs ca-certificates procps \
 && rm -rf /var/lib/apt/lists/*
ARG TOIL_VERSION=9.6.0
ARG ARVADOS_VERSION=3.2.1
RUN python3 -m venv /opt/toil-arvados \
 && /opt/toil-arvados/bin/pip install --no-cache-dir "toil[cwl]==${TOIL_VERSION}" \
        "arvados-python-client==${ARVADOS_VERSION}" "aiohttp>=3.9,<4" "cryptography>=41"
COPY . /src/toil-arvados
RUN /opt/toil-arvados/bin/pip install --no-cache-dir --no-deps /src/toil-arvados && rm -rf /src
ENV PATH=/opt/toil-arvados/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
CMD ["python3"]
