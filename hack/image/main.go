// Command image builds the nsx-ujo image tarball without a container
// engine (`make image`): see internal/nsximage.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/nsx-ujo/nsx-ujo/internal/nsximage"
)

func main() {
	o := nsximage.Options{Source: "."}
	flag.StringVar(&o.Version, "version", "", "semver stamped into the binaries (nsxBuildVersion)")
	flag.StringVar(&o.Out, "out", "", "the tarball to write (default _output/image/nsx-ujo-<version>.tar)")
	flag.StringVar(&o.DebCache, "deb-cache", "_output/image/debs", "where downloaded .debs are kept")
	flag.Parse()
	if o.Out == "" {
		o.Out = "_output/image/nsx-ujo-" + o.Version + ".tar"
	}
	if rev, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		o.Revision = strings.TrimSpace(string(rev))
	}
	if err := nsximage.Build(o); err != nil {
		fmt.Fprintln(os.Stderr, "make image:", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %s (docker load -i / ctr images import)\n", o.Out, strings.Join(nsximage.Refs(o.Version), ", "))
}
