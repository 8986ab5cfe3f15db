package realnode

import (
	"context"
	"encoding/xml"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nsx-ujo/nsx-ujo/tests/cluster"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

// The upstream sets (make conformance; README "Conformance").
const (
	// FocusConformance is what CI runs on both dataplanes.
	FocusConformance = `\[sig-network\].*(Services|Networking|HostPort).*\[Conformance\]`
	// FocusWide is make conformance WIDE=1: Cilium's CI set.
	FocusWide = `\[Conformance\]|\[sig-network\]`
)

// skips are the upstream tests we do not run, each with why. A test we
// fail is never listed here: it fails, and is an open item.
var skips = []struct{ pattern, reason string }{
	{`\[Disruptive\]`, "restarts or breaks nodes the suite shares with the other tests; our own fault suite covers restarts"},
	{`\[Feature:`, "an optional feature gate or provider feature (e.g. Feature:Networking-IPv6, Feature:SCTPConnectivity); not part of the conformance profile"},
	{`\[Flaky\]`, "upstream marks them flaky"},
	{`LoadBalancer`, "needs a cloud load balancer; none exists on this machine"},
	{`Networking should provide Internet connection`, "needs the Internet; test traffic never leaves the machine"},
	{`\[sig-network\] Ingress|IngressClass API|\[sig-network\] Netpol|NetworkPolicy`, "Ingress controllers and NetworkPolicy are not this project's (NCP's) node side"},
	{`\[sig-storage\]|\[sig-apps\]|\[sig-node\]|\[sig-cli\]|\[sig-auth\]|\[sig-api-machinery\]|\[sig-scheduling\]|\[sig-instrumentation\]|\[sig-architecture\]|\[sig-autoscaling\]|\[sig-windows\]`,
		"other SIGs' conformance tests (FocusWide only): they test the apiserver, kubelet and storage, not the network"},
}

// knownFailures are upstream tests that run and fail today, each with
// the open issue that fixes it: listed, not hidden. make test does not
// spend their timeouts (minutes each) on them and prints them as known;
// make conformance (-conformance.known) runs them, and one that passes
// fails the test, so the list only shrinks.
var knownFailures = []struct{ pattern, issue string }{}

func knownRegexp() string {
	if len(knownFailures) == 0 {
		return ""
	}
	var ps []string
	for _, k := range knownFailures {
		ps = append(ps, k.pattern)
	}
	return strings.Join(ps, "|")
}

func knownFailure(name string) (string, bool) {
	for _, k := range knownFailures {
		if regexp.MustCompile(k.pattern).MatchString(name) {
			return k.issue, true
		}
	}
	return "", false
}

var (
	flagFocus      = flag.String("conformance.focus", "", "ginkgo focus (default FocusConformance; make conformance WIDE=1: FocusWide)")
	flagDataplanes = flag.String("conformance.dataplanes", "ovs,ebpf", "dataplanes to run the upstream suite on")
	flagKnown      = flag.Bool("conformance.known", false, "also run the known failures (make conformance), failing if one passes")
	flagDaemons    = flag.String("conformance.daemons", string(cluster.DaemonsFromDeploy),
		"how nsx-ujo runs on the nodes: deploy (the image and deploy/, as an operator installs it) or processes (the binaries started by the test)")
)

// TestUpstreamConformance runs the upstream e2e.test of KubeVersion against
// a two-node real-node cluster per dataplane and prints passed, failed and
// skipped with each failure's first line. Failures fail the test; known
// failures are listed (and, with -conformance.known, run).
func TestUpstreamConformance(t *testing.T) {
	focus := *flagFocus
	if focus == "" {
		focus = FocusConformance
	}
	skip := skipRegexp()
	if known := knownRegexp(); !*flagKnown && known != "" {
		skip += "|" + known
		for _, k := range knownFailures {
			t.Logf("not run: tests matching %q (known failure, %s; make conformance runs them)", k.pattern, k.issue)
		}
	}
	e2e, err := harness.ToolBinary("e2e.test")
	if err != nil {
		t.Fatal(err)
	}
	for _, dp := range strings.Split(*flagDataplanes, ",") {
		t.Run(dp, func(t *testing.T) {
			c := cluster.Start(t, cluster.Options{Nodes: 2, Dataplane: dp, BinDir: binDir, RealNodes: true, Daemons: cluster.Daemons(*flagDaemons)})
			rep := runE2E(t, c, e2e, focus, skip)
			t.Logf("upstream e2e %s, dataplane %s, nsx-ujo as %s, focus %q: %s", harness.KubeVersion, dp, *flagDaemons, focus, rep.summary())
			for _, f := range rep.failed {
				if issue, ok := knownFailure(f.name); ok {
					t.Logf("FAILED (known, %s) %s\n    %s", issue, f.name, f.first)
					continue
				}
				t.Errorf("FAILED %s\n    %s", f.name, f.first)
			}
			for _, name := range rep.passedNames {
				if issue, ok := knownFailure(name); ok {
					t.Errorf("PASSED but listed as a known failure (%s): %s; remove it from knownFailures", issue, name)
				}
			}
		})
	}
}

type report struct {
	passed, skipped int
	passedNames     []string
	failed          []failure
	took            time.Duration
}

type failure struct{ name, first string }

func (r report) summary() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped in %s", r.passed, len(r.failed), r.skipped, r.took.Round(time.Second))
}

