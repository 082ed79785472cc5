// Package spec is the one definition of what the hub accepts from users:
// application specs (source, render, placement, overrides, rollout
// strategy), names and labels, and repository URLs. The admin API checks
// every request with it and droverctl checks files with it before sending,
// so both refuse the same input with the same field errors; it links
// neither the in-memory fleet nor the rollout planner, which read what it
// accepted.
package spec

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/drover-dev/drover/internal/artifact"
	"github.com/drover-dev/drover/internal/gitremote"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Limits on an application spec. They keep one application from making
// every assignment it is placed in (and so every agent's stream) huge.
const (
	// MaxSpecSizeBytes bounds the encoded ApplicationSpec.
	MaxSpecSizeBytes = 256 << 10
	// MaxOverrides bounds spec.overrides.
	MaxOverrides = 100
	// MaxPatchesPerOverride bounds spec.overrides[i].patches.
	MaxPatchesPerOverride = 100
	// MaxExtraPaths bounds spec.source.extraPaths.
	MaxExtraPaths = 100
	// MaxRepoURLLength bounds spec.source.repoURL.
	MaxRepoURLLength = 2048
	// MaxRefLength bounds spec.source.ref; agents check the ref they are
	// sent against the same bound.
	MaxRefLength = gitremote.MaxRefLength
	// MinPollInterval is the shortest spec.source.pollInterval: every poll
	// is an ls-remote against someone's Git server.
	MinPollInterval = 10 * time.Second
	// MinSyncInterval is the shortest spec.syncPolicy.interval: every
	// interval makes each agent re-read every object of the application.
	MinSyncInterval = time.Second
)

// addList takes over apimachinery's field errors. ErrorBody echoes the bad
// value; that is safe because no field validated this way holds a secret.
func addList(es *FieldErrors, list field.ErrorList) {
	for _, e := range list {
		*es = append(*es, &FieldError{Field: e.Field, Msg: e.ErrorBody()})
	}
}

// ValidateName checks an application or cluster name: a DNS-1123 label (at
// most 63 lower-case letters, digits and '-', starting and ending with a
// letter or digit), because names end up in Kubernetes labels, URLs and
// ${cluster.name}.
func ValidateName(name string) error {
	var errs FieldErrors
	validateName(&errs, "name", name)
	return errs.Err()
}

func validateName(errs *FieldErrors, fld, name string) {
	if name == "" {
		errs.Add(fld, "required")
		return
	}
	for _, msg := range utilvalidation.IsDNS1123Label(name) {
		errs.Add(fld, "%q: %s", name, msg)
	}
}

// ValidateLabels checks cluster labels with Kubernetes' rules for label keys
// and values.
func ValidateLabels(lbls map[string]string) error {
	var errs FieldErrors
	validateLabels(&errs, field.NewPath("labels"), lbls)
	return errs.Err()
}

func validateLabels(errs *FieldErrors, fld *field.Path, lbls map[string]string) {
	// Sorted so that the same input always gives the same message.
	for _, k := range sortedKeys(lbls) {
		addList(errs, metav1validation.ValidateLabelName(k, fld.Key(k)))
		for _, msg := range utilvalidation.IsValidLabelValue(lbls[k]) {
			errs.Add(fld.Key(k).String(), "%q: %s", lbls[k], msg)
		}
	}
}

// ValidateSpec checks everything an application spec says before it is
// stored or placed. It returns FieldErrors listing every problem, or nil.
func ValidateSpec(spec *droverv1.ApplicationSpec) error {
	var errs FieldErrors
	if spec == nil {
		errs.Add("spec", "required")
		return errs
	}
	// Checked first and alone: walking a huge spec only to say it is huge
	// helps nobody.
	if size := proto.Size(spec); size > MaxSpecSizeBytes {
		errs.Add("spec", "encoded size %d bytes exceeds the limit of %d bytes", size, MaxSpecSizeBytes)
		return errs
	}
	validateSource(&errs, spec.GetSource())
	validateRender(&errs, spec.GetRender())
	if SourceType(spec.GetSource()) == droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY && RenderType(spec.GetRender().GetType()) != droverv1.RenderType_RENDER_TYPE_HELM {
		// Only an OCI artifact may hold plain manifests or a Kustomize
		// directory; a Helm repository serves charts.
		errs.Add("spec.render.type", "a Helm repository source is a chart; render it with type: helm")
	}
	validatePlacement(&errs, spec.GetPlacement())
	if iv := spec.GetSyncPolicy().GetInterval(); iv != "" {
		validateInterval(&errs, "spec.syncPolicy.interval", iv, MinSyncInterval)
	}
	validateOverrides(&errs, spec.GetOverrides())
	validateRollout(&errs, spec.GetRollout())
	return errs.Err()
}

