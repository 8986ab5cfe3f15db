package hyperbus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/nsx-ujo/nsx-ujo/pkg/agent/podconfig"
)

// ServerOptions configure the agent's side of HyperBus.
type ServerOptions struct {
	Node string // this node: configs for another node are refused
	// Heartbeat is the interval the agent sends heartbeats at; a session
	// that sends nothing for 3 intervals is closed. Default 5 s.
	Heartbeat time.Duration
	Log       *zap.Logger
	// OnSnapshot, when set, runs (in a goroutine of its own) after each
	// snapshot is applied: the agent then reports every attachment, so the
	// hypervisor learns of those whose config changed while no session
	// existed and of statuses lost with the previous session.
	OnSnapshot func()
}

// Server is the agent's side: it serves one session at a time (a new
// connection replaces the current one: the hypervisor reconnected) and
// holds the configs of the node's pods, as a podconfig.Source. What it
// holds survives a lost session: pods keep their config; the next
// session's snapshot replaces it. Safe for concurrent use.
type Server struct {
	o ServerOptions

	mu        sync.Mutex
	configs   map[podKey]held // by namespace/name
	snapshot  bool            // a snapshot was received (by any session)
	session   *session        // nil: none
	lostSince time.Time       // when the last session ended (zero: never had one, or has one)
	changed   chan struct{}   // closed and replaced on every change

	statuses chan podconfig.PodStatus // to send, in order, by Serve's sender
}

type podKey struct{ namespace, name string }

type held struct {
	uid string
	cfg *podconfig.Config
}

type session struct {
	conn net.Conn
	wmu  sync.Mutex // one writer at a time
}

// NewServer returns a Server holding nothing.
func NewServer(o ServerOptions) *Server {
	if o.Heartbeat <= 0 {
		o.Heartbeat = 5 * time.Second
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	return &Server{o: o, configs: map[podKey]held{}, changed: make(chan struct{}),
		statuses: make(chan podconfig.PodStatus, statusQueue)}
}

// statusQueue bounds the statuses waiting to be sent: beyond it they are
// dropped, and the next snapshot's reconciliation reports them again.
const statusQueue = 4096

// Serve accepts sessions on l until ctx ends or l fails.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	go func() { <-ctx.Done(); l.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // before the Wait: the status sender ends with ctx
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.sendStatuses(ctx)
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("hyperbus: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, c)
		}()
	}
}

// Connected says whether a session is up, and since when there has been
// none (zero when there is one, or there never was one).
func (s *Server) Connected() (bool, time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.session != nil, s.lostSince
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	log := s.o.Log.With(zap.String("peer", c.RemoteAddr().String()))
	defer c.Close()
	sess := &session{conn: c}
	if err := s.handshake(sess); err != nil {
		log.Warn("HyperBus session refused", zap.Error(err))
		return
	}
	s.mu.Lock()
	old := s.session
	s.session, s.lostSince = sess, time.Time{}
	s.mu.Unlock()
	if old != nil {
		log.Info("HyperBus session replaced by a new connection")
		old.conn.Close()
	}
	log.Info("HyperBus session established", zap.String("node", s.o.Node))
	hbCtx, stopHB := context.WithCancel(ctx)
	go s.heartbeats(hbCtx, sess)
	err := s.loop(sess)
	stopHB()
	s.mu.Lock()
	if s.session == sess {
		s.session, s.lostSince = nil, time.Now()
	}
	s.mu.Unlock()
	log.Warn("HyperBus session ended; pods keep their configs", zap.Error(err))
}

func (s *Server) send(sess *session, m *Message) error {
	sess.wmu.Lock()
	defer sess.wmu.Unlock()
	_ = sess.conn.SetWriteDeadline(time.Now().Add(3 * s.o.Heartbeat))
	return WriteMessage(sess.conn, m)
}

