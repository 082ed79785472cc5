// Package manifests tests the Kubernetes manifests in deploy/: that they
// build with Kustomize as `kubectl apply -k` would, that every flag and
// environment variable they give drover-hub and drover-agent is one the
// programs accept, that the hub runs as replicas that find each other, that
// the commands in their comments make Secrets the hub accepts, and that
// applied to a real API server (with those Secrets) both Deployments become
// Available with every replica ready.
package manifests

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/drover-dev/drover/agent/daemon"
	"github.com/drover-dev/drover/e2e/testbed"
	"github.com/drover-dev/drover/hub/pki"
	"github.com/drover-dev/drover/hub/server"
	"github.com/drover-dev/drover/internal/envflag"
)

func TestMain(m *testing.M) { testbed.Main(m) }

// build renders deploy/NAME with Kustomize.
func build(t *testing.T, name string) []*unstructured.Unstructured {
	t.Helper()
	dir := filepath.Join("..", "..", "deploy", name)
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range m.Resources() {
		raw, err := r.Map()
		if err != nil {
			t.Fatalf("%s: %v", r.CurId(), err)
		}
		objs = append(objs, &unstructured.Unstructured{Object: raw})
	}
	return objs
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && strings.HasPrefix(o.GetName(), name) {
			return o
		}
	}
	t.Fatalf("no %s %s in the build", kind, name)
	return nil
}

func deployment(t *testing.T, objs []*unstructured.Unstructured, name string) *appsv1.Deployment {
	t.Helper()
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objs, "Deployment", name).Object, &d); err != nil {
		t.Fatalf("Deployment %s: %v", name, err)
	}
	return &d
}

// containerEnv is the environment the Deployment's first container gets:
// its ConfigMap (generated, so taken from the build), then its env entries,
// with Secret references resolved from secrets.
func containerEnv(t *testing.T, objs []*unstructured.Unstructured, d *appsv1.Deployment, secrets map[string]string) map[string]string {
	t.Helper()
	c := d.Spec.Template.Spec.Containers[0]
	env := map[string]string{}
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef == nil {
			t.Fatalf("%s: envFrom other than a ConfigMap", d.Name)
		}
		data, _, err := unstructured.NestedStringMap(find(t, objs, "ConfigMap", from.ConfigMapRef.Name).Object, "data")
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range data {
			env[k] = v
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			v, ok := secrets[ref.Name+"/"+ref.Key]
			if !ok {
				t.Fatalf("%s: env %s refers to Secret key %s/%s, which the manifests' instructions do not create", d.Name, e.Name, ref.Name, ref.Key)
			}
			env[e.Name] = v
		case e.ValueFrom.FieldRef != nil:
			v, ok := podFields[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Fatalf("%s: env %s from pod field %s, which this test gives no value", d.Name, e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		}
	}
	for k, v := range env {
		env[k] = expand(t, d.Name, v, env)
	}
	return env
}

// podFields are the downward API's values for a pod of the Deployments.
var podFields = map[string]string{
	"metadata.name": "drover-hub-7c9d5b8f4-x2x7k",
	"status.podIP":  "10.244.1.7",
}

// varRef is a reference to an environment variable in a container's args
// or env, which the kubelet expands.
var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expand replaces $(NAME) in s with env's NAME as the kubelet does. A
// reference to no variable stays as it is in a real pod, where it would
// end up in the program's settings verbatim, so here it fails.
func expand(t *testing.T, deployment, s string, env map[string]string) string {
	t.Helper()
	return varRef.ReplaceAllStringFunc(s, func(ref string) string {
		v, ok := env[varRef.FindStringSubmatch(ref)[1]]
		if !ok {
			t.Errorf("%s: %s refers to no environment variable of the container", deployment, ref)
			return ref
		}
		return v
	})
}

// containerArgs is the Deployment's first container's args as the program
// gets them, variable references expanded.
func containerArgs(t *testing.T, d *appsv1.Deployment, env map[string]string) []string {
	t.Helper()
	var args []string
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		args = append(args, expand(t, d.Name, a, env))
	}
	return args
}

