package ovsrun

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// VSwitchdCtl is the control socket of the ovs-vswitchd of runDir: the one
// named after the pid in its pidfile, as ovs-appctl finds it, else
// ovs-vswitchd.ctl (--unixctl of hosts and tests that name it). The one
// place that finds it.
func VSwitchdCtl(runDir string) string {
	if pid, err := os.ReadFile(filepath.Join(runDir, "ovs-vswitchd.pid")); err == nil {
		ctl := filepath.Join(runDir, fmt.Sprintf("ovs-vswitchd.%s.ctl", strings.TrimSpace(string(pid))))
		if _, err := os.Stat(ctl); err == nil {
			return ctl
		}
	}
	return filepath.Join(runDir, "ovs-vswitchd.ctl")
}

// Appctl runs one unixctl command (what ovs-appctl does) on the control
// socket ctl (see VSwitchdCtl). A health probe every few seconds, or a
// conntrack flush, then costs one connection, not a process.
func Appctl(ctx context.Context, ctl, method string, params ...string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", ctl)
	if err != nil {
		return "", fmt.Errorf("unixctl %s: %w", ctl, err)
	}
	defer conn.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(5 * time.Second)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return "", err
	}
	if params == nil {
		params = []string{}
	}
	req := map[string]any{"id": 0, "method": method, "params": params}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return "", fmt.Errorf("unixctl %s %s: %w", ctl, method, err)
	}
	var resp struct {
		Result any `json:"result"`
		Error  any `json:"error"`
	}
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return "", fmt.Errorf("unixctl %s %s: %w", ctl, method, err)
	}
	if resp.Error != nil {
		return "", fmt.Errorf("unixctl %s %s: %v", ctl, method, resp.Error)
	}
	s, _ := resp.Result.(string)
	return s, nil
}
