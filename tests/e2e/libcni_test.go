package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/version"
	corev1 "k8s.io/api/core/v1"

	"github.com/nsx-ujo/nsx-ujo/pkg/bootstrap"
	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// runtimeLibcni are the libcni versions the container runtimes in support
// embed (their go.mod), each built into tools/cnidriver.
var runtimeLibcni = []struct {
	version  string
	runtimes string
	// highest is the newest CNI version this libcni knows.
	highest string
}{
	{"v1.1.2", "containerd 1.6 and 1.7 (Debian 12, Ubuntu 22.04/24.04), CRI-O before 1.30", "1.0.0"},
	{"v1.2.3", "containerd 2.0", "1.1.0"},
	{"v1.3.0", "containerd 2.1 and 2.2", "1.1.0"},
	{"v1.3.1", "containerd 2.4 (newest)", "1.1.0"},
}

// buildCNIDriver builds tools/cnidriver against libcni at v.
func buildCNIDriver(t *testing.T, v string) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "cnidriver-"+v)
	args := []string{"build", "-ldflags", "-X main.libcniVersion=" + v, "-o", bin}
	if mod := "libcni-" + v + ".mod"; fileExists(filepath.Join(root, "tools/cnidriver", mod)) {
		args = append(args, "-modfile="+mod)
	}
	if v == "v1.1.2" {
		args = append(args, "-tags", "libcni_v1_1")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = filepath.Join(root, "tools/cnidriver")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil || !strings.Contains(string(out), "github.com/containernetworking/cni\t"+v) {
		t.Fatalf("cnidriver-%s is not built with libcni %s: %v\n%s", v, v, err, out)
	}
	return bin
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// driverOut is what cnidriver prints.
type driverOut struct {
	Libcni      string          `json:"libcni"`
	ListVersion string          `json:"listVersion"`
	Result      json.RawMessage `json:"result"`
}

// cniDriver runs one libcni version against one node.
type cniDriver struct {
	bin      string
	nd       *cluster.AgentNode
	cacheDir string
}

func (d *cniDriver) run(t *testing.T, conflist string, p *corev1.Pod, podNS *harness.NetNS, cid, cmd string, extra ...string) (driverOut, error) {
	t.Helper()
	args := []string{"-conflist", conflist, "-bin-dir", d.nd.CNIBinDir(), "-cache-dir", d.cacheDir}
	if p != nil {
		args = append(args, "-netns", podNS.Path, "-container-id", cid, "-ifname", "eth0", "-args",
			fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s;K8S_POD_UID=%s",
				p.Namespace, p.Name, cid, p.UID))
	}
	args = append(append(args, extra...), cmd)
	ctx, cancel := context.WithTimeout(context.Background(), 90e9)
	defer cancel()
	var out driverOut
	b, err := exec.CommandContext(ctx, d.bin, args...).Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return out, fmt.Errorf("%w: %s", err, ee.Stderr)
	}
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return out, fmt.Errorf("cnidriver output %q: %w", b, err)
	}
	return out, nil
}

