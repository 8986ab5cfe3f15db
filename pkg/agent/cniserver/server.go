// Package cniserver serves the agent's CNI socket: HTTP on a unix socket,
// one POST per CNI command (see pkg/cniwire).
package cniserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/nsx-ujo/nsx-ujo/pkg/cniwire"
)

// Handler runs one CNI request. It must be safe for concurrent use.
type Handler interface {
	Handle(ctx context.Context, req *cniwire.Request) *cniwire.Response
}

// Server is the CNI socket server.
type Server struct {
	path string
	h    Handler
	srv  *http.Server
	ln   net.Listener
	// peerUID is the only peer user served (SO_PEERCRED): root, as the
	// runtime that runs the plugin. Tests running as another user set it.
	peerUID int
}

// peer is who is on the other end of a connection (SO_PEERCRED).
type peer struct {
	uid int
	err error
}

type peerKey struct{}

// peerOf reads the connecting process's credentials from the kernel.
func peerOf(c net.Conn) peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return peer{uid: -1, err: fmt.Errorf("not a unix connection: %T", c)}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return peer{uid: -1, err: err}
	}
	var cred *unix.Ucred
	cerr := raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if err = errors.Join(cerr, err); err != nil {
		return peer{uid: -1, err: fmt.Errorf("SO_PEERCRED: %w", err)}
	}
	return peer{uid: int(cred.Uid)}
}

// MaxRequest bounds a CNI request's body: a conflist with its prevResult
// is a few KiB, so a larger one is refused rather than decoded.
const MaxRequest = 4 << 20

// Listen creates the socket at path (mode 0600, root only: whoever can
// write to it can wire pods), replacing a stale socket file left by an
// earlier run. It refuses to replace anything that is not a socket.
func Listen(path string, h Handler) (*Server, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("cni socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("cni socket %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("cni socket %s: remove stale socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("cni socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("cni socket %s: %w", path, err)
	}
	s := &Server{path: path, h: h, ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+cniwire.RequestPath, s.serveCNI)
	s.srv = &http.Server{Handler: mux,
		// A slow or stuck client holds a connection, not the agent: the
		// request is read within these bounds (the answer may take as long
		// as the ADD does).
		ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10,
		// The socket is 0600, so only root can connect; the credentials
		// are checked again per connection, in case the mode was changed
		// or the file handed to another process.
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerOf(c))
		}}
	return s, nil
}

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting, waits for requests in flight (bounded by ctx)
// and removes the socket file.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	_ = os.Remove(s.path)
	return err
}

func (s *Server) serveCNI(w http.ResponseWriter, r *http.Request) {
	var resp *cniwire.Response
	if p, _ := r.Context().Value(peerKey{}).(peer); p.err != nil || p.uid != s.peerUID {
		msg := fmt.Sprintf("nsx-node-agent serves uid %d only; this request came from uid %d", s.peerUID, p.uid)
		if p.err != nil {
			msg = "nsx-node-agent cannot tell who sent this request: " + p.err.Error()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_ = json.NewEncoder(w).Encode(&cniwire.Response{Error: types.NewError(types.ErrInternal, "request refused", msg)})
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxRequest+1))
	var req cniwire.Request
	if err == nil && len(body) > MaxRequest {
		err = fmt.Errorf("request body larger than %d bytes (a network configuration that size is not one the plugin sends)", MaxRequest)
	}
	if err == nil {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		resp = &cniwire.Response{Error: types.NewError(types.ErrDecodingFailure, "malformed request to nsx-node-agent", err.Error())}
	} else {
		// The request lives as long as the plugin's connection: a runtime
		// that gives up on ADD cancels the wait for the annotation.
		resp = s.h.Handle(r.Context(), &req)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}
