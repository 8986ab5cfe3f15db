// Package cniplugin is the logic of the `nsx` CNI plugin binary: it turns a
// runtime's invocation into a cniwire.Request, forwards it to nsx-node-agent
// and prints the agent's answer. It never touches the network itself.
package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

// Funcs returns the CNI 1.1 entry points for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return run(cniwire.CmdAdd, a) },
		Del:    func(a *skel.CmdArgs) error { return run(cniwire.CmdDel, a) },
		Check:  func(a *skel.CmdArgs) error { return run(cniwire.CmdCheck, a) },
		GC:     func(a *skel.CmdArgs) error { return run(cniwire.CmdGC, a) },
		Status: func(a *skel.CmdArgs) error { return run(cniwire.CmdStatus, a) },
	}
}

// VersionInfo is what the plugin answers to VERSION: every version whose
// result can carry interfaces and a chained list (0.3.0 on), the ones
// ncp.ini cni_version may pin.
func VersionInfo() version.PluginInfo { return version.PluginSupports(config.CNIVersions...) }

func run(cmd cniwire.Command, a *skel.CmdArgs) error {
	nc, err := cniwire.ParseNetConf(a.StdinData)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "invalid network configuration", err.Error())
	}
	pa, err := cniwire.ParseCNIArgs(a.Args)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI_ARGS", err.Error())
	}
	req := &cniwire.Request{
		Command:      cmd,
		ContainerID:  a.ContainerID,
		Netns:        a.Netns,
		IfName:       a.IfName,
		PodNamespace: pa.Namespace,
		PodName:      pa.Name,
		PodUID:       pa.UID,
		Config:       a.StdinData,
	}
	if err := req.Validate(); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "invalid CNI invocation", err.Error())
	}
	resp, err := cniwire.NewClient(nc.SocketPath()).Do(context.Background(), req)
	if err != nil {
		var ue *cniwire.UnreachableError
		switch {
		case errors.As(err, &ue) && cmd == cniwire.CmdDel:
			// DEL must succeed when the agent is gone: the runtime would
			// otherwise retry forever; the agent's audit removes the port.
			return nil
		case errors.As(err, &ue) && cmd == cniwire.CmdStatus:
			return types.NewError(types.ErrPluginNotAvailable, "nsx-node-agent is not running", ue.Error())
		case errors.As(err, &ue):
			return types.NewError(types.ErrTryAgainLater, "nsx-node-agent is not running", ue.Error())
		}
		return types.NewError(types.ErrIOFailure, "talking to nsx-node-agent", err.Error())
	}
	if resp.Error != nil {
		return resp.Error
	}
	if cmd != cniwire.CmdAdd {
		return nil
	}
	if len(resp.Result) == 0 {
		return types.NewError(types.ErrInternal, "nsx-node-agent returned no result for ADD", "")
	}
	return printResult(os.Stdout, resp.Result, nc.CNIVersion)
}

// printResult writes the agent's result (CNI 1.x) to w in cniVersion, the
// version the runtime's netconf asked for: 0.3.x/0.4.0 results carry the
// "version" of each IP, 1.x ones do not.
func printResult(w io.Writer, agentResult []byte, cniVersion string) error {
	res, err := types100.NewResult(agentResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "decoding the agent's ADD result", err.Error())
	}
	out, err := res.GetAsVersion(cniVersion)
	if err == nil {
		err = out.PrintTo(w)
	}
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("cannot express the result in cniVersion %s", cniVersion), err.Error())
	}
	return nil
}

// Main runs the plugin as a process.
func Main() {
	if e := skel.PluginMainFuncsWithError(Funcs(), VersionInfo(), "nsx: NSX-style CNI plugin of nsx-ujo, forwards to nsx-node-agent"); e != nil {
		if err := e.Print(); err != nil {
			fmt.Fprintln(os.Stderr, "nsx:", err)
		}
		os.Exit(1)
	}
}