// The conflist nsx-ncp-bootstrap installs, unchanged, through the libcni
// of every runtime in support, against the real agent, OVS and
// kube-apiserver: ADD, CHECK, DEL (and STATUS, GC where libcni has them).
// Then every CNI version the plugin answers and that libcni knows, pinned
// as ncp.ini cni_version would: the result is decoded by that libcni.
func TestInstalledConflistWithEveryRuntimesLibcni(t *testing.T) {
	cs := api.Client(t)
	nd := cluster.StartAgentNode(t, api, "node-libcni", cluster.AgentOptions{BinDir: binDir})
	ns := newNamespace(t, cs)
	podIndex := 0
	// lifecycle wires one pod through conflist with d and checks what a
	// runtime of that libcni sees; del then deletes it as a runtime does.
	lifecycle := func(t *testing.T, d *cniDriver, conflist, wantVersion string) (cid string, del func()) {
		t.Helper()
		podIndex++
		p := createPod(t, cs, ns, fmt.Sprintf("p-%d", podIndex), nd.Name)
		ip := fmt.Sprintf("10.0.2.%d", 40+podIndex) // annotate makes the MAC from the last byte: two digits
		annotate(t, cs, p, string(p.UID), ip, 310)
		podNS := harness.NewNetNS(t)
		cid = fmt.Sprintf("cid-libcni-%d", podIndex)
		out, err := d.run(t, conflist, p, podNS, cid, "add")
		if err != nil {
			t.Fatalf("ADD: %v", err)
		}
		if out.ListVersion != wantVersion {
			t.Errorf("libcni %s chose CNI %s for the list, want %s", out.Libcni, out.ListVersion, wantVersion)
		}
		// The result as that libcni decoded it, in that version's shape.
		var res struct {
			CNIVersion string `json:"cniVersion"`
			IPs        []struct {
				Address string  `json:"address"`
				Version *string `json:"version"`
			} `json:"ips"`
			Interfaces []struct{ Name, Sandbox string } `json:"interfaces"`
		}
		if err := json.Unmarshal(out.Result, &res); err != nil {
			t.Fatal(err)
		}
		v1, _ := version.GreaterThanOrEqualTo(wantVersion, "1.0.0")
		if res.CNIVersion != wantVersion || len(res.IPs) != 1 || res.IPs[0].Address != ip+"/24" ||
			(res.IPs[0].Version != nil) == v1 || len(res.Interfaces) != 2 || res.Interfaces[1].Sandbox != podNS.Path {
			t.Errorf("ADD result through libcni %s: %s", out.Libcni, out.Result)
		}
		if addr := podNS.Run(t, "ip", "-o", "addr"); !strings.Contains(addr, ip+"/24") || !strings.Contains(addr, "lo ") {
			t.Errorf("pod addresses:\n%s", addr)
		}
		if ok, _ := version.GreaterThanOrEqualTo(wantVersion, "0.4.0"); ok {
			if _, err := d.run(t, conflist, p, podNS, cid, "check"); err != nil {
				t.Errorf("CHECK: %v", err)
			}
		}
		return cid, func() {
			t.Helper()
			for i := range 2 { // runtimes repeat DEL; the second must succeed too
				if _, err := d.run(t, conflist, p, podNS, cid, "del"); err != nil {
					t.Errorf("DEL %d: %v", i+1, err)
				}
			}
			if ports := nd.Ports(t); len(ports) != 0 {
				t.Errorf("ports after DEL: %v", ports)
			}
		}
	}

	for _, lc := range runtimeLibcni {
		t.Run("libcni-"+lc.version, func(t *testing.T) {
			t.Logf("libcni %s: %s", lc.version, lc.runtimes)
			d := &cniDriver{bin: buildCNIDriver(t, lc.version), nd: nd, cacheDir: t.TempDir()}

			// The installed conflist, exactly as the bootstrap wrote it.
			cid, del := lifecycle(t, d, nd.ConflistPath(), lc.highest)
			_, statusErr := d.run(t, nd.ConflistPath(), nil, nil, "", "status")
			_, gcKeep := d.run(t, nd.ConflistPath(), nil, nil, "", "gc", "-keep", cid+"/eth0")
			if lc.highest == "1.1.0" {
				if statusErr != nil {
					t.Errorf("STATUS: %v", statusErr)
				}
				if gcKeep != nil || len(nd.Ports(t)) != 1 {
					t.Errorf("GC keeping the pod: %v, ports %v", gcKeep, nd.Ports(t))
				}
				// GC with nothing valid removes the attachment; the
				// runtime's DEL afterwards still succeeds.
				if _, err := d.run(t, nd.ConflistPath(), nil, nil, "", "gc"); err != nil || len(nd.Ports(t)) != 0 {
					t.Errorf("GC keeping nothing: %v, ports %v", err, nd.Ports(t))
				}
			} else if statusErr == nil || gcKeep == nil {
				t.Errorf("libcni %s ran STATUS/GC (%v, %v): the driver's build tags are wrong", lc.version, statusErr, gcKeep)
			}
			del()

			// Each version the plugin answers, pinned (cni_version), where
			// this libcni knows it.
			for _, v := range config.CNIVersions {
				if newer, _ := version.GreaterThan(v, lc.highest); newer {
					continue
				}
				t.Run("cniVersion-"+v, func(t *testing.T) {
					conflist := filepath.Join(t.TempDir(), "10-nsx.conflist")
					data := bootstrap.Conflist(bootstrap.ConflistOptions{BuildVersion: "1.0.0", Socket: nd.Socket, MTU: 1500, CNIVersion: v})
					if err := os.WriteFile(conflist, data, 0o644); err != nil {
						t.Fatal(err)
					}
					_, del := lifecycle(t, d, conflist, v)
					del()
				})
			}
		})
	}
}
