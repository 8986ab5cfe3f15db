// Module cnidriver builds the CNI test driver against the newest libcni;
// libcni-<version>.mod build it against the versions runtimes embed.
module github.com/nsx-ujo/nsx-ujo/tools/cnidriver

go 1.26.0

require github.com/containernetworking/cni v1.3.1

require (
	go.opentelemetry.io/otel v1.29.0 // indirect
	go.opentelemetry.io/otel/trace v1.29.0 // indirect
)
