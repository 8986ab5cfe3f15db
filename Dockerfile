# The nsx-ujo image: every binary of cmd/ (nsx, nsx-node-agent,
# nsx-kube-proxy, nsx-ovs, nsx-ncp-bootstrap, ...) and the loopback CNI plugin
# in /usr/local/bin, on Debian 12 with the tools the containers run (OVS,
# iproute2, ethtool, bpftool, apparmor_parser). deploy/ runs it as
# nsx-ujo:latest.
#
#   docker build --build-arg VERSION=1.2.3 -t nsx-ujo:1.2.3 .
#
# VERSION is what nsx-ncp-bootstrap writes as nsxBuildVersion and compares
# with an installed one, so every release must raise it (semver).
#
# Not built by the tests: the development machines have no Docker engine.
# deploy/ is validated against a real kube-apiserver by tests/deploy instead.

FROM golang:1.26-bookworm AS build
ARG VERSION=0.1.0-dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static binaries: the runtime stage has no Go toolchain and needs no
# particular libc. The Makefile's BINARIES lags behind new commands, so every
# directory of cmd/ is passed. GOFLAGS values cannot contain spaces, hence
# the -X= form of the linker flag.
ENV CGO_ENABLED=0
RUN GOFLAGS="-buildvcs=false -ldflags=-X=github.com/nsx-ujo/nsx-ujo/pkg/bootstrap.Version=${VERSION}" \
      make build BINARIES="$(ls cmd | tr '\n' ' ')" \
 && go build -buildvcs=false -o bin/loopback github.com/containernetworking/plugins/plugins/main/loopback \
 && ./bin/nsx-ncp-bootstrap version

FROM debian:bookworm-slim
# openvswitch-switch: ovsdb-server, ovs-vswitchd and the ovs-* tools for
# nsx-ovs; apparmor: apparmor_parser for nsx-ncp-bootstrap.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openvswitch-switch iproute2 ethtool bpftool apparmor \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/bin/ /usr/local/bin/