// referenced are the names of the variables the Deployment's first
// container refers to in its args and env.
func referenced(d *appsv1.Deployment) map[string]bool {
	c := d.Spec.Template.Spec.Containers[0]
	texts := slices.Clone(c.Args)
	for _, e := range c.Env {
		texts = append(texts, e.Value)
	}
	names := map[string]bool{}
	for _, text := range texts {
		for _, m := range varRef.FindAllStringSubmatch(text, -1) {
			names[m[1]] = true
		}
	}
	return names
}

// parse runs args and env through a program's own flag definitions, so a
// misspelt flag or a value the program refuses fails here. Every variable
// of env is one of the program's DROVER_ settings, or one that the args or
// other variables refer to (in refs).
func parse(t *testing.T, program string, register func(*envflag.FlagSet), args []string, env map[string]string, refs map[string]bool) {
	t.Helper()
	for k, v := range env {
		if !strings.HasPrefix(k, "DROVER_") && !refs[k] {
			t.Errorf("%s: environment variable %s is not one of its DROVER_ settings", program, k)
		}
		t.Setenv(k, v)
	}
	fs := flag.NewFlagSet(program, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // the error says what is wrong; no usage text
	ef := envflag.New(fs)
	register(ef)
	if err := ef.Parse(args); err != nil {
		t.Fatalf("%s %s: %v", program, strings.Join(args, " "), err)
	}
	if fs.NArg() != 0 {
		t.Fatalf("%s: stray arguments %q", program, fs.Args())
	}
}

// newSecrets returns the Secret keys the manifests' comments tell the
// operator to create, by "SECRET/KEY", with values of the right shape: a
// real CA, real random keys.
func newSecrets(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	if _, err := pki.LoadOrCreateCA(dir, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	file := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	key := func() string {
		b := make([]byte, 32)
		_, _ = rand.Read(b) // never fails
		// As `openssl rand -base64 32` prints it.
		return base64.StdEncoding.EncodeToString(b) + "\n"
	}
	return map[string]string{
		"drover-hub-database/url":           "postgres://drover:secret@postgres.example:5432/drover",
		"drover-hub-ca/ca.crt":              file(pki.CACertFile),
		"drover-hub-ca/ca.key":              file(pki.CAKeyFile),
		"drover-hub-keys/secret-key":        key(),
		"drover-hub-keys/gossip-key":        key(),
		"drover-agent-bootstrap/join-token": "drj_example",
		"drover-agent-bootstrap/hub-ca.crt": file(pki.CACertFile),
	}
}

// secretFiles writes the files of the Deployment's Secret volumes, as the
// kubelet would mount them, into a directory and returns a function
// mapping a path in the container to that copy; it fails for a path in no
// Secret volume, or naming a key the Secret does not have.
func secretFiles(t *testing.T, d *appsv1.Deployment, secrets map[string]string) func(string) string {
	t.Helper()
	root := t.TempDir()
	mounts := map[string]string{} // mount path → Secret name
	c := d.Spec.Template.Spec.Containers[0]
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret == nil {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == v.Name {
				mounts[m.MountPath] = v.Secret.SecretName
			}
		}
	}
	return func(path string) string {
		t.Helper()
		secret, ok := mounts[filepath.Dir(path)]
		if !ok {
			t.Fatalf("%s: %s is in no Secret volume (mounts %v)", d.Name, path, mounts)
		}
		v, ok := secrets[secret+"/"+filepath.Base(path)]
		if !ok {
			t.Fatalf("%s: %s is key %s of Secret %s, which the manifests' instructions do not create", d.Name, path, filepath.Base(path), secret)
		}
		local := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(local), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(local, []byte(v), 0o440); err != nil {
			t.Fatal(err)
		}
		return local
	}
}

func TestManifestsConfigureThePrograms(t *testing.T) {
	secrets := newSecrets(t)
	t.Run("hub", func(t *testing.T) {
		objs := build(t, "hub")
		d := deployment(t, objs, "drover-hub")
		env := containerEnv(t, objs, d, secrets)
		if _, ok := env["DROVER_DATABASE_URL"]; !ok {
			t.Errorf("the hub gets no DROVER_DATABASE_URL: it would run a private PostgreSQL inside its container")
		}
		cfg := server.DefaultConfig()
		parse(t, "drover-hub", cfg.RegisterFlags, containerArgs(t, d, env), env, referenced(d))
		if err := cfg.Validate(); err != nil {
			t.Fatalf("drover-hub refuses the manifests' configuration: %v", err)
		}
		if !slices.Contains(cfg.Hostnames, "drover-hub.drover.svc") {
			t.Errorf("hostnames %v: the in-cluster Service name is missing", cfg.Hostnames)
		}
		c := d.Spec.Template.Spec.Containers[0]
		ports := map[string]bool{}
		for _, p := range c.Ports {
			ports[fmt.Sprint(p.ContainerPort)] = true
		}
		for _, addr := range []string{cfg.AgentAddr, cfg.HTTPAddr, cfg.PeerAddr} {
			if port := addr[strings.LastIndex(addr, ":")+1:]; !ports[port] {
				t.Errorf("the hub listens on %s but the container declares ports %v", addr, ports)
			}
		}
		if cfg.Replica != podFields["metadata.name"] {
			t.Errorf("replica name %q: want the pod's name %q, unique among the replicas", cfg.Replica, podFields["metadata.name"])
		}
		if want := podFields["status.podIP"] + ":"; !strings.HasPrefix(cfg.PeerAddr, want) {
			t.Errorf("gossip address %q: want the pod's IP, %sPORT", cfg.PeerAddr, want)
		}
		// The data directory is the pod's own, and the agent CA is shared:
		// from the Secret, one the hub accepts.
		volumes := map[string]corev1.VolumeSource{}
		for _, v := range d.Spec.Template.Spec.Volumes {
			volumes[v.Name] = v.VolumeSource
		}
		var dataDir *corev1.VolumeMount
		for i, m := range c.VolumeMounts {
			if m.MountPath == cfg.DataDir {
				dataDir = &c.VolumeMounts[i]
			}
		}
		switch {
		case dataDir == nil:
			t.Errorf("data directory %s is not a mounted volume (%v)", cfg.DataDir, c.VolumeMounts)
		case volumes[dataDir.Name].EmptyDir == nil:
			t.Errorf("data directory %s is volume %s, not the pod's own emptyDir: %+v", cfg.DataDir, dataDir.Name, volumes[dataDir.Name])
		}
		if cfg.CACertFile == "" {
			t.Fatalf("the hub gets no --ca-cert: each replica would make its own CA")
		}
		file := secretFiles(t, d, secrets)
		if _, err := pki.LoadCA(file(cfg.CACertFile), file(cfg.CAKeyFile)); err != nil {
			t.Errorf("the hub refuses the CA from its Secret: %v", err)
		}
	})
	t.Run("agent", func(t *testing.T) {
		objs := build(t, "agent")
		d := deployment(t, objs, "drover-agent")
		env := containerEnv(t, objs, d, secrets)
		cfg := daemon.DefaultConfig()
		parse(t, "drover-agent", cfg.RegisterFlags, containerArgs(t, d, env), env, referenced(d))
		// Validate checks the identity on disk; the manifests' state volume
		// starts empty, so this is the first start that needs the bootstrap.
		cfg.StateDir = t.TempDir()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("drover-agent refuses the manifests' configuration: %v", err)
		}
		mounts := map[string]bool{}
		for _, m := range d.Spec.Template.Spec.Containers[0].VolumeMounts {
			mounts[m.MountPath] = true
		}
		for _, p := range []string{"/var/lib/drover-agent", filepath.Dir(cfg.HubCAFile)} {
			if !mounts[p] {
				t.Errorf("%s is not a mounted volume (mounts %v)", p, mounts)
			}
		}
	})
}

