package conformance

import (
	"fmt"
	"sync"
	"time"
)

// LoadOptions shape the steady traffic a change or a fault is measured
// under.
type LoadOptions struct {
	Held       int           // long-lived TCP connections, a request each 100 ms, each answer checked
	NewTimeout time.Duration // a new connection not up within it failed (default 3 s: one SYN retransmission fits)
	Slow       time.Duration // a new connection slower than this was slow (default 500 ms)
	UDP        bool          // also a UDP request each 50 ms from the prober
	// NewEvery paces the new connections (0: back to back). A long
	// outage at full speed exhausts the prober's ephemeral ports (each
	// closed connection waits in TIME_WAIT).
	NewEvery time.Duration
	Before   time.Duration // load before the change (default 500 ms)
	Settle   time.Duration // load kept on after it (default 2 s)
}

// LoadResult is what the load met.
type LoadResult struct {
	Took          time.Duration // the change itself
	Tried, Failed int           // new connections
	Slow          int           // of them, up but slower than Slow
	LongestGap    time.Duration // between two successful new connections
	Broken        int           // of the Held established connections
	Failures      []string      // when (from the change's start) and why new connections failed
	UDPAsked      int
	UDPLost       int
	UDPLossWindow time.Duration // longest time without a UDP answer
}

// MeasureUnderLoad runs the load from client (held connections) and
// prober (new connections, UDP) to addr around change, which returns once
// the change is complete, then keeps it on for Settle.
func MeasureUnderLoad(client, prober *Pod, addr string, o LoadOptions, change func()) (LoadResult, error) {
	if o.NewTimeout == 0 {
		o.NewTimeout = 3 * time.Second
	}
	if o.Slow == 0 {
		o.Slow = 500 * time.Millisecond
	}
	if o.Before == 0 {
		o.Before = 500 * time.Millisecond
	}
	if o.Settle == 0 {
		o.Settle = 2 * time.Second
	}
	var held []*Conn
	for i := 0; i < o.Held; i++ {
		c, err := client.Dial(addr, 5*time.Second)
		if err != nil {
			for _, h := range held {
				h.Close()
			}
			return LoadResult{}, fmt.Errorf("open held connection %d to %s: %w", i, addr, err)
		}
		held = append(held, c)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	broken := make([]bool, len(held))
	for i, c := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				if err := c.Echo("ping", 2*time.Second); err != nil {
					broken[i] = true
					return
				}
			}
		}()
	}
	var r LoadResult
	var mu sync.Mutex
	t0 := time.Now()
	startedAt := func() time.Time { mu.Lock(); defer mu.Unlock(); return t0 }
	wg.Add(1)
	go func() {
		defer wg.Done()
		last := time.Now()
		var pace <-chan time.Time
		if o.NewEvery > 0 {
			t := time.NewTicker(o.NewEvery)
			defer t.Stop()
			pace = t.C
		}
		for {
			select {
			case <-stop:
				return
			default:
			}
			if pace != nil {
				select {
				case <-stop:
					return
				case <-pace:
				}
			}
			at := time.Now()
			_, _, err := prober.Get(addr, o.NewTimeout)
			mu.Lock()
			r.Tried++
			if err != nil {
				r.Failed++
				r.Failures = append(r.Failures, fmt.Sprintf("%+dms: %v", at.Sub(t0).Milliseconds(), err))
				mu.Unlock()
				continue
			}
			if time.Since(at) > o.Slow {
				r.Slow++
			}
			if gap := time.Since(last); gap > r.LongestGap {
				r.LongestGap = gap
			}
			mu.Unlock()
			last = time.Now()
		}
	}()
	if o.UDP {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := time.Now()
			t := time.NewTicker(50 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				_, err := prober.UDP(addr, 200*time.Millisecond)
				mu.Lock()
				r.UDPAsked++
				if err != nil {
					r.UDPLost++
					if w := time.Since(last); w > r.UDPLossWindow {
						r.UDPLossWindow = w
					}
				} else {
					last = time.Now()
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(o.Before)
	mu.Lock()
	t0 = time.Now()
	mu.Unlock()
	change()
	r.Took = time.Since(startedAt())
	time.Sleep(o.Settle)
	close(stop)
	wg.Wait()
	for _, x := range broken {
		if x {
			r.Broken++
		}
	}
	return r, nil
}
