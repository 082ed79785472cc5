package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	utilvalidation "k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"
)

// Defaults and limits of a Strategy.
const (
	// DefaultProgressDeadline applies when progressDeadline is not set: the
	// default of a Kubernetes Deployment's progressDeadlineSeconds, so a
	// cluster that never settles fails instead of holding its wave forever.
	DefaultProgressDeadline = 10 * time.Minute
	// DefaultOfflineTimeout applies when offlineTimeout is not set. It is
	// well above the hub's 90 s online window, so an agent restart or a
	// short network blip does not skip a cluster.
	DefaultOfflineTimeout = 15 * time.Minute
	// MaxWaves bounds rollout.waves.
	MaxWaves = 50
	// ImplicitWave names the wave Plan adds last for the placed clusters
	// that no wave selects. No wave may take the name.
	ImplicitWave = "remaining"
)

// FailurePolicy says what a rollout does when more clusters fail than
// maxFailures allows.
type FailurePolicy string

const (
	// FailurePause holds every cluster where it is until an operator
	// resumes, rolls back or aborts. It is the default.
	FailurePause FailurePolicy = "pause"
	// FailureRollback moves every cluster back to the last release that
	// completed.
	FailureRollback FailurePolicy = "rollback"
)

// Strategy is an application's rollout strategy, the spec's `rollout:`
// block. Zero values mean the defaults: no waves (one wave of every placed
// cluster), no failures tolerated, pause on failure, DefaultProgressDeadline
// and DefaultOfflineTimeout. ParseStrategy refuses an explicit zero where the
// default is something else, so "0s" in a file never silently means the
// default.
type Strategy struct {
	// Waves in order. A cluster belongs to the first wave that selects it.
	Waves []WaveSpec
	// MaxFailures is how many clusters may fail before the rollout stops;
	// a percentage is of the rollout's clusters, rounded down.
	MaxFailures IntOrPercent
	// OnFailure is "" (pause), FailurePause or FailureRollback.
	OnFailure FailurePolicy
	// ProgressDeadline is how long a cluster may take to become Synced and
	// Healthy at the release; 0 means DefaultProgressDeadline.
	ProgressDeadline time.Duration
	// OfflineTimeout is how long a cluster may be offline before its wave
	// skips it; 0 means DefaultOfflineTimeout.
	OfflineTimeout time.Duration
}

// WaveSpec is one wave of a Strategy.
type WaveSpec struct {
	Name string
	// Selector picks the wave's clusters among those not in an earlier
	// wave. nil, like {}, takes every one of them.
	Selector *metav1.LabelSelector
	// MaxParallel bounds the wave's clusters being updated at once; a
	// percentage is of the wave's clusters, rounded up, at least 1. Zero
	// means the whole wave at once.
	MaxParallel IntOrPercent
	// Soak is how long every succeeded cluster of the wave must stay
	// healthy before the wave completes.
	Soak time.Duration
	// RequireApproval holds the wave until an operator promotes it.
	RequireApproval bool
}

// IntOrPercent is a count (2) or a percentage ("25%").
type IntOrPercent struct {
	Value   int
	Percent bool
}

// Count returns the count n.
func Count(n int) IntOrPercent { return IntOrPercent{Value: n} }

// Percent returns the percentage p.
func Percent(p int) IntOrPercent { return IntOrPercent{Value: p, Percent: true} }

// String returns "2" or "25%".
func (v IntOrPercent) String() string {
	if v.Percent {
		return strconv.Itoa(v.Value) + "%"
	}
	return strconv.Itoa(v.Value)
}

// MarshalJSON writes a count as a number and a percentage as a string, the
// form ParseStrategy reads.
func (v IntOrPercent) MarshalJSON() ([]byte, error) {
	if v.Percent {
		return json.Marshal(v.String())
	}
	return json.Marshal(v.Value)
}