// The hub runs as three replicas that find each other, are taken away one
// at a time, and take traffic once ready.
func TestHubManifestsRunReplicas(t *testing.T) {
	objs := build(t, "hub")
	d := deployment(t, objs, "drover-hub")
	env := containerEnv(t, objs, d, newSecrets(t))
	cfg := server.DefaultConfig()
	parse(t, "drover-hub", cfg.RegisterFlags, containerArgs(t, d, env), env, referenced(d))
	pod := labels.Set(d.Spec.Template.Labels)

	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("replicas %v: want 3", d.Spec.Replicas)
	}
	if ru := d.Spec.Strategy.RollingUpdate; d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || ru == nil ||
		ru.MaxUnavailable == nil || ru.MaxUnavailable.String() != "1" || ru.MaxSurge == nil || ru.MaxSurge.Type != intstr.Int || ru.MaxSurge.IntVal > 1 {
		t.Errorf("strategy %+v: want a rolling update, one replica unavailable at most, one extra at most", d.Spec.Strategy)
	}
	var spread bool
	if a := d.Spec.Template.Spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for _, term := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			sel, err := metav1.LabelSelectorAsSelector(term.PodAffinityTerm.LabelSelector)
			spread = spread || err == nil && sel.Matches(pod) && term.PodAffinityTerm.TopologyKey == corev1.LabelHostname
		}
	}
	if !spread {
		t.Errorf("the hub pods are not spread over nodes by a preferred anti-affinity: %+v", d.Spec.Template.Spec.Affinity)
	}

	var pdb policyv1.PodDisruptionBudget
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objs, "PodDisruptionBudget", "drover-hub").Object, &pdb); err != nil {
		t.Fatal(err)
	}
	if sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err != nil || !sel.Matches(pod) || sel.Empty() {
		t.Errorf("PodDisruptionBudget selector %v does not select the hub pods %v (%v)", pdb.Spec.Selector, pod, err)
	}
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.String() != "1" {
		t.Errorf("PodDisruptionBudget maxUnavailable %v: want 1", pdb.Spec.MaxUnavailable)
	}

	// --peers names the headless Service, which lists every hub pod, ready
	// or not, on the gossip port in both protocols.
	if len(cfg.Peers) != 1 {
		t.Fatalf("--peers %v: want the gossip Service's name", cfg.Peers)
	}
	host, port, _ := net.SplitHostPort(cfg.Peers[0])
	_, ownPort, _ := net.SplitHostPort(cfg.PeerAddr)
	if port != ownPort {
		t.Errorf("--peers %s and --peer-addr %s: not the same port", cfg.Peers[0], cfg.PeerAddr)
	}
	var svc corev1.Service
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objs, "Service", strings.Split(host, ".")[0]).Object, &svc); err != nil {
		t.Fatal(err)
	}
	if svc.Name != strings.Split(host, ".")[0] {
		t.Errorf("--peers %s: no Service of that name (found %s)", host, svc.Name)
	}
	if svc.Spec.ClusterIP != corev1.ClusterIPNone || !svc.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s: clusterIP %q, publishNotReadyAddresses %v: want a headless Service listing pods not yet ready", svc.Name, svc.Spec.ClusterIP, svc.Spec.PublishNotReadyAddresses)
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(pod) || len(svc.Spec.Selector) == 0 {
		t.Errorf("Service %s selector %v does not select the hub pods %v", svc.Name, svc.Spec.Selector, pod)
	}
	protocols := map[corev1.Protocol]bool{}
	for _, p := range svc.Spec.Ports {
		if fmt.Sprint(p.Port) == port && p.TargetPort.String() == port {
			protocols[p.Protocol] = true
		}
	}
	if !protocols[corev1.ProtocolTCP] || !protocols[corev1.ProtocolUDP] {
		t.Errorf("Service %s ports %+v: want %s in TCP and in UDP", svc.Name, svc.Spec.Ports, port)
	}

	c := d.Spec.Template.Spec.Containers[0]
	_, httpPort, _ := net.SplitHostPort(cfg.HTTPAddr)
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || fmt.Sprint(containerPort(t, c, p.HTTPGet.Port)) != httpPort {
		t.Errorf("readiness probe %+v: want GET /readyz on the HTTP port %s", c.ReadinessProbe, httpPort)
	}
}

