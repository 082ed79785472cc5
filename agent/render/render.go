// Package render is the agent's render step: it turns an application's
// directory in a checked-out commit into the Kubernetes objects to apply.
//
// A render reads only the checkout: files are opened through an os.Root (or,
// for Kustomize, a file system confined to the repository), so neither the
// application's path nor a symbolic link in the repository can reach the
// agent's own disk, and nothing is fetched from the network. The same commit
// with the same assignment (and, for Helm, the same cluster capabilities)
// always renders the same objects, so every *Error is permanent for that
// input; retrying does not help.
//
// The steps, in order:
//  1. the manifests: every *.yaml, *.yml and *.json file below the path
//     (DIRECTORY), a Kustomize build of the path (KUSTOMIZE), or the Helm
//     chart at the path rendered as `helm template` would (HELM);
//  2. the assignment's Kustomize patches, in order, on the objects as the
//     manifests have them (so a patch names the namespace only if the
//     manifest does);
//  3. ${name} variables substituted in string values, patches' included
//     (not for Helm: see below);
//  4. the assignment's namespace for namespaced objects that name none;
//  5. a check that no object appears twice, and the size limits.
//
// # Helm
//
// A chart is read file by file through an os.Root confined to the chart's
// own directory, charged to the same limits as manifests, and handed to
// Helm's loader in memory: Helm never opens a file, so a link leaving the
// chart fails the render and a template's .Files.Get of a path outside the
// chart ("../../secret") gets the empty string, as for any file the chart
// does not hold. Vendored subcharts (charts/NAME/ and charts/*.tgz) are
// loaded the same way; an archive is unpacked within the limits, so a
// small archive that unpacks to gigabytes fails cleanly. .helmignore is
// honoured. A dependency declared in Chart.yaml but not vendored fails.
//
// Values: the chart's values.yaml, under the assignment's values files
// (relative to the chart), under its Helm values documents, each merged in
// order as `helm template -f` does (maps merge, anything else is replaced,
// null deletes a default). Variables (${cluster.name}, ...) are substituted
// in the string values of the values files and Helm values before
// templating, and not in the rendered objects: a chart may well emit
// "${...}" of its own (a shell script in a ConfigMap).
//
// The release is rendered as `helm template` (and Argo CD) render it:
// .Release.Name is the assignment's release name, .Release.Namespace its
// namespace or "default", .Release.IsInstall true and IsUpgrade false
// (Drover keeps no Helm release records, and a chart generating a value
// "on install" must do so from the same input every time),
// .Release.Revision 1 and .Release.Service "Helm". .Capabilities are the
// cluster's when Options has them, else Helm's defaults. The lookup
// function returns nothing and DNS lookups are off: a render never reaches
// the cluster or the network. required and fail fail the render; a
// missing value renders empty, as with `helm template` (not --strict).
// The rendered documents are read as YAML 1.2 like every manifest here,
// so an unquoted yes or on is a string, where Helm's client would send
// true.
//
// The output is the charts' crds/ objects first (not templated), then the
// templates' objects in Helm's install order (by kind). NOTES.txt and
// empty documents are left out. Hooks (helm.sh/hook) stay, annotations
// intact, for the apply step to run in their phase, except tests, which
// Drover never runs. Errors name the file of the repository (and the line,
// for a template) and never repeat a value of the assignment, since values
// hold secrets.
package render

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Default limits of one render. A render holds every object in memory at
// once, and more while decoding (YAML nodes, then generic values, then
// the objects): measured, a plain-YAML render peaks at about four bytes of
// heap per byte of YAML and a Kustomize build at about ten. The agent
// renders --concurrency applications at a time, so these limits bound the
// agent's memory, not only what it sends to the API server.
const (
	// DefaultMaxFileBytes is per file. No one object can be over about
	// 1.5 MiB (etcd's request limit), but real files bundle many: the
	// Prometheus operator's bundle.yaml of CRDs is 4.4 MB. 8 MiB holds
	// such bundles with room, while a file of generated data or a
	// committed dump is refused before it is read.
	DefaultMaxFileBytes = 8 << 20
	// DefaultMaxBytes is per application: the manifests read, and the
	// rendered objects as JSON, each. 16 MiB is more than twice a full
	// monitoring stack with its CRDs, and keeps a Kustomize build's peak
	// near 160 MiB, so one at a time fits the agent's shipped memory
	// limit of 512 MiB with room.
	DefaultMaxBytes = 16 << 20
	// DefaultMaxObjects is per application.
	DefaultMaxObjects = 10000
)

