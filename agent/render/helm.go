package render

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// helmHookAnnotation marks a Helm hook; its value lists the events.
const helmHookAnnotation = "helm.sh/hook"

// minSecretLen is the shortest value an error message is searched for:
// shorter ones ("1", "true", "web") would blank out the message's words
// and are not secrets worth the name.
const minSecretLen = 4

// helmRelease is a loaded chart with what the assignment gives it.
type helmRelease struct {
	chart  *chart.Chart
	origin *chartOrigin
	// values are the assignment's values (values files, then its Helm
	// values), merged and substituted, not yet over the chart's defaults.
	values map[string]any
	// secrets are the string values of the assignment, which no message
	// may repeat.
	secrets []string
}

// HelmValues returns the values a Helm render of assignment a from the
// checkout at root gives its chart: the chart's defaults, under its values
// files, under the assignment's Helm values, with variables substituted
// (what `droverctl render --values-only` shows). Errors are *Error, or
// ctx's.
func (o Options) HelmValues(ctx context.Context, root string, a *droverv1.AppAssignment) (map[string]any, error) {
	o = o.withDefaults()
	r, appPath, err := openApp(root, a)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	h, err := loadRelease(ctx, r, appPath, a, o.newBudget())
	if err != nil {
		return nil, err
	}
	vals, err := util.CoalesceValues(h.chart, h.values)
	if err != nil {
		return nil, h.errorf(appPath, 0, "values: %v", err)
	}
	return vals.AsMap(), nil
}

// renderHelm renders the chart in appPath of r as `helm template` would
// for the assignment, with the cluster's capabilities from o.
func (o Options) renderHelm(ctx context.Context, r *os.Root, appPath string, a *droverv1.AppAssignment, b *budget) ([]*item, error) {
	h, err := loadRelease(ctx, r, appPath, a, b)
	if err != nil {
		return nil, err
	}
	caps, err := o.capabilities()
	if err != nil {
		return nil, err
	}
	if kv := h.chart.Metadata.KubeVersion; kv != "" && !chartutil.IsCompatibleRange(kv, caps.KubeVersion.String()) {
		return nil, h.errorf(path.Join(appPath, "Chart.yaml"), 0, "the chart requires kubeVersion %s, which Kubernetes %s is not", kv, caps.KubeVersion.Version)
	}
	namespace := a.GetNamespace()
	if namespace == "" {
		// What `helm template` gives without --namespace.
		namespace = "default"
	}
	release := common.ReleaseOptions{
		Name:      a.GetReleaseName(),
		Namespace: namespace,
		Revision:  1,
		IsInstall: true,
	}
	if release.Name == "" {
		release.Name = a.GetName()
	}
	top, err := util.ToRenderValues(h.chart, h.values, release, caps)
	if err != nil {
		return nil, h.errorf(path.Join(appPath, "values.schema.json"), 0, "%v", err)
	}
	names := h.templateNames()
	// The zero Engine is `helm template`'s: no cluster behind lookup
	// (it returns nothing), no DNS, and required and fail are errors.
	rendered, err := engine.Engine{}.RenderWithContext(ctx, h.chart, top)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, h.templateError(err, names, appPath)
	}

	var renderedBytes int64
	for _, content := range rendered {
		renderedBytes += int64(len(content))
	}
	if renderedBytes > b.maxBytes {
		// Checked before decoding, which takes several times as much.
		s, l := sizes(renderedBytes, b.maxBytes)
		return nil, errorf(appPath, 0, "the chart's templates rendered %s, over the agent's limit of %s per application (--max-render-bytes)", s, l)
	}

	items, err := h.crdItems()
	if err != nil {
		return nil, err
	}
	files := make([]string, 0, len(rendered))
	for name, content := range rendered {
		if strings.HasSuffix(name, "NOTES.txt") || strings.TrimSpace(content) == "" {
			continue
		}
		files = append(files, name)
	}
	// Helm's order: by template name, then by kind below.
	slices.Sort(files)
	var objs []*item
	for _, name := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fo := names[name]
		decoded, err := decodeYAML(fo.path, []byte(rendered[name]))
		if err != nil {
			var re *Error
			if errors.As(err, &re) {
				// The line yaml names is the rendered output's, not
				// the template's.
				re.Line = 0
				re.Msg = inArchive(fo, "rendered "+re.Msg)
				re.Msg = h.redact(re.Msg)
			}
			return nil, err
		}
		for _, it := range decoded {
			it.line = 0
			it.what = inArchive(fo, "rendered "+it.what)
			if isTestHook(it) {
				continue
			}
			objs = append(objs, it)
		}
		if err := b.checkCount(len(items)+len(objs), fo.path); err != nil {
			return nil, err
		}
	}
	sortByKind(objs)
	return append(items, objs...), nil
}

