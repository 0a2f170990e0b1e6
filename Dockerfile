# syntax=docker/dockerfile:1.7
#
# One file, two images (BuildKit builds only the stages the chosen target needs):
#
#   docker build --target operator -t streamjob/streamjob-operator:0.1.0 .
#   docker build --target worker   -t streamjob/streamjob-worker:0.1.0 .
#
# Optional: --build-arg VERSION=… REVISION=$(git rev-parse HEAD) CREATED=$(date -u +%FT%TZ)
# for the OCI labels. For reproducible builds pin the base images by digest as well, e.g.
# --build-arg RUST_IMAGE=rust:1.95.0-slim-bookworm@sha256:… (the tags below fix the versions).
#
# Layout: a pinned Rust toolchain with cargo-chef; a planner that reduces the workspace to a
# dependency recipe; one builder per binary that compiles the dependencies first (a cached layer
# that only changes with Cargo.toml/Cargo.lock), then the sources; a distroless runtime per target
# holding one binary, running as a non-root user, with no shell, compiler or sources.
#
# The builder is Debian 12 (bookworm) like the runtime, so the binaries' glibc and libssl3 match.

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---- toolchain ------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}" \
    && rm -rf "${CARGO_HOME}/registry" "${CARGO_HOME}/git"
WORKDIR /src

# ---- dependency recipe (Cargo manifests and lock file only) ----------------------------------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---- operator binary (pure Rust: kube with rustls, no OpenSSL, no librdkafka) -----------------
FROM chef AS build-operator
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p streamjob-operator
COPY . .
RUN cargo build --release --locked -p streamjob-operator --bin streamjob-operator \
    && install -D -m 0755 target/release/streamjob-operator /out/streamjob-operator
# Fail the build, not the pod: the binary may only need what the distroless runtime has (glibc,
# libgcc). An OpenSSL or librdkafka dependency here would be a bug.
RUN allowed='^(linux-vdso\.so\.1|linux-gate\.so\.1|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|/lib64/ld-linux-x86-64\.so\.2|/lib/ld-linux-aarch64\.so\.1)$' \
    && ldd /out/streamjob-operator \
    && extra="$(ldd /out/streamjob-operator | awk '{print $1}' | grep -Ev "${allowed}" || true)" \
    && if [ -n "${extra}" ]; then echo "streamjob-operator links libraries the runtime lacks: ${extra}" >&2; exit 1; fi

# ---- worker binary (librdkafka built from source by rdkafka-sys: ssl, zstd, zlib) ------------
FROM chef AS build-worker
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The Debian release is pinned by the base image tag; pinning each package's version as well
# would break the build at every Debian security update, so DL3008 is waived here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config libssl-dev zlib1g-dev libzstd-dev libsasl2-dev \
    && rm -rf /var/lib/apt/lists/*
# zlib and zstd are linked statically (zstd-sys does so by default; libz-sys on this variable),
# so the runtime needs only libssl3, which the distroless cc image carries and keeps patched.
# (Checked on Debian 12 with rdkafka 0.39 [ssl, zstd]: the binary then links libssl.so.3,
# libcrypto.so.3, libgcc_s, libm and libc only; the ldd check below enforces it.)
ENV LIBZ_SYS_STATIC=1
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p streamjob-worker
COPY . .
RUN cargo build --release --locked -p streamjob-worker --bin streamjob-worker \
    && install -D -m 0755 target/release/streamjob-worker /out/streamjob-worker
RUN allowed='^(linux-vdso\.so\.1|linux-gate\.so\.1|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libstdc\+\+\.so\.6|libssl\.so\.3|libcrypto\.so\.3|/lib64/ld-linux-x86-64\.so\.2|/lib/ld-linux-aarch64\.so\.1)$' \
    && ldd /out/streamjob-worker \
    && extra="$(ldd /out/streamjob-worker | awk '{print $1}' | grep -Ev "${allowed}" || true)" \
    && if [ -n "${extra}" ]; then echo "streamjob-worker links libraries the runtime lacks: ${extra}" >&2; exit 1; fi

# ---- runtime: operator ----------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS operator
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="streamjob-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs StreamJobs (the austin message-trace pipeline, Kafka to Redis, exactly-once)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://example.invalid/streamjob" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=build-operator /out/streamjob-operator /usr/local/bin/streamjob-operator
# distroless "nonroot"; numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# /healthz, /readyz, /metrics (--http-bind).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/streamjob-operator"]
CMD ["run"]

# ---- runtime: worker (jobmanager | taskmanager | standalone) ---------------------------------
FROM ${RUNTIME_IMAGE} AS worker
ARG RUNTIME_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="streamjob-worker" \
      org.opencontainers.image.description="The streamjob job runtime: jobmanager, taskmanager and standalone modes of the austin message-trace pipeline" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://example.invalid/streamjob" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${RUNTIME_IMAGE}"
COPY --from=build-worker /out/streamjob-worker /usr/local/bin/streamjob-worker
# The operator starts workers with `command: [streamjob-worker]`, resolved through PATH (and runs
# them as uid 65532, the same user as here).
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 65532:65532
# 8081: jobmanager REST API, /healthz, /metrics; 9249: taskmanager metrics.
EXPOSE 8081 9249
ENTRYPOINT ["/usr/local/bin/streamjob-worker"]
# The operator sets the mode: jobmanager|taskmanager --config /etc/streamjob/job.yaml.
CMD ["--help"]
