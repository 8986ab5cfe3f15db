package bootstrap

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
)

const (
	build      = "1.2.0"
	pluginBin  = "nsx plugin 1.2.0\x00\x01"
	loopBin    = "loopback plugin\x00"
	testSocket = "/run/test/cni.sock"
)

// fakeRunner records commands instead of running apparmor_parser.
type fakeRunner struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeRunner) Run(_ context.Context, name string, args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name+" "+strings.Join(args, " "))
	return nil
}

func (f *fakeRunner) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// host is a temp host root plus the image files and the fakes one run uses.
type host struct {
	root, src string
	runner    *fakeRunner
	logs      *observer.ObservedLogs
	log       *zap.Logger
}

func newHost(t *testing.T, osRelease string, apparmor bool) *host {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	h := &host{root: filepath.Join(t.TempDir(), "host"), src: t.TempDir(), runner: &fakeRunner{}, logs: logs, log: zap.New(core)}
	h.write(t, "/etc/os-release", osRelease, 0o644)
	enabled := "N\n"
	if apparmor {
		enabled = "Y\n"
	}
	h.write(t, "/sys/module/apparmor/parameters/enabled", enabled, 0o644)
	for name, content := range map[string]string{"nsx": pluginBin, "loopback": loopBin} {
		if err := os.WriteFile(filepath.Join(h.src, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

const ubuntu = "NAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n"

func (h *host) opts() Options {
	return Options{HostRoot: h.root, PluginSource: filepath.Join(h.src, "nsx"), LoopbackSource: filepath.Join(h.src, "loopback"),
		Socket: testSocket, MTU: 1450, BuildVersion: build, Runner: h.runner, Log: h.log}
}

func (h *host) path(p string) string { return filepath.Join(h.root, p) }

func (h *host) write(t *testing.T, p, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(h.path(p)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.path(p), []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func (h *host) read(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(h.path(p))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func (h *host) install(t *testing.T, o Options) []Change {
	t.Helper()
	cs, err := Install(context.Background(), o)
	if err != nil {
		t.Fatalf("Install: %v", err)
	}
	return cs
}

// installedVersion is the nsxBuildVersion of the host's conflist.
func (h *host) installedVersion(t *testing.T) string {
	t.Helper()
	var c struct{ NSXBuildVersion string }
	if err := json.Unmarshal([]byte(h.read(t, ConflistPath)), &c); err != nil {
		t.Fatal(err)
	}
	return c.NSXBuildVersion
}

// snapshot lists every file under root with its mode, inode and content, so
// two equal snapshots mean nothing was written, replaced or removed.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files[rel] = fmt.Sprintf("%v ino=%d %q", fi.Mode(), fi.Sys().(*syscall.Stat_t).Ino, data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func sameSnapshot(t *testing.T, before, after map[string]string) {
	t.Helper()
	for p, b := range before {
		if a, ok := after[p]; !ok {
			t.Errorf("%s was removed", p)
		} else if a != b {
			t.Errorf("%s changed:\n before %s\n after  %s", p, b, a)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s was created", p)
		}
	}
}

// noTempFiles fails if an atomic write left a temp file anywhere.
func noTempFiles(t *testing.T, root string) {
	t.Helper()
	for p := range snapshot(t, root) {
		if strings.Contains(filepath.Base(p), ".tmp-") {
			t.Errorf("temp file left behind: %s", p)
		}
	}
}

func summary(cs []Change) []string {
	s := make([]string, len(cs))
	for i, c := range cs {
		s[i] = string(c.Action) + " " + c.Path
	}
	return s
}

func equal(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got  %q\n want %q", what, got, want)
	}
}

var freshInstall = []string{
	"write " + ManifestPath,
	"write " + PluginPath,
	"write " + LoopbackPath,
	"write " + ProfilePath,
	"write " + LoopbackConfPath,
	"write " + ConflistPath,
	"load-apparmor-profile " + ProfilePath,
}

// olderInstall puts an older package-based install on h.
func olderInstall(t *testing.T, h *host) {
	h.write(t, ConflistPath, `{"cniVersion":"0.3.1","name":"nsx","nsxBuildVersion":"1.1.9","plugins":[{"type":"nsx"}]}`, 0o644)
	h.write(t, PluginPath, "nsx plugin 1.1.9", 0o755)
	h.write(t, ProfilePath, "profile node-agent-apparmor {}\n", 0o644)
	h.write(t, "/etc/cni/net.d/10-nsx.conf", `{"cniVersion":"0.3.1","name":"nsx","type":"nsx"}`, 0o644)
}

func TestInstall(t *testing.T) {
	upgraded := func(t *testing.T, h *host) {
		if got := h.read(t, PluginPath); got != pluginBin {
			t.Errorf("plugin = %q, want the image's", got)
		}
		if v := h.installedVersion(t); v != build {
			t.Errorf("installed version %q, want %s", v, build)
		}
		if got := h.read(t, ProfilePath); got != string(Profile) {
			t.Errorf("profile not replaced: %q", got)
		}
	}
	malformed := func(t *testing.T, h *host) {
		upgraded(t, h)
		warned := h.logs.FilterMessageSnippet("malformed").FilterField(zap.String("file", h.path(ConflistPath)))
		if warned.Len() != 1 || warned.All()[0].Level != zapcore.WarnLevel {
			t.Errorf("want one warning naming %s, got %v", h.path(ConflistPath), h.logs.All())
		}
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, h *host)
		want  []string // changes, "action path"
		check func(t *testing.T, h *host)
	}{{
		name: "fresh install",
		want: freshInstall,
		check: func(t *testing.T, h *host) {
			for p, mode := range map[string]fs.FileMode{PluginPath: 0o755, LoopbackPath: 0o755, ProfilePath: 0o644,
				LoopbackConfPath: 0o644, ConflistPath: 0o644, ManifestPath: 0o644} {
				if fi, err := os.Stat(h.path(p)); err != nil || fi.Mode() != mode {
					t.Errorf("%s: %v, mode %v, want %v", p, err, fi.Mode(), mode)
				}
			}
			upgraded(t, h)
			if got := h.read(t, LoopbackPath); got != loopBin {
				t.Errorf("loopback = %q", got)
			}
			var m manifest
			if err := json.Unmarshal([]byte(h.read(t, ManifestPath)), &m); err != nil {
				t.Fatal(err)
			}
			equal(t, "manifest", m.Files, []string{PluginPath, LoopbackPath, ProfilePath, LoopbackConfPath, ConflistPath})
			equal(t, "apparmor_parser", h.runner.Calls(), []string{"apparmor_parser -r " + h.path(ProfilePath)})
		},
	}, {
		name: "newer installed is untouched",
		setup: func(t *testing.T, h *host) {
			h.write(t, ConflistPath, `{"cniVersion":"1.1.0","name":"nsx","nsxBuildVersion":"1.10.0","plugins":[{"type":"nsx"}]}`, 0o644)
			h.write(t, PluginPath, "nsx plugin 1.10.0", 0o755)
			h.write(t, "/etc/cni/net.d/10-nsx.conf", "{}", 0o644)
		},
		want: []string{},
		check: func(t *testing.T, h *host) {
			if len(h.runner.Calls()) != 0 {
				t.Errorf("apparmor_parser called: %q", h.runner.Calls())
			}
			if h.logs.FilterMessageSnippet("newer").Len() != 1 {
				t.Errorf("no log about the newer install: %v", h.logs.All())
			}
		},
	}, {
		name:  "older installed is upgraded",
		setup: olderInstall,
		want: []string{"write " + ManifestPath, "remove /etc/cni/net.d/10-nsx.conf", "write " + PluginPath, "write " + LoopbackPath,
			"write " + ProfilePath, "write " + LoopbackConfPath, "write " + ConflistPath, "load-apparmor-profile " + ProfilePath},
		check: func(t *testing.T, h *host) {
			upgraded(t, h)
			if _, err := os.Stat(h.path("/etc/cni/net.d/10-nsx.conf")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("legacy 10-nsx.conf not removed: %v", err)
			}
		},
	}, {
		name: "equal version is untouched",
		setup: func(t *testing.T, h *host) {
			h.install(t, h.opts())
		},
		want: []string{},
	}, {
		name: "equal version, mtu changed in ncp.ini: conflist rewritten",
		setup: func(t *testing.T, h *host) {
			o := h.opts()
			o.MTU = 9000
			h.install(t, o)
		},
		want: []string{"write " + ConflistPath},
		check: func(t *testing.T, h *host) {
			if !strings.Contains(h.read(t, ConflistPath), `"mtu": 1450`) {
				t.Errorf("conflist mtu not updated:\n%s", h.read(t, ConflistPath))
			}
		},
	}, {
		name: "equal version, plugin removed and chmodded profile: both restored",
		setup: func(t *testing.T, h *host) {
			h.install(t, h.opts())
			os.Remove(h.path(PluginPath))
			os.Chmod(h.path(ProfilePath), 0o600)
		},
		want: []string{"write " + PluginPath, "write " + ProfilePath, "load-apparmor-profile " + ProfilePath},
	}, {
		name: "malformed JSON conflist is replaced",
		setup: func(t *testing.T, h *host) {
			h.write(t, ConflistPath, `{"cniVersion": "1.1.0", "nsxBuildVersion": `, 0o644)
		},
		want:  freshInstall,
		check: func(t *testing.T, h *host) { malformed(t, h) },
	}, {
		name: "conflist with a bad version is replaced",
		setup: func(t *testing.T, h *host) {
			h.write(t, ConflistPath, `{"cniVersion":"1.1.0","name":"nsx","nsxBuildVersion":"v-next","plugins":[{"type":"nsx"}]}`, 0o644)
		},
		want:  freshInstall,
		check: func(t *testing.T, h *host) { malformed(t, h) },
	}, {
		name: "conflist without a version (not ours) is replaced",
		setup: func(t *testing.T, h *host) {
			h.write(t, ConflistPath, `{"cniVersion":"1.1.0","name":"nsx","plugins":[{"type":"nsx"}]}`, 0o644)
		},
		want:  freshInstall,
		check: func(t *testing.T, h *host) { malformed(t, h) },
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, ubuntu, true)
			if tc.setup != nil {
				tc.setup(t, h)
			}
			h.runner.calls = nil
			h.logs.TakeAll()
			before := snapshot(t, h.root)
			cs := h.install(t, h.opts())
			equal(t, "changes", summary(cs), tc.want)
			if len(tc.want) == 0 {
				sameSnapshot(t, before, snapshot(t, h.root))
			}
			noTempFiles(t, h.root)
			if tc.check != nil {
				tc.check(t, h)
			}
		})
	}
}

func TestForeignLoopbackKept(t *testing.T) {
	h := newHost(t, ubuntu, true)
	h.write(t, LoopbackPath, "distribution loopback", 0o755)
	h.write(t, LoopbackConfPath, `{"cniVersion":"0.3.1","name":"distro-lo","type":"loopback"}`, 0o644)
	cs := h.install(t, h.opts())
	equal(t, "changes", summary(cs), []string{"write " + ManifestPath, "write " + PluginPath,
		"write " + ProfilePath, "write " + ConflistPath, "load-apparmor-profile " + ProfilePath})
	if _, err := Cleanup(context.Background(), h.opts()); err != nil {
		t.Fatal(err)
	}
	if got := h.read(t, LoopbackPath); got != "distribution loopback" {
		t.Errorf("foreign loopback binary = %q", got)
	}
	if got := h.read(t, LoopbackConfPath); !strings.Contains(got, "distro-lo") {
		t.Errorf("foreign 99-loopback.conf = %q", got)
	}
}

func TestCleanupRemovesExactlyInstalled(t *testing.T) {
	h := newHost(t, ubuntu, true)
	// Files of others, in the directories the bootstrap writes to.
	h.write(t, "/opt/cni/bin/bridge", "bridge", 0o755)
	h.write(t, "/etc/cni/net.d/20-other.conflist", "{}", 0o644)
	h.write(t, "/etc/apparmor.d/usr.sbin.tcpdump", "profile tcpdump {}", 0o644)
	h.write(t, "/var/lib/nsx-ujo/node-if.journal", "{}", 0o600)
	before := snapshot(t, h.root)

	h.install(t, h.opts())
	cs, err := Cleanup(context.Background(), h.opts())
	if err != nil {
		t.Fatal(err)
	}
	equal(t, "cleanup", summary(cs), []string{"unload-apparmor-profile " + ProfilePath, "remove " + ConflistPath,
		"remove " + LoopbackConfPath, "remove " + ProfilePath, "remove " + LoopbackPath, "remove " + PluginPath, "remove " + ManifestPath})
	equal(t, "apparmor_parser", h.runner.Calls(), []string{"apparmor_parser -r " + h.path(ProfilePath), "apparmor_parser -R " + h.path(ProfilePath)})
	sameSnapshot(t, before, snapshot(t, h.root))

	// A second cleanup has no manifest and does nothing.
	if cs, err := Cleanup(context.Background(), h.opts()); err != nil || len(cs) != 0 {
		t.Errorf("second cleanup = %v, %v", summary(cs), err)
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, h *host)
		run   func(o Options) ([]Change, error)
	}{
		{"fresh install", nil, func(o Options) ([]Change, error) { return Install(context.Background(), o) }},
		{"upgrade", olderInstall, func(o Options) ([]Change, error) { return Install(context.Background(), o) }},
		{"cleanup", func(t *testing.T, h *host) { h.install(t, h.opts()) }, func(o Options) ([]Change, error) { return Cleanup(context.Background(), o) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, ubuntu, true)
			if tc.setup != nil {
				tc.setup(t, h)
			}
			h.runner.calls = nil
			before := snapshot(t, h.root)
			o := h.opts()
			o.DryRun = true
			cs, err := tc.run(o)
			if err != nil {
				t.Fatal(err)
			}
			if len(cs) == 0 {
				t.Error("dry run reported no changes")
			}
			if h.logs.FilterMessage("dry run: would change").Len() != len(cs) {
				t.Errorf("want one log per change, got %v", h.logs.All())
			}
			sameSnapshot(t, before, snapshot(t, h.root))
			if calls := h.runner.Calls(); len(calls) != 0 {
				t.Errorf("dry run ran %q", calls)
			}
		})
	}
}

