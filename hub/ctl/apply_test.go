package ctl

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestDecodeManifest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		doc     string
		want    *manifest // kind, name, app and labels compared
		wantErr []string  // substrings of the error
	}{{
		name: "application",
		doc: `apiVersion: drover.dev/v1
kind: Application
metadata: {name: web}
spec:
  source: {repoURL: "https://git.example.com/fleet.git", ref: main, extraPaths: [base]}
  placement:
    selector:
      matchLabels: {env: prod}
      matchExpressions: [{key: region, operator: In, values: [eu]}]
    clusterNames: [lab]
  syncPolicy: {automated: true, selfHeal: true, interval: 5m}
  overrides:
  - selector: {matchLabels: {region: eu}}
    variables: {replicas: "3"}
    patches: [{patch: "{}", target: {kind: Deployment}}]
`,
		want: &manifest{kind: kindApplication, name: "web", app: &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
			Source: &droverv1.Source{RepoUrl: "https://git.example.com/fleet.git", Ref: "main", ExtraPaths: []string{"base"}},
			Placement: &droverv1.Placement{
				Selector: &droverv1.LabelSelector{
					MatchLabels:      map[string]string{"env": "prod"},
					MatchExpressions: []*droverv1.LabelSelectorRequirement{{Key: "region", Operator: "In", Values: []string{"eu"}}},
				},
				ClusterNames: []string{"lab"},
			},
			SyncPolicy: &droverv1.SyncPolicy{Automated: true, SelfHeal: true, Interval: "5m"},
			Overrides: []*droverv1.Override{{
				Selector:  &droverv1.LabelSelector{MatchLabels: map[string]string{"region": "eu"}},
				Variables: map[string]string{"replicas": "3"},
				Patches:   []*droverv1.KustomizePatch{{Patch: "{}", Target: &droverv1.PatchTarget{Kind: "Deployment"}}},
			}},
		}}},
	}, {
		name: "proto field names",
		doc:  "apiVersion: drover.dev/v1\nkind: Application\nmetadata: {name: web}\nspec: {source: {repo_url: \"https://git.example.com/f.git\"}, sync_policy: {self_heal: true}}\n",
		want: &manifest{kind: kindApplication, name: "web", app: &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
			Source:     &droverv1.Source{RepoUrl: "https://git.example.com/f.git"},
			SyncPolicy: &droverv1.SyncPolicy{SelfHeal: true},
		}}},
	}, {
		name: "cluster",
		doc:  "apiVersion: drover.dev/v1\nkind: Cluster\nmetadata: {name: prod-eu, labels: {env: prod}}\n",
		want: &manifest{kind: kindCluster, name: "prod-eu", labels: map[string]string{"env": "prod"}},
	}, {
		name: "comments only",
		doc:  "# nothing here\n",
	}, {
		name:    "unknown nested fields",
		doc:     "apiVersion: drover.dev/v1\nkind: Application\nmetadata: {name: web}\nspec:\n  source: {repoURL: \"https://g.example.com/f.git\"}\n  overrides:\n  - selector: {matchLabel: {a: b}}\n    patches: [{patch: x, target: {knd: Deployment}}]\n",
		wantErr: []string{"2 problems", "spec.overrides[0].patches[0].target.knd: unknown field; did you mean \"kind\"?", "spec.overrides[0].selector.matchLabel: unknown field; did you mean \"matchLabels\"?"},
	}, {
		name: "free-form Helm values",
		doc:  "apiVersion: drover.dev/v1\nkind: Application\nmetadata: {name: web}\nspec:\n  source: {repoURL: \"https://g.example.com/f.git\"}\n  render: {type: helm, values: {image: {tag: v2}, replicas: 3}}\n",
		want: &manifest{kind: kindApplication, name: "web", app: &droverv1.Application{Name: "web", Spec: &droverv1.ApplicationSpec{
			Source: &droverv1.Source{RepoUrl: "https://g.example.com/f.git"},
			Render: &droverv1.Render{Type: "helm", Values: mustStruct(t, map[string]any{"image": map[string]any{"tag": "v2"}, "replicas": 3})},
		}}},
	}, {
		name:    "wrong type",
		doc:     "apiVersion: drover.dev/v1\nkind: Application\nmetadata: {name: web}\nspec: {source: {repoURL: [a]}}\n",
		wantErr: []string{"spec:", "repoURL"},
	}, {
		name:    "nothing similar",
		doc:     "apiVersion: drover.dev/v1\nkind: Application\nmetadata: {name: web}\nspec: {source: {repoURL: \"https://g.example.com/f.git\", branch: main}}\n",
		wantErr: []string{"spec.source.branch: unknown field"},
	}, {
		name:    "no spec",
		doc:     "apiVersion: drover.dev/v1\nkind: Application\nmetadata: {name: web}\n",
		wantErr: []string{"spec: required"},
	}, {
		name:    "no name",
		doc:     "apiVersion: drover.dev/v1\nkind: Application\nmetadata: {}\nspec: {}\n",
		wantErr: []string{"metadata.name: required"},
	}, {
		name:    "no kind",
		doc:     "apiVersion: drover.dev/v1\nmetadata: {name: web}\n",
		wantErr: []string{"kind: required"},
	}, {
		name:    "labels on an application",
		doc:     "apiVersion: drover.dev/v1\nkind: Application\nmetadata: {name: web, labels: {a: b}}\nspec: {}\n",
		wantErr: []string{"metadata.labels: unknown field"},
	}, {
		name:    "cluster label value not a string",
		doc:     "apiVersion: drover.dev/v1\nkind: Cluster\nmetadata: {name: c, labels: {tier: [1]}}\n",
		wantErr: []string{"metadata.labels: want a mapping of strings"},
	}, {
		name:    "not a mapping",
		doc:     "- a\n- b\n",
		wantErr: []string{"want a mapping"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := decodeManifest([]byte(tc.doc))
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error, want one containing %q", tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not contain %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if m != nil {
					t.Fatalf("got %+v, want nothing", m)
				}
				return
			}
			if m.kind != tc.want.kind || m.name != tc.want.name || !proto.Equal(m.app, tc.want.app) || len(m.labels) != len(tc.want.labels) {
				t.Fatalf("got %s/%s app %v labels %v\nwant %s/%s app %v labels %v", m.kind, m.name, m.app, m.labels, tc.want.kind, tc.want.name, tc.want.app, tc.want.labels)
			}
			for k, v := range tc.want.labels {
				if m.labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, m.labels[k], v)
				}
			}
		})
	}
}

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