func validateSource(errs *FieldErrors, src *droverv1.Source) {
	switch SourceType(src) {
	case droverv1.SourceType_SOURCE_TYPE_OCI:
		validateOCISource(errs, src)
	case droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY:
		validateHelmSource(errs, src)
	default:
		validateGitSource(errs, src)
	}
	if iv := src.GetPollInterval(); iv != "" {
		validateInterval(errs, "spec.source.pollInterval", iv, MinPollInterval)
	}
}

func validateGitSource(errs *FieldErrors, src *droverv1.Source) {
	if msg := checkRepoURL(src.GetRepoUrl()); msg != "" {
		errs.Add("spec.source.repoURL", "%s", msg)
	}
	if msg := checkRef(src.GetRef()); msg != "" {
		errs.Add("spec.source.ref", "%s", msg)
	}
	if msg := checkRepoPath(src.GetPath()); msg != "" {
		errs.Add("spec.source.path", "%s", msg)
	}
	validateExtraPaths(errs, src.GetExtraPaths())
	if src.GetVersion() != "" {
		errs.Add("spec.source.version", "only a Helm repository (with chart) or an OCI source (oci://) has a version; a Git source has a ref")
	}
	if src.GetInsecure() {
		errs.Add("spec.source.insecure", "only a Helm repository or an OCI registry may be reached over plain HTTP; a Git URL says its transport itself")
	}
}

func validateExtraPaths(errs *FieldErrors, extra []string) {
	if len(extra) > MaxExtraPaths {
		errs.Add("spec.source.extraPaths", "%d entries exceed the limit of %d", len(extra), MaxExtraPaths)
		return
	}
	for i, p := range extra {
		fld := fmt.Sprintf("spec.source.extraPaths[%d]", i)
		if p == "" {
			errs.Add(fld, "must not be empty")
		} else if msg := checkRepoPath(p); msg != "" {
			errs.Add(fld, "%s", msg)
		}
	}
}

// validateArtifactSource checks what Helm repository and OCI sources have
// in common: a version, and none of Git's ref and extra paths.
func validateArtifactSource(errs *FieldErrors, src *droverv1.Source, kind string) {
	if err := artifact.CheckVersion(src.GetVersion()); err != nil {
		errs.Add("spec.source.version", "%q is neither a version, an OCI tag nor a semantic version range (such as 1.2.x, ~1.2, ^1 or >=1.0.0 <2.0.0)", src.GetVersion())
	}
	if src.GetRef() != "" {
		errs.Add("spec.source.ref", "%s has no refs; set version instead", kind)
	}
	if len(src.GetExtraPaths()) > 0 {
		errs.Add("spec.source.extraPaths", "%s has no extra paths: every new revision is new content", kind)
	}
}

func validateHelmSource(errs *FieldErrors, src *droverv1.Source) {
	if msg := checkHelmRepoURL(src.GetRepoUrl(), src.GetInsecure()); msg != "" {
		errs.Add("spec.source.repoURL", "%s", msg)
	}
	if err := artifact.CheckChartName(src.GetChart()); err != nil {
		errs.Add("spec.source.chart", "%q is not a chart name (letters, digits, \".\", \"_\" and \"-\")", src.GetChart())
	}
	if src.GetPath() != "" {
		errs.Add("spec.source.path", "a Helm repository's chart is at the root of its archive; path must be empty")
	}
	validateArtifactSource(errs, src, "a Helm repository")
}

// checkHelmRepoURL returns why raw is not a Helm repository URL, or "".
// Messages never echo the URL.
func checkHelmRepoURL(raw string, insecure bool) string {
	if len(raw) > MaxRepoURLLength {
		return fmt.Sprintf("longer than %d characters", MaxRepoURLLength)
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil || u.Host == "" || u.Opaque != "":
		return "not an https:// URL"
	case u.User != nil:
		return "must not contain credentials; store them with droverctl repo set"
	case u.Fragment != "":
		return "must not have a fragment (#...)"
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
	case "http":
		if !insecure {
			return "http:// sends the chart in the clear; set insecure: true to allow it"
		}
	default:
		return "a Helm repository is reached over https:// (or http:// with insecure: true)"
	}
	return ""
}

