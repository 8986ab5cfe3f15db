// Command cnidriver drives CNI plugins through libcni exactly as a container
// runtime does, one command per run. It is built once per libcni version that
// runtimes embed (go.mod: the newest; libcni-<version>.mod with -modfile: the
// others; -tags libcni_v1_1 for v1.1.x), so tests can check that the conflist
// nsx-ncp-bootstrap installs works with each of them. tests/e2e builds it
// (buildCNIDriver).
//
//	cnidriver -conflist F -bin-dir D -cache-dir C [-netns P -container-id X -ifname I -args K=V;K=V] add|check|del
//	cnidriver -conflist F -bin-dir D -cache-dir C status
//	cnidriver -conflist F -bin-dir D -cache-dir C [-keep ID/IF,...] gc
//	cnidriver -conflist F version
//
// It prints one JSON object: the libcni version it was built with, the CNI
// version libcni chose for the list and, for add, the result as libcni
// decoded it (in that version's shape).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// libcniVersion is set at build time (-X main.libcniVersion=...).
var libcniVersion = "unknown"

// errUnsupported is returned for commands this libcni version lacks.
var errUnsupported = errors.New("not in this libcni version")

type output struct {
	Libcni      string          `json:"libcni"`
	ListVersion string          `json:"listVersion"`
	Result      json.RawMessage `json:"result,omitempty"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cnidriver:", err)
		os.Exit(1)
	}
}

func run() error {
	conflist := flag.String("conflist", "", "the network configuration list")
	binDir := flag.String("bin-dir", "", "where the plugins are (CNI_PATH)")
	cacheDir := flag.String("cache-dir", "", "libcni's result cache")
	netns := flag.String("netns", "", "the sandbox's netns path")
	containerID := flag.String("container-id", "", "the sandbox id")
	ifName := flag.String("ifname", "eth0", "the interface in the sandbox")
	cniArgs := flag.String("args", "", "CNI_ARGS, K=V;K=V")
	keep := flag.String("keep", "", "gc: attachments to keep, ID/IF,...")
	flag.Parse()
	if flag.NArg() != 1 {
		return errors.New("want one command: add, check, del, status, gc or version")
	}
	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		return err
	}
	out := output{Libcni: libcniVersion, ListVersion: list.CNIVersion}
	cni := libcni.NewCNIConfigWithCacheDir([]string{*binDir}, *cacheDir, nil)
	rt := &libcni.RuntimeConf{ContainerID: *containerID, NetNS: *netns, IfName: *ifName}
	for _, kv := range strings.Split(*cniArgs, ";") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			rt.Args = append(rt.Args, [2]string{k, v})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	switch cmd := flag.Arg(0); cmd {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return fmt.Errorf("ADD: %w", err)
		}
		if out.Result, err = json.Marshal(res); err != nil {
			return err
		}
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	case "status":
		err = status(ctx, cni, list)
	case "gc":
		var valid [][2]string
		for _, a := range strings.Split(*keep, ",") {
			if id, ifn, ok := strings.Cut(a, "/"); ok {
				valid = append(valid, [2]string{id, ifn})
			}
		}
		err = gc(ctx, cni, list, valid)
	case "version":
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", strings.ToUpper(flag.Arg(0)), err)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
