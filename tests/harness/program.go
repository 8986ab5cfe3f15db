package harness

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
)

// Program is a testing.TB for a program that runs the harness outside go
// test (make demo): cleanups run in reverse order at Close, Fatal tears
// everything down and exits 1, logs go to stderr. Safe for concurrent use.
// Only the methods the harness and the cluster use are implemented; the
// embedded nil TB makes any other one panic rather than do nothing.
type Program struct {
	testing.TB
	name string

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	stopped  bool // Interrupt: failures from here on are the teardown's, not reported
	closing  bool
	closed   chan struct{}
}

// NewProgram returns a Program called name.
func NewProgram(name string) *Program { return &Program{name: name, closed: make(chan struct{})} }

func (p *Program) Name() string { return p.name }
func (p *Program) Helper()      {}

func (p *Program) Cleanup(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cleanups = append(p.cleanups, f)
}

func (p *Program) Log(args ...any)                 { fmt.Fprintln(os.Stderr, args...) }
func (p *Program) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

func (p *Program) Error(args ...any) {
	p.Log(args...)
	p.fail()
}

func (p *Program) Errorf(format string, args ...any) {
	p.Logf(format, args...)
	p.fail()
}

func (p *Program) Fatal(args ...any) {
	p.Log(args...)
	p.exit()
}

func (p *Program) Fatalf(format string, args ...any) {
	p.Logf(format, args...)
	p.exit()
}

// Skip ends the program as Fatal does: a program has no test to skip (the
// harness skips privileged steps for a normal user).
func (p *Program) Skip(args ...any) { p.Fatal(append([]any{"cannot run:"}, args...)...) }

func (p *Program) Skipf(format string, args ...any) { p.Fatalf("cannot run: "+format, args...) }

func (p *Program) SkipNow() { p.Fatal("cannot run") }

func (p *Program) Failed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

// TempDir is a new directory removed at Close.
func (p *Program) TempDir() string {
	dir, err := os.MkdirTemp("", p.name+"-")
	if err != nil {
		p.Fatal(err)
	}
	p.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (p *Program) fail() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped {
		p.failed = true
	}
}

// Interrupt tears everything down (Close) on the user's request: what then
// fails under the main flow's feet is not a failure to report (no log
// dumps).
func (p *Program) Interrupt() {
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	p.Close()
}

// exit tears down and exits 1. During Close (a cleanup failing, or the
// main flow failing because an interrupt is tearing things down under it)
// it ends only the calling goroutine, as testing.T's FailNow does: Close
// runs each cleanup in a goroutine of its own, so the others still run,
// and whoever called Close exits.
func (p *Program) exit() {
	p.fail()
	p.mu.Lock()
	closing := p.closing
	p.mu.Unlock()
	if closing {
		runtime.Goexit()
	}
	p.Close()
	os.Exit(1)
}

// Close runs the cleanups, last registered first, once; a second caller
// waits for the first to finish.
func (p *Program) Close() {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		<-p.closed
		return
	}
	p.closing = true
	p.mu.Unlock()
	defer close(p.closed)
	for {
		p.mu.Lock()
		n := len(p.cleanups)
		if n == 0 {
			p.mu.Unlock()
			return
		}
		f := p.cleanups[n-1]
		p.cleanups = p.cleanups[:n-1]
		p.mu.Unlock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			f()
		}()
		<-done
	}
}
