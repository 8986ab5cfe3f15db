package vagrant

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

// TestScripts parses every script under hack/vagrant with bash -n and, if
// shellcheck is installed, lints them (sourced files followed).
func TestScripts(t *testing.T) {
	root := repoRoot(t)
	scripts, err := filepath.Glob(filepath.Join(root, "hack", "vagrant", "*.sh"))
	if err != nil || len(scripts) == 0 {
		t.Fatalf("no scripts under hack/vagrant: %v", err)
	}
	for _, s := range scripts {
		if out, err := exec.Command("bash", "-n", s).CombinedOutput(); err != nil {
			t.Errorf("bash -n %s: %v\n%s", s, err, out)
		}
	}
	sc, err := exec.LookPath("shellcheck")
	if err != nil {
		t.Log("shellcheck not installed: only bash -n ran")
		return
	}
	rel := make([]string, len(scripts))
	for i, s := range scripts {
		rel[i], _ = filepath.Rel(root, s)
	}
	cmd := exec.Command(sc, append([]string{"-x"}, rel...)...)
	cmd.Dir = root // the scripts' "shellcheck source=" paths are relative to it
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("shellcheck: %v\n%s", err, out)
	}
}

// render runs hack/vagrant/render-manifests.sh on input.
func render(t *testing.T, input []byte, args ...string) ([]byte, string, error) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(repoRoot(t), "hack", "vagrant", "render-manifests.sh")}, args...)...)
	cmd.Stdin = bytes.NewReader(input)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.Bytes(), stderr.String(), err
}

// ncpINI returns the ncp.ini of the ConfigMap nsx-node-agent-config in a
// multi-document manifest.
func ncpINI(t *testing.T, manifests []byte) string {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifests)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var cm corev1.ConfigMap
		if err := sigsyaml.Unmarshal(doc, &cm); err != nil {
			continue
		}
		if cm.Kind == "ConfigMap" && cm.Name == "nsx-node-agent-config" {
			return cm.Data["ncp.ini"]
		}
	}
	t.Fatal("no ConfigMap nsx-node-agent-config in the manifests")
	return ""
}

// TestRenderManifests checks what control.sh applies: deploy/'s ConfigMap
// with ncp.ini rendered for the Vagrant cluster parses with pkg/config and
// says what it was asked to, and nothing else of the manifests changes.
func TestRenderManifests(t *testing.T) {
	root := repoRoot(t)
	input, err := os.ReadFile(filepath.Join(root, "deploy", "nsx-node-agent-ds.yml"))
	if err != nil {
		t.Fatal(err)
	}
	inputs := map[string][]byte{"deploy/nsx-node-agent-ds.yml": input}
	// control.sh renders `kubectl kustomize deploy/`, which reformats the
	// YAML; check that too where kubectl is installed.
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		out, err := exec.Command(kubectl, "kustomize", filepath.Join(root, "deploy")).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize deploy/: %v", err)
		}
		inputs["kubectl kustomize deploy/"] = out
	} else {
		t.Log("kubectl not installed: rendering checked on deploy/nsx-node-agent-ds.yml only")
	}
	for name, in := range inputs {
		for _, dp := range []string{"ovs", "ebpf"} {
			out, stderr, err := render(t, in, "--dataplane", dp, "--apiserver-ip", "192.168.56.10", "--uplink", "eth1")
			if err != nil {
				t.Fatalf("%s, %s: %v\n%s", name, dp, err, stderr)
			}
			c, err := config.Parse([]byte(ncpINI(t, out)), func(msg string, kv ...any) { t.Errorf("%s: %s %v", name, msg, kv) })
			if err != nil {
				t.Fatalf("%s, %s: rendered ncp.ini: %v", name, dp, err)
			}
			k := c.K8s
			if c.KubeProxy.Dataplane != dp || c.NodeAgent.OVSUplinkPort != "eth1" || k.APIServerHostIP != "192.168.56.10" ||
				k.APIServerHostPort != 6443 || k.CAFile != "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt" ||
				k.ClientTokenFile != "/var/run/secrets/kubernetes.io/serviceaccount/token" || k.Insecure {
				t.Errorf("%s, %s: rendered config %+v %+v %+v", name, dp, k, c.NodeAgent, c.KubeProxy)
			}
			// Only ncp.ini lines change: 5 added, and the dataplane line
			// replaced unless it already said dp.
			added, removed := 5, 0
			if !regexp.MustCompile(`(?m)^\s*dataplane = ` + dp + `$`).Match(in) {
				added, removed = 6, 1
			}
			if d := lineDiff(in, out); len(d.added) != added || len(d.removed) != removed {
				t.Errorf("%s, %s: want %d lines added and %d removed, got +%q -%q", name, dp, added, removed, d.added, d.removed)
			}
			// A second pass changes nothing: the keys it sets are replaced.
			again, stderr, err := render(t, out, "--dataplane", dp, "--apiserver-ip", "192.168.56.10", "--uplink", "eth1")
			if err != nil || !bytes.Equal(again, out) {
				t.Errorf("%s, %s: rendering twice differs (%v, %s):\n%s", name, dp, err, stderr, again)
			}
		}
	}
	if _, stderr, err := render(t, []byte("kind: List\n"), "--dataplane", "ovs", "--apiserver-ip", "192.168.56.10", "--uplink", "eth1"); err == nil ||
		!strings.Contains(stderr, "want one [k8s]") {
		t.Errorf("input without ncp.ini: want a failure naming what is missing, got %v: %s", err, stderr)
	}
	if _, stderr, err := render(t, input, "--dataplane", "iptables", "--apiserver-ip", "192.168.56.10", "--uplink", "eth1"); err == nil ||
		!strings.Contains(stderr, "--dataplane must be ovs or ebpf") {
		t.Errorf("bad dataplane: want a refusal, got %v: %s", err, stderr)
	}
}

