// Package deploy validates the manifests in deploy/ against a real
// kube-apiserver: every document of deploy/*.yml and of the rendered BAREMETAL
// overlay is created with a server-side dry run and strict field validation,
// so a misspelt field, a wrong type or a duplicate key fails here rather than
// on a cluster. It also checks that the ConfigMaps' ncp.ini parses cleanly
// with pkg/config and agrees with what the probes assume.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/restmapper"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/nsx-ujo/nsx-ujo/pkg/config"
	"github.com/nsx-ujo/nsx-ujo/tests/harness"
)

var api *harness.APIServer

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if code, ok := harness.MainRequiresRoot("tests/deploy"); !ok {
		return code
	}
	s, stop, err := harness.StartAPIServerMain()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube-apiserver:", err)
		return 1
	}
	defer stop()
	api = s
	return m.Run()
}

// deployDir is <repo>/deploy.
func deployDir(t *testing.T) string {
	t.Helper()
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "deploy")
}

// manifestFiles are deploy/*.yml.
func manifestFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(deployDir(t), "*.yml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no deploy/*.yml: %v", err)
	}
	return files
}

// readDocs returns the documents of a multi-document YAML file. Each is
// converted strictly, so a duplicate key fails instead of silently keeping
// the last value.
func readDocs(path string) ([]*unstructured.Unstructured, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var objs []*unstructured.Unstructured
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	for i := 0; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		data, err := sigsyaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s document %d: %w", path, i, err)
		}
		if s := string(bytes.TrimSpace(data)); s == "null" || s == "" {
			continue // only comments
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(data); err != nil {
			return nil, fmt.Errorf("%s document %d: %w", path, i, err)
		}
		objs = append(objs, obj)
	}
}

// kustomization is the subset of kustomize this repository uses. Decoding
// is strict: a field render does not implement fails the test instead of
// being ignored.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Patches    []struct {
		Path string `json:"path"`
	} `json:"patches"`
}

