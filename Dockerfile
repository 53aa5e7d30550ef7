# syntax=docker/dockerfile:1
# Build: docker build -t callhook .
# Run:   export CALLHOOK__JAS__WEBHOOK_SECRET='the X-SIG key from your JAS Connect account'
#        docker run -d --name callhook -p 9999:9999 \
#          -v callhook-data:/var/lib/callhook/data -v callhook-recordings:/var/lib/callhook/recordings \
#          -e CALLHOOK__JAS__WEBHOOK_SECRET callhook
# (README.md, "Docker", also shows the secret as a mounted file through CALLHOOK__JAS__WEBHOOK_SECRET_FILE.)
# Base images are fully qualified, so podman and registries-conf-less hosts take them as they are.

FROM docker.io/library/rust:1-slim-bookworm AS build
WORKDIR /src
# A stripped binary: the image needs no symbols or line tables (the repo's own release profile
# keeps line tables, for benchmarks and backtraces).
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=true
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src src
COPY config config
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin callhook

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/callhook --shell /usr/sbin/nologin callhook \
    && mkdir -p /var/lib/callhook/data /var/lib/callhook/recordings \
    && chown -R callhook:callhook /var/lib/callhook
COPY --from=build /src/target/release/callhook /usr/local/bin/callhook
USER callhook
WORKDIR /var/lib/callhook
# The admin API (calls, phone numbers, metrics) stays on the container's loopback. To scrape it
# from outside, set CALLHOOK__ADMIN__LISTEN=0.0.0.0:9998 together with
# CALLHOOK__ADMIN__TOKEN_FILE=/run/secrets/admin_token, and publish 9998 only to your network.
ENV CALLHOOK__SERVER__LISTEN=0.0.0.0:9999 \
    CALLHOOK__ADMIN__LISTEN=127.0.0.1:9998 \
    CALLHOOK__STORAGE__PATH=/var/lib/callhook/data/callhook.db \
    CALLHOOK__RECORDINGS__DIR=/var/lib/callhook/recordings
# The journal and the recordings: mount a volume on each (the run line above names them).
VOLUME ["/var/lib/callhook/data", "/var/lib/callhook/recordings"]
EXPOSE 9999
# `callhook healthcheck` reads the same configuration as the daemon (these ENV lines, a mounted
# config/callhook.toml) and asks /healthz on admin.listen, wherever that is: no curl, no port
# written twice.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["/usr/local/bin/callhook", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/callhook"]
CMD ["serve"]
