package fleet

import (
	"testing"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestPlaced(t *testing.T) {
	sel := func(ml map[string]string, exprs ...*droverv1.LabelSelectorRequirement) *droverv1.Placement {
		return &droverv1.Placement{Selector: &droverv1.LabelSelector{MatchLabels: ml, MatchExpressions: exprs}}
	}
	req := func(key, op string, values ...string) *droverv1.LabelSelectorRequirement {
		return &droverv1.LabelSelectorRequirement{Key: key, Operator: op, Values: values}
	}
	prodEU := map[string]string{"env": "prod", "region": "eu"}
	devUS := map[string]string{"env": "dev", "region": "us"}
	for _, tc := range []struct {
		name      string
		placement *droverv1.Placement
		cluster   string
		labels    map[string]string
		want      bool
	}{
		{"no placement", nil, "c1", prodEU, false},
		{"nil selector selects nothing", &droverv1.Placement{}, "c1", prodEU, false},
		{"empty selector selects everything", sel(nil), "c1", prodEU, true},
		{"empty selector selects unlabelled", sel(nil), "c1", nil, true},
		{"named", &droverv1.Placement{ClusterNames: []string{"c0", "c1"}}, "c1", nil, true},
		{"not named", &droverv1.Placement{ClusterNames: []string{"c0", "c2"}}, "c1", prodEU, false},
		{"named or selected: named", &droverv1.Placement{
			Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}, ClusterNames: []string{"c9"},
		}, "c9", devUS, true},
		{"named or selected: selected", &droverv1.Placement{
			Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}, ClusterNames: []string{"c9"},
		}, "c1", prodEU, true},
		{"named or selected: neither", &droverv1.Placement{
			Selector: &droverv1.LabelSelector{MatchLabels: map[string]string{"env": "prod"}}, ClusterNames: []string{"c9"},
		}, "c1", devUS, false},

		{"matchLabels match", sel(map[string]string{"env": "prod"}), "c1", prodEU, true},
		{"matchLabels all must match", sel(map[string]string{"env": "prod", "region": "us"}), "c1", prodEU, false},
		{"matchLabels other value", sel(map[string]string{"env": "prod"}), "c1", devUS, false},
		{"matchLabels missing label", sel(map[string]string{"tier": "front"}), "c1", prodEU, false},
		{"matchLabels empty value matches empty", sel(map[string]string{"tier": ""}), "c1", map[string]string{"tier": ""}, true},

		{"In match", sel(nil, req("region", "In", "eu", "us")), "c1", prodEU, true},
		{"In other value", sel(nil, req("region", "In", "ap")), "c1", prodEU, false},
		{"In missing label", sel(nil, req("tier", "In", "front")), "c1", prodEU, false},
		{"NotIn other value", sel(nil, req("region", "NotIn", "us")), "c1", prodEU, true},
		{"NotIn listed value", sel(nil, req("region", "NotIn", "eu", "us")), "c1", prodEU, false},
		{"NotIn missing label", sel(nil, req("tier", "NotIn", "front")), "c1", prodEU, true},
		{"Exists present", sel(nil, req("env", "Exists")), "c1", prodEU, true},
		{"Exists absent", sel(nil, req("tier", "Exists")), "c1", prodEU, false},
		{"DoesNotExist absent", sel(nil, req("tier", "DoesNotExist")), "c1", prodEU, true},
		{"DoesNotExist present", sel(nil, req("env", "DoesNotExist")), "c1", prodEU, false},
		{"labels and expressions all hold", sel(map[string]string{"env": "prod"}, req("region", "In", "eu")), "c1", prodEU, true},
		{"labels hold, expression does not", sel(map[string]string{"env": "prod"}, req("region", "In", "us")), "c1", prodEU, false},

		{"invalid operator selects nothing", sel(nil, req("env", "Like", "prod")), "c1", prodEU, false},
		{"invalid selector keeps names", &droverv1.Placement{
			Selector:     &droverv1.LabelSelector{MatchExpressions: []*droverv1.LabelSelectorRequirement{req("env", "Like")}},
			ClusterNames: []string{"c1"},
		}, "c1", prodEU, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &droverv1.ApplicationSpec{Placement: tc.placement}
			if got := Placed(spec, tc.cluster, tc.labels); got != tc.want {
				t.Fatalf("Placed = %v, want %v", got, tc.want)
			}
		})
	}
}
