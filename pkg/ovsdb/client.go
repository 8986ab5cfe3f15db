// Package ovsdb is nsx-ujo's access to the Open vSwitch database, shared by
// the node agent, nsx-kube-proxy and nsx-ovs: a libovsdb client on one
// persistent unix-socket connection (no process start per operation), a
// monitor-backed cache of the few tables and columns nsx-ujo uses, and typed
// helpers for bridges and ports.
//
// Reads (GetPort, ListPorts, GetBridge) come from the cache and cost no round
// trip. Writes are one OVSDB transaction each; every per-operation result is
// checked (libovsdb's CheckOperationResults), so a refused insert or wait is
// an error, and a transaction that needs ovs-vswitchd to act (a port, a
// bridge) returns once the cache shows vswitchd applied it (cur_cfg), as
// ovs-vsctl does without --no-wait.
package ovsdb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"github.com/ovn-org/libovsdb/cache"
	"github.com/ovn-org/libovsdb/client"
	"github.com/ovn-org/libovsdb/model"
	libovsdb "github.com/ovn-org/libovsdb/ovsdb"
	"go.uber.org/zap"
)

// Options configures a Client.
type Options struct {
	// Timeout bounds the connect and each call that has no earlier context
	// deadline (ncp.ini ovs_operation_timeout). Default 10 s.
	Timeout time.Duration
	// Logger receives libovsdb's own logs (reconnects); nil discards them.
	Logger *zap.Logger
}

// Client is a connection to ovsdb-server with a cache of the rows nsx-ujo
// uses. It is safe for concurrent use. After ovsdb-server restarts the
// client reconnects by itself and refills the cache; calls made meanwhile
// wait for the reconnect within their deadline.
type Client struct {
	db      client.Client
	timeout time.Duration

	mu      sync.Mutex
	changed chan struct{} // closed (and replaced) on every cache change
}

// Dial connects to the OVSDB unix socket at path and fills the cache.
func Dial(path string, opts Options) (*Client, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	log := logr.Discard()
	if opts.Logger != nil {
		log = zapr.NewLogger(opts.Logger.Named("libovsdb"))
	}
	dbModel, err := clientModel()
	if err != nil {
		return nil, fmt.Errorf("ovsdb model: %w", err)
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 10 * time.Millisecond
	bo.MaxInterval = time.Second
	bo.MaxElapsedTime = 0 // a node's OVS comes back eventually: never give up
	db, err := client.NewOVSDBClient(dbModel,
		client.WithEndpoint("unix:"+path),
		client.WithLeaderOnly(false),
		client.WithReconnect(opts.Timeout, bo),
		client.WithLogger(&log))
	if err != nil {
		return nil, fmt.Errorf("ovsdb %s: %w", path, err)
	}
	c := &Client{db: db, timeout: opts.Timeout, changed: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	if err := db.Connect(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("ovsdb %s: %w", path, err)
	}
	notify := func(string, model.Model) { c.notify() }
	db.Cache().AddEventHandler(&cache.EventHandlerFuncs{
		AddFunc:    notify,
		DeleteFunc: notify,
		UpdateFunc: func(table string, _, m model.Model) { c.notify() },
	})
	var (
		root  OpenvSwitch
		br    BridgeRow
		port  PortRow
		iface InterfaceRow
	)
	mon := db.NewMonitor(
		client.WithTable(&root, &root.Bridges, &root.NextCfg, &root.CurCfg, &root.OtherConfig),
		client.WithTable(&br, &br.Name, &br.DatapathType, &br.Ports, &br.OtherConfig),
		client.WithTable(&port, &port.Name, &port.Interfaces, &port.Tag, &port.ExternalIDs),
		// Not statistics: they change every few seconds on every port.
		client.WithTable(&iface, &iface.Name, &iface.Type, &iface.OFPort, &iface.Error, &iface.MTURequest, &iface.ExternalIDs),
	)
	if _, err := db.Monitor(ctx, mon); err != nil {
		db.Close()
		return nil, fmt.Errorf("ovsdb %s: monitor: %w", path, err)
	}
	return c, nil
}

// Close closes the connection. The client must not be used afterwards.
func (c *Client) Close() error {
	c.db.Close()
	return nil
}

func (c *Client) notify() {
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// waitFor returns once cond (read from the cache) holds, or with the
// context's error. cond is evaluated again after every cache change.
func (c *Client) waitFor(ctx context.Context, cond func() bool) error {
	for {
		c.mu.Lock()
		ch := c.changed
		c.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

func (c *Client) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// Ping checks that the server answers.
func (c *Client) Ping(ctx context.Context) error {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	if err := c.db.Echo(ctx); err != nil {
		return fmt.Errorf("ovsdb echo: %w", err)
	}
	return nil
}

// TxError is a transaction OVSDB refused. Nothing of it was committed.
type TxError struct {
	Op      int    // index of the failing op; len(ops) for a commit failure
	OpName  string // "insert", "wait", ... or "commit"
	Err     string // OVSDB error tag, e.g. "constraint violation", "timed out"
	Details string
}

func (e *TxError) Error() string {
	msg := fmt.Sprintf("ovsdb transaction failed at %s (op %d): %s", e.OpName, e.Op, e.Err)
	if e.Details != "" {
		msg += ": " + e.Details
	}
	return msg
}

// Transact runs ops atomically. It returns the per-op results, or a
// *TxError naming the first operation OVSDB refused.
func (c *Client) Transact(ctx context.Context, ops ...libovsdb.Operation) ([]libovsdb.OperationResult, error) {
	ctx, cancel := c.withTimeout(ctx)
	defer cancel()
	res, err := c.db.Transact(ctx, ops...)
	if err != nil {
		return nil, fmt.Errorf("ovsdb transact: %w", err)
	}
	if _, err := libovsdb.CheckOperationResults(res, ops); err != nil {
		for i, r := range res {
			if r.Error == "" {
				continue
			}
			name := "commit"
			if i < len(ops) {
				name = ops[i].Op
			}
			return nil, &TxError{Op: i, OpName: name, Err: r.Error, Details: r.Details}
		}
		return nil, fmt.Errorf("ovsdb transact: %w", err)
	}
	return res, nil
}

// API is libovsdb's operation builder over this client's cache, for
// transactions the helpers here do not cover.
func (c *Client) API() client.API { return c.db }

// root returns the Open_vSwitch table's single row from the cache.
func (c *Client) root() (*OpenvSwitch, error) {
	var rows []OpenvSwitch
	if err := c.db.List(context.Background(), &rows); err != nil {
		return nil, fmt.Errorf("ovsdb Open_vSwitch: %w", err)
	}
	if len(rows) == 0 {
		return nil, errors.New("ovsdb: Open_vSwitch table has no row (run ovs-vsctl init)")
	}
	return &rows[0], nil
}

// SwitchOtherConfig returns Open_vSwitch other_config (from the cache).
func (c *Client) SwitchOtherConfig() (map[string]string, error) {
	r, err := c.root()
	if err != nil {
		return nil, err
	}
	return r.OtherConfig, nil
}

func comment(text string) libovsdb.Operation {
	return libovsdb.Operation{Op: libovsdb.OperationComment, Comment: &text}
}

// txn collects the operations of one transaction from libovsdb's
// builders, keeping the first builder error.
type txn struct {
	ops []libovsdb.Operation
	err error
}

func (t *txn) add(ops []libovsdb.Operation, err error) {
	if t.err == nil && err != nil {
		t.err = err
	}
	t.ops = append(t.ops, ops...)
}