func skipRegexp() string {
	var ps []string
	for _, s := range skips {
		ps = append(ps, s.pattern)
	}
	return strings.Join(ps, "|")
}

// runE2E runs e2e.test and reads its JUnit report.
func runE2E(t *testing.T, c *cluster.Cluster, bin, focus, skip string) report {
	t.Helper()
	dir := t.TempDir()
	kubectl, err := harness.ToolBinary("kubectl")
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--kubeconfig=" + c.API.Kubeconfig,
		"--kubectl-path=" + kubectl,
		"--provider=skeleton",
		"--report-dir=" + dir,
		"--num-nodes=" + fmt.Sprint(len(c.Nodes)),
		"--ginkgo.focus=" + focus,
		"--ginkgo.skip=" + skip,
		"--ginkgo.no-color",
		"--ginkgo.timeout=2h",
		// The images are imported into every node; nothing to pull.
		"--prepull-images=false",
		"--e2e-verify-service-account=true",
		"--allowed-not-ready-nodes=0",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	logPath := filepath.Join(dir, "e2e.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	start := time.Now()
	runErr := cmd.Run()
	rep, err := readJUnit(filepath.Join(dir, "junit_01.xml"))
	rep.took = time.Since(start)
	if err != nil {
		b, _ := os.ReadFile(logPath)
		t.Fatalf("e2e.test: %v; no report: %v\n%s", runErr, err, tailLines(string(b), 80))
	}
	if runErr != nil && len(rep.failed) == 0 {
		b, _ := os.ReadFile(logPath)
		t.Errorf("e2e.test exited with %v without a failed test:\n%s", runErr, tailLines(string(b), 80))
	}
	if t.Failed() || len(rep.failed) > 0 {
		if keep := os.Getenv("NSX_UJO_E2E_LOG"); keep != "" {
			b, _ := os.ReadFile(logPath)
			_ = os.WriteFile(keep, b, 0o644)
		}
	}
	return rep
}

type junitSuite struct {
	Cases []struct {
		Name    string    `xml:"name,attr"`
		Skipped *struct{} `xml:"skipped"`
		Failure *struct {
			Message string `xml:"message,attr"`
			Body    string `xml:",chardata"`
		} `xml:"failure"`
		Error *struct {
			Message string `xml:"message,attr"`
		} `xml:"error"`
	} `xml:"testsuite>testcase"`
}

var setupCase = regexp.MustCompile(`^\[(SynchronizedBeforeSuite|SynchronizedAfterSuite|BeforeSuite|AfterSuite|ReportAfterSuite|ReportBeforeSuite|DeferCleanup)`)

func readJUnit(path string) (report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return report{}, err
	}
	var s junitSuite
	if err := xml.Unmarshal(b, &s); err != nil {
		return report{}, fmt.Errorf("%s: %w", path, err)
	}
	var r report
	for _, c := range s.Cases {
		switch {
		case c.Failure != nil || c.Error != nil:
			msg := ""
			if c.Failure != nil {
				msg = c.Failure.Message
				if msg == "" {
					msg = c.Failure.Body
				}
			} else {
				msg = c.Error.Message
			}
			r.failed = append(r.failed, failure{c.Name, firstLine(msg)})
		case c.Skipped != nil:
			r.skipped++
		case setupCase.MatchString(c.Name):
		default:
			r.passed++
			r.passedNames = append(r.passedNames, c.Name)
		}
	}
	sort.Slice(r.failed, func(i, j int) bool { return r.failed[i].name < r.failed[j].name })
	return r, nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func tailLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
