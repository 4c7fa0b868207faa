# hashpress as a small static image: one binary, CA certificates, nothing else.
#
#   docker build -t hashpress .
#   docker run --rm -p 3000:3000 -v /srv/data:/data:ro hashpress --root /data
#   docker run --rm -p 3000:3000 --env-file s3.env hashpress --root s3://BUCKET/PREFIX
#
# (s3.env: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and AWS_ENDPOINT_URL for an
# S3-compatible store.) deploy/k8s/ runs this image on Kubernetes.

# ---- build: a static glibc binary -----------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# crt-static links glibc into the binary, so the runtime stage needs no libc at all. glibc >= 2.34
# has its files and dns resolvers built in, so name resolution works statically too (it reads the
# /etc/hosts and /etc/resolv.conf that the container runtime mounts).
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/hashpress /hashpress \
 && strip /hashpress \
 && /hashpress --version

# ---- runtime: scratch --------------------------------------------------------------------------
FROM scratch
# TLS to S3 verifies the store's certificate against these roots.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /hashpress /hashpress
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    HASHPRESS_LISTEN=0.0.0.0:3000 \
    HASHPRESS_LOG_FORMAT=json
# Not root: scratch has no /etc/passwd, so a numeric uid:gid (distroless's "nonroot").
USER 65532:65532
EXPOSE 3000
# No HEALTHCHECK: Docker runs it as a command inside the container, and scratch has no shell,
# curl or wget to run (hashpress has no client subcommand either). Orchestrators probe over HTTP
# from outside instead: GET /healthz (alive) and GET /readyz (200 serving, 503 draining), as
# deploy/k8s/hashpress.yaml does.
ENTRYPOINT ["/hashpress", "serve"]
CMD ["--root", "/data"]
