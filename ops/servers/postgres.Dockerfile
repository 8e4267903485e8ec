# PostgreSQL for the billing ledger, from Debian's postgresql package.
#
# Ordinary machine: the public Debian image is the base (the default).
#   docker build -f ops/servers/postgres.Dockerfile -t evcharge-postgres ops/servers
# Machine without a registry: the local base of ops/build-base-image.sh
# (`python -m ops.images build-services` does it):
#   docker build -f ops/servers/postgres.Dockerfile --build-arg BASE_IMAGE=evcharge-base:<hash> ops/servers
#
# Environment (the names of the official image): POSTGRES_PASSWORD (required on
# the first start), POSTGRES_USER (evcharge), POSTGRES_DB (evcharge). Data in
# /var/lib/evcharge-postgres (a volume).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN set -eu; \
    export DEBIAN_FRONTEND=noninteractive; \
    mkdir -p /etc/postgresql-common/createcluster.d; \
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main.conf; \
    apt-get update -qq; \
    apt-get install -y -qq --no-install-recommends postgresql; \
    rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*; \
    mkdir -p /var/lib/evcharge-postgres /run/evcharge-postgres; \
    chown postgres:postgres /var/lib/evcharge-postgres /run/evcharge-postgres; \
    chmod 0700 /var/lib/evcharge-postgres
COPY postgres-entrypoint.sh /usr/local/bin/evcharge-postgres
ENV PGDATA=/var/lib/evcharge-postgres/data
USER postgres
EXPOSE 5432/tcp
HEALTHCHECK --interval=2s --timeout=3s --start-period=10s --retries=15 \
    CMD ["sh", "-c", "\"$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)/pg_isready\" -q -h 127.0.0.1 -U \"${POSTGRES_USER:-evcharge}\" -d \"${POSTGRES_DB:-evcharge}\""]
ENTRYPOINT ["evcharge-postgres"]