// UnmarshalJSON reads a whole number or a string "N%".
func (v *IntOrPercent) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if !bytes.HasPrefix(data, []byte(`"`)) {
		var n json.Number
		if err := json.Unmarshal(data, &n); err != nil {
			return errIntOrPercent
		}
		i, err := strconv.ParseInt(n.String(), 10, 32)
		if err != nil {
			return errIntOrPercent
		}
		*v = Count(int(i))
		return nil
	}
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return errIntOrPercent
	}
	digits, ok := strings.CutSuffix(s, "%")
	if !ok || strings.HasPrefix(digits, "+") {
		return errIntOrPercent
	}
	p, err := strconv.ParseInt(digits, 10, 32)
	if err != nil {
		return errIntOrPercent
	}
	*v = Percent(int(p))
	return nil
}

var errIntOrPercent = errors.New(`want a whole number such as 2 or a percentage such as "25%"`)

// CeilOf resolves v against n clusters, rounding a percentage up, at least
// 1: a wave always makes progress.
func (v IntOrPercent) CeilOf(n int) int {
	if !v.Percent {
		return max(v.Value, 1)
	}
	return max(int(math.Ceil(float64(v.Value)*float64(n)/100)), 1)
}

// FloorOf resolves v against n clusters, rounding a percentage down: a
// failure budget never tolerates more than the share it states.
func (v IntOrPercent) FloorOf(n int) int {
	if !v.Percent {
		return v.Value
	}
	return v.Value * n / 100
}

const root = "rollout"

var (
	strategyFields = []string{"waves", "maxFailures", "onFailure", "progressDeadline", "offlineTimeout"}
	waveFields     = []string{"name", "selector", "maxParallel", "soak", "requireApproval"}
)

// ParseStrategy reads a `rollout:` block, YAML or JSON, and validates it.
// It returns nil for an empty or null block (no rollout). Every error is a
// FieldErrors naming the fields: unknown fields, wrong types, explicit
// zeros where a default exists, and whatever Validate refuses.
//
// The admin API can read the proto message the same way: protojson writes
// the JSON names and forms this function reads.
func ParseStrategy(data []byte) (*Strategy, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, FieldErrors{{Field: root, Msg: fmt.Sprintf("not valid YAML or JSON: %v", err)}}
	}
	return parseStrategyJSON(js)
}

// parseStrategyJSON is ParseStrategy for JSON, which needs no YAML step.
func parseStrategyJSON(js []byte) (*Strategy, error) {
	if t := bytes.TrimSpace(js); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, nil
	}
	var errs FieldErrors
	s := decodeStrategy(&errs, js)
	if s == nil {
		return nil, errs
	}
	// Validate what did decode too, so that one round fixes everything;
	// a field that did not decode has said enough.
	var verrs FieldErrors
	errors.As(Validate(s), &verrs)
	for _, ve := range verrs {
		if !slices.ContainsFunc(errs, func(e *FieldError) bool {
			return ve.Field == e.Field || strings.HasPrefix(ve.Field, e.Field+".") || strings.HasPrefix(ve.Field, e.Field+"[")
		}) {
			errs = append(errs, ve)
		}
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b *FieldError) int { return slices.Compare(fieldOrder(a.Field), fieldOrder(b.Field)) })
		return nil, errs
	}
	return s, nil
}

// fieldOrder is a sort key putting field errors in the order of the
// fields in a strategy: top-level fields as listed, each wave's fields
// within waves.
func fieldOrder(fld string) []int {
	rest, _ := strings.CutPrefix(fld, root+".")
	top, rest, _ := strings.Cut(rest, ".")
	name, idx, hasIdx := strings.Cut(top, "[")
	key := []int{slices.Index(strategyFields, name)}
	if hasIdx {
		i, _ := strconv.Atoi(strings.TrimSuffix(idx, "]"))
		wf, _, _ := strings.Cut(rest, ".")
		key = append(key, i, slices.Index(waveFields, wf))
	}
	return key
}

