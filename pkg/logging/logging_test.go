package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"k8s.io/klog/v2"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
)

func decode(t *testing.T, data []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("not JSON: %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestJSONAndLevel(t *testing.T) {
	for _, debug := range []bool{false, true} {
		var buf bytes.Buffer
		log, err := New(config.Default{Debug: debug}, "nsx-node-agent", Options{Stderr: &buf})
		if err != nil {
			t.Fatal(err)
		}
		log.Debug("dbg")
		log.Info("hello", zap.Int("k", 1))
		entries := decode(t, buf.Bytes())
		if want := map[bool]int{false: 1, true: 2}[debug]; len(entries) != want {
			t.Fatalf("debug=%v: %d entries, want %d: %s", debug, len(entries), want, buf.Bytes())
		}
		last := entries[len(entries)-1]
		if last["component"] != "nsx-node-agent" || last["level"] != "info" || last["msg"] != "hello" {
			t.Errorf("entry %v", last)
		}
		if debug && entries[0]["level"] != "debug" {
			t.Errorf("entry %v", entries[0])
		}
	}
}

func TestConsole(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(config.Default{}, "nsx-kube-proxy", Options{Stderr: &buf, ForceConsole: true})
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hello")
	if s := buf.String(); strings.HasPrefix(s, "{") || !strings.Contains(s, "INFO") || !strings.Contains(s, `"component": "nsx-kube-proxy"`) {
		t.Errorf("console output %q", s)
	}
	if _, err := New(config.Default{}, "x", Options{ForceConsole: true, ForceJSON: true}); err == nil {
		t.Error("ForceConsole with ForceJSON accepted")
	}
}

func TestLogFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "logs")
	for _, tc := range []struct{ file, want string }{{"", "nsx-cni.log"}, {"custom.log", "custom.log"}} {
		var buf bytes.Buffer
		log, err := New(config.Default{LogDir: dir, LogFile: tc.file}, "nsx-cni", Options{Stderr: &buf, ForceConsole: true})
		if err != nil {
			t.Fatal(err)
		}
		log.Info("to file")
		_ = log.Sync()
		data, err := os.ReadFile(filepath.Join(dir, tc.want))
		if err != nil {
			t.Fatal(err)
		}
		entries := decode(t, data)
		if len(entries) != 1 || entries[0]["msg"] != "to file" || entries[0]["component"] != "nsx-cni" {
			t.Errorf("file %s: %s", tc.want, data)
		}
		if !strings.Contains(buf.String(), "to file") {
			t.Errorf("stderr missing the entry: %q", buf.String())
		}
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("log dir %v, %v", fi, err)
	}
}

// TestRouteKlog: what client-go logs through klog (here as its reflector
// does on a failed list) is a JSON entry of the daemon's logger, with its
// component and the error.
func TestRouteKlog(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(config.Default{}, "nsx-kube-proxy", Options{Stderr: &buf, ForceJSON: true})
	if err != nil {
		t.Fatal(err)
	}
	RouteKlog(log)
	t.Cleanup(klog.ClearLogger)
	klog.ErrorS(errors.New(`Get "https://10.0.0.1/api/v1/services": dial tcp 10.0.0.1:443: connect: connection refused`),
		"Failed to watch", "reflector", "k8s.io/client-go/informers/factory.go:160", "type", "*v1.Service")
	klog.Flush()
	entries := decode(t, buf.Bytes())
	if len(entries) != 1 {
		t.Fatalf("want one entry, got %d: %s", len(entries), buf.String())
	}
	e := entries[0]
	if e["component"] != "nsx-kube-proxy" || e["logger"] != "client-go" || e["level"] != "error" ||
		e["msg"] != "Failed to watch" || !strings.Contains(e["error"].(string), "connection refused") || e["type"] != "*v1.Service" {
		t.Errorf("entry %v", e)
	}
}
