# The fermata image: docker build -t fermata:0.1.0 .
# The Helm chart (charts/fermata) runs it as uid 65532 with a read-only root filesystem.

FROM rust:1-slim-bookworm AS build
# pkg-config and the OpenSSL headers for libgit2 (https) and libssh2; make for jemalloc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends pkg-config libssl-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin fermata

# Not distroless/cc: libgit2's https transport and libssh2 link OpenSSL dynamically, and
# distroless/cc has no libssl. So Debian slim with libssl3 and CA certificates (for https
# remotes and artifact downloads), and a non-root user with the uid distroless would use.
# No git CLI: fermata speaks Git through libgit2.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 fermata \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/fermata \
      --shell /usr/sbin/nologin fermata \
 && install -d -o 65532 -g 65532 /var/lib/fermata
COPY --from=build /src/target/release/fermata /usr/local/bin/fermata
USER 65532:65532
ENV FERMATA_STATE_DIR=/var/lib/fermata
WORKDIR /var/lib/fermata
ENTRYPOINT ["/usr/local/bin/fermata"]
CMD ["--help"]