func decodeStrategy(errs *FieldErrors, js []byte) *Strategy {
	obj, ok := decodeObject(errs, root, js, strategyFields)
	if !ok {
		return nil
	}
	s := &Strategy{}
	if raw, ok := obj["waves"]; ok {
		var list []json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			errs.Add(root+".waves", "want a list of waves")
		}
		for i, w := range list {
			s.Waves = append(s.Waves, decodeWave(errs, fmt.Sprintf("%s.waves[%d]", root, i), w))
		}
	}
	if raw, ok := obj["maxFailures"]; ok {
		s.MaxFailures = decodeIntOrPercent(errs, root+".maxFailures", raw)
	}
	if raw, ok := obj["onFailure"]; ok {
		var p string
		if err := json.Unmarshal(raw, &p); err != nil || p == "" {
			errs.Add(root+".onFailure", `want "pause" or "rollback"`)
		}
		s.OnFailure = FailurePolicy(p)
	}
	if raw, ok := obj["progressDeadline"]; ok {
		s.ProgressDeadline = decodeDuration(errs, root+".progressDeadline", raw, "omit it for the default ("+DefaultProgressDeadline.String()+")")
	}
	if raw, ok := obj["offlineTimeout"]; ok {
		s.OfflineTimeout = decodeDuration(errs, root+".offlineTimeout", raw, "omit it for the default ("+DefaultOfflineTimeout.String()+")")
	}
	return s
}

func decodeWave(errs *FieldErrors, fld string, raw json.RawMessage) WaveSpec {
	var w WaveSpec
	obj, ok := decodeObject(errs, fld, raw, waveFields)
	if !ok {
		return w
	}
	if raw, ok := obj["name"]; ok {
		if err := json.Unmarshal(raw, &w.Name); err != nil {
			errs.Add(fld+".name", "want a string")
		}
	}
	if raw, ok := obj["selector"]; ok {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&w.Selector); err != nil {
			errs.Add(fld+".selector", "want a label selector with matchLabels and/or matchExpressions: %v", err)
		}
	}
	if raw, ok := obj["maxParallel"]; ok {
		w.MaxParallel = decodeIntOrPercent(errs, fld+".maxParallel", raw)
		if w.MaxParallel == Count(0) {
			errs.Add(fld+".maxParallel", "must be at least 1; omit it to update the whole wave at once")
		}
	}
	if raw, ok := obj["soak"]; ok {
		w.Soak = decodeDuration(errs, fld+".soak", raw, "omit it for no soak")
	}
	if raw, ok := obj["requireApproval"]; ok {
		if err := json.Unmarshal(raw, &w.RequireApproval); err != nil {
			errs.Add(fld+".requireApproval", "want true or false")
		}
	}
	return w
}

// decodeObject decodes a JSON object and refuses keys other than known: a
// misspelt field would otherwise be dropped without a word. JSON null keys
// count as absent.
func decodeObject(errs *FieldErrors, fld string, raw json.RawMessage, known []string) (map[string]json.RawMessage, bool) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		errs.Add(fld, "want a mapping with %s", strings.Join(known, ", "))
		return nil, false
	}
	for _, k := range slices.Sorted(maps.Keys(obj)) {
		if !slices.Contains(known, k) {
			errs.Add(fld+"."+k, "unknown field (known: %s)", strings.Join(known, ", "))
			continue
		}
		if bytes.Equal(bytes.TrimSpace(obj[k]), []byte("null")) {
			delete(obj, k)
		}
	}
	return obj, true
}

func decodeIntOrPercent(errs *FieldErrors, fld string, raw json.RawMessage) IntOrPercent {
	var v IntOrPercent
	if err := v.UnmarshalJSON(raw); err != nil {
		errs.Add(fld, "%v", err)
	}
	return v
}

// decodeDuration reads a Go duration string that must be positive; hint
// says what to write instead of zero.
func decodeDuration(errs *FieldErrors, fld string, raw json.RawMessage, hint string) time.Duration {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		errs.Add(fld, `want a Go duration such as "10m" or "90s"`)
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		errs.Add(fld, `%q is not a Go duration such as "10m" or "90s"`, s)
		return 0
	}
	if d <= 0 {
		errs.Add(fld, "%s: must be positive; %s", s, hint)
	}
	return d
}

