// Package ovs is the thin access to Open vSwitch shared by the node agent,
// nsx-kube-proxy and nsx-ovs: an OVSDB client on a persistent unix-socket
// connection (no process start per operation) and typed helpers for the few
// Open_vSwitch tables nsx-ujo uses.
//
// Why not go-openvswitch's ovsdb.Client: its Transact decodes only the rows
// of select results and drops every other per-operation result, including
// the {"error": ...} object OVSDB returns for a failed insert, mutate, wait
// or commit. A failed transaction would look like success, and a failed CNI
// ADD could not roll back. OVSDB's JSON-RPC (RFC 7047) is small enough that
// owning the few lines is cheaper than that blind spot.
package ovs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"sync"
	"time"
)

// DBName is the Open vSwitch database.
const DBName = "Open_vSwitch"

// Client is a JSON-RPC connection to ovsdb-server. It is safe for concurrent
// use; calls are serialised on the one connection (each is ~0.1 ms on a unix
// socket) and the connection is redialled after an I/O failure, so a restart
// of ovsdb-server costs the callers in flight one error, not the process.
type Client struct {
	path    string
	timeout time.Duration

	mu     sync.Mutex
	conn   net.Conn
	dec    *json.Decoder
	nextID uint64
}

// Dial connects to the OVSDB unix socket at path. timeout bounds each call
// that has no earlier context deadline (ncp.ini ovs_operation_timeout).
func Dial(path string, timeout time.Duration) (*Client, error) {
	c := &Client{path: path, timeout: timeout}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.connectLocked(); err != nil {
		return nil, err
	}
	return c, nil
}

// Close closes the connection. The client must not be used afterwards.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn = nil
	return err
}

func (c *Client) connectLocked() error {
	conn, err := net.DialTimeout("unix", c.path, c.timeout)
	if err != nil {
		return fmt.Errorf("ovsdb %s: %w", c.path, err)
	}
	c.conn = conn
	c.dec = json.NewDecoder(conn)
	return nil
}

