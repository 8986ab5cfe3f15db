package clusterbench

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

type startResult struct {
	network       string
	pods          int
	start, delete []time.Duration
	startWall     time.Duration
	deleteWall    time.Duration
}

// BenchmarkClusterPodStartup creates NSX_CLUSTER_BENCH_PODS pods at once,
// round robin over the workers (nodeName set: no scheduler), and measures
// from each Create call to the watch event that shows it Running, then from
// the delete to the event that shows it gone (kubelet deletes the object
// once the sandbox is torn down, CNI DEL included). Baseline, in the same
// run: the same pods with hostNetwork, which need no CNI.
func BenchmarkClusterPodStartup(b *testing.B) {
	c := connect(b)
	n := envInt(b, "NSX_CLUSTER_BENCH_PODS", 20)
	var res []startResult
	for range b.N {
		res = append(res, c.startPods(b, n, true), c.startPods(b, n, false))
	}
	w := os.Stdout
	fmt.Fprintf(w, "\nPod startup on %d worker(s), dataplane %s: %d pods created at once, Create -> Running, delete -> gone (ms)\n\n", len(c.workers), c.dataplane, n)
	fmt.Fprintln(w, "| network | pods | start p50 | start p99 | all running | pods/s | delete p50 | delete p99 | all gone |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, r := range res {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %.1f | %s | %s | %s |\n", r.network, r.pods,
			ms(pct(r.start, .5)), ms(pct(r.start, .99)), ms(r.startWall), float64(r.pods)/r.startWall.Seconds(),
			ms(pct(r.delete, .5)), ms(pct(r.delete, .99)), ms(r.deleteWall))
	}
	fmt.Fprintln(w)
	if len(res) >= 2 {
		base, nsx := res[len(res)-2], res[len(res)-1]
		b.ReportMetric(float64(pct(nsx.start, .5))/float64(pct(base.start, .5)), c.dataplane+"-start-p50-vs-hostnet")
	}
}

func (c *cluster) startPods(b *testing.B, n int, hostNetwork bool) startResult {
	r := startResult{network: "nsx (" + c.dataplane + ")", pods: n}
	role := "startup-nsx"
	if hostNetwork {
		r.network, role = "hostNetwork (baseline)", "startup-host"
	}
	w := c.watchPods(b, role)
	defer w.Stop()

	created := make(map[string]time.Time, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		name := fmt.Sprintf("%s-%d", role, i)
		pod := c.podSpec(name, role, c.workers[i%len(c.workers)], hostNetwork, nil)
		wg.Go(func() {
			t := time.Now()
			if _, err := c.cs.CoreV1().Pods(c.ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
				errs <- err
				return
			}
			mu.Lock()
			created[name] = t
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	first := time.Now()
	for _, t := range created {
		if t.Before(first) {
			first = t
		}
	}

	running := collect(b, w, n, func(ev watch.Event, p *corev1.Pod) bool {
		return ev.Type != watch.Deleted && p.Status.Phase == corev1.PodRunning
	})
	var last time.Time
	for name, t := range running {
		r.start = append(r.start, t.Sub(created[name]))
		if t.After(last) {
			last = t
		}
	}
	r.startWall = last.Sub(first)

	delStart := time.Now()
	err := c.cs.CoreV1().Pods(c.ns).DeleteCollection(context.Background(), metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: benchLabel + "=" + role})
	if err != nil {
		b.Fatal(err)
	}
	gone := collect(b, w, n, func(ev watch.Event, _ *corev1.Pod) bool { return ev.Type == watch.Deleted })
	last = time.Time{}
	for _, t := range gone {
		r.delete = append(r.delete, t.Sub(delStart))
		if t.After(last) {
			last = t
		}
	}
	r.deleteWall = last.Sub(delStart)
	return r
}

// collect reads w until done is true for n different pods and returns when
// each first was; it fails b after podTimeout, naming the pods it lacks.
func collect(b *testing.B, w watch.Interface, n int, done func(watch.Event, *corev1.Pod) bool) map[string]time.Time {
	b.Helper()
	at := make(map[string]time.Time, n)
	last := map[string]*corev1.Pod{}
	timeout := time.After(podTimeout)
	for len(at) < n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				b.Fatal("pod watch closed")
			}
			p, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			last[p.Name] = p
			if _, seen := at[p.Name]; !seen && done(ev, p) {
				at[p.Name] = time.Now()
			}
		case <-timeout:
			var lagging []string
			for name, p := range last {
				if _, ok := at[name]; !ok {
					lagging = append(lagging, name+": "+podState(p))
				}
			}
			b.Fatalf("%d of %d pods within %s; lagging: %v", len(at), n, podTimeout, lagging)
		}
	}
	return at
}
