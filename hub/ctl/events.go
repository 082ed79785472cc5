package ctl

import (
	"context"
	"fmt"
	"net/url"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

func runGetEvents(ctx context.Context, x *invocation, args []string) error {
	var cluster, app, kind string
	var limit int
	x.fs.StringVar(&cluster, "cluster", "", "only events of this cluster")
	x.fs.StringVar(&app, "app", "", "only events of this application")
	x.fs.StringVar(&kind, "kind", "", "only events whose kind starts with this, e.g. cluster. or application.updated")
	x.fs.IntVar(&limit, "limit", 100, "show at most this many events, newest first")
	o := x.outputFlag(false)
	if _, err := x.parseN(args, 0); err != nil {
		return err
	}
	if err := x.checkOutput(*o, false); err != nil {
		return err
	}
	if limit <= 0 {
		return x.usageErrorf("--limit %d: must be positive", limit)
	}
	c, err := x.client()
	if err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"cluster": cluster, "application": app, "kind": kind} {
		if v != "" {
			q.Set(k, v)
		}
	}
	all := &droverv1.ListEventsResponse{}
	for len(all.Events) < limit {
		q.Set("page_size", fmt.Sprint(min(limit-len(all.Events), x.cli.pageSize())))
		var page droverv1.ListEventsResponse
		if err := c.call(ctx, "GET", apiPath("events"), q, nil, &page); err != nil {
			return err
		}
		all.Events = append(all.Events, page.GetEvents()...)
		if page.GetNextPageToken() == "" {
			break
		}
		q.Set("page_token", page.GetNextPageToken())
	}
	if len(all.Events) > limit {
		all.Events = all.Events[:limit]
	}
	if *o != outTable {
		return printMessage(x.out(), *o, all)
	}
	if len(all.GetEvents()) == 0 {
		fmt.Fprintln(x.errOut(), "No events found.")
		return nil
	}
	now := x.now()
	t := newTable(x.out(), "TIME", "KIND", "ACTOR", "CLUSTER", "APP", "MESSAGE")
	for _, e := range all.GetEvents() {
		t.row(age(now, e.GetTime()), e.GetKind(), e.GetActor(), e.GetCluster(), e.GetApplication(), e.GetMessage())
	}
	return t.flush()
}