func validateOCISource(errs *FieldErrors, src *droverv1.Source) {
	if len(src.GetRepoUrl()) > MaxRepoURLLength {
		errs.Add("spec.source.repoURL", "longer than %d characters", MaxRepoURLLength)
	} else if _, err := artifact.ParseOCIURL(src.GetRepoUrl()); err != nil {
		errs.Add("spec.source.repoURL", "not oci://HOST[:PORT]/PATH with a lower-case repository path and no credentials, tag or digest (the version goes in version)")
	}
	if src.GetChart() != "" {
		errs.Add("spec.source.chart", "an OCI source names its artifact in repoURL; chart is only for Helm repositories")
	}
	if msg := checkRepoPath(src.GetPath()); msg != "" {
		errs.Add("spec.source.path", "%s", strings.Replace(msg, "the repository", "the artifact", 1))
	}
	validateArtifactSource(errs, src, "an OCI source")
}

// checkRepoURL returns why raw is not an acceptable repository URL, or "".
// What a repository URL is, the hub and every agent take from one place
// (gitremote.Parse), so the hub never accepts one the fleet cannot fetch.
// The hub also refuses credentials in the URL, because URLs are shown and
// logged; they belong in SetRepositoryCredentials. Messages never echo the
// URL.
func checkRepoURL(raw string) string {
	switch {
	case raw == "":
		return "required"
	case len(raw) > MaxRepoURLLength:
		return fmt.Sprintf("longer than %d characters", MaxRepoURLLength)
	}
	if _, err := gitremote.Parse(raw); err != nil {
		var ue *gitremote.URLError
		if errors.As(err, &ue) {
			return ue.Reason
		}
		return "not a valid repository URL"
	}
	if gitremote.HasCredentials(raw) {
		return "must not contain credentials; store them with droverctl repo set"
	}
	return ""
}

// checkRef returns why ref is not a branch, tag, full ref or commit SHA
// Git could resolve, or "". "" (the default branch) is fine. What a ref
// name is, the hub and every agent take from one place
// (gitremote.CheckRef); a commit SHA is a valid branch name to it.
func checkRef(ref string) string {
	if ref == "" {
		return ""
	}
	if err := gitremote.CheckRef(ref); err != nil {
		var re *gitremote.RefError
		if errors.As(err, &re) {
			return re.Reason
		}
		return "not a valid Git branch, tag or commit"
	}
	return ""
}

// checkRepoPath returns why p is not a directory inside the repository, or
// "". "" (the root) is fine.
func checkRepoPath(p string) string {
	switch {
	case strings.ContainsRune(p, 0):
		return "must not contain NUL"
	case strings.HasPrefix(p, "/"):
		return fmt.Sprintf("%q must be relative to the repository root", p)
	case p == "":
		return ""
	}
	if c := path.Clean(p); c == ".." || strings.HasPrefix(c, "../") {
		return fmt.Sprintf("%q escapes the repository", p)
	}
	return ""
}

func validateInterval(errs *FieldErrors, fld, s string, minimum time.Duration) {
	d, err := time.ParseDuration(s)
	if err != nil {
		errs.Add(fld, "%q is not a Go duration such as \"1m\" or \"30s\"", s)
		return
	}
	if d < minimum {
		errs.Add(fld, "%s is shorter than the minimum of %s", d, minimum)
	}
}

// renderTypes maps spec.render.type to the agent's enum; "" is a directory.
var renderTypes = map[string]droverv1.RenderType{
	"":          droverv1.RenderType_RENDER_TYPE_DIRECTORY,
	"directory": droverv1.RenderType_RENDER_TYPE_DIRECTORY,
	"kustomize": droverv1.RenderType_RENDER_TYPE_KUSTOMIZE,
	"helm":      droverv1.RenderType_RENDER_TYPE_HELM,
}

// RenderType is the agent's enum for spec.render.type, one ValidateSpec
// accepted; anything else is unspecified.
func RenderType(t string) droverv1.RenderType { return renderTypes[t] }

func validateRender(errs *FieldErrors, r *droverv1.Render) {
	if _, ok := renderTypes[r.GetType()]; !ok {
		errs.Add("spec.render.type", "%q is not one of \"directory\", \"kustomize\", \"helm\"", r.GetType())
	}
	if ns := r.GetNamespace(); ns != "" {
		for _, msg := range utilvalidation.IsDNS1123Label(ns) {
			errs.Add("spec.render.namespace", "%q: %s", ns, msg)
		}
	}
	validateHelmRender(errs, r)
}

func validatePlacement(errs *FieldErrors, p *droverv1.Placement) {
	validateSelector(errs, field.NewPath("spec", "placement", "selector"), p.GetSelector())
	seen := make(map[string]bool, len(p.GetClusterNames()))
	for i, name := range p.GetClusterNames() {
		fld := fmt.Sprintf("spec.placement.clusterNames[%d]", i)
		if seen[name] {
			errs.Add(fld, "%q is listed twice", name)
			continue
		}
		seen[name] = true
		validateName(errs, fld, name)
	}
}