// containerPort resolves a probe's port, by number or by name.
func containerPort(t *testing.T, c corev1.Container, port intstr.IntOrString) int32 {
	t.Helper()
	if port.Type == intstr.Int {
		return port.IntVal
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return p.ContainerPort
		}
	}
	t.Errorf("container %s has no port named %s", c.Name, port.StrVal)
	return 0
}

// instructions are the shell commands in the comments at the top of
// deploy/NAME/kustomization.yaml, continuation lines joined.
func instructions(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", name, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	var cur string
	for line := range strings.Lines(string(b)) {
		text, ok := strings.CutPrefix(strings.TrimSpace(line), "#")
		if !ok {
			break // the comments end where the Kustomization starts
		}
		text = strings.TrimSpace(text)
		if cur == "" && !strings.HasPrefix(text, "openssl ") && !strings.HasPrefix(text, "kubectl ") {
			continue
		}
		if more, ok := strings.CutSuffix(text, "\\"); ok {
			cur += more
			continue
		}
		cmds = append(cmds, cur+text)
		cur = ""
	}
	return cmds
}

// secretKeys are the "SECRET/KEY"s that `kubectl create secret generic`
// commands create.
func secretKeys(cmds []string) []string {
	var keys []string
	for _, c := range cmds {
		_, rest, ok := strings.Cut(c, "create secret generic ")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		for _, f := range fields[1:] {
			var key string
			if v, ok := strings.CutPrefix(f, "--from-literal="); ok {
				key, _, _ = strings.Cut(v, "=")
			} else if v, ok := strings.CutPrefix(f, "--from-file="); ok {
				key, _, _ = strings.Cut(v, "=")
				key = filepath.Base(key)
			}
			if key != "" {
				keys = append(keys, fields[0]+"/"+key)
			}
		}
	}
	slices.Sort(keys)
	return keys
}

