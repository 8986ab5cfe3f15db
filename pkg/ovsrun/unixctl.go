package ovsrun

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// appctl runs one unixctl command (what ovs-appctl does) on the control
// socket ctl. A health probe every few seconds then costs one connection,
// not a process.
func appctl(ctx context.Context, ctl, method string, params ...string) (string, error) {
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
