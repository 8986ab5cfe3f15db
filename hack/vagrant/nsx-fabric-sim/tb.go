package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"sync"
	"testing"
)

// daemonTB is the testing.TB that tests/fabric and tests/harness get when
// they run in this daemon rather than under go test. Logs go to stderr
// (the journal); Fatal and FailNow unwind the calling goroutine with a
// panic that do recovers, so they may only be called inside do, as the
// fabric does (its controller goroutine only logs); the cleanups run, last
// registered first, when the daemon stops.
type daemonTB struct {
	// testing.TB has unexported methods, so only an embedded TB satisfies
	// it. It is nil: every method the packages call is implemented below,
	// and one that is not would panic loudly rather than misbehave.
	testing.TB

	ctx context.Context
	log *log.Logger

	mu       sync.Mutex
	failed   bool
	cleanups []func()
}

// failNow is the panic value of FailNow.
type failNow struct{}

func newDaemonTB(ctx context.Context) *daemonTB {
	return &daemonTB{ctx: ctx, log: log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)}
}

// do runs fn and reports whether it returned without FailNow.
func (d *daemonTB) do(fn func()) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			if _, is := r.(failNow); !is {
				panic(r)
			}
			ok = false
		}
	}()
	fn()
	return !d.Failed()
}

// runCleanups runs the registered cleanups, last first; a cleanup that
// fails the TB or panics does not stop the others.
func (d *daemonTB) runCleanups() {
	for {
		d.mu.Lock()
		n := len(d.cleanups)
		if n == 0 {
			d.mu.Unlock()
			return
		}
		fn := d.cleanups[n-1]
		d.cleanups = d.cleanups[:n-1]
		d.mu.Unlock()
		d.do(fn)
	}
}

func (d *daemonTB) Helper()                    {}
func (d *daemonTB) Name() string               { return "nsx-fabric-sim" }
func (d *daemonTB) Context() context.Context   { return d.ctx }
func (d *daemonTB) Output() io.Writer          { return os.Stderr }
func (d *daemonTB) Attr(key, value string)     { d.Logf("attr %s=%s", key, value) }
func (d *daemonTB) Log(args ...any)            { _ = d.log.Output(2, fmt.Sprintln(args...)) }
func (d *daemonTB) Logf(f string, args ...any) { _ = d.log.Output(2, fmt.Sprintf(f, args...)) }

func (d *daemonTB) Fail() {
	d.mu.Lock()
	d.failed = true
	d.mu.Unlock()
}

func (d *daemonTB) Failed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failed
}

func (d *daemonTB) FailNow() {
	d.Fail()
	panic(failNow{})
}

func (d *daemonTB) Error(args ...any) {
	_ = d.log.Output(2, "ERROR: "+fmt.Sprintln(args...))
	d.Fail()
}

func (d *daemonTB) Errorf(f string, args ...any) {
	_ = d.log.Output(2, "ERROR: "+fmt.Sprintf(f, args...))
	d.Fail()
}

func (d *daemonTB) Fatal(args ...any) {
	_ = d.log.Output(2, "FATAL: "+fmt.Sprintln(args...))
	d.FailNow()
}

func (d *daemonTB) Fatalf(f string, args ...any) {
	_ = d.log.Output(2, "FATAL: "+fmt.Sprintf(f, args...))
	d.FailNow()
}

// A daemon cannot skip what it needs: a skip is fatal.
func (d *daemonTB) Skip(args ...any)            { d.Fatal(append([]any{"skip:"}, args...)...) }
func (d *daemonTB) Skipf(f string, args ...any) { d.Fatalf("skip: "+f, args...) }
func (d *daemonTB) SkipNow()                    { d.Fatal("skip") }
func (d *daemonTB) Skipped() bool               { return false }

func (d *daemonTB) Cleanup(fn func()) {
	d.mu.Lock()
	d.cleanups = append(d.cleanups, fn)
	d.mu.Unlock()
}

func (d *daemonTB) TempDir() string {
	dir, err := os.MkdirTemp("", "nsx-fabric-sim-")
	if err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (d *daemonTB) ArtifactDir() string { return d.TempDir() }

func (d *daemonTB) Setenv(key, value string) {
	old, had := os.LookupEnv(key)
	if err := os.Setenv(key, value); err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() {
		if had {
			os.Setenv(key, old)
		} else {
			os.Unsetenv(key)
		}
	})
}

func (d *daemonTB) Chdir(dir string) {
	old, err := os.Getwd()
	if err != nil {
		d.Fatal(err)
	}
	if err := os.Chdir(dir); err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { os.Chdir(old) })
}
