package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// mountNSDir holds the files that keep nodes' mount namespaces alive (a
// private mount, as a namespace file's bind mount requires).
const mountNSDir = "/run/" + namePrefix + "mnt"

// HostPath is a host path a node has of its own, as a real node has its
// own file system: processes started with NetNS.Exec (kubelet, containerd
// and, through them, the containers' hostPath volumes) see Dir there.
type HostPath struct {
	Path   string // as the node's processes see it, e.g. /etc/cni/net.d
	Dir    string // bind-mounted at Path (created); "" with FSType
	FSType string // instead of Dir: a new mount of this file system (bpf)
}

// mountPoints counts, per host path this process created as a mount
// point, the nodes using it: the last one removes it again.
var mountPoints struct {
	sync.Mutex
	users map[string]int
}

// OwnHostPaths gives n a mount namespace of its own (nothing propagates
// to or from the machine's) in which each of paths is mounted as it says; NetNS.Exec then runs
// commands in it. Mount points missing on the machine are created, and
// removed in the cleanup with the namespace once no node uses them.
func (n *NetNS) OwnHostPaths(t testing.TB, paths []HostPath) {
	t.Helper()
	if n.Mount != "" {
		t.Fatalf("netns %s has its own mount namespace already", n.Name)
	}
	if err := privateDir(mountNSDir); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(mountNSDir, n.Name)
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("unshare", "--mount="+file, "--propagation=private", "true").CombinedOutput(); err != nil {
		os.Remove(file)
		t.Fatalf("unshare --mount=%s: %v: %s", file, err, out)
	}
	var created []string
	t.Cleanup(func() {
		if err := removeMountNS(file); err != nil {
			t.Errorf("mount namespace of %s: %v", n.Name, err)
		}
		mountPoints.Lock()
		defer mountPoints.Unlock()
		for i := len(created) - 1; i >= 0; i-- {
			p := created[i]
			if mountPoints.users[p]--; mountPoints.users[p] == 0 {
				delete(mountPoints.users, p)
				_ = os.Remove(p) // only if empty: never what a real tool left there
			}
		}
	})
	n.Mount = file
	for _, hp := range paths {
		mountPoints.Lock()
		if mountPoints.users == nil {
			mountPoints.users = map[string]int{}
		}
		made, err := mkdirAllRecording(hp.Path)
		for _, d := range made {
			mountPoints.users[d]++
		}
		for d := range mountPoints.users {
			if strings.HasPrefix(hp.Path+"/", d+"/") && !contains(made, d) {
				mountPoints.users[d]++
				made = append(made, d)
			}
		}
		created = append(created, made...)
		mountPoints.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"--mount=" + file, "--", "mount"}
		if hp.FSType != "" {
			args = append(args, "-t", hp.FSType, hp.FSType, hp.Path)
		} else {
			if err := os.MkdirAll(hp.Dir, 0o755); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--bind", hp.Dir, hp.Path)
		}
		if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
			t.Fatalf("%s: mount %s in its mount namespace: %v: %s", n.Name, hp.Path, err, out)
		}
	}
	// Shared inside the namespace (new peer groups, nothing reaches the
	// machine's): a runtime propagates mounts made later, e.g. pod netns
	// under /var/run/netns, into containers that mount a host path with
	// HostToContainer propagation, and refuses a private source.
	if out, err := exec.Command("nsenter", "--mount="+file, "--", "mount", "--make-rshared", "/").CombinedOutput(); err != nil {
		t.Fatalf("%s: mount --make-rshared / in its mount namespace: %v: %s", n.Name, err, out)
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// mkdirAllRecording is os.MkdirAll returning the directories it created,
// parents first.
func mkdirAllRecording(p string) ([]string, error) {
	var missing []string
	for d := filepath.Clean(p); d != "/"; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append([]string{d}, missing...)
	}
	for _, d := range missing {
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return nil, err
		}
	}
	return missing, nil
}

// privateDir makes dir a private mount of itself, once.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if isMountPoint(dir) {
		return nil
	}
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	if err := syscall.Mount("", dir, "", syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make %s private: %w", dir, err)
	}
	return nil
}

func isMountPoint(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// removeMountNS drops the file keeping a mount namespace alive; the
// namespace, with every mount made in it, goes with its last process.
func removeMountNS(file string) error {
	if err := syscall.Unmount(file, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL && err != syscall.ENOENT {
		return fmt.Errorf("umount %s: %w", file, err)
	}
	if err := os.Remove(file); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// sweepMountNS removes mount namespace files of dead test processes.
func sweepMountNS(logf func(format string, args ...any)) {
	files, _ := filepath.Glob(filepath.Join(mountNSDir, namePrefix+"*"))
	for _, f := range files {
		if ownerAlive(filepath.Base(f)) {
			continue
		}
		if err := removeMountNS(f); err != nil {
			logf("harness: removing leftover mount namespace %s: %v", f, err)
			continue
		}
		logf("harness: removed leftover mount namespace %s of a dead test process", f)
	}
}