// Validate checks a strategy and returns FieldErrors listing every problem,
// or nil. A nil strategy (no rollout) is valid. Waves may overlap: a cluster
// belongs to the first wave that selects it.
func Validate(s *Strategy) error {
	if s == nil {
		return nil
	}
	var errs FieldErrors
	if len(s.Waves) > MaxWaves {
		errs.Add(root+".waves", "%d waves exceed the limit of %d", len(s.Waves), MaxWaves)
		return errs
	}
	seen := make(map[string]int, len(s.Waves))
	catchAll := -1
	for i, w := range s.Waves {
		fld := fmt.Sprintf("%s.waves[%d]", root, i)
		switch {
		case w.Name == "":
			errs.Add(fld+".name", "required")
		case w.Name == ImplicitWave:
			errs.Add(fld+".name", "%q is reserved for the clusters no wave selects", ImplicitWave)
		default:
			for _, msg := range utilvalidation.IsDNS1123Label(w.Name) {
				errs.Add(fld+".name", "%q: %s", w.Name, msg)
			}
			if j, dup := seen[w.Name]; dup {
				errs.Add(fld+".name", "%q is also the name of waves[%d]", w.Name, j)
			}
			seen[w.Name] = i
		}
		if catchAll >= 0 {
			errs.Add(fld, "never gets a cluster: waves[%d] has no selector and takes every cluster not in an earlier wave; make that wave the last one", catchAll)
		}
		validateWaveSelector(&errs, field.NewPath(root).Child("waves").Index(i).Child("selector"), w.Selector)
		if catchAll < 0 && isCatchAll(w.Selector) {
			catchAll = i
		}
		validateIntOrPercent(&errs, fld+".maxParallel", w.MaxParallel)
		if w.Soak < 0 {
			errs.Add(fld+".soak", "%s: must be positive", w.Soak)
		}
	}
	validateIntOrPercent(&errs, root+".maxFailures", s.MaxFailures)
	switch s.OnFailure {
	case "", FailurePause, FailureRollback:
	default:
		errs.Add(root+".onFailure", "%q is not one of \"pause\", \"rollback\"", s.OnFailure)
	}
	if s.ProgressDeadline < 0 {
		errs.Add(root+".progressDeadline", "%s: must be positive", s.ProgressDeadline)
	}
	if s.OfflineTimeout < 0 {
		errs.Add(root+".offlineTimeout", "%s: must be positive", s.OfflineTimeout)
	}
	return errs.Err()
}

func validateIntOrPercent(errs *FieldErrors, fld string, v IntOrPercent) {
	switch {
	case v.Percent && (v.Value < 1 || v.Value > 100):
		errs.Add(fld, "%s: a percentage must be from 1%% to 100%%", v)
	case !v.Percent && v.Value < 0:
		errs.Add(fld, "%s: must not be negative", v)
	}
}

// validateWaveSelector reports problems with Kubernetes' own messages and field
// paths, then makes sure apimachinery compiles what it accepted, so Plan
// never meets a broken selector.
func validateWaveSelector(errs *FieldErrors, fld *field.Path, sel *metav1.LabelSelector) {
	if sel == nil {
		return
	}
	list := metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, fld)
	for _, e := range list {
		// ErrorBody echoes the value: label keys and values are no secret.
		errs.Add(e.Field, "%s", e.ErrorBody())
	}
	if len(list) > 0 {
		return
	}
	if _, err := metav1.LabelSelectorAsSelector(sel); err != nil {
		errs.Add(fld.String(), "%v", err)
	}
}

// isCatchAll reports whether sel takes every cluster it is offered.
func isCatchAll(sel *metav1.LabelSelector) bool {
	return sel == nil || (len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0)
}