type diff struct{ added, removed []string }

// lineDiff compares two texts as multisets of lines (order is not checked:
// the rendering inserts after section headers).
func lineDiff(a, b []byte) diff {
	count := map[string]int{}
	for _, l := range strings.Split(string(a), "\n") {
		count[l]++
	}
	var d diff
	for _, l := range strings.Split(string(b), "\n") {
		if count[l] > 0 {
			count[l]--
		} else {
			d.added = append(d.added, l)
		}
	}
	for l, n := range count {
		for range n {
			d.removed = append(d.removed, l)
		}
	}
	return d
}

// TestImageRecipe keeps hack/vagrant/Containerfile the runtime stage of the
// Dockerfile (same base, same packages, binaries in /usr/local/bin) and
// the image node.sh builds the one deploy/ runs.
func TestImageRecipe(t *testing.T) {
	root := repoRoot(t)
	read := func(rel string) string {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	dockerfile, containerfile := read("Dockerfile"), read("hack/vagrant/Containerfile")
	// The runtime stage is the Dockerfile's last.
	stages := regexp.MustCompile(`(?m)^FROM `).Split(dockerfile, -1)
	runtime := stages[len(stages)-1]
	base := func(stage string) string { return strings.TrimPrefix(strings.Fields(stage)[0], "docker.io/library/") }
	cstages := regexp.MustCompile(`(?m)^FROM `).Split(containerfile, -1)
	if len(cstages) != 2 {
		t.Fatalf("Containerfile: want one stage, got %d", len(cstages)-1)
	}
	if got, want := base(cstages[1]), base(runtime); got != want {
		t.Errorf("Containerfile is FROM %s, the Dockerfile's runtime stage FROM %s", got, want)
	}
	pkgRE := regexp.MustCompile(`apt-get install -y --no-install-recommends ([^\\&\n]+)`)
	pkgs := func(name, stage string) []string {
		m := pkgRE.FindStringSubmatch(stage)
		if m == nil {
			t.Fatalf("%s: no apt-get install line", name)
		}
		var out []string
		for _, p := range strings.Fields(m[1]) {
			p, _, _ = strings.Cut(p, "${") // openvswitch-switch${OVS_VERSION:+=...}
			out = append(out, p)
		}
		slices.Sort(out)
		return out
	}
	if got, want := pkgs("Containerfile", containerfile), pkgs("Dockerfile", runtime); !slices.Equal(got, want) {
		t.Errorf("Containerfile installs %v, the Dockerfile's runtime stage %v", got, want)
	}
	if !strings.Contains(runtime, "/usr/local/bin/") || !strings.Contains(containerfile, "COPY . /usr/local/bin/") {
		t.Error("the binaries must land in /usr/local/bin in both images")
	}
	node := read("hack/vagrant/node.sh")
	if !strings.Contains(node, "image=docker.io/library/nsx-ujo:latest") {
		t.Error("node.sh must build docker.io/library/nsx-ujo:latest")
	}
	for _, f := range []string{"deploy/nsx-node-agent-ds.yml", "deploy/nsx-ncp-bootstrap-ds.yml"} {
		for _, m := range regexp.MustCompile(`image: (\S+)`).FindAllStringSubmatch(read(f), -1) {
			if m[1] != "nsx-ujo:latest" {
				t.Errorf("%s runs %s; node.sh builds nsx-ujo:latest", f, m[1])
			}
		}
	}
}