// handshake reads the hypervisor's hello and answers with the version.
func (s *Server) handshake(sess *session) error {
	_ = sess.conn.SetReadDeadline(time.Now().Add(3 * s.o.Heartbeat))
	m, err := ReadMessage(sess.conn)
	if err != nil {
		return err
	}
	if m.Type != TypeHello {
		err := fmt.Errorf("first message %q: a session starts with hello", m.Type)
		_ = s.send(sess, &Message{Type: TypeHello, Error: err.Error()})
		return err
	}
	if m.Node != s.o.Node {
		err := fmt.Errorf("hello: field \"node\" = %q: this is node %q", m.Node, s.o.Node)
		_ = s.send(sess, &Message{Type: TypeHello, Error: err.Error()})
		return err
	}
	if !slices.Contains(m.Versions, Version) {
		err := fmt.Errorf("hello: field \"versions\" = %v: this agent speaks version %d", m.Versions, Version)
		_ = s.send(sess, &Message{Type: TypeHello, Error: err.Error()})
		return err
	}
	return s.send(sess, &Message{Type: TypeHello, Versions: []int{Version}, Node: s.o.Node})
}

func (s *Server) heartbeats(ctx context.Context, sess *session) {
	t := time.NewTicker(s.o.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.send(sess, &Message{Type: TypeHeartbeat}); err != nil {
				sess.conn.Close()
				return
			}
		}
	}
}

// loop handles the session's messages until it fails. A message that is
// wrong is answered with an ack carrying the error and changes nothing; a
// frame that cannot be read ends the session.
func (s *Server) loop(sess *session) error {
	for {
		_ = sess.conn.SetReadDeadline(time.Now().Add(3 * s.o.Heartbeat))
		m, err := ReadMessage(sess.conn)
		if err != nil {
			if errors.Is(err, ErrFrame) {
				_ = s.send(sess, &Message{Type: TypeAck, Error: err.Error()})
			}
			return err
		}
		var aerr error
		switch m.Type {
		case TypeHeartbeat:
			continue
		case TypeSnapshot:
			aerr = s.applySnapshot(m.Configs)
		case TypeUpsert:
			aerr = s.applyUpsert(m.Config)
		case TypeDelete:
			s.applyDelete(*m.Pod)
		default:
			aerr = fmt.Errorf("field \"type\" = %q: not sent to an agent", m.Type)
		}
		ack := &Message{Type: TypeAck, Seq: m.Seq}
		if aerr != nil {
			ack.Error = aerr.Error()
			s.o.Log.Warn("HyperBus message refused; nothing changed", zap.String("type", string(m.Type)), zap.Uint64("seq", m.Seq), zap.Error(aerr))
		}
		if err := s.send(sess, ack); err != nil {
			return err
		}
	}
}

// applySnapshot replaces every config at once, or (one invalid) none.
func (s *Server) applySnapshot(cs []ContainerConfig) error {
	next := make(map[podKey]held, len(cs))
	for i := range cs {
		cfg, err := cs[i].Validate(s.o.Node, fmt.Sprintf("configs[%d]", i))
		if err != nil {
			return err
		}
		k := podKey{cs[i].Pod.Namespace, cs[i].Pod.Name}
		if _, dup := next[k]; dup {
			return fmt.Errorf("configs[%d].pod: %s/%s appears twice", i, k.namespace, k.name)
		}
		next[k] = held{uid: cs[i].Pod.UID, cfg: cfg}
	}
	s.mu.Lock()
	changed := 0
	for k, h := range next {
		if o, ok := s.configs[k]; !ok || o.uid != h.uid || !sameConfig(o.cfg, h.cfg) {
			changed++
		}
	}
	gone := 0
	for k := range s.configs {
		if _, ok := next[k]; !ok {
			gone++
		}
	}
	s.configs, s.snapshot = next, true
	s.notifyLocked()
	s.mu.Unlock()
	s.o.Log.Info("HyperBus snapshot applied", zap.Int("pods", len(next)), zap.Int("changed", changed), zap.Int("removed", gone))
	if s.o.OnSnapshot != nil {
		go s.o.OnSnapshot()
	}
	return nil
}