func readKustomization(dir string) (*kustomization, error) {
	path := filepath.Join(dir, "kustomization.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var k kustomization
	if err := sigsyaml.UnmarshalStrict(data, &k); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &k, nil
}

// render builds a kustomization the way `kustomize build` does for the
// features used here: resources (files, or directories with their own
// kustomization) and strategic merge patches that name their target by kind,
// namespace and name. The patches are applied with the same strategic
// merge as kustomize (k8s.io/apimachinery/pkg/util/strategicpatch, with the
// typed object's merge keys).
func render(dir string) ([]*unstructured.Unstructured, error) {
	k, err := readKustomization(dir)
	if err != nil {
		return nil, err
	}
	var objs []*unstructured.Unstructured
	for _, res := range k.Resources {
		path := filepath.Join(dir, res)
		fi, err := os.Stat(path)
		if err != nil {
			return nil, err
		}
		var docs []*unstructured.Unstructured
		if fi.IsDir() {
			docs, err = render(path)
		} else {
			docs, err = readDocs(path)
		}
		if err != nil {
			return nil, err
		}
		objs = append(objs, docs...)
	}
	for _, p := range k.Patches {
		patches, err := readDocs(filepath.Join(dir, p.Path))
		if err != nil {
			return nil, err
		}
		for _, patch := range patches {
			if err := applyPatch(objs, patch); err != nil {
				return nil, fmt.Errorf("%s: %w", filepath.Join(dir, p.Path), err)
			}
		}
	}
	return objs, nil
}

func applyPatch(objs []*unstructured.Unstructured, patch *unstructured.Unstructured) error {
	gvk := patch.GroupVersionKind()
	i := slices.IndexFunc(objs, func(o *unstructured.Unstructured) bool {
		return o.GroupVersionKind() == gvk && o.GetNamespace() == patch.GetNamespace() && o.GetName() == patch.GetName()
	})
	if i < 0 {
		return fmt.Errorf("patch target %s %s/%s not among the resources", gvk.Kind, patch.GetNamespace(), patch.GetName())
	}
	typed, err := scheme.Scheme.New(gvk)
	if err != nil {
		return fmt.Errorf("patch of %s: %w", gvk, err)
	}
	orig, err := objs[i].MarshalJSON()
	if err != nil {
		return err
	}
	p, err := patch.MarshalJSON()
	if err != nil {
		return err
	}
	merged, err := strategicpatch.StrategicMergePatch(orig, p, typed)
	if err != nil {
		return fmt.Errorf("patch %s %s: %w", gvk.Kind, patch.GetName(), err)
	}
	out := &unstructured.Unstructured{}
	if err := out.UnmarshalJSON(merged); err != nil {
		return err
	}
	objs[i] = out
	return nil
}

// warnings collects the API server's warning headers (deprecated fields,
// fields the server drops) so that they fail the test too.
type warnings struct {
	mu   sync.Mutex
	list []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

// validator creates objects on the test's kube-apiserver.
type validator struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
	warn   *warnings
}

func newValidator(t *testing.T) *validator {
	t.Helper()
	rc, err := api.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	v := &validator{warn: &warnings{}}
	rc.WarningHandler = v.warn
	if v.dyn, err = dynamic.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	v.mapper = restmapper.NewDeferredDiscoveryRESTMapperWithContext(memory.NewMemCacheClientWithContext(dc))
	return v
}

// create creates obj; dryRun leaves nothing behind. A namespaced object
// must name its namespace: applied without one it would land in whatever
// namespace the operator's kubectl context has.
func (v *validator) create(obj *unstructured.Unstructured, dryRun bool) error {
	gvk := obj.GroupVersionKind()
	m, err := v.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface = v.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if obj.GetNamespace() == "" {
			return fmt.Errorf("%s %s has no metadata.namespace", gvk.Kind, obj.GetName())
		}
		ri = v.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	opts := metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	v.warn.take()
	if _, err := ri.Create(context.Background(), obj, opts); err != nil {
		return err
	}
	if w := v.warn.take(); len(w) > 0 {
		return fmt.Errorf("API server warnings: %q", w)
	}
	return nil
}

// validate creates the namespaces among objs for real (a namespaced dry
// run needs its namespace to exist), then dry-runs everything else.
func validate(t *testing.T, label string, objs []*unstructured.Unstructured) {
	t.Helper()
	v := newValidator(t)
	for _, obj := range objs {
		if obj.GetKind() != "Namespace" {
			continue
		}
		if err := v.create(obj, false); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s: Namespace %s: %v", label, obj.GetName(), err)
		}
	}
	for _, obj := range objs {
		if obj.GetKind() == "Namespace" {
			continue
		}
		t.Run(label+"/"+obj.GetKind()+"/"+obj.GetName(), func(t *testing.T) {
			if err := v.create(obj, true); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestManifestsDryRun(t *testing.T) {
	var all []*unstructured.Unstructured
	for _, f := range manifestFiles(t) {
		objs, err := readDocs(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) == 0 {
			t.Errorf("%s has no objects", f)
		}
		all = append(all, objs...)
	}
	validate(t, "base", all)
}

func TestBaremetalOverlayDryRun(t *testing.T) {
	objs, err := render(filepath.Join(deployDir(t), "overlays", "baremetal"))
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "baremetal", objs)

	cfg := parseNCPIni(t, configMap(t, objs))
	if cfg.CoE.NodeType != "BAREMETAL" || cfg.NodeAgent.OVSBridge != "nsx-managed" {
		t.Errorf("overlay ncp.ini: node_type %q, ovs_bridge %q", cfg.CoE.NodeType, cfg.NodeAgent.OVSBridge)
	}
	ds := daemonSet(t, objs, "nsx-node-agent")
	if !slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
		return v.HostPath != nil && v.HostPath.Path == "/var/run/vmware/nestdb"
	}) {
		t.Error("overlay: no hostPath volume /var/run/vmware/nestdb")
	}
	agent := container(t, ds, "nsx-node-agent")
	if !slices.ContainsFunc(agent.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == "/var/run/vmware/nestdb" }) {
		t.Error("overlay: nsx-node-agent does not mount the nestdb socket directory")
	}
	if !slices.Contains(agent.SecurityContext.Capabilities.Add, "DAC_OVERRIDE") {
		t.Error("overlay: nsx-node-agent lacks DAC_OVERRIDE")
	}
	if ovs := container(t, ds, "nsx-ovs"); !slices.Contains(ovs.Command, "--allow-ovs-on-host") {
		t.Errorf("overlay: nsx-ovs command %q lacks --allow-ovs-on-host", ovs.Command)
	}
	base, err := render(deployDir(t))
	if err != nil {
		t.Fatal(err)
	}
	// The overlay repeats the whole ncp.ini: apart from the BAREMETAL keys
	// it must say what the base says.
	baseCfg := parseNCPIni(t, configMap(t, base))
	cfg.CoE.NodeType, cfg.NodeAgent.OVSBridge = baseCfg.CoE.NodeType, baseCfg.NodeAgent.OVSBridge
	if !reflect.DeepEqual(cfg, baseCfg) {
		t.Errorf("overlay ncp.ini drifted from the base's:\n overlay %+v\n base    %+v", cfg, baseCfg)
	}
	// The patch merges: the base's mounts are all still there.
	if got, want := len(agent.VolumeMounts), len(container(t, daemonSet(t, base, "nsx-node-agent"), "nsx-node-agent").VolumeMounts)+1; got != want {
		t.Errorf("overlay: nsx-node-agent has %d mounts, want the base's plus one (%d)", got, want)
	}
}

// The base kustomization must list every manifest, or `kubectl apply -k`
// silently skips one.
func TestKustomizationListsEveryManifest(t *testing.T) {
	k, err := readKustomization(deployDir(t))
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, f := range manifestFiles(t) {
		files = append(files, filepath.Base(f))
	}
	got := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(got, files) {
		t.Errorf("deploy/kustomization.yaml resources %q, deploy/*.yml %q", got, files)
	}
}

