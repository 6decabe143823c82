# syntax=docker/dockerfile:1
#
# The Kubervisor operator image: a release build of `kubervisor` on distroless,
# running as an unprivileged user.
#
#   docker build -t registry.example.com/kubervisor:0.1.0 .
#
# No container engine runs in this project's CI, so this file is not built there:
# keep it simple enough to be right by reading it.

# Same Debian release as the runtime image, so the binary links against the same glibc.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and build artefacts between builds; the binary is
# copied out in the same step because the target cache is not part of the layer.
# Symbol names are kept for backtraces; debug info is dropped to keep the image small.
# Without the `demo` feature, so the emulator is not in the image; with `jemalloc`, the
# operator's allocator, which `make` builds from its C source.
RUN apt-get update && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked -p kubervisor --no-default-features --features jemalloc \
 && cp target/release/kubervisor /kubervisor

# glibc and libgcc only (rustls: no OpenSSL); `nonroot` is uid/gid 65532 with no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="kubervisor" \
      org.opencontainers.image.source="https://github.com/kubervisor/kubervisor" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /kubervisor /kubervisor
USER 65532:65532
# /live, /ready and /metrics (`--addr`, default 0.0.0.0:8086).
EXPOSE 8086
ENTRYPOINT ["/kubervisor"]
CMD ["run"]
