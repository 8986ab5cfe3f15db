// Package vagrant checks, without booting a VM, what the Vagrant multi-node
// setup is made of: the Vagrantfile (vagrant validate, for each provider),
// the provisioning scripts under hack/vagrant (bash -n, and shellcheck
// where it is installed), the ncp.ini rendering, the image recipe against
// the Dockerfile, and the fabric VM's daemon (tests/fabric/nsx-fabric-sim)
// on a veth "NIC" with a real kube-apiserver. What needs a hypervisor —
// the VMs booting, kubeadm, the cluster benchmarks of ./clusterbench — is
// exercised on a machine with VirtualBox or libvirt (README).
//
// vagrant (Debian: vagrant, and vagrant-libvirt for the libvirt provider's
// checks) must be installed: a missing one fails the test rather than
// skipping it, so CI never passes without having validated anything.
package vagrant

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// repoRoot is the repository root (where the Vagrantfile is).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// vagrantSettings are the environment variables the Vagrantfile reads; the
// tests set them explicitly, whatever the caller's environment says.
var vagrantSettings = []string{
	"PROVIDER", "VAGRANT_DEFAULT_PROVIDER", "BOX", "NUM_WORKERS", "DATAPLANE", "K8S_VERSION", "GO_VERSION",
	"ARCH", "GO_URL", "CONTAINERD_VERSION", "RUNC_VERSION", "OVS_VERSION", "NSX_VERSION", "NODE_CPUS",
	"NODE_MEMORY", "FABRIC_CPUS", "FABRIC_MEMORY", "NODE_NET", "SERVICE_CIDR", "FABRIC_DATAPATH", "SYNC_TYPE",
	"VAGRANT_CWD", "VAGRANT_VAGRANTFILE", "VAGRANT_DOTFILE_PATH", "VAGRANT_HOME",
}

// vagrant runs `vagrant args...` on the repository's Vagrantfile with
// settings, its home and machine state in temp dirs (dotfile: "" makes
// one), no network check, and returns the combined output and the error.
func vagrant(t *testing.T, dotfile string, settings map[string]string, args ...string) (string, error) {
	t.Helper()
	bin, err := exec.LookPath("vagrant")
	if err != nil {
		t.Fatal("vagrant not found on PATH: install it (Debian: apt-get install vagrant vagrant-libvirt; hack/install-deps.sh does)")
	}
	if dotfile == "" {
		dotfile = t.TempDir()
	}
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !contains(vagrantSettings, name) {
			env = append(env, kv)
		}
	}
	env = append(env, "VAGRANT_CWD="+repoRoot(t), "VAGRANT_HOME="+t.TempDir(), "VAGRANT_DOTFILE_PATH="+dotfile,
		"VAGRANT_CHECKPOINT_DISABLE=1", "VAGRANT_NO_COLOR=1")
	for k, v := range settings {
		env = append(env, k+"="+v)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = repoRoot(t)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestVagrantValidate runs `vagrant validate` on the Vagrantfile: Ruby,
// every machine's networks, synced folder and provisioners (their scripts
// must exist), and the provider's settings. VirtualBox's own checks need
// VirtualBox installed, so that provider is validated with
// --ignore-provider; the libvirt plugin checks its settings without
// libvirt. Bad settings must be refused with a message.
func TestVagrantValidate(t *testing.T) {
	t.Parallel()
	tokenRE := regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}$`)
	t.Run("virtualbox", func(t *testing.T) {
		t.Parallel()
		dot := t.TempDir()
		out, err := vagrant(t, dot, map[string]string{"PROVIDER": "virtualbox"}, "validate", "--ignore-provider")
		if err != nil {
			t.Fatalf("vagrant validate --ignore-provider: %v\n%s", err, out)
		}
		for _, m := range []string{"fabric", "control", "worker-1", "worker-2"} {
			if !strings.Contains(out, "==> "+m+":") {
				t.Errorf("machine %s not in the output:\n%s", m, out)
			}
		}
		if strings.Contains(out, "worker-3") {
			t.Errorf("NUM_WORKERS defaults to 2, yet worker-3 exists:\n%s", out)
		}
		// The tokens are made once and kept with the machine state: a
		// later `vagrant provision` must join with the same one.
		tokens := readTokens(t, dot)
		for k, v := range tokens {
			if !tokenRE.MatchString(v) {
				t.Errorf("%s token %q is not a bootstrap token ([a-z0-9]{6}.[a-z0-9]{16})", k, v)
			}
		}
		if len(tokens) != 2 || tokens["join"] == tokens["fabric"] {
			t.Errorf("want two different tokens, join and fabric: %v", tokens)
		}
		if out, err := vagrant(t, dot, map[string]string{"PROVIDER": "virtualbox"}, "validate", "--ignore-provider"); err != nil {
			t.Fatalf("second vagrant validate: %v\n%s", err, out)
		}
		if again := readTokens(t, dot); again["join"] != tokens["join"] || again["fabric"] != tokens["fabric"] {
			t.Errorf("tokens changed between two runs: %v, then %v", tokens, again)
		}
	})
	t.Run("libvirt", func(t *testing.T) {
		t.Parallel()
		out, err := vagrant(t, "", map[string]string{"PROVIDER": "libvirt", "NUM_WORKERS": "3", "DATAPLANE": "ebpf"}, "validate")
		if err != nil {
			t.Fatalf("vagrant validate (libvirt provider; Debian's vagrant-libvirt package must be installed): %v\n%s", err, out)
		}
		if !strings.Contains(out, "validated successfully") {
			t.Errorf("unexpected output:\n%s", out)
		}
	})
	for _, bad := range []struct{ name, value, want string }{
		{"DATAPLANE", "iptables", "DATAPLANE must be one of ovs, ebpf"},
		{"NUM_WORKERS", "zero", "NUM_WORKERS must be an integer from 1 to 20"},
		{"PROVIDER", "docker", "PROVIDER must be one of virtualbox, libvirt"},
		{"NODE_NET", "10.0.0.0/24", "NODE_NET must be three octets"},
	} {
		t.Run("refuses "+bad.name, func(t *testing.T) {
			t.Parallel()
			out, err := vagrant(t, "", map[string]string{bad.name: bad.value}, "validate", "--ignore-provider")
			if err == nil || !strings.Contains(out, bad.want) {
				t.Errorf("%s=%s: want a failure saying %q, got %v:\n%s", bad.name, bad.value, bad.want, err, out)
			}
		})
	}
}

func readTokens(t *testing.T, dotfile string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dotfile, "nsx-ujo-tokens.json"))
	if err != nil {
		t.Fatal(err)
	}
	var tokens map[string]string
	if err := json.Unmarshal(b, &tokens); err != nil {
		t.Fatalf("%s: %v", bytes.TrimSpace(b), err)
	}
	return tokens
}
