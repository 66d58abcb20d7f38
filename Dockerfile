# switchyard container image.
#
#   docker build -t switchyard .
#   docker run --rm -p 8443:8443 -p 8080:8080 switchyard
#   docker run --rm -v "$PWD/myconfig:/etc/switchyard:ro" -p 443:8443 -p 80:8080 switchyard
#
# The image carries the example configuration and the development
# certificates in /etc/switchyard (listening on 0.0.0.0 so published ports
# reach it). Mount your own configuration directory over it; see README.md,
# "Running in a container".

# --- build ---------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchyard \
 && install -D -m 0755 target/release/switchyard /out/usr/local/bin/switchyard

# The example configuration, adapted to a container: public listeners on
# 0.0.0.0 (admin stays on loopback for the HEALTHCHECK), certificates in
# /etc/switchyard/certs. Checked with the binary just built.
RUN mkdir -p /out/etc/switchyard/certs \
 && cp -r config/. /out/etc/switchyard/ \
 && cp certs/localhost.crt certs/localhost.key certs/dev-ca.crt /out/etc/switchyard/certs/ \
 && sed -i -e 's/"127\.0\.0\.1:8443"/"0.0.0.0:8443"/' \
           -e 's/"127\.0\.0\.1:8080"/"0.0.0.0:8080"/' \
        /out/etc/switchyard/switchyard.toml \
 && sed -i -e 's#"\.\./\.\./certs/#"../certs/#g' /out/etc/switchyard/sites/*.toml \
 && grep -q '"0.0.0.0:8443"' /out/etc/switchyard/switchyard.toml \
 && /out/usr/local/bin/switchyard check -c /out/etc/switchyard \
 && chown -R root:65532 /out/etc/switchyard \
 && chmod -R u=rwX,g=rX,o= /out/etc/switchyard

# --- runtime -------------------------------------------------------------------
# debian-slim rather than distroless so the HEALTHCHECK has curl.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid nonroot --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
COPY --from=builder /out/usr/local/bin/switchyard /usr/local/bin/switchyard
# Owned by root, readable by the nonroot group: the proxy cannot rewrite its
# own configuration. A mounted configuration's key files must be readable by
# uid 65532.
COPY --from=builder --chown=root:nonroot /out/etc/switchyard /etc/switchyard

# https, http, admin (the admin listener should stay on 127.0.0.1; publish
# 9901 only if you bind it to 0.0.0.0 for an internal scraper).
EXPOSE 8443 8080 9901
USER nonroot
WORKDIR /etc/switchyard
# SIGTERM drains (in-flight requests finish, WebSockets close with 1001):
# give `docker stop` a --time longer than timeouts.drain. SIGHUP reloads.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9901/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["run", "-c", "/etc/switchyard"]