// validateSelector reports problems with Kubernetes' own messages and field
// paths. A nil selector is valid: it selects nothing.
func validateSelector(errs *FieldErrors, fld *field.Path, sel *droverv1.LabelSelector) {
	if sel == nil {
		return
	}
	before := len(*errs)
	validateLabels(errs, fld.Child("matchLabels"), sel.GetMatchLabels())
	ls := toMetaSelector(sel)
	for i, req := range ls.MatchExpressions {
		addList(errs, metav1validation.ValidateLabelSelectorRequirement(req, metav1validation.LabelSelectorValidationOptions{}, fld.Child("matchExpressions").Index(i)))
	}
	if len(*errs) > before {
		return
	}
	// Whatever apimachinery's compiler still refuses (there should be
	// nothing) must not reach placement.
	if _, err := Selector(sel); err != nil {
		errs.Add(fld.String(), "%v", err)
	}
}

func validateOverrides(errs *FieldErrors, overrides []*droverv1.Override) {
	if len(overrides) > MaxOverrides {
		errs.Add("spec.overrides", "%d entries exceed the limit of %d", len(overrides), MaxOverrides)
		return
	}
	for i, o := range overrides {
		fld := field.NewPath("spec", "overrides").Index(i)
		if o.GetSelector() == nil {
			// Kubernetes semantics would make it match nothing, which is
			// never what someone writing an override means.
			errs.Add(fld.Child("selector").String(), "required; use {} to match every cluster")
		}
		validateSelector(errs, fld.Child("selector"), o.GetSelector())
		validatePatches(errs, fld.Child("patches"), o.GetPatches())
		if hv := o.GetHelmValues(); hv != "" {
			if msg := checkHelmValues(hv); msg != "" {
				errs.Add(fld.Child("helmValues").String(), "%s", msg)
			}
		}
		for _, k := range sortedKeys(o.GetVariables()) {
			if msg := checkVariableName(k); msg != "" {
				errs.Add(fld.Child("variables").Key(k).String(), "%s", msg)
			}
		}
	}
}

func validatePatches(errs *FieldErrors, fld *field.Path, patches []*droverv1.KustomizePatch) {
	if len(patches) > MaxPatchesPerOverride {
		errs.Add(fld.String(), "%d entries exceed the limit of %d", len(patches), MaxPatchesPerOverride)
		return
	}
	for i, p := range patches {
		pf := fld.Index(i)
		if strings.TrimSpace(p.GetPatch()) == "" {
			errs.Add(pf.Child("patch").String(), "required")
		} else if _, err := yaml.YAMLToJSON([]byte(p.GetPatch())); err != nil {
			errs.Add(pf.Child("patch").String(), "not valid YAML or JSON: %v", err)
		}
		if ls := p.GetTarget().GetLabelSelector(); ls != "" {
			if _, err := labels.Parse(ls); err != nil {
				errs.Add(pf.Child("target", "labelSelector").String(), "%v", err)
			}
		}
	}
}

// checkHelmValues returns why hv is not one YAML mapping, or "". Assignments
// carry the matching overrides' values as one multi-document string (see
// helmValuesSeparator), so each override must be exactly one document.
// Messages carry YAML syntax errors (line numbers) but never a value:
// Helm values often hold secrets.
func checkHelmValues(hv string) string {
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(hv)))
	docs := 0
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Sprintf("not valid YAML: %v", err)
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return fmt.Sprintf("not valid YAML: %v", err)
		}
		if js := bytes.TrimSpace(js); bytes.Equal(js, []byte("null")) {
			continue // empty or comments only
		} else if !bytes.HasPrefix(js, []byte("{")) {
			return "must be a YAML mapping (key: value lines)"
		}
		docs++
	}
	if docs > 1 {
		return "must be a single YAML document (no '---')"
	}
	return ""
}

// variableName is what ${name} substitution accepts for user variables.
var variableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

func checkVariableName(k string) string {
	switch {
	case len(k) > 253:
		return "longer than 253 characters"
	case !variableName.MatchString(k):
		return fmt.Sprintf("%q must start with a letter or '_' and contain only letters, digits, '_', '.' and '-'", k)
	case k == "cluster" || strings.HasPrefix(k, "cluster."):
		return fmt.Sprintf("%q is reserved: cluster.name and cluster.labels.KEY are set by the hub", k)
	}
	return ""
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
