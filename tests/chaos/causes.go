package chaos

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
)

// cause is a log entry that names a fault's cause to an operator: written
// by daemon (its process name), its message containing msg and its error
// err; or, with clientGo, any entry of the daemon's client-go logger (a
// list or watch that failed, with the API server's answer).
type cause struct {
	daemon   string
	msg      string
	err      string
	clientGo bool
}

// logMark is where each daemon's log of a node stood when a fault began.
type logMark struct {
	files map[string]int64 // log file -> size
}

// daemons is the node's nsx-ujo processes now.
func daemons(n *cluster.Node) []*cluster.Process {
	return []*cluster.Process{n.OVS, n.Agent, n.Proxy}
}

func markLogs(n *cluster.Node) logMark {
	m := logMark{files: map[string]int64{}}
	for _, p := range daemons(n) {
		if fi, err := os.Stat(p.LogFile); err == nil {
			m.files[p.LogFile] = fi.Size()
		}
	}
	return m
}

// logEntry is one line a daemon wrote.
type logEntry struct {
	daemon string
	line   string
}

// since is what the daemons of n wrote after m: the rest of the logs
// of the processes then, and all of those started since.
func (m logMark) since(n *cluster.Node, before []*cluster.Process) ([]logEntry, error) {
	var out []logEntry
	seen := map[string]bool{}
	for _, p := range append(before, daemons(n)...) {
		if seen[p.LogFile] {
			continue
		}
		seen[p.LogFile] = true
		b, err := os.ReadFile(p.LogFile)
		if err != nil {
			return nil, err
		}
		if off := m.files[p.LogFile]; off <= int64(len(b)) {
			b = b[off:]
		}
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				out = append(out, logEntry{daemon: p.Name, line: l})
			}
		}
	}
	return out, nil
}

// found is the first entry naming one of the causes, as "daemon: message"
// for the table, or "" when none does.
func found(entries []logEntry, causes []cause) string {
	for _, c := range causes {
		for _, e := range entries {
			if e.daemon != c.daemon {
				continue
			}
			var j struct {
				Msg    string `json:"msg"`
				Logger string `json:"logger"`
				Error  string `json:"error"`
				Err    string `json:"err"` // client-go's key
			}
			if json.Unmarshal([]byte(e.line), &j) != nil {
				continue
			}
			if c.clientGo && j.Logger == "client-go" || c.msg != "" && strings.Contains(j.Msg, c.msg) && strings.Contains(j.Error, c.err) {
				s := j.Msg
				for _, e := range []string{j.Error, j.Err} {
					if e != "" {
						s += ": " + e
					}
				}
				return fmt.Sprintf("%s: %s", e.daemon, shorten(s, 140))
			}
		}
	}
	return ""
}

func shorten(s string, n int) string {
	s = strings.ReplaceAll(s, "|", "/") // a Markdown table cell
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
