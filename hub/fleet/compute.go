package fleet

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"maps"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/drover-dev/drover/hub/spec"
	"github.com/drover-dev/drover/internal/gitremote"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// App is an application as the fleet places it.
type App struct {
	Name string
	Spec *droverv1.ApplicationSpec
	// Commit is the current release: the full SHA the ref resolved to, or
	// "" while it has never been resolved. An unresolved application is
	// left out of every assignment, so agents never get a commit to guess.
	Commit string
	// Pins maps a cluster name to the commit it runs instead of Commit;
	// rollouts hold clusters on the previous release with it.
	Pins map[string]string
	// Credentials for the source repository, or nil. They travel in the
	// assignment, so assignments are never logged.
	Credentials *droverv1.RepoCredentials
}

// Cluster is a cluster as the fleet places applications on it.
type Cluster struct {
	Name   string
	Labels map[string]string
}

// helmValuesSeparator joins the Helm values of the overrides that match a
// cluster into AppAssignment.helm_values: a YAML stream whose documents the
// agent merges in order, later over earlier. ValidateSpec makes each
// override's values a single document, so the documents are exactly the
// overrides.
const helmValuesSeparator = "---\n"

// Compute returns the assignment of cluster c: every application of apps
// placed on c whose commit is resolved, sorted by name, with the overrides
// matching c applied, and its version. Applications whose selectors do not
// compile are left out (ValidateSpec refuses them); names must be
// distinct. The result is freshly built and shares nothing with apps or c.
func Compute(c Cluster, apps []*App) *droverv1.Assignment {
	t := newTarget(c.Name, maps.Clone(c.Labels))
	type entry struct {
		aa     *droverv1.AppAssignment
		digest [sha256.Size]byte
	}
	var entries []entry
	for _, a := range apps {
		ca, err := compileApp(a)
		if err != nil || !ca.placement.matches(t.name, t.set) {
			continue
		}
		if aa, d := ca.assign(t); aa != nil {
			entries = append(entries, entry{aa, d})
		}
	}
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].aa.GetName() < entries[j].aa.GetName() })
	out := &droverv1.Assignment{Applications: make([]*droverv1.AppAssignment, len(entries))}
	h := sha256.New()
	for i, e := range entries {
		out.Applications[i] = e.aa
		h.Write(e.digest[:])
	}
	out.Version = versionOf(h)
	return out
}

// target is a cluster as assignments are computed for it. It is never
// modified: a relabel makes a new one, so snapshots may share vars.
type target struct {
	name string
	set  labels.Set
	// vars holds cluster.name and cluster.labels.KEY; every application
	// without override variables shares it. varList is the same, sorted,
	// and varsEnc its encoding for appDigest.
	vars    map[string]string
	varList []kv
	varsEnc []byte
}

type kv struct{ k, v string }

func newTarget(name string, lbls map[string]string) *target {
	t := &target{name: name, set: labels.Set(lbls), vars: make(map[string]string, 1+len(lbls))}
	t.vars["cluster.name"] = name
	for k, v := range lbls {
		t.vars["cluster.labels."+k] = v
	}
	t.varList = sortedVars(t.vars)
	for _, e := range t.varList {
		t.varsEnc = appendVar(t.varsEnc, e)
	}
	return t
}

func sortedVars(m map[string]string) []kv {
	l := make([]kv, 0, len(m))
	for k, v := range m {
		l = append(l, kv{k, v})
	}
	slices.SortFunc(l, func(a, b kv) int { return strings.Compare(a.k, b.k) })
	return l
}

// compiledApp is an App with its selectors compiled once, shared by every
// cluster it is evaluated against. It is used by one goroutine at a time
// (the Fleet's, under its lock, or one Compute call).
type compiledApp struct {
	app       *App
	placement placement
	// overrides[i] is spec.overrides[i]'s selector; labels.Nothing() for a
	// nil one.
	overrides []labels.Selector
	// variants caches the cluster-independent part of the assignment by
	// commit and set of matching overrides; see variantFor. It is bounded
	// by the clusters' distinct combinations of those, and dropped with
	// the compiledApp at the application's next change.
	variants map[string]*variant
}

// variant is the part of an application's assignment that every cluster
// with the same commit and the same matching overrides shares. Its
// messages are never modified and are shared by those clusters'
// assignments.
type variant struct {
	// tmpl is the assignment without variables.
	tmpl *droverv1.AppAssignment
	// hash is the sha256 of tmpl's deterministic encoding.
	hash [sha256.Size]byte
	// vars are the matching overrides' variables merged in order, or
	// nil; varList is the same, sorted.
	vars    map[string]string
	varList []kv
}

