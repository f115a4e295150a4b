# A local stand-in for the official python:3.11-slim, built from Debian bookworm packages, for a
# machine that cannot reach an image registry (scripts/compose_test.sh builds and tags it when the
# real image is missing). Same shape where it matters to docker/Dockerfile: Debian bookworm,
# `python`/`python3` on PATH, venv + ensurepip, the headers, ca-certificates. Differences: Debian's
# Python 3.11.2 in /usr/bin (the official image has 3.11.x built from source in /usr/local).
ARG DEBIAN_IMAGE=debian:bookworm-standin
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev ca-certificates \
 && ln -s /usr/bin/python3.11 /usr/local/bin/python \
 && ln -s /usr/bin/python3.11 /usr/local/bin/python3 \
 && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python3"]