// The commands in the hub's instructions make what the hub accepts: a CA
// pki.LoadCA loads, keys its configuration takes; and they create exactly
// the Secret keys the manifests use.
func TestHubInstructionsMakeWhatTheHubAccepts(t *testing.T) {
	cmds := instructions(t, "hub")
	dir := t.TempDir()
	sh := func(cmd string) string {
		t.Helper()
		c := exec.Command("sh", "-c", cmd)
		c.Dir = dir
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		return string(out)
	}
	var ran int
	for _, c := range cmds {
		if strings.HasPrefix(c, "openssl ") {
			sh(c)
			ran++
		}
	}
	if ran == 0 {
		t.Fatalf("no openssl command in the instructions: %q", cmds)
	}
	if _, err := pki.LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")); err != nil {
		t.Errorf("the hub refuses the CA the instructions make: %v", err)
	}

	// The keys: each $(openssl ...) the kubectl commands run.
	env := map[string]string{}
	for _, c := range cmds {
		for _, m := range regexp.MustCompile(`--from-literal=([a-z-]+)="\$\((openssl [^)]*)\)"`).FindAllStringSubmatch(c, -1) {
			env[m[1]] = sh(m[2])
		}
	}
	cfg := server.DefaultConfig()
	t.Setenv("DROVER_SECRET_KEY", env["secret-key"])
	t.Setenv("DROVER_GOSSIP_KEY", env["gossip-key"])
	parse(t, "drover-hub", cfg.RegisterFlags, nil, nil, nil)
	if cfg.SecretKey == "" || cfg.GossipKey == "" {
		t.Errorf("the instructions make no secret-key or gossip-key with openssl: %q", cmds)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the hub refuses the keys the instructions make: %v", err)
	}

	var want []string
	for k := range newSecrets(t) {
		if strings.HasPrefix(k, "drover-hub-") {
			want = append(want, k)
		}
	}
	slices.Sort(want)
	if got := secretKeys(cmds); !slices.Equal(got, want) {
		t.Errorf("the instructions create Secret keys %q; the manifests need %q", got, want)
	}
}

