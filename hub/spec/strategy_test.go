package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestParseStrategyForms(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Strategy
	}{
		{"empty means no rollout", "", nil},
		{"null means no rollout", "null", nil},
		{"JSON", `{"waves":[{"name":"a","maxParallel":"10%"}],"maxFailures":"5%","onFailure":"rollback"}`,
			&Strategy{Waves: []WaveSpec{{Name: "a", MaxParallel: Percent(10)}}, MaxFailures: Percent(5), OnFailure: FailureRollback}},
		{"no waves", "maxFailures: 2", &Strategy{MaxFailures: Count(2)}},
		{"null fields are absent", "waves:\n- name: a\n  selector: null\n  soak: null\nonFailure: null",
			&Strategy{Waves: []WaveSpec{{Name: "a"}}}},
		{"match expressions", "waves:\n- name: a\n  selector:\n    matchExpressions:\n    - {key: region, operator: In, values: [eu, us]}",
			&Strategy{Waves: []WaveSpec{{Name: "a", Selector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "region", Operator: metav1.LabelSelectorOpIn, Values: []string{"eu", "us"}}}}}}}},
		{"100% and 1%", "waves:\n- {name: a, maxParallel: 100%}\nmaxFailures: 1%",
			&Strategy{Waves: []WaveSpec{{Name: "a", MaxParallel: Percent(100)}}, MaxFailures: Percent(1)}},
		{"overlapping waves", "waves:\n- {name: a, selector: {matchLabels: {x: '1'}}}\n- {name: b, selector: {matchLabels: {x: '1'}}}",
			&Strategy{Waves: []WaveSpec{{Name: "a", Selector: selector("x", "1")}, {Name: "b", Selector: selector("x", "1")}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStrategy([]byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestParseStrategyErrors checks that every field's problems are named by
// the field, in the spec's JSON names, with a message saying what is wanted.
func TestParseStrategyErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		// want maps each field expected in the error to a part of its
		// message.
		want map[string]string
	}{
		{"not a mapping", "[1, 2]", map[string]string{"rollout": "want a mapping"}},
		{"not YAML", "waves: [", map[string]string{"rollout": "not valid YAML"}},
		{"unknown field", "wave: []", map[string]string{"rollout.wave": "unknown field"}},
		{"waves not a list", "waves: {name: a}", map[string]string{"rollout.waves": "want a list"}},
		{"wave not a mapping", "waves: [a]", map[string]string{"rollout.waves[0]": "want a mapping"}},
		{"unknown wave field", "waves:\n- {name: a, maxParalel: 1}", map[string]string{"rollout.waves[0].maxParalel": "unknown field"}},
		{"name missing", "waves:\n- {maxParallel: 1}", map[string]string{"rollout.waves[0].name": "required"}},
		{"name not a DNS label", "waves:\n- {name: Canary_1}", map[string]string{"rollout.waves[0].name": "RFC 1123"}},
		{"name not a string", "waves:\n- {name: [a]}", map[string]string{"rollout.waves[0].name": "want a string"}},
		{"name reserved", "waves:\n- {name: remaining, selector: {matchLabels: {a: b}}}", map[string]string{"rollout.waves[0].name": "reserved"}},
		{"duplicate names", "waves:\n- {name: a, selector: {matchLabels: {a: b}}}\n- {name: a}", map[string]string{"rollout.waves[1].name": "also the name of waves[0]"}},
		{"wave after a catch-all", "waves:\n- {name: all}\n- {name: b, selector: {matchLabels: {a: b}}}", map[string]string{"rollout.waves[1]": "never gets a cluster"}},
		{"wave after an empty selector", "waves:\n- {name: all, selector: {}}\n- {name: b}", map[string]string{"rollout.waves[1]": "never gets a cluster"}},
		{"bad selector operator", "waves:\n- name: a\n  selector: {matchExpressions: [{key: x, operator: Near, values: [v1]}]}",
			map[string]string{"rollout.waves[0].selector.matchExpressions[0].operator": "not a valid selector operator"}},
		{"In without values", "waves:\n- name: a\n  selector: {matchExpressions: [{key: x, operator: In}]}",
			map[string]string{"rollout.waves[0].selector.matchExpressions[0].values": "must be specified"}},
		{"bad label value", "waves:\n- name: a\n  selector: {matchLabels: {x: 'a b'}}",
			map[string]string{"rollout.waves[0].selector.matchLabels": "a valid label"}},
		{"unknown selector field", "waves:\n- name: a\n  selector: {matchLabel: {x: y}}", map[string]string{"rollout.waves[0].selector": "matchLabel"}},
		{"maxParallel zero", "waves:\n- {name: a, maxParallel: 0}", map[string]string{"rollout.waves[0].maxParallel": "at least 1"}},
		{"maxParallel 0%", "waves:\n- {name: a, maxParallel: 0%}", map[string]string{"rollout.waves[0].maxParallel": "from 1% to 100%"}},
		{"maxParallel 101%", "waves:\n- {name: a, maxParallel: 101%}", map[string]string{"rollout.waves[0].maxParallel": "from 1% to 100%"}},
		{"maxParallel negative", "waves:\n- {name: a, maxParallel: -1}", map[string]string{"rollout.waves[0].maxParallel": "must not be negative"}},
		{"maxParallel fraction", "waves:\n- {name: a, maxParallel: 1.5}", map[string]string{"rollout.waves[0].maxParallel": "whole number"}},
		{"maxParallel word", "waves:\n- {name: a, maxParallel: half}", map[string]string{"rollout.waves[0].maxParallel": "percentage"}},
		{"maxParallel number as string", "waves:\n- {name: a, maxParallel: '3'}", map[string]string{"rollout.waves[0].maxParallel": "percentage"}},
		{"maxParallel fractional percent", "waves:\n- {name: a, maxParallel: 12.5%}", map[string]string{"rollout.waves[0].maxParallel": "percentage"}},
		{"soak zero", "waves:\n- {name: a, soak: 0s}", map[string]string{"rollout.waves[0].soak": "must be positive"}},
		{"soak negative", "waves:\n- {name: a, soak: -5m}", map[string]string{"rollout.waves[0].soak": "must be positive"}},
		{"soak without unit", "waves:\n- {name: a, soak: 10}", map[string]string{"rollout.waves[0].soak": "Go duration"}},
		{"soak bad", "waves:\n- {name: a, soak: ten minutes}", map[string]string{"rollout.waves[0].soak": "not a Go duration"}},
		{"requireApproval not bool", "waves:\n- {name: a, requireApproval: maybe}", map[string]string{"rollout.waves[0].requireApproval": "true or false"}},
		{"maxFailures negative", "maxFailures: -1", map[string]string{"rollout.maxFailures": "must not be negative"}},
		{"maxFailures 0%", "maxFailures: 0%", map[string]string{"rollout.maxFailures": "from 1% to 100%"}},
		{"maxFailures 150%", "maxFailures: 150%", map[string]string{"rollout.maxFailures": "from 1% to 100%"}},
		{"onFailure unknown", "onFailure: explode", map[string]string{"rollout.onFailure": `"explode" is not one of`}},
		{"onFailure empty", "onFailure: ''", map[string]string{"rollout.onFailure": "pause"}},
		{"progressDeadline zero", "progressDeadline: 0s", map[string]string{"rollout.progressDeadline": "must be positive"}},
		{"progressDeadline bad", "progressDeadline: soon", map[string]string{"rollout.progressDeadline": "not a Go duration"}},
		{"offlineTimeout negative", "offlineTimeout: -1h", map[string]string{"rollout.offlineTimeout": "must be positive"}},
		{"too many waves", "waves:\n" + strings.Repeat("- {name: a}\n", MaxWaves+1), map[string]string{"rollout.waves": "exceed the limit"}},
		{"every problem at once", "waves:\n- {name: a, maxParallel: 0%, soak: 0s}\nonFailure: x\nofflineTimeout: 0s", map[string]string{
			"rollout.waves[0].maxParallel": "from 1%", "rollout.waves[0].soak": "positive",
			"rollout.onFailure": "not one of", "rollout.offlineTimeout": "positive"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseStrategy([]byte(tt.in))
			if err == nil {
				t.Fatalf("ParseStrategy accepted it: %+v", s)
			}
			if s != nil {
				t.Errorf("ParseStrategy returned a strategy with its error")
			}
			checkFieldErrors(t, err, tt.want)
		})
	}
}

func checkFieldErrors(t *testing.T, err error, want map[string]string) {
	t.Helper()
	var fes FieldErrors
	if !errors.As(err, &fes) {
		t.Fatalf("error %v (%T) is not FieldErrors", err, err)
	}
	var first *FieldError
	if !errors.As(err, &first) || first != fes[0] {
		t.Errorf("errors.As does not find the first *FieldError")
	}
	got := map[string]string{}
	for _, fe := range fes {
		got[fe.Field] += fe.Msg + " | "
	}
	for fld, part := range want {
		if !strings.Contains(got[fld], part) {
			t.Errorf("field %s: got %q, want a message containing %q (all: %v)", fld, got[fld], part, err)
		}
	}
	for fld := range got {
		if _, ok := want[fld]; !ok {
			t.Errorf("unexpected error for field %s: %s", fld, got[fld])
		}
	}
}

// TestValidate covers what a Go caller can set that YAML cannot express the
// same way.
func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		s    *Strategy
		want map[string]string
	}{
		{"nil is no rollout", nil, nil},
		{"zero values are defaults", &Strategy{Waves: []WaveSpec{{Name: "a"}}}, nil},
		{"negative soak", &Strategy{Waves: []WaveSpec{{Name: "a", Soak: -time.Second}}}, map[string]string{"rollout.waves[0].soak": "positive"}},
		{"0%", &Strategy{Waves: []WaveSpec{{Name: "a", MaxParallel: Percent(0)}}}, map[string]string{"rollout.waves[0].maxParallel": "1% to 100%"}},
		{"negative count", &Strategy{MaxFailures: Count(-2)}, map[string]string{"rollout.maxFailures": "negative"}},
		{"negative deadline", &Strategy{ProgressDeadline: -time.Minute}, map[string]string{"rollout.progressDeadline": "positive"}},
		{"policy", &Strategy{OnFailure: "retry"}, map[string]string{"rollout.onFailure": "not one of"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.s)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			checkFieldErrors(t, err, tt.want)
		})
	}
}

func TestIntOrPercentJSON(t *testing.T) {
	for _, v := range []IntOrPercent{Count(0), Count(3), Percent(1), Percent(25), Percent(100)} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var got IntOrPercent
		if err := json.Unmarshal(b, &got); err != nil || got != v {
			t.Errorf("%s: round trip through %s gave %v, %v", v, b, got, err)
		}
	}
	for _, bad := range []string{`"3"`, `1.5`, `"+5%"`, `"5 %"`, `true`, `"%"`, `99999999999`} {
		var v IntOrPercent
		if err := json.Unmarshal([]byte(bad), &v); err == nil {
			t.Errorf("%s: accepted as %v", bad, v)
		}
	}
}

func ExampleParseStrategy() {
	_, err := ParseStrategy([]byte("waves:\n- name: canary\n  selector: {matchLabels: {ring: canary}}\n  maxParallel: 0%\n- {name: rest, soak: 0s}\n"))
	fmt.Println(err)
	// Output: rollout.waves[0].maxParallel: 0%: a percentage must be from 1% to 100%; rollout.waves[1].soak: 0s: must be positive; omit it for no soak
}

func selector(kv ...string) *metav1.LabelSelector {
	l := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		l[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: l}
}
