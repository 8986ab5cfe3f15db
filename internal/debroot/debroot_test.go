package debroot

import (
	"archive/tar"
	"bytes"
	"testing"
)

// The merged-/usr mapping keeps links working where they were.
func TestReadDataTarMergedUsr(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "./bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./bin/dash", Typeflag: tar.TypeReg, Mode: 0o755, Size: 4},
		{Name: "./bin/sh", Typeflag: tar.TypeSymlink, Linkname: "dash"},
		{Name: "./lib/x86_64-linux-gnu/libfoo.so.1", Typeflag: tar.TypeSymlink, Linkname: "../../usr/lib/x86_64-linux-gnu/libfoo.so.1.2"},
		{Name: "./usr/bin/perl", Typeflag: tar.TypeLink, Linkname: "./bin/dash"},
		{Name: "./usr/sbin/tool", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 0},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("dash"))
		}
	}
	tw.Close()
	es, err := readDataTar(&buf)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range es {
		got[e.Path] = string(e.Kind) + ":" + e.Target + string(e.Data)
		if e.Path == "/usr/sbin/tool" && e.Mode != 0o4755 {
			t.Errorf("setuid lost: mode %o", e.Mode)
		}
	}
	want := map[string]string{
		"/usr/bin/dash":                         "0:dash",
		"/usr/bin/sh":                           "2:dash",
		"/usr/lib/x86_64-linux-gnu/libfoo.so.1": "2:/usr/lib/x86_64-linux-gnu/libfoo.so.1.2",
		"/usr/bin/perl":                         "0:dash",
		"/usr/sbin/tool":                        "0:",
	}
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s: %q, want %q", p, got[p], w)
		}
	}
	if _, ok := got["/bin"]; ok {
		t.Errorf("/bin kept as a directory: it is a link into /usr")
	}
}

func TestInstallAlternative(t *testing.T) {
	script := "if [ x ]; then\n        update-alternatives --install /usr/sbin/ovs-vswitchd ovs-vswitchd \\\n                    /usr/lib/openvswitch-switch/ovs-vswitchd 100\nfi\n"
	m := installAlternative.FindAllStringSubmatch(joinContinuations(script), -1)
	if len(m) != 1 || m[0][1] != "/usr/sbin/ovs-vswitchd" || m[0][2] != "ovs-vswitchd" || m[0][3] != "/usr/lib/openvswitch-switch/ovs-vswitchd" || m[0][4] != "100" {
		t.Fatalf("parsed %q", m)
	}
}