// Options tunes Render. The zero value is ready to use.
type Options struct {
	// IsNamespaced reports whether objects of a kind are namespaced, for
	// defaulting their namespace. The apply step passes one backed by the
	// cluster's RESTMapper. When nil, a built-in list of the cluster-scoped
	// kinds of Kubernetes decides, and any other kind is namespaced.
	// Either way, a CustomResourceDefinition in the render itself decides
	// for its kind first. Called from the goroutine calling Render; an
	// error it returns fails the render as is (not as an *Error), since it
	// may be transient.
	IsNamespaced func(schema.GroupVersionKind) (bool, error)
	// MaxFileBytes bounds each file a render reads (manifests,
	// kustomizations, patches, generator sources), checked from its size
	// before it is read; 0 means DefaultMaxFileBytes.
	MaxFileBytes int64
	// MaxBytes bounds the manifests read and the objects rendered, each;
	// 0 means DefaultMaxBytes.
	MaxBytes int64
	// MaxObjects bounds the number of objects rendered; 0 means
	// DefaultMaxObjects.
	MaxObjects int
	// KubeVersion is the cluster's Kubernetes version ("v1.37.2") for a
	// Helm chart's .Capabilities.KubeVersion and Chart.yaml's kubeVersion;
	// "" means Helm's default.
	KubeVersion string
	// APIVersions are the cluster's API versions for a Helm chart's
	// .Capabilities.APIVersions, both "group/version" and
	// "group/version/Kind" ("policy/v1/PodDisruptionBudget"); empty means
	// Helm's defaults.
	APIVersions []string
}

func (o Options) withDefaults() Options {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxObjects <= 0 {
		o.MaxObjects = DefaultMaxObjects
	}
	if o.MaxFileBytes <= 0 {
		o.MaxFileBytes = DefaultMaxFileBytes
	}
	return o
}

func (o Options) newBudget() *budget {
	return &budget{maxFileBytes: o.MaxFileBytes, maxBytes: o.MaxBytes, maxObjects: o.MaxObjects}
}

// Error is why an application did not render. It names the file (and the
// line, when known) at fault; the same input fails the same way every time.
type Error struct {
	// Path is the file or directory at fault, relative to the repository
	// root, '/'-separated; empty when the error is about no one file.
	Path string
	// Line is the 1-based line in Path, or 0 when unknown. YAML syntax
	// errors carry their line in Msg ("yaml: line 7: ...").
	Line int
	// Msg says what is wrong.
	Msg string
}

func (e *Error) Error() string {
	switch {
	case e.Path != "" && e.Line > 0:
		return fmt.Sprintf("render %s:%d: %s", e.Path, e.Line, e.Msg)
	case e.Path != "":
		return fmt.Sprintf("render %s: %s", e.Path, e.Msg)
	}
	return "render: " + e.Msg
}

func errorf(p string, line int, format string, args ...any) *Error {
	return &Error{Path: p, Line: line, Msg: fmt.Sprintf(format, args...)}
}

// Render renders assignment a from the checkout at root with the default
// Options.
func Render(ctx context.Context, root string, a *droverv1.AppAssignment) ([]*unstructured.Unstructured, error) {
	return Options{}.Render(ctx, root, a)
}