// The base ncp.ini parses without errors or unknown-key warnings, and the
// probes and the bootstrap agree with it.
func TestNCPIni(t *testing.T) {
	objs, err := render(deployDir(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseNCPIni(t, configMap(t, objs))
	if cfg.KubeProxy.Dataplane != "ovs" || cfg.CoE.NodeType != "HOSTVM" {
		t.Errorf("base ncp.ini: dataplane %q, node_type %q", cfg.KubeProxy.Dataplane, cfg.CoE.NodeType)
	}
	ds := daemonSet(t, objs, "nsx-node-agent")

	// The agent's probes talk to the socket ncp.ini makes it listen on.
	agent := container(t, ds, "nsx-node-agent")
	for _, p := range []*corev1.Probe{agent.StartupProbe, agent.LivenessProbe} {
		if p == nil || p.Exec == nil || !strings.Contains(strings.Join(p.Exec.Command, " "), `"socket":"`+cfg.NodeAgent.CNISocket+`"`) {
			t.Errorf("nsx-node-agent probe %+v does not use cni_socket %s", p, cfg.NodeAgent.CNISocket)
		}
	}
	// nsx-kube-proxy's liveness probe hits its healthz port.
	_, port, _ := strings.Cut(cfg.KubeProxy.HealthzBindAddr, ":")
	kp := container(t, ds, "nsx-kube-proxy")
	if p := kp.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/livez" || strconv.Itoa(p.HTTPGet.Port.IntValue()) != port {
		t.Errorf("nsx-kube-proxy liveness probe %+v, want /livez on port %s", p, port)
	}
	// Both DaemonSets read the same ConfigMap.
	for _, name := range []string{"nsx-node-agent", "nsx-ncp-bootstrap"} {
		d := daemonSet(t, objs, name)
		if !slices.ContainsFunc(d.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
			return v.ConfigMap != nil && v.ConfigMap.Name == "nsx-node-agent-config"
		}) {
			t.Errorf("DaemonSet %s does not mount the ConfigMap nsx-node-agent-config", name)
		}
	}
}

func configMap(t *testing.T, objs []*unstructured.Unstructured) string {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" && o.GetName() == "nsx-node-agent-config" {
			ini, ok, err := unstructured.NestedString(o.Object, "data", "ncp.ini")
			if !ok || err != nil {
				t.Fatalf("ConfigMap nsx-node-agent-config has no data.ncp.ini: %v", err)
			}
			return ini
		}
	}
	t.Fatal("no ConfigMap nsx-node-agent-config")
	return ""
}

func parseNCPIni(t *testing.T, ini string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(ini), func(msg string, kv ...any) { t.Errorf("ncp.ini: %s %v", msg, kv) })
	if err != nil {
		t.Fatalf("ncp.ini: %v", err)
	}
	return cfg
}

func daemonSet(t *testing.T, objs []*unstructured.Unstructured, name string) *appsv1.DaemonSet {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "DaemonSet" && o.GetName() == name {
			var ds appsv1.DaemonSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &ds); err != nil {
				t.Fatal(err)
			}
			return &ds
		}
	}
	t.Fatalf("no DaemonSet %s", name)
	return nil
}

func container(t *testing.T, ds *appsv1.DaemonSet, name string) *corev1.Container {
	t.Helper()
	cs := ds.Spec.Template.Spec.Containers
	i := slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == name })
	if i < 0 {
		t.Fatalf("DaemonSet %s has no container %s", ds.Name, name)
	}
	return &cs[i]
}

// A duplicate key must fail readDocs, or the strict check above is void.
func TestDuplicateKeysRejected(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dup.yml")
	if err := os.WriteFile(path, []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\nkind: Secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readDocs(path); err == nil {
		t.Fatal("a document with a duplicate key was accepted")
	}
}

// TestCleanupDryRun: deploy/cleanup is valid beside the base (its
// namespace and ConfigMap), and runs every component's cleanup.
func TestCleanupDryRun(t *testing.T) {
	base, err := render(deployDir(t))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := render(filepath.Join(deployDir(t), "cleanup"))
	if err != nil {
		t.Fatal(err)
	}
	validate(t, "cleanup", append(base, objs...))
	ds := daemonSet(t, objs, "nsx-node-cleanup")
	var ran []string
	for _, c := range ds.Spec.Template.Spec.InitContainers {
		if len(c.Command) < 2 || c.Command[1] != "cleanup" {
			t.Errorf("init container %s runs %v, want <component> cleanup", c.Name, c.Command)
			continue
		}
		ran = append(ran, c.Command[0])
	}
	want := []string{"nsx-kube-proxy", "nsx-node-agent", "nsx-ovs", "nsx-ncp-bootstrap"}
	if !slices.Equal(ran, want) {
		t.Errorf("cleanup runs %v, want %v", ran, want)
	}
}
