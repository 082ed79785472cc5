package spec

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Limits on a Helm render spec.
const (
	// MaxValuesFiles bounds spec.render.valuesFiles.
	MaxValuesFiles = 100
	// MaxReleaseNameLength is Helm's own limit on a release name.
	MaxReleaseNameLength = 53
)

// SourceType says what kind of server a source names: an oci:// URL an OCI
// registry, a source naming a chart a Helm repository, anything else a Git
// repository. Git is SOURCE_TYPE_UNSPECIFIED, as hubs before Helm sources
// sent it, so existing assignments keep their versions.
func SourceType(src *droverv1.Source) droverv1.SourceType {
	switch {
	case strings.HasPrefix(strings.ToLower(src.GetRepoUrl()), "oci://"):
		return droverv1.SourceType_SOURCE_TYPE_OCI
	case src.GetChart() != "":
		return droverv1.SourceType_SOURCE_TYPE_HELM_REPOSITORY
	}
	return droverv1.SourceType_SOURCE_TYPE_UNSPECIFIED
}

// ValuesYAML encodes a spec's inline Helm values as one YAML document, the
// form assignments carry them in (AppAssignment.helm_values).
func ValuesYAML(v *structpb.Struct) (string, error) {
	js, err := protojson.Marshal(v)
	if err != nil {
		return "", err
	}
	y, err := yaml.JSONToYAML(js)
	if err != nil {
		return "", err
	}
	return string(y), nil
}

// validateHelmRender checks the Helm fields of spec.render, which only a
// Helm render may set.
func validateHelmRender(errs *FieldErrors, r *droverv1.Render) {
	helm := RenderType(r.GetType()) == droverv1.RenderType_RENDER_TYPE_HELM
	if name := r.GetReleaseName(); name != "" {
		if !helm {
			errs.Add("spec.render.releaseName", "only a Helm render (type: helm) has a release name")
		} else if len(name) > MaxReleaseNameLength {
			errs.Add("spec.render.releaseName", "%q is longer than Helm's limit of %d characters", name, MaxReleaseNameLength)
		} else {
			for _, msg := range utilvalidation.IsDNS1123Subdomain(name) {
				errs.Add("spec.render.releaseName", "%q: %s", name, msg)
			}
		}
	}
	files := r.GetValuesFiles()
	switch {
	case len(files) > 0 && !helm:
		errs.Add("spec.render.valuesFiles", "only a Helm render (type: helm) reads values files")
	case len(files) > MaxValuesFiles:
		errs.Add("spec.render.valuesFiles", "%d entries exceed the limit of %d", len(files), MaxValuesFiles)
	default:
		for i, f := range files {
			fld := fmt.Sprintf("spec.render.valuesFiles[%d]", i)
			if f == "" {
				errs.Add(fld, "must not be empty")
			} else if msg := checkRepoPath(f); msg != "" {
				errs.Add(fld, "%s", strings.Replace(msg, "the repository", "the chart", 1))
			}
		}
	}
	if len(r.GetValues().GetFields()) > 0 {
		if !helm {
			errs.Add("spec.render.values", "only a Helm render (type: helm) takes values")
		} else if _, err := ValuesYAML(r.GetValues()); err != nil {
			// Never echoes a value: Helm values often hold secrets.
			errs.Add("spec.render.values", "cannot be encoded as YAML")
		}
	}
}
