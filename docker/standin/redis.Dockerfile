# A local stand-in for the official redis:7, built from Debian bookworm's redis-server (7.0), for a
# machine that cannot reach an image registry (scripts/compose_test.sh builds and tags it when the
# real image is missing). Like the official image: redis-server and redis-cli on PATH, working
# directory /data (the append-only file goes there), not root.
ARG DEBIAN_IMAGE=debian:bookworm-standin
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
