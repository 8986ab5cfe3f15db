package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCompare(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"testdata/old.json", "testdata/new.json"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d, stderr %s", code, errOut.String())
	}
	got := out.String()
	for _, want := range []string{
		// Within ±10%: no flag.
		"| programming | N=1000 program all | nsx ovs | ms | 52.0 | 52.0 | 1.000 |  | 0.168 | 0.168 | 1.000 |  |",
		// A time that grew: worse, and so did its ratio to the baseline.
		"| programming | N=1000 change p99 | nsx ovs | ms | 2.20 | 3.10 | 1.409 | ✗ worse | 0.02 | 0.0295 | 1.476 | ✗ worse |",
		// A rate that grew: better.
		"| datapath | N=1 RR/s | nsx ovs ClusterIP | RR/s | 10500 | 12500 | 1.190 | ✓ better | 0.84 | 1.00 | 1.190 | ✓ better |",
		// No ratio when the baseline median is 0.
		"| cni | DEL p50, 100 pods | nsx (agent + OVS) | ms | 10.0 | 10.5 | 1.050 |  | – | – | – |  |",
		"4 figures compared, 2 beyond ±10% (1 of them worse)",
		"only in OLD: cni / ADD p50, 50 sequential / nsx (agent + OVS)",
		"only in NEW: datapath / N=1 conn/s / nsx ovs ClusterIP",
		"222222222222 (modified)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if errOut.Len() > 0 {
		t.Errorf("stderr: %s", errOut.String())
	}
}

func TestThreshold(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"-threshold", "0.5", "testdata/old.json", "testdata/new.json"}, &out, &out); code != 0 {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	if strings.Contains(out.String(), "✗") || strings.Contains(out.String(), "✓") {
		t.Errorf("flags at ±50%%:\n%s", out.String())
	}
}

func TestUnreadable(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(t.TempDir(), "old.json")
	if err := os.WriteFile(old, []byte(`{"version": 99, "figures": []}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args  []string
		named string
	}{
		{[]string{"testdata/missing.json", "testdata/new.json"}, "testdata/missing.json"},
		{[]string{"testdata/old.json", bad}, bad},
		{[]string{old, "testdata/new.json"}, old},
	} {
		var out, errOut bytes.Buffer
		if code := run(tc.args, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2", tc.args, code)
		}
		if !strings.Contains(errOut.String(), tc.named) {
			t.Errorf("%v: stderr %q does not name %s", tc.args, errOut.String(), tc.named)
		}
		if out.Len() > 0 {
			t.Errorf("%v: stdout %q", tc.args, out.String())
		}
	}
	var errOut bytes.Buffer
	if code := run([]string{"testdata/old.json"}, &bytes.Buffer{}, &errOut); code != 2 || !strings.Contains(errOut.String(), "usage") {
		t.Errorf("one argument: exit %d, stderr %q", code, errOut.String())
	}
}