// Render renders assignment a from the checkout at root, which it only
// reads. The objects come in the order of the manifests (files sorted by
// path, documents in file order; Kustomize's order for Kustomize; for
// Helm, CRDs then Helm's install order). Errors are *Error, except ctx's
// and those of o.IsNamespaced.
func (o Options) Render(ctx context.Context, root string, a *droverv1.AppAssignment) ([]*unstructured.Unstructured, error) {
	o = o.withDefaults()
	r, appPath, err := openApp(root, a)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b := o.newBudget()
	var items []*item
	switch a.GetRender() {
	case droverv1.RenderType_RENDER_TYPE_UNSPECIFIED, droverv1.RenderType_RENDER_TYPE_DIRECTORY:
		// "directory" is the default render type of applications.
		items, err = renderDirectory(ctx, r, appPath, b)
	case droverv1.RenderType_RENDER_TYPE_KUSTOMIZE:
		items, err = renderKustomize(ctx, root, appPath, b)
	case droverv1.RenderType_RENDER_TYPE_HELM:
		items, err = o.renderHelm(ctx, r, appPath, a, b)
	default:
		return nil, errorf("", 0, "render type %v is not supported by this agent", a.GetRender())
	}
	if err != nil {
		return nil, err
	}

	scope := newScope(items, o.IsNamespaced)
	if len(a.GetPatches()) > 0 {
		// Checked before patching too, to name the files: Kustomize would
		// refuse duplicates with a message that does not.
		if err := checkDuplicates(ctx, items, scope); err != nil {
			return nil, err
		}
		if items, err = applyPatches(ctx, items, a.GetPatches()); err != nil {
			return nil, err
		}
	}
	if a.GetRender() != droverv1.RenderType_RENDER_TYPE_HELM {
		// Helm's variables went into its values.
		for _, it := range items {
			substitute(it.obj.Object, a.GetVariables())
		}
	}
	if err := defaultNamespace(ctx, items, a.GetNamespace(), scope); err != nil {
		return nil, err
	}
	if err := checkDuplicates(ctx, items, scope); err != nil {
		return nil, err
	}
	if err := b.checkOutput(items, appPath); err != nil {
		return nil, err
	}
	out := make([]*unstructured.Unstructured, len(items))
	for i, it := range items {
		out[i] = it.obj
	}
	return out, nil
}

// openApp opens the checkout at root and checks a's path is a directory
// in it, which it returns cleaned.
func openApp(root string, a *droverv1.AppAssignment) (*os.Root, string, error) {
	appPath, err := cleanPath(a.GetPath())
	if err != nil {
		return nil, "", err
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, "", fmt.Errorf("render: open checkout: %w", err)
	}
	info, err := r.Stat(appPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		err = errorf(appPath, 0, "no such directory in the repository")
	case err != nil:
		err = errorf(appPath, 0, "cannot be read, or a symbolic link on the way leads outside the repository: %v", pathErrCause(err))
	case !info.IsDir():
		err = errorf(appPath, 0, "not a directory")
	}
	if err != nil {
		r.Close()
		return nil, "", err
	}
	return r, appPath, nil
}

// item is one rendered object and where it came from.
type item struct {
	obj *unstructured.Unstructured
	// path is the file it came from, relative to the repository root
	// (for Kustomize, the application's directory); line its first line
	// there, 0 if unknown.
	path string
	line int
	// what says which object of the file it is ("document 2", "document 1,
	// item 3"), or how it was made ("kustomize build").
	what string
}

func (it *item) source() string {
	if it.line > 0 {
		return fmt.Sprintf("%s:%d (%s)", it.path, it.line, it.what)
	}
	return fmt.Sprintf("%s (%s)", it.path, it.what)
}