// loadRelease loads the chart in appPath and the assignment's values
// for it, and enables its dependencies as the values say.
func loadRelease(ctx context.Context, r *os.Root, appPath string, a *droverv1.AppAssignment, b *budget) (*helmRelease, error) {
	info, err := r.Stat(path.Join(appPath, "Chart.yaml"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, errorf(appPath, 0, "no Chart.yaml: not a Helm chart")
	case err != nil:
		return nil, errorf(path.Join(appPath, "Chart.yaml"), 0, "cannot be read, or a symbolic link on the way leads outside the repository: %v", pathErrCause(err))
	case !info.Mode().IsRegular():
		return nil, errorf(path.Join(appPath, "Chart.yaml"), 0, "not a regular file")
	}
	// Everything below reads through the chart's own directory: a link
	// elsewhere in the repository is refused too, as a chart is what
	// `helm package` would pack.
	cr, err := r.OpenRoot(appPath)
	if err != nil {
		return nil, errorf(appPath, 0, "cannot open: %v", pathErrCause(err))
	}
	defer cr.Close()

	c, origin, err := loadChart(ctx, cr, appPath, b)
	if err != nil {
		return nil, err
	}
	h := &helmRelease{chart: c, origin: origin}
	if err := h.loadValues(cr, appPath, a, b); err != nil {
		return nil, err
	}
	if err := chartutil.ProcessDependencies(c, h.values); err != nil {
		return nil, h.errorf(path.Join(appPath, "Chart.yaml"), 0, "dependencies: %v", err)
	}
	return h, nil
}

// loadValues merges the assignment's values files, in order, then its
// Helm values documents, in order, as `helm template -f ... -f ...` does
// (maps merge, anything else is replaced; a null stays, to delete the
// chart's default when coalesced), and substitutes the assignment's
// variables in the string values.
func (h *helmRelease) loadValues(cr *os.Root, appPath string, a *droverv1.AppAssignment, b *budget) error {
	vals := map[string]any{}
	for _, name := range a.GetValuesFiles() {
		p := path.Join(appPath, filepath.ToSlash(name))
		clean := path.Clean(filepath.ToSlash(name))
		if !filepath.IsLocal(filepath.FromSlash(clean)) {
			return errorf("", 0, "values file %q: must be relative and inside the chart", name)
		}
		data, err := readChartFile(cr, clean, appPath, b)
		if errors.Is(err, fs.ErrNotExist) {
			return errorf(p, 0, "values file does not exist in the chart (spec.render.valuesFiles)")
		}
		if err != nil {
			return err
		}
		fv, err := common.ReadValues(data)
		if err != nil {
			h.collectSecrets(vals)
			return h.errorf(p, 0, "values file: %v", err)
		}
		h.collectSecrets(fv)
		vals = loader.MergeMaps(vals, fv)
	}
	if doc := a.GetHelmValues(); strings.TrimSpace(doc) != "" {
		iv, err := loader.LoadValues(strings.NewReader(doc))
		if err != nil {
			return h.errorf("", 0, "the application's Helm values (spec.render.values and its overrides' helmValues): %v", err)
		}
		h.collectSecrets(iv)
		vals = loader.MergeMaps(vals, iv)
	}
	substitute(vals, a.GetVariables())
	h.collectSecrets(vals)
	h.values = vals
	return nil
}

// collectSecrets remembers the string values of v for redact.
func (h *helmRelease) collectSecrets(v any) {
	switch x := v.(type) {
	case string:
		if len(x) >= minSecretLen {
			h.secrets = append(h.secrets, x)
		}
	case map[string]any:
		for _, e := range x {
			h.collectSecrets(e)
		}
	case []any:
		for _, e := range x {
			h.collectSecrets(e)
		}
	}
}

// redact blanks out every value of the assignment in msg: values hold
// passwords and tokens, and render errors travel to the hub and its users.
func (h *helmRelease) redact(msg string) string {
	// Longest first, so a value containing another goes whole.
	slices.SortFunc(h.secrets, func(a, b string) int { return len(b) - len(a) })
	for _, s := range h.secrets {
		msg = strings.ReplaceAll(msg, s, "[value hidden]")
	}
	return msg
}

// errorf is errorf with the message redacted.
func (h *helmRelease) errorf(p string, line int, format string, args ...any) *Error {
	e := errorf(p, line, format, args...)
	e.Msg = h.redact(e.Msg)
	return e
}

// capabilities are the cluster's, as far as o knows them, else Helm's
// defaults (those of `helm template`).
func (o Options) capabilities() (*common.Capabilities, error) {
	caps := common.DefaultCapabilities.Copy()
	if o.KubeVersion != "" {
		kv, err := common.ParseKubeVersion(o.KubeVersion)
		if err != nil {
			return nil, fmt.Errorf("render: the cluster's Kubernetes version %q: %w", o.KubeVersion, err)
		}
		caps.KubeVersion = *kv
	}
	if len(o.APIVersions) > 0 {
		caps.APIVersions = common.VersionSet(slices.Clone(o.APIVersions))
	}
	return caps, nil
}

// templateNames maps the names Helm gives templates
// ("web/charts/redis/templates/svc.yaml") to their files.
func (h *helmRelease) templateNames() map[string]fileOrigin {
	names := make(map[string]fileOrigin)
	var walk func(c *chart.Chart)
	walk = func(c *chart.Chart) {
		for _, t := range c.Templates {
			names[path.Join(c.ChartFullPath(), t.Name)] = h.origin.origins[t]
		}
		for _, d := range c.Dependencies() {
			walk(d)
		}
	}
	walk(h.chart)
	return names
}

// templateError turns an error of Helm's template engine into an *Error
// naming the template's file and line, keeping Helm's message: "parse
// error at (web/templates/x.yaml:7): ...", "execution error at
// (web/templates/x.yaml:7:18): image.tag is required".
func (h *helmRelease) templateError(err error, names map[string]fileOrigin, appPath string) *Error {
	msg := err.Error()
	best, bestAt, line := "", -1, 0
	for name := range names {
		at := strings.Index(msg, name+":")
		if at < 0 || (bestAt >= 0 && (at > bestAt || at == bestAt && len(name) < len(best))) {
			continue
		}
		digits := msg[at+len(name)+1:]
		n := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' })
		if n < 0 {
			n = len(digits)
		}
		l, perr := strconv.Atoi(digits[:n])
		if perr != nil {
			continue
		}
		best, bestAt, line = name, at, l
	}
	if bestAt < 0 {
		return h.errorf(appPath, 0, "%s", msg)
	}
	fo := names[best]
	if fo.inArchive != "" {
		// The line is in a file of the archive, not of the repository.
		return h.errorf(fo.path, 0, "%s", msg)
	}
	return h.errorf(fo.path, line, "%s", msg)
}

// crdItems are the objects of the charts' crds/ directories, which Helm
// installs first and never templates.
func (h *helmRelease) crdItems() ([]*item, error) {
	var items []*item
	for _, crd := range h.chart.CRDObjects() {
		fo := h.origin.origins[crd.File]
		decoded, err := decodeYAML(fo.path, crd.File.Data)
		if err != nil {
			var re *Error
			if errors.As(err, &re) && fo.inArchive != "" {
				re.Msg = inArchive(fo, re.Msg)
			}
			return nil, err
		}
		for _, it := range decoded {
			if fo.inArchive != "" {
				it.line = 0
				it.what = inArchive(fo, it.what)
			}
		}
		items = append(items, decoded...)
	}
	return items, nil
}

// isTestHook reports whether it is a Helm test: Drover never runs tests,
// so they are not applied. Other hooks stay, with their annotations, for
// the apply step to run at their time.
func isTestHook(it *item) bool {
	events, ok := it.obj.GetAnnotations()[helmHookAnnotation]
	if !ok {
		return false
	}
	for e := range strings.SplitSeq(events, ",") {
		switch strings.ToLower(strings.TrimSpace(e)) {
		case "test", "test-success", "test-failure":
		default:
			return false
		}
	}
	return true
}

// sortByKind orders items as Helm installs them: by kind in Helm's
// install order, kinds it does not know after, alphabetically; items of
// one kind keep their order.
func sortByKind(items []*item) {
	rank := make(map[string]int, len(releaseutil.InstallOrder))
	for i, k := range releaseutil.InstallOrder {
		rank[k] = i
	}
	sort.SliceStable(items, func(i, j int) bool {
		a, b := items[i].obj.GetKind(), items[j].obj.GetKind()
		ra, aok := rank[a]
		rb, bok := rank[b]
		switch {
		case aok && bok:
			return ra < rb
		case aok != bok:
			return aok
		}
		return a < b
	})
}
