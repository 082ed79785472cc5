package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/drover-dev/drover/e2e/testbed"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func TestEvents(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	kinds := []string{"cluster.registered", "cluster.revoked", "application.updated", "rollout.started", "cluster_x.odd"}
	var all []*droverv1.Event
	for i := 0; i < 60; i++ {
		all = append(all, &droverv1.Event{
			Time:        ts(testNow.Add(time.Duration(i) * time.Second)),
			Kind:        kinds[i%len(kinds)],
			Actor:       "hub",
			Cluster:     fmt.Sprintf("c%d", i%3),
			Application: []string{"web", "api", ""}[i%3],
			Message:     fmt.Sprintf("event %d", i),
		})
	}
	// The first one alone, the rest batched.
	if err := s.AddEvent(ctx, all[0]); err != nil {
		t.Fatalf("AddEvent: %v", err)
	}
	if err := s.AddEvents(ctx, all[1:]); err != nil {
		t.Fatalf("AddEvents: %v", err)
	}

	tests := []struct {
		name   string
		filter EventFilter
		match  func(*droverv1.Event) bool
	}{
		{"all", EventFilter{}, func(*droverv1.Event) bool { return true }},
		{"cluster", EventFilter{Cluster: "c1"}, func(e *droverv1.Event) bool { return e.Cluster == "c1" }},
		{"application", EventFilter{Application: "web"}, func(e *droverv1.Event) bool { return e.Application == "web" }},
		// "_" is literal, not LIKE's any-character.
		{"kind prefix", EventFilter{KindPrefix: "cluster."}, func(e *droverv1.Event) bool { return e.Kind == "cluster.registered" || e.Kind == "cluster.revoked" }},
		{"kind prefix with underscore", EventFilter{KindPrefix: "cluster_"}, func(e *droverv1.Event) bool { return e.Kind == "cluster_x.odd" }},
		{"exact kind", EventFilter{KindPrefix: "cluster.revoked"}, func(e *droverv1.Event) bool { return e.Kind == "cluster.revoked" }},
		{"combined", EventFilter{Cluster: "c0", KindPrefix: "cluster"}, func(e *droverv1.Event) bool {
			return e.Cluster == "c0" && (e.Kind == "cluster.registered" || e.Kind == "cluster.revoked" || e.Kind == "cluster_x.odd")
		}},
		{"none", EventFilter{Cluster: "nope"}, func(*droverv1.Event) bool { return false }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want []string
			for i := len(all) - 1; i >= 0; i-- { // newest first
				if tt.match(all[i]) {
					want = append(want, all[i].Message)
				}
			}
			var got []string
			var lastID int64
			token := ""
			for pages := 0; pages < 100; pages++ {
				page, next, err := s.ListEvents(ctx, tt.filter, 7, token)
				if err != nil {
					t.Fatalf("ListEvents: %v", err)
				}
				for _, ev := range page {
					if lastID != 0 && ev.Id >= lastID {
						t.Fatalf("ids not descending: %d after %d", ev.Id, lastID)
					}
					lastID = ev.Id
					got = append(got, ev.Message)
				}
				if next == "" {
					break
				}
				token = next
			}
			if !slices.Equal(got, want) {
				t.Errorf("got %v\nwant %v", got, want)
			}
		})
	}

	page, _, err := s.ListEvents(ctx, EventFilter{}, 1, "")
	if err != nil || len(page) != 1 {
		t.Fatalf("ListEvents = %v, %v", page, err)
	}
	if ev := page[0]; ev.Kind != all[59].Kind || ev.Actor != "hub" || ev.Cluster != all[59].Cluster ||
		ev.Application != all[59].Application || !ev.Time.AsTime().Equal(all[59].Time.AsTime()) {
		t.Errorf("newest event = %v, want %v", ev, all[59])
	}

	var ve *ValidationError
	if _, _, err := s.ListEvents(ctx, EventFilter{}, 10, "x"); !errors.As(err, &ve) || ve.Field != "page_token" {
		t.Errorf("bad page token: %v", err)
	}
	if err := s.AddEvents(ctx, []*droverv1.Event{{Kind: "a"}, {}}); !errors.As(err, &ve) || ve.Field != "events[1].kind" {
		t.Errorf("AddEvents without a kind: %v, want a *ValidationError for events[1].kind", err)
	}
	// An event without a time gets the database's.
	if err := s.AddEvent(ctx, &droverv1.Event{Kind: "hub.started", Message: "nul\x00byte"}); err != nil {
		t.Fatalf("AddEvent: %v", err)
	}
	page, _, _ = s.ListEvents(ctx, EventFilter{KindPrefix: "hub."}, 1, "")
	if len(page) != 1 || page[0].Time == nil || page[0].Message != "nulbyte" {
		t.Errorf("hub.started event = %v", page)
	}
}

// TestEventsSayWhichReplicaRecordedThem: events recorded through a
// replica's store name it, those from elsewhere name none.
func TestEventsSayWhichReplicaRecordedThem(t *testing.T) {
	ctx := context.Background()
	url := testbed.Postgres(t)
	plain := openStore(t, url)
	hub1 := openStore(t, url, WithReplica("hub-1"))
	if err := plain.AddEvent(ctx, &droverv1.Event{Kind: "test.plain", Actor: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := hub1.AddEvents(ctx, []*droverv1.Event{{Kind: "test.replica", Actor: "hub"}}); err != nil {
		t.Fatal(err)
	}
	evs, _, err := plain.ListEvents(ctx, EventFilter{KindPrefix: "test."}, 10, "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range evs {
		got[e.GetKind()] = e.GetHubReplica()
	}
	if got["test.plain"] != "" || got["test.replica"] != "hub-1" {
		t.Errorf("replicas by kind %v, want test.plain none and test.replica hub-1", got)
	}
}