func TestAppArmor(t *testing.T) {
	tests := []struct {
		name        string
		osRelease   string
		enabled     bool
		wantProfile bool
		wantCalls   bool     // apparmor_parser -r on install, -R on cleanup
		wantLog     []string // a message snippet and its level
	}{
		{"Ubuntu, enabled", ubuntu, true, true, true, nil},
		{"Ubuntu derivative, enabled", "ID=pop\nID_LIKE=\"ubuntu debian\"\n", true, true, true, nil},
		{"Ubuntu, disabled", ubuntu, false, true, false, []string{"AppArmor is not enabled on this host", "warn"}},
		{"Debian, disabled", "ID=debian\n", false, false, false, []string{"host is not Ubuntu", "info"}},
		{"Debian, enabled", "ID=debian\n", true, false, false, []string{"AppArmor is enabled but the host is not Ubuntu", "warn"}},
		{"no os-release", "", false, false, false, []string{"host is not Ubuntu", "info"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, tc.osRelease, tc.enabled)
			if tc.osRelease == "" {
				os.Remove(h.path("/etc/os-release"))
			}
			h.install(t, h.opts())
			if _, err := os.Stat(h.path(ProfilePath)); (err == nil) != tc.wantProfile {
				t.Errorf("profile file present = %v, want %v", err == nil, tc.wantProfile)
			}
			if _, err := Cleanup(context.Background(), h.opts()); err != nil {
				t.Fatal(err)
			}
			var want []string
			if tc.wantCalls {
				want = []string{"apparmor_parser -r " + h.path(ProfilePath), "apparmor_parser -R " + h.path(ProfilePath)}
			}
			equal(t, "apparmor_parser", h.runner.Calls(), want)
			if tc.wantLog != nil {
				logs := h.logs.FilterMessageSnippet(tc.wantLog[0]).All()
				if len(logs) == 0 || logs[0].Level.String() != tc.wantLog[1] {
					t.Errorf("want a %s log %q, got %v", tc.wantLog[1], tc.wantLog[0], h.logs.All())
				}
			}
		})
	}

	t.Run("ReloadProfile reloads an unchanged profile", func(t *testing.T) {
		h := newHost(t, ubuntu, true)
		h.install(t, h.opts())
		h.install(t, h.opts())
		o := h.opts()
		o.ReloadProfile = true
		equal(t, "changes", summary(h.install(t, o)), []string{"load-apparmor-profile " + ProfilePath})
		equal(t, "apparmor_parser", h.runner.Calls(), []string{"apparmor_parser -r " + h.path(ProfilePath), "apparmor_parser -r " + h.path(ProfilePath)})
	})
}