func TestManifestsApplyAndBecomeAvailable(t *testing.T) {
	cluster := testbed.Clusters(t, 1)[0]
	kube := cluster.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	dyn, err := dynamic.NewForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(kube.Discovery()))

	secrets := newSecrets(t)
	for _, tc := range []struct{ dir, ns, deployment string }{
		{"hub", "drover", "drover-hub"},
		{"agent", "drover-system", "drover-agent"},
	} {
		objs := build(t, tc.dir)
		// Namespaces first, as kubectl apply -k orders them; then the
		// Secrets the operator creates by hand, then the rest.
		for _, o := range objs {
			if o.GetKind() == "Namespace" {
				apply(ctx, t, dyn, mapper, o)
			}
		}
		for key, v := range secrets {
			if name, k, _ := strings.Cut(key, "/"); strings.HasPrefix(name, tc.deployment) {
				createSecret(ctx, t, kube, tc.ns, name, k, v)
			}
		}
		for _, o := range objs {
			if o.GetKind() != "Namespace" {
				apply(ctx, t, dyn, mapper, o)
			}
			if o.GetKind() == "PersistentVolumeClaim" {
				provideVolume(ctx, t, kube, o)
			}
		}
		waitAvailable(ctx, t, kube, tc.ns, tc.deployment)
	}
}

func apply(ctx context.Context, t *testing.T, dyn dynamic.Interface, mapper *restmapper.DeferredDiscoveryRESTMapper, o *unstructured.Unstructured) {
	t.Helper()
	gvk := o.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatalf("%s %s: %v", gvk.Kind, o.GetName(), err)
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == "namespace" {
		ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	if _, err := ri.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: "drover-manifests-test", Force: true}); err != nil {
		t.Fatalf("apply %s %s/%s: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
	}
}

// createSecret adds key to Secret ns/name, creating it if needed.
func createSecret(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name, key, value string) {
	t.Helper()
	s, err := kube.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
		s.StringData = map[string]string{key: value}
		_, err = kube.CoreV1().Secrets(ns).Create(ctx, s, metav1.CreateOptions{})
	} else if err == nil {
		s.StringData = map[string]string{key: value}
		_, err = kube.CoreV1().Secrets(ns).Update(ctx, s, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatalf("secret %s/%s: %v", ns, name, err)
	}
}

// provideVolume creates a PersistentVolume the claim can bind to: the test
// bed's clusters have no storage provisioner, as many bare clusters do not.
func provideVolume(ctx context.Context, t *testing.T, kube kubernetes.Interface, claim *unstructured.Unstructured) {
	t.Helper()
	var pvc corev1.PersistentVolumeClaim
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(claim.Object, &pvc); err != nil {
		t.Fatal(err)
	}
	size := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	if size.IsZero() {
		size = resource.MustParse("1Gi")
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: pvc.Namespace + "-" + pvc.Name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			ClaimRef:                      &corev1.ObjectReference{Namespace: pvc.Namespace, Name: pvc.Name},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/" + pvc.Name}},
		},
	}
	if _, err := kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatalf("volume for %s/%s: %v", pvc.Namespace, pvc.Name, err)
	}
}

// waitAvailable waits until Deployment ns/name is Available with every
// replica it asks for ready: Available alone allows maxUnavailable fewer.
func waitAvailable(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name string) {
	t.Helper()
	var last string
	for {
		d, err := kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, c := range d.Status.Conditions {
				if c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue &&
					d.Spec.Replicas != nil && d.Status.ReadyReplicas == *d.Spec.Replicas {
					return
				}
			}
			last = fmt.Sprintf("%d/%d ready, conditions %v", d.Status.ReadyReplicas, d.Status.Replicas, d.Status.Conditions)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			pods, _ := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
			var ps []string
			for _, p := range pods.Items {
				ps = append(ps, fmt.Sprintf("%s %s %v", p.Name, p.Status.Phase, p.Status.Conditions))
			}
			t.Fatalf("Deployment %s/%s not Available: %s; pods: %v", ns, name, last, ps)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
