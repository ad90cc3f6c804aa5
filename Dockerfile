# syntax=docker/dockerfile:1
#
# For users who build with Docker. CI builds the same image without a daemon:
# `go -C deploy run ./image` (see README, "Operating detour"): a static binary,
# user 65532, entrypoint ["/detour", "serve"], ports 50051/9090/50052. The
# binary is the production build (-tags nodemo): no `detour demo` or `detour
# dev`, whose embedded etcd server and simulated backends it does not link.
#
#   docker build -t detour:dev .
#   docker run --rm -p 50051:50051 -v $PWD/detour.yaml:/etc/detour/config/config.yaml:ro \
#     detour:dev --config=/etc/detour/config/config.yaml --listen=:50051
ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -tags nodemo -o /out/detour ./cmd/detour \
 && mkdir -p /out/var/lib/detour

# distroless/static: CA certificates, /etc/passwd with nonroot (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/detour /detour
COPY --from=build --chown=65532:65532 /out/var/lib/detour /var/lib/detour
USER 65532:65532
EXPOSE 50051 9090 50052
ENTRYPOINT ["/detour", "serve"]
