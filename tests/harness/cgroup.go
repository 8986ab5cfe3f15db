package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupFS is where the cgroup v1 hierarchies are mounted.
const cgroupFS = "/sys/fs/cgroup"

// cgroupPrefix starts the cgroup root of a real node (CgroupRoot): the
// sweep finds a dead test's pods by it.
const cgroupPrefix = "nsxt-"

// CgroupRoot is the cgroup root of the real node living in ns (kubelet's
// --cgroup-root): one per node and test run.
func CgroupRoot(ns *NetNS) string { return "/" + cgroupPrefix + ns.Name }

// sweepCgroups kills what runs in, and removes, the cgroup roots of real
// nodes whose test process is gone: a killed test leaves pods whose
// shims were never its children.
func sweepCgroups(logf func(format string, args ...any)) {
	entries, _ := os.ReadDir(filepath.Join(cgroupFS, "pids"))
	for _, e := range entries {
		netns, ok := strings.CutPrefix(e.Name(), cgroupPrefix)
		if !e.IsDir() || !ok || !leftoverRE.MatchString(netns) || ownerAlive(netns) {
			continue
		}
		if err := RemoveCgroups("/" + e.Name()); err != nil {
			logf("harness: removing leftover cgroups /%s: %v", e.Name(), err)
			continue
		}
		logf("harness: killed the processes of, and removed, leftover cgroups /%s of a dead test process", e.Name())
	}
}

// controllers are the cgroup v1 hierarchies mounted on this machine.
func controllers() ([]string, error) {
	entries, err := os.ReadDir(cgroupFS)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && e.Name() != "unified" {
			out = append(out, filepath.Join(cgroupFS, e.Name()))
		}
	}
	return out, nil
}

// MakeCgroups creates root in every hierarchy (kubelet requires its
// cgroup root to exist); cpuset needs its cpus and mems filled in.
func MakeCgroups(root string) error {
	ctrls, err := controllers()
	if err != nil {
		return err
	}
	for _, h := range ctrls {
		d := filepath.Join(h, root)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s/%s: %w", d, f, err)
				}
			}
		}
	}
	return nil
}

// KillCgroup SIGKILLs every process under root (a pod's containers are
// not kubelet's children, and outlive it).
func KillCgroup(root string) {
	for range 50 {
		pids := 0
		_ = filepath.WalkDir(filepath.Join(cgroupFS, "pids", root), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
					pids++
				}
			}
			return nil
		})
		if pids == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// RemoveCgroups removes root and everything below it, deepest first, in
// every hierarchy.
func RemoveCgroups(root string) error {
	KillCgroup(root)
	ctrls, err := controllers()
	if err != nil {
		return err
	}
	var errs []string
	for _, h := range ctrls {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
		for _, d := range dirs {
			var err error
			for range 20 { // a killed process leaves its cgroup a moment later
				if err = syscall.Rmdir(d); err == nil || os.IsNotExist(err) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil && !os.IsNotExist(err) {
				errs = append(errs, fmt.Sprintf("rmdir %s: %v", d, err))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("cgroups: %s", strings.Join(errs, "; "))
	}
	return nil
}
