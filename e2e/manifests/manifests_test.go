// Package manifests tests the Kubernetes manifests in deploy/: that they
// build with Kustomize as `kubectl apply -k` would, that every flag and
// environment variable they give drover-hub and drover-agent is one the
// programs accept, and that applied to a real API server (with the Secrets
// their comments ask for) both Deployments become Available.
package manifests

import (
	"context"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/drover-dev/drover/agent/daemon"
	"github.com/drover-dev/drover/e2e/testbed"
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
			env[e.Name] = "from-" + e.ValueFrom.FieldRef.FieldPath
		}
	}
	return env
}

// parse runs args and env through a program's own flag definitions, so a
// misspelt flag or a value the program refuses fails here.
func parse(t *testing.T, program string, register func(*envflag.FlagSet), args []string, env map[string]string) {
	t.Helper()
	for k, v := range env {
		if !strings.HasPrefix(k, "DROVER_") {
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

// secrets are the Secret keys the manifests' comments tell the operator to
// create, with values of the right shape.
var secrets = map[string]string{
	"drover-hub-database/url":           "postgres://drover:secret@postgres.example:5432/drover",
	"drover-agent-bootstrap/join-token": "drj_example",
	"drover-agent-bootstrap/hub-ca.crt": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
}

func TestManifestsConfigureThePrograms(t *testing.T) {
	t.Run("hub", func(t *testing.T) {
		objs := build(t, "hub")
		d := deployment(t, objs, "drover-hub")
		env := containerEnv(t, objs, d, secrets)
		if _, ok := env["DROVER_DATABASE_URL"]; !ok {
			t.Errorf("the hub gets no DROVER_DATABASE_URL: it would run a private PostgreSQL inside its container")
		}
		cfg := server.DefaultConfig()
		parse(t, "drover-hub", cfg.RegisterFlags, d.Spec.Template.Spec.Containers[0].Args, env)
		if err := cfg.Validate(); err != nil {
			t.Fatalf("drover-hub refuses the manifests' configuration: %v", err)
		}
		if !slices.Contains(cfg.Hostnames, "drover-hub.drover.svc") {
			t.Errorf("hostnames %v: the in-cluster Service name is missing", cfg.Hostnames)
		}
		ports := map[string]bool{}
		for _, p := range d.Spec.Template.Spec.Containers[0].Ports {
			ports[fmt.Sprint(p.ContainerPort)] = true
		}
		for _, addr := range []string{cfg.AgentAddr, cfg.HTTPAddr} {
			if port := addr[strings.LastIndex(addr, ":")+1:]; !ports[port] {
				t.Errorf("the hub listens on %s but the container declares ports %v", addr, ports)
			}
		}
		if mount := d.Spec.Template.Spec.Containers[0].VolumeMounts; len(mount) == 0 || mount[0].MountPath != cfg.DataDir {
			t.Errorf("data directory %s is not the mounted volume (%v)", cfg.DataDir, mount)
		}
	})
	t.Run("agent", func(t *testing.T) {
		objs := build(t, "agent")
		d := deployment(t, objs, "drover-agent")
		env := containerEnv(t, objs, d, secrets)
		cfg := daemon.DefaultConfig()
		parse(t, "drover-agent", cfg.RegisterFlags, d.Spec.Template.Spec.Containers[0].Args, env)
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

func waitAvailable(ctx context.Context, t *testing.T, kube kubernetes.Interface, ns, name string) {
	t.Helper()
	var last string
	for {
		d, err := kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, c := range d.Status.Conditions {
				if c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue {
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
