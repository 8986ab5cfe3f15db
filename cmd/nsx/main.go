// Command nsx is the CNI plugin (/opt/cni/bin/nsx). It forwards every CNI
// command to nsx-node-agent over its unix socket.
package main

import "github.com/nsx-ujo/nsx-ujo/pkg/cniplugin"

func main() { cniplugin.Main() }