func (s *Server) applyUpsert(c *ContainerConfig) error {
	cfg, err := c.Validate(s.o.Node, "config")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.configs[podKey{c.Pod.Namespace, c.Pod.Name}] = held{uid: c.Pod.UID, cfg: cfg}
	s.notifyLocked()
	s.mu.Unlock()
	return nil
}

func (s *Server) applyDelete(p PodRef) {
	s.mu.Lock()
	k := podKey{p.Namespace, p.Name}
	if h, ok := s.configs[k]; ok && (p.UID == "" || h.uid == p.UID) {
		delete(s.configs, k)
		s.notifyLocked()
	}
	s.mu.Unlock()
}

func sameConfig(a, b *podconfig.Config) bool {
	return a.PodUID == b.PodUID && a.IP.String() == b.IP.String() && a.MAC.String() == b.MAC.String() &&
		a.Gateway.Equal(b.Gateway) && a.IP6.String() == b.IP6.String() && a.Gateway6.Equal(b.Gateway6) &&
		a.VLAN == b.VLAN && a.MTU == b.MTU
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// ReportStatus implements podconfig.StatusReporter: it queues a pod's
// state for the hypervisor without blocking. A status that finds no
// session, or a full queue, is dropped: the next snapshot's
// reconciliation (OnSnapshot) reports every attachment again.
func (s *Server) ReportStatus(st podconfig.PodStatus) {
	select {
	case s.statuses <- st:
	default:
		s.o.Log.Debug("HyperBus status queue full; dropped", zap.String("pod", st.Namespace+"/"+st.Name))
	}
}

// sendStatuses sends queued statuses, in order, on the current session.
func (s *Server) sendStatuses(ctx context.Context) {
	for {
		var st podconfig.PodStatus
		select {
		case <-ctx.Done():
			return
		case st = <-s.statuses:
		}
		s.mu.Lock()
		sess := s.session
		s.mu.Unlock()
		if sess == nil {
			continue
		}
		m := &Message{Type: TypeStatus, Pod: &PodRef{Namespace: st.Namespace, Name: st.Name, UID: st.UID}, State: StateDetached}
		if st.Attached {
			m.State = StateAttached
		}
		if st.Err != nil {
			m.Error = st.Err.Error()
		}
		if err := s.send(sess, m); err != nil {
			s.o.Log.Debug("HyperBus status not sent", zap.Stringer("pod", m.Pod), zap.Error(err))
		}
	}
}

// Get implements podconfig.Source: it waits for the pod's config. A config
// held for another UID (an earlier pod of the same name) is never
// returned: Get waits for the one of this pod.
func (s *Server) Get(ctx context.Context, namespace, name, uid string) (*podconfig.Config, error) {
	for {
		s.mu.Lock()
		wait := s.changed
		h, ok := s.configs[podKey{namespace, name}]
		connected := s.session != nil
		s.mu.Unlock()
		reason := ""
		switch {
		case !ok:
			reason = "none received for this pod"
		case uid != "" && h.uid != uid:
			reason = fmt.Sprintf("the config held is for uid %s, the runtime asked for %s", h.uid, uid)
		default:
			return h.cfg, nil
		}
		if !connected {
			reason += " (no HyperBus session)"
		}
		select {
		case <-ctx.Done():
			return nil, &podconfig.NotReadyError{Pod: namespace + "/" + name, Source: "HyperBus config", Reason: reason}
		case <-wait:
		}
	}
}

// PodExists implements podconfig.Source.
func (s *Server) PodExists(uid string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range s.configs {
		if h.uid == uid {
			return true
		}
	}
	return false
}

// Synced implements podconfig.Source: a snapshot has been received.
func (s *Server) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshot
}

var (
	_ podconfig.Source         = (*Server)(nil)
	_ podconfig.StatusReporter = (*Server)(nil)
)
