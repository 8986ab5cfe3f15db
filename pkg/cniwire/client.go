package cniwire

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// UnreachableError says the agent socket could not be reached at all, as
// opposed to the agent answering with an error.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("nsx-node-agent not reachable on %s: %v", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Client sends requests to the agent socket. It is safe for concurrent use.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the agent on socket. There is no overall
// timeout: the agent bounds ADD itself (config_retry_timeout) and the
// runtime bounds the plugin process.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: 5 * time.Second}
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr}}
}

// Do sends one request and returns the agent's response. A non-nil error is
// either *UnreachableError or a protocol failure; an error the agent reports
// comes back in Response.Error.
func (c *Client) Do(ctx context.Context, req *Request) (*Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode %s request: %w", req.Command, err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://nsx-node-agent"+RequestPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hresp, err := c.http.Do(hreq)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" {
			return nil, &UnreachableError{Socket: c.socket, Err: oe.Err}
		}
		return nil, fmt.Errorf("%s request to nsx-node-agent on %s: %w", req.Command, c.socket, err)
	}
	defer hresp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hresp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s response from %s: %w", req.Command, c.socket, err)
	}
	var resp Response
	if err := json.Unmarshal(data, &resp); err != nil {
		return nil, fmt.Errorf("decode %s response from %s (HTTP %d): %w", req.Command, c.socket, hresp.StatusCode, err)
	}
	return &resp, nil
}