func compileApp(a *App) (*compiledApp, error) {
	if a == nil || a.Spec == nil {
		return nil, fmt.Errorf("application has no spec")
	}
	p, err := compilePlacement(a.Spec.GetPlacement())
	if err != nil {
		return nil, err
	}
	ca := &compiledApp{app: a, placement: p, variants: make(map[string]*variant)}
	for i, o := range a.Spec.GetOverrides() {
		sel, err := spec.Selector(o.GetSelector())
		if err != nil {
			return nil, fmt.Errorf("override %d selector: %w", i, err)
		}
		ca.overrides = append(ca.overrides, sel)
	}
	return ca, nil
}

// withCommit returns a copy of ca releasing commit instead, keeping the
// compiled selectors. A compiled App is never changed, so the Fleet can
// compare it with the next SetApp; the old variants go with the old copy.
func (ca *compiledApp) withCommit(commit string) *compiledApp {
	app := *ca.app
	app.Commit = commit
	return &compiledApp{app: &app, placement: ca.placement, overrides: ca.overrides, variants: make(map[string]*variant)}
}

func (ca *compiledApp) commitFor(cluster string) string {
	if c, ok := ca.app.Pins[cluster]; ok {
		return c
	}
	return ca.app.Commit
}

// assign builds the application's assignment on a cluster it is placed on
// and its digest, or returns nil when the cluster has no commit to run yet.
func (ca *compiledApp) assign(t *target) (*droverv1.AppAssignment, [sha256.Size]byte) {
	commit := ca.commitFor(t.name)
	if commit == "" {
		return nil, [sha256.Size]byte{}
	}
	v := ca.variantFor(t.set, commit)
	vars := t.vars
	if len(v.vars) > 0 {
		vars = make(map[string]string, len(v.vars)+len(t.vars))
		maps.Copy(vars, v.vars)
		// Last, so that no override can fake the cluster's identity.
		maps.Copy(vars, t.vars)
	}
	aa := &droverv1.AppAssignment{
		Name:        v.tmpl.Name,
		RepoUrl:     v.tmpl.RepoUrl,
		Commit:      v.tmpl.Commit,
		Path:        v.tmpl.Path,
		Render:      v.tmpl.Render,
		Namespace:   v.tmpl.Namespace,
		SyncPolicy:  v.tmpl.SyncPolicy,
		Patches:     v.tmpl.Patches,
		Variables:   vars,
		HelmValues:  v.tmpl.HelmValues,
		Credentials: v.tmpl.Credentials,
		Ref:         v.tmpl.Ref,
		SourceType:  v.tmpl.SourceType,
		Chart:       v.tmpl.Chart,
		Insecure:    v.tmpl.Insecure,
		ReleaseName: v.tmpl.ReleaseName,
		ValuesFiles: v.tmpl.ValuesFiles,
	}
	return aa, appDigest(v, t)
}

// variantFor returns the variant for a cluster with these labels running
// commit, building it the first time.
func (ca *compiledApp) variantFor(set labels.Set, commit string) *variant {
	// The key is the commit followed by a bitmap of matching overrides.
	var buf [64 + (spec.MaxOverrides+7)/8]byte
	key := append(buf[:0], commit...)
	var bits byte
	for i, sel := range ca.overrides {
		if sel.Matches(set) {
			bits |= 1 << (i % 8)
		}
		if i%8 == 7 || i == len(ca.overrides)-1 {
			key = append(key, bits)
			bits = 0
		}
	}
	if v, ok := ca.variants[string(key)]; ok {
		return v
	}
	v := ca.buildVariant(set, commit)
	ca.variants[string(key)] = v
	return v
}