func TestInstallFailureKeepsOldFiles(t *testing.T) {
	h := newHost(t, ubuntu, true)
	olderInstall(t, h)
	o := h.opts()
	o.PluginSource = h.src // a directory: opens, then fails to read
	_, err := Install(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), h.path(PluginPath)) {
		t.Fatalf("Install with an unreadable plugin source = %v, want an error naming %s", err, h.path(PluginPath))
	}
	if got := h.read(t, PluginPath); got != "nsx plugin 1.1.9" {
		t.Errorf("old plugin damaged: %q", got)
	}
	// The conflist comes last: it still says 1.1.9, so the next run retries.
	if v := h.installedVersion(t); v != "1.1.9" {
		t.Errorf("conflist version %q after a failed install", v)
	}
	noTempFiles(t, h.root)
}

func TestBadBuildVersion(t *testing.T) {
	h := newHost(t, ubuntu, true)
	o := h.opts()
	o.BuildVersion = "dev"
	if _, err := Install(context.Background(), o); err == nil || !strings.Contains(err.Error(), `"dev"`) {
		t.Errorf("Install with build version dev = %v", err)
	}
}

func TestConflistParses(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    ConflistOptions
		// cniVersion and cniVersions in the file; what libcni v1.2+ picks.
		version  string
		versions []string
		picked   string
	}{
		{"auto, chain answers 1.1.0", ConflistOptions{CNIVersion: "auto", ChainSupports11: true}, "1.0.0", []string{"1.0.0", "1.1.0"}, "1.1.0"},
		{"auto, old loopback", ConflistOptions{CNIVersion: "auto"}, "1.0.0", nil, "1.0.0"},
		{"zero value is auto", ConflistOptions{ChainSupports11: true}, "1.0.0", []string{"1.0.0", "1.1.0"}, "1.1.0"},
		{"pinned 0.3.1", ConflistOptions{CNIVersion: "0.3.1", ChainSupports11: true}, "0.3.1", nil, "0.3.1"},
		{"pinned 1.1.0", ConflistOptions{CNIVersion: "1.1.0"}, "1.1.0", nil, "1.1.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			o.BuildVersion, o.Socket, o.MTU = build, testSocket, 1450
			data := Conflist(o)
			list, err := libcni.ConfListFromBytes(data)
			if err != nil {
				t.Fatalf("libcni: %v\n%s", err, data)
			}
			if list.Name != NetworkName || list.CNIVersion != tc.picked || len(list.Plugins) != 2 ||
				list.Plugins[0].Network.Type != "nsx" || !list.Plugins[0].Network.Capabilities["portMappings"] ||
				list.Plugins[1].Network.Type != "loopback" {
				t.Fatalf("conflist = %+v", list)
			}
			var top struct {
				CNIVersion      string
				CNIVersions     []string
				NSXBuildVersion string
			}
			if err := json.Unmarshal(data, &top); err != nil || top.NSXBuildVersion != build ||
				top.CNIVersion != tc.version || !slices.Equal(top.CNIVersions, tc.versions) {
				t.Fatalf("top level = %+v, %v", top, err)
			}
			// What the runtime hands the plugin: its entry with name and cniVersion injected.
			pc, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
			if err != nil {
				t.Fatal(err)
			}
			nc, err := cniwire.ParseNetConf(pc.Bytes)
			if err != nil {
				t.Fatalf("cniwire: %v", err)
			}
			if nc.SocketPath() != testSocket {
				t.Errorf("socket = %q", nc.SocketPath())
			}
			var mtu struct{ MTU int }
			if err := json.Unmarshal(pc.Bytes, &mtu); err != nil || mtu.MTU != 1450 {
				t.Errorf("mtu = %d, %v", mtu.MTU, err)
			}
		})
	}
	if _, err := libcni.ConfFromBytes([]byte(loopbackConf)); err != nil {
		t.Errorf("99-loopback.conf: %v", err)
	}
}