type rpcMessage struct {
	ID     any             `json:"id"`
	Method string          `json:"method,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  any             `json:"error,omitempty"`
}

// call sends one request and decodes its result into out.
func (c *Client) call(ctx context.Context, method string, params []any, out any) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	fresh := false
	if c.conn == nil {
		if err := c.connectLocked(); err != nil {
			return err
		}
		fresh = true
	}
	err := c.roundTripLocked(ctx, method, params, out)
	var ne net.Error
	if err != nil && !fresh && (errors.As(err, &ne) || errors.Is(err, net.ErrClosed) || isEOF(err)) && ctx.Err() == nil {
		// The server went away since the last call (restart): one retry on
		// a new connection. Safe for transactions too: a request that failed
		// on a dead connection was never read by the new server.
		c.conn.Close()
		c.conn = nil
		if cerr := c.connectLocked(); cerr != nil {
			return fmt.Errorf("%w (reconnect: %v)", err, cerr)
		}
		err = c.roundTripLocked(ctx, method, params, out)
	}
	return err
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func (c *Client) roundTripLocked(ctx context.Context, method string, params []any, out any) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(c.timeout)
	}
	if err := c.conn.SetDeadline(deadline); err != nil {
		return err
	}
	c.nextID++
	id := c.nextID
	if params == nil {
		params = []any{}
	}
	req := map[string]any{"id": id, "method": method, "params": params}
	buf, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("ovsdb %s: encode: %w", method, err)
	}
	if _, err := c.conn.Write(buf); err != nil {
		c.dropLocked()
		return fmt.Errorf("ovsdb %s: %w", method, err)
	}
	for {
		var m rpcMessage
		if err := c.dec.Decode(&m); err != nil {
			c.dropLocked()
			return fmt.Errorf("ovsdb %s: %w", method, err)
		}
		if m.Method == "echo" {
			// Server keepalive: answer with the same params.
			reply, _ := json.Marshal(map[string]any{"id": m.ID, "result": m.Params, "error": nil})
			if _, err := c.conn.Write(reply); err != nil {
				c.dropLocked()
				return fmt.Errorf("ovsdb echo reply: %w", err)
			}
			continue
		}
		if m.Method != "" {
			continue // notifications (update, locked ...): we hold no monitor
		}
		if f, ok := m.ID.(float64); !ok || uint64(f) != id {
			continue // a late answer to a call that timed out earlier
		}
		if m.Error != nil {
			return fmt.Errorf("ovsdb %s: %v", method, m.Error)
		}
		if out == nil {
			return nil
		}
		if err := json.Unmarshal(m.Result, out); err != nil {
			return fmt.Errorf("ovsdb %s: decode result: %w", method, err)
		}
		return nil
	}
}

func (c *Client) dropLocked() {
	if c.conn != nil {
		c.conn.Close()
	}
	// Keep c.conn non-nil so call() sees a used connection and retries;
	// the retry replaces it.
}

// Ping checks that the server answers.
func (c *Client) Ping(ctx context.Context) error {
	var dbs []string
	return c.call(ctx, "list_dbs", nil, &dbs)
}

// Op is one operation of a transaction (RFC 7047 section 5.2).
type Op map[string]any

// Row is a table row as OVSDB encodes it.
type Row map[string]any

// Cond is a where-clause condition: [column, function, value].
type Cond [3]any

// Eq is the condition column == value.
func Eq(column string, value any) Cond { return Cond{column, "==", value} }

// Includes is the condition "set column includes value".
func Includes(column string, value any) Cond { return Cond{column, "includes", value} }

func where(conds []Cond) []Cond {
	if conds == nil {
		return []Cond{}
	}
	return conds
}

// Insert inserts row into table; uuidName lets later ops of the same
// transaction refer to it with NamedUUID.
func Insert(table string, row Row, uuidName string) Op {
	op := Op{"op": "insert", "table": table, "row": row}
	if uuidName != "" {
		op["uuid-name"] = uuidName
	}
	return op
}

// Select reads columns (all when none) of the rows matching conds.
func Select(table string, conds []Cond, columns ...string) Op {
	op := Op{"op": "select", "table": table, "where": where(conds)}
	if len(columns) > 0 {
		op["columns"] = columns
	}
	return op
}

// Update sets the columns of row in every matching row.
func Update(table string, conds []Cond, row Row) Op {
	return Op{"op": "update", "table": table, "where": where(conds), "row": row}
}

// Mutation is [column, mutator, value].
type Mutation [3]any

// Mutate applies mutations to every matching row.
func Mutate(table string, conds []Cond, mutations ...Mutation) Op {
	return Op{"op": "mutate", "table": table, "where": where(conds), "mutations": mutations}
}

// Delete deletes the matching rows.
func Delete(table string, conds []Cond) Op {
	return Op{"op": "delete", "table": table, "where": where(conds)}
}

// WaitExists aborts the transaction unless a row matches conds (timeout 0:
// checked once, no waiting). It turns "mutate matched nothing" into an error.
func WaitExists(table string, conds []Cond, column string, value any) Op {
	return Op{"op": "wait", "table": table, "where": where(conds), "columns": []string{column},
		"until": "==", "rows": []Row{{column: value}}, "timeout": 0}
}

// Comment is recorded in the server's log with the transaction.
func Comment(text string) Op { return Op{"op": "comment", "comment": text} }

// OpResult is the result of one operation.
type OpResult struct {
	Rows    []Row  `json:"rows,omitempty"`
	UUID    []any  `json:"uuid,omitempty"`
	Count   int    `json:"count,omitempty"`
	Error   string `json:"error,omitempty"`
	Details string `json:"details,omitempty"`
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

// Transact runs ops atomically in the Open_vSwitch database. It returns the
// per-op results, or a *TxError when OVSDB aborted the transaction.
func (c *Client) Transact(ctx context.Context, ops ...Op) ([]OpResult, error) {
	params := make([]any, 0, len(ops)+1)
	params = append(params, DBName)
	for _, op := range ops {
		params = append(params, op)
	}
	var res []*OpResult
	if err := c.call(ctx, "transact", params, &res); err != nil {
		return nil, err
	}
	out := make([]OpResult, len(res))
	for i, r := range res {
		if r == nil {
			continue // not executed because an earlier op failed
		}
		if r.Error != "" {
			name := "commit"
			if i < len(ops) {
				name, _ = ops[i]["op"].(string)
			}
			return nil, &TxError{Op: i, OpName: name, Err: r.Error, Details: r.Details}
		}
		out[i] = *r
	}
	return out, nil
}

// UUID is the OVSDB encoding of a row reference.
func UUID(id string) []any { return []any{"uuid", id} }

// NamedUUID refers to a row inserted earlier in the same transaction.
func NamedUUID(name string) []any { return []any{"named-uuid", name} }

// Set is the OVSDB encoding of a set.
func Set(elems ...any) []any {
	if elems == nil {
		elems = []any{}
	}
	return []any{"set", elems}
}

// Map is the OVSDB encoding of a string map, keys sorted for stable output.
func Map(m map[string]string) []any {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	pairs := make([]any, 0, len(m))
	for _, k := range keys {
		pairs = append(pairs, []any{k, m[k]})
	}
	return []any{"map", pairs}
}

// The decoders below read OVSDB's JSON value encoding back into Go values.

// DecodeString returns a string column (or "" for an empty optional one).
func DecodeString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

// DecodeInt returns an integer column; ok is false for an empty optional one.
func DecodeInt(v any) (int, bool) {
	if f, ok := v.(float64); ok {
		return int(f), true
	}
	return 0, false
}

// DecodeUUID returns the id of a ["uuid", id] value.
func DecodeUUID(v any) string {
	if a, ok := v.([]any); ok && len(a) == 2 && a[0] == "uuid" {
		s, _ := a[1].(string)
		return s
	}
	return ""
}

// DecodeUUIDSet returns the ids of a set of row references (one-element
// sets are encoded as the bare element).
func DecodeUUIDSet(v any) []string {
	if id := DecodeUUID(v); id != "" {
		return []string{id}
	}
	a, ok := v.([]any)
	if !ok || len(a) != 2 || a[0] != "set" {
		return nil
	}
	elems, _ := a[1].([]any)
	ids := make([]string, 0, len(elems))
	for _, e := range elems {
		if id := DecodeUUID(e); id != "" {
			ids = append(ids, id)
		}
	}
	return ids
}

// DecodeMap returns a string-to-string map column.
func DecodeMap(v any) map[string]string {
	m := map[string]string{}
	a, ok := v.([]any)
	if !ok || len(a) != 2 || a[0] != "map" {
		return m
	}
	pairs, _ := a[1].([]any)
	for _, p := range pairs {
		kv, ok := p.([]any)
		if !ok || len(kv) != 2 {
			continue
		}
		k, _ := kv[0].(string)
		val, _ := kv[1].(string)
		m[k] = val
	}
	return m
}