// buildVariant clones everything it takes from the spec: the App's
// messages belong to the caller of Compute or to the Fleet's copy, and
// snapshots must share no mutable state with either.
func (ca *compiledApp) buildVariant(set labels.Set, commit string) *variant {
	as := ca.app.Spec
	tmpl := &droverv1.AppAssignment{
		Name:        ca.app.Name,
		RepoUrl:     as.GetSource().GetRepoUrl(),
		Commit:      commit,
		Path:        as.GetSource().GetPath(),
		Render:      spec.RenderType(as.GetRender().GetType()),
		Namespace:   as.GetRender().GetNamespace(),
		SourceType:  spec.SourceType(as.GetSource()),
		Chart:       as.GetSource().GetChart(),
		Insecure:    as.GetSource().GetInsecure(),
		ValuesFiles: slices.Clone(as.GetRender().GetValuesFiles()),
		ReleaseName: as.GetRender().GetReleaseName(),
	}
	if tmpl.Render == droverv1.RenderType_RENDER_TYPE_HELM && tmpl.ReleaseName == "" {
		tmpl.ReleaseName = ca.app.Name
	}
	if sp := as.GetSyncPolicy(); sp != nil {
		tmpl.SyncPolicy = proto.CloneOf(sp)
	}
	if ca.app.Credentials != nil {
		tmpl.Credentials = proto.CloneOf(ca.app.Credentials)
	}
	v := &variant{tmpl: tmpl}
	var helm []string
	if vals := as.GetRender().GetValues(); len(vals.GetFields()) > 0 {
		// The spec's inline values come first: overrides merge over them.
		// ValidateSpec made sure they encode.
		if doc, err := spec.ValuesYAML(vals); err == nil {
			helm = append(helm, doc)
		}
	}
	for i, o := range as.GetOverrides() {
		if !ca.overrides[i].Matches(set) {
			continue
		}
		for _, p := range o.GetPatches() {
			tmpl.Patches = append(tmpl.Patches, proto.CloneOf(p))
		}
		if hv := o.GetHelmValues(); hv != "" {
			if !strings.HasSuffix(hv, "\n") {
				hv += "\n"
			}
			helm = append(helm, hv)
		}
		if len(o.GetVariables()) > 0 {
			if v.vars == nil {
				v.vars = make(map[string]string)
			}
			maps.Copy(v.vars, o.GetVariables())
		}
	}
	tmpl.HelmValues = strings.Join(helm, helmValuesSeparator)
	v.varList = sortedVars(v.vars)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(tmpl)
	if err != nil {
		// Only invalid UTF-8 fails, and SetApp refuses that. Should it
		// happen anyway, hash what still identifies the content rather
		// than stop the fan-out.
		b = fmt.Appendf(nil, "unencodable %s %s %v", ca.app.Name, commit, err)
	}
	v.hash = sha256.Sum256(b)
	// The ref is set after hashing: it only tells the agent where to fetch
	// the commit from, and changes nothing the cluster runs, so a new ref
	// alone must not wake the fleet; the release it resolves to carries it.
	// The Git watcher resolves the spec's ref, so the release's commit came
	// from it (for a cluster a rollout holds back, from its history).
	tmpl.Ref = gitremote.AssignmentRef(as.GetSource().GetRef())
	return v
}

// digestVars is the content hash of one application's assignment: sha256
// over tmplHash, the sha256 of the assignment's deterministic encoding
// without variables, then every variable in key order, each string
// length-prefixed. The variables are hashed apart because they are the only
// per-cluster part: the rest is encoded once per variant, not once per
// cluster. Equal content gives an equal digest whatever the map order; any
// change gives another.
func digestVars(tmplHash [sha256.Size]byte, vars map[string]string) [sha256.Size]byte {
	b := tmplHash[:]
	for _, e := range sortedVars(vars) {
		b = appendVar(b, e)
	}
	return sha256.Sum256(b)
}

// appDigest is digestVars(v.hash, variables of v on t) without building,
// iterating or sorting a map: it merges the two sorted variable lists, the
// cluster's winning as in assign.
func appDigest(v *variant, t *target) [sha256.Size]byte {
	if len(v.varList) == 0 {
		b := make([]byte, 0, len(v.hash)+len(t.varsEnc))
		return sha256.Sum256(append(append(b, v.hash[:]...), t.varsEnc...))
	}
	b := make([]byte, 0, len(v.hash)+len(t.varsEnc)+64*len(v.varList))
	b = append(b, v.hash[:]...)
	ov, cv := v.varList, t.varList
	for len(ov) > 0 || len(cv) > 0 {
		switch {
		case len(cv) == 0 || (len(ov) > 0 && ov[0].k < cv[0].k):
			b, ov = appendVar(b, ov[0]), ov[1:]
		case len(ov) == 0 || cv[0].k < ov[0].k:
			b, cv = appendVar(b, cv[0]), cv[1:]
		default: // the same key: the cluster's value wins
			b, ov, cv = appendVar(b, cv[0]), ov[1:], cv[1:]
		}
	}
	return sha256.Sum256(b)
}

func appendVar(b []byte, e kv) []byte {
	b = binary.AppendUvarint(b, uint64(len(e.k)))
	b = append(b, e.k...)
	b = binary.AppendUvarint(b, uint64(len(e.v)))
	return append(b, e.v...)
}

// versionOf finishes an assignment's version from h, which has been fed the
// digests of its applications in order: hex of the first 16 bytes. Hashing
// digests lets the Fleet recompute one application without re-encoding the
// others, and keeps 32 bytes per (cluster, application) rather than an
// encoding.
func versionOf(h hash.Hash) string {
	return hex.EncodeToString(h.Sum(nil)[:16])
}