// fakeCNIPlugin is an executable that answers CNI VERSION with versions.
func fakeCNIPlugin(versions string) string {
	return "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[" + versions + "]}'\n"
}

// conflistVersions is the cniVersion and cniVersions of the host's conflist.
func (h *host) conflistVersions(t *testing.T) (string, []string) {
	t.Helper()
	var c struct {
		CNIVersion  string
		CNIVersions []string
	}
	if err := json.Unmarshal([]byte(h.read(t, ConflistPath)), &c); err != nil {
		t.Fatal(err)
	}
	return c.CNIVersion, c.CNIVersions
}

// The conflist offers CNI 1.1.0 only when the loopback that will run in
// the chain answers it: the node's own (kept) where it has one, else ours.
func TestInstallOffersCNI11OnlyWhenTheChainAnswersIt(t *testing.T) {
	const v11, v10 = `"0.3.1","0.4.0","1.0.0","1.1.0"`, `"0.3.1","0.4.0","1.0.0"`
	for _, tc := range []struct {
		name           string
		hostLoopback   string // "" = none on the node
		imageLoopback  string
		cniVersion     string
		wantVersion    string
		wantVersions   []string
		wantLogMessage string
	}{
		{"node loopback answers 1.1.0", fakeCNIPlugin(v11), loopBin, "", "1.0.0", []string{"1.0.0", "1.1.0"}, ""},
		{"node loopback older (plugins < 1.5)", fakeCNIPlugin(v10), fakeCNIPlugin(v11), "", "1.0.0", nil, "does not answer CNI 1.1.0"},
		{"ours installed, answers 1.1.0", "", fakeCNIPlugin(v11), "", "1.0.0", []string{"1.0.0", "1.1.0"}, ""},
		{"loopback cannot run", "", loopBin, "", "1.0.0", nil, "cannot ask the loopback CNI plugin"},
		{"pinned, not asked", "", loopBin, "0.4.0", "0.4.0", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHost(t, ubuntu, true)
			if tc.hostLoopback != "" {
				h.write(t, LoopbackPath, tc.hostLoopback, 0o755)
			}
			if err := os.WriteFile(filepath.Join(h.src, "loopback"), []byte(tc.imageLoopback), 0o755); err != nil {
				t.Fatal(err)
			}
			o := h.opts()
			o.CNIVersion = tc.cniVersion
			h.install(t, o)
			v, vs := h.conflistVersions(t)
			if v != tc.wantVersion || !slices.Equal(vs, tc.wantVersions) {
				t.Errorf("conflist cniVersion %q cniVersions %v, want %q %v", v, vs, tc.wantVersion, tc.wantVersions)
			}
			if tc.wantLogMessage != "" && h.logs.FilterMessageSnippet(tc.wantLogMessage).Len() == 0 {
				t.Errorf("no log saying %q: %v", tc.wantLogMessage, h.logs.All())
			}
		})
	}
}

