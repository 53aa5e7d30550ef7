# syntax=docker/dockerfile:1
# Build: docker build -t callhook .
# Run:   docker run -p 9999:9999 -v callhook-data:/var/lib/callhook \
#          -e CALLHOOK__JAS__WEBHOOK_SECRET_FILE=/run/secrets/jas_webhook_secret callhook

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src src
COPY config config
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin callhook

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
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
VOLUME ["/var/lib/callhook/data", "/var/lib/callhook/recordings"]
EXPOSE 9999
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD curl -fsS http://127.0.0.1:9999/healthz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/callhook"]
CMD ["serve"]
