# NATS server with JetStream, from Debian's nats-server package.
#
# Ordinary machine: the public Debian image is the base (the default).
#   docker build -f ops/servers/nats.Dockerfile -t evcharge-nats ops/servers
# Machine without a registry: the local base of ops/build-base-image.sh
# (`python -m ops.images build-services` does it):
#   docker build -f ops/servers/nats.Dockerfile --build-arg BASE_IMAGE=evcharge-base:<hash> ops/servers
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends nats-server wget; \
    rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*; \
    mkdir -p /data/jetstream && chown -R nats:nats /data  # the package's system user
USER nats
WORKDIR /data
# clients, monitoring (/healthz)
EXPOSE 4222/tcp 8222/tcp
HEALTHCHECK --interval=2s --timeout=3s --start-period=5s --retries=10 \
    CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8222/healthz?js-enabled-only=true"]
ENTRYPOINT ["nats-server"]
CMD ["--jetstream", "--store_dir", "/data/jetstream", "--http_port", "8222", "--name", "evcharge-nats"]