// A node set up by a build that wrote "cniVersion": "1.1.0" (unreadable by
// containerd 1.6/1.7) gets the new file, whether the build version went up
// or stayed the same.
func TestUpgradeReplacesCNI11Conflist(t *testing.T) {
	old := func(buildVersion string) string {
		return `{"cniVersion":"1.1.0","cniVersions":["1.0.0","1.1.0"],"name":"nsx","nsxBuildVersion":"` + buildVersion +
			`","plugins":[{"type":"nsx","socket":"` + testSocket + `","mtu":1450},{"type":"loopback"}]}`
	}
	for _, installed := range []string{"1.1.9", build} {
		t.Run("installed "+installed, func(t *testing.T) {
			h := newHost(t, ubuntu, true)
			h.install(t, h.opts())
			h.write(t, ConflistPath, old(installed), 0o644)
			cs := h.install(t, h.opts())
			if !slices.Contains(summary(cs), "write "+ConflistPath) {
				t.Errorf("changes %v do not rewrite the conflist", summary(cs))
			}
			if v, _ := h.conflistVersions(t); v != "1.0.0" || h.installedVersion(t) != build {
				t.Errorf("conflist after upgrade: %s", h.read(t, ConflistPath))
			}
			// And a second run leaves it alone.
			if cs := h.install(t, h.opts()); len(cs) != 0 {
				t.Errorf("second install changed %v", summary(cs))
			}
		})
	}
}

