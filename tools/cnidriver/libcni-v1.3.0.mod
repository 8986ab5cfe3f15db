module github.com/nsx-ujo/nsx-ujo/tools/cnidriver

go 1.26.0

require github.com/containernetworking/cni v1.3.0