// cleanPath validates an application's path: relative, inside the
// repository. "" means the repository root.
func cleanPath(p string) (string, error) {
	if p == "" {
		return ".", nil
	}
	slashed := filepath.ToSlash(p)
	if strings.HasPrefix(slashed, "/") || filepath.IsAbs(p) {
		return "", errorf("", 0, "path %q: must be relative to the repository root", p)
	}
	c := path.Clean(slashed)
	if !filepath.IsLocal(filepath.FromSlash(c)) && c != "." {
		return "", errorf("", 0, "path %q: leads outside the repository", p)
	}
	return c, nil
}

// pathErrCause drops the *fs.PathError's operation and path (an absolute
// path in the agent's cache, which tells the user nothing).
func pathErrCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// budget tracks a render's limits. Its messages name the agent's flags:
// the limits are the agent's, not the repository's, and the flag is what
// an operator changes.
type budget struct {
	maxFileBytes int64
	maxBytes     int64
	maxObjects   int
	readBytes    int64
}

// read checks a file of size bytes at p (relative to the repository)
// against the limits and charges it to the render, before it is read.
func (b *budget) read(p string, size int64) error {
	if err := b.checkFile(p, size); err != nil {
		return err
	}
	b.readBytes += size
	if b.readBytes > b.maxBytes {
		s, l := sizes(b.readBytes, b.maxBytes)
		return errorf(p, 0, "with this file the manifests read add up to %s, over the agent's limit of %s per application (--max-render-bytes)", s, l)
	}
	return nil
}

// checkFile checks a file of size bytes at p against the per-file limit
// only, for a file read again (and charged) later.
func (b *budget) checkFile(p string, size int64) error {
	if size > b.maxFileBytes {
		s, l := sizes(size, b.maxFileBytes)
		return errorf(p, 0, "%s is over the agent's limit of %s per manifest file (--max-manifest-bytes)", s, l)
	}
	return nil
}

func (b *budget) checkCount(n int, p string) error {
	if n > b.maxObjects {
		return errorf(p, 0, "more than %d objects rendered, over the agent's limit per application (--max-render-objects)", b.maxObjects)
	}
	return nil
}

// checkOutput checks the limits on the final objects: variables can grow
// them after reading.
func (b *budget) checkOutput(items []*item, appPath string) error {
	if err := b.checkCount(len(items), appPath); err != nil {
		return err
	}
	var total int64
	for _, it := range items {
		data, err := it.obj.MarshalJSON()
		if err != nil {
			return errorf(it.path, it.line, "%s: %v", it.what, err)
		}
		total += int64(len(data))
		if total > b.maxBytes {
			_, l := sizes(total, b.maxBytes)
			return errorf(appPath, 0, "the rendered objects exceed the agent's limit of %s per application (--max-render-bytes)", l)
		}
	}
	return nil
}

// sizes formats size and limit for a message saying size is over limit,
// in exact bytes where rounding would make them read the same.
func sizes(size, limit int64) (string, string) {
	s, l := formatBytes(size), formatBytes(limit)
	if s == l || s == formatBytesPrec(limit, 1) {
		return fmt.Sprintf("%d bytes", size), fmt.Sprintf("%s (%d bytes)", l, limit)
	}
	return s, l
}

// formatBytes formats n in the largest binary unit it reaches, whole when
// exact ("4 MiB"), else to a tenth ("52.4 MiB").
func formatBytes(n int64) string {
	return formatBytesPrec(n, -1)
}

// formatBytesPrec is formatBytes with prec decimals; -1 means none when
// exact, else one.
func formatBytesPrec(n int64, prec int) string {
	units := []string{"KiB", "MiB", "GiB", "TiB"}
	if n < 1<<10 {
		return fmt.Sprintf("%d bytes", n)
	}
	u, div := 0, int64(1<<10)
	for u < len(units)-1 && n >= div<<10 {
		u, div = u+1, div<<10
	}
	if prec < 0 {
		if n%div == 0 {
			return fmt.Sprintf("%d %s", n/div, units[u])
		}
		prec = 1
	}
	return fmt.Sprintf("%.*f %s", prec, float64(n)/float64(div), units[u])
}