func TestBadCNIVersion(t *testing.T) {
	h := newHost(t, ubuntu, true)
	o := h.opts()
	o.CNIVersion = "1.2.0"
	if _, err := Install(context.Background(), o); err == nil || !strings.Contains(err.Error(), `cni_version "1.2.0"`) {
		t.Errorf("Install with cni_version 1.2.0 = %v", err)
	}
	if _, err := os.Stat(h.path(ConflistPath)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a conflist was written: %v", err)
	}
}

func TestProfileMatchesDeploy(t *testing.T) {
	deployed, err := os.ReadFile("../../deploy/apparmor/ncp-apparmor")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(deployed, Profile) {
		t.Error("deploy/apparmor/ncp-apparmor differs from pkg/bootstrap/assets/ncp-apparmor: copy one over the other")
	}
	if !bytes.Contains(Profile, []byte("\nprofile "+ProfileName+" ")) {
		t.Errorf("the profile does not declare %s", ProfileName)
	}
}

func TestMonitorRepairs(t *testing.T) {
	h := newHost(t, ubuntu, true)
	o := h.opts()
	o.ReloadProfile = true // Monitor must turn it off
	h.install(t, o)
	for _, p := range []string{PluginPath, LoopbackConfPath} {
		if err := os.Remove(h.path(p)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Monitor(ctx, o, 10*time.Millisecond) }()
	deadline := time.Now().Add(10 * time.Second)
	for h.logs.FilterMessage("repaired installed files").Len() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := h.read(t, PluginPath); got != pluginBin {
		t.Errorf("plugin not restored: %q", got)
	}
	if got := h.read(t, LoopbackConfPath); got != loopbackConf {
		t.Errorf("99-loopback.conf not restored: %q", got)
	}
	equal(t, "apparmor_parser", h.runner.Calls(), []string{"apparmor_parser -r " + h.path(ProfilePath)})
	if h.logs.FilterMessage("repaired installed files").Len() != 1 {
		t.Errorf("want exactly one repair, got %v", h.logs.FilterMessage("repaired installed files").All())
	}
}

// The monitor asks the loopback plugin its versions once, and again only
// when the binary changes: no exec every interval.
func TestMonitorProbesLoopbackOnlyWhenItChanges(t *testing.T) {
	h := newHost(t, ubuntu, false)
	calls := filepath.Join(t.TempDir(), "calls")
	script := func(versions string) string {
		return "#!/bin/sh\ncat >/dev/null\necho x >> " + calls + "\necho '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[" + versions + "]}'\n"
	}
	h.write(t, LoopbackPath, script(`"1.0.0","1.1.0"`), 0o755)
	count := func() int {
		b, _ := os.ReadFile(calls)
		return strings.Count(string(b), "x")
	}
	run := func(d time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		if err := Monitor(ctx, h.opts(), 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	run(300 * time.Millisecond)
	if n := count(); n != 1 {
		t.Fatalf("loopback asked %d times over many intervals, want 1", n)
	}
	if _, vs := h.conflistVersions(t); !slices.Equal(vs, []string{"1.0.0", "1.1.0"}) {
		t.Fatalf("cniVersions %v", vs)
	}
	// After the loopback changed (older plugins), the conflist follows.
	h.write(t, LoopbackPath, script(`"1.0.0"`)+"# changed\n", 0o755)
	run(300 * time.Millisecond)
	if n := count(); n != 2 {
		t.Fatalf("loopback asked %d times after it changed, want 2", n)
	}
	if _, vs := h.conflistVersions(t); vs != nil {
		t.Fatalf("cniVersions %v after the loopback lost 1.1.0", vs)
	}
}
