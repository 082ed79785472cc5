package dashboard

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/drover-dev/drover/hub/store"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Page sizes. A page never ships the whole fleet: the overview shows at
// most tilesPerPage tiles, the application matrix matrixPerPage rows.
const (
	tilesPerPage   = 2000
	matrixPerPage  = 500
	eventsPerPage  = 100
	sideEvents     = 12
	clusterEvents  = 20
	storePageSize  = store.MaxPageSize
	openGroupTiles = 400
	// namedTiles is the most tiles a page shows with their clusters' names.
	namedTiles = 60
)

// offlineRank orders offline clusters first among the tiles, before the
// worst health (severity): what they run is not known at all.
const offlineRank = 6

// parseSelector parses the selector query parameter; its error says what
// is wrong in the user's words.
func parseSelector(r *http.Request) (string, labels.Selector, error) {
	raw := strings.TrimSpace(r.URL.Query().Get("selector"))
	sel, err := labels.Parse(raw)
	if err != nil {
		return raw, nil, badInput("label selector %q: %v", raw, err)
	}
	return raw, sel, nil
}

// eachCluster calls fn with every cluster sel matches, with its status
// counts: the clusters a store page at a time, the counts in one query.
func (d *Dashboard) eachCluster(ctx context.Context, sel labels.Selector, fn func(c *droverv1.Cluster, counts *store.StatusCounts)) error {
	var all []*droverv1.Cluster
	token := ""
	for {
		cls, next, err := d.cfg.Store.ListClusters(ctx, sel, storePageSize, token)
		if err != nil {
			return err
		}
		all = append(all, cls...)
		if next == "" {
			break
		}
		token = next
	}
	names := make([]string, len(all))
	for i, c := range all {
		names[i] = c.GetName()
	}
	counts, err := d.cfg.Store.ClusterStatusCounts(ctx, names)
	if err != nil {
		return err
	}
	for _, c := range all {
		fn(c, counts[c.GetName()])
	}
	return nil
}

// Overview.

type tile struct {
	Name, Group, Title string
	State              state
	// Named tiles show the cluster's name beside the glyph: when a page
	// shows few tiles there is room, and a lone tile needs it.
	Named bool
}

type group struct {
	Name, ID                string
	Total, Offline, Problem int
	Open                    bool
	Tiles                   []tile
}

type countBadge struct {
	State state
	N     int
}

type overviewData struct {
	Selector, Query, GroupBy string
	// Attention shows only the clusters that need attention: offline, or
	// with an application in trouble. AttentionURL and AllURL switch it.
	Attention              bool
	Problems               int
	AttentionURL, AllURL   string
	SelectorErr            string
	GroupKeys              []string
	Total, Online, Offline int
	Fleet                  int // every cluster, whatever the filter
	HealthCounts           []countBadge
	Apps                   int
	Groups                 []group
	Page, Pages            int
	PrevURL, NextURL       string
	Events                 []*droverv1.Event
	Shown                  int
	Rollouts               rolloutSummary
	Replicas               replicaCount
}

func (d *Dashboard) overview(r *http.Request) (view, error) {
	ctx := r.Context()
	q := r.URL.Query()
	data := &overviewData{Query: strings.TrimSpace(q.Get("q")), GroupBy: strings.TrimSpace(q.Get("group")), Attention: q.Get("attention") == "1"}
	v := view{Title: "Fleet", Nav: "overview", Data: data}
	raw, sel, err := parseSelector(r)
	data.Selector = raw
	if err != nil {
		data.SelectorErr = err.Error()
		sel = labels.Nothing()
	}
	page, _ := strconv.Atoi(q.Get("page"))
	page = max(page, 1)

	type rec struct {
		name, group, title string
		st                 state
		rank               int
		problem            bool
	}
	var recs []rec
	keys := map[string]struct{}{}
	needle := strings.ToLower(data.Query)
	// One query for the tiles, the selector applied in it; the fleet's
	// size and label keys (the group-by choices) come with it when nothing
	// is filtered out, and from a small second query when something is.
	cls, err := d.cfg.Store.OverviewClusters(ctx, sel)
	if err != nil {
		return v, err
	}
	if sel.Empty() {
		data.Fleet = len(cls)
		for _, c := range cls {
			for k := range c.Labels {
				keys[k] = struct{}{}
			}
		}
	} else {
		var all []string
		if data.Fleet, all, err = d.cfg.Store.ClusterLabelKeys(ctx); err != nil {
			return v, err
		}
		for _, k := range all {
			keys[k] = struct{}{}
		}
	}
	for _, c := range cls {
		if needle != "" && !strings.Contains(strings.ToLower(c.Name), needle) {
			continue
		}
		r := rec{name: c.Name}
		switch h, ok := worstReported(c); {
		case !d.onlineAt(c.Revoked, c.LastSeen):
			r.st, r.problem, r.rank = stateOffline, true, offlineRank
			data.Offline++
		case !ok:
			r.st, r.rank = stateEmpty, -1
			data.Online++
		default:
			r.st, r.rank = healthState(h), severity(h)
			r.problem = severity(h) >= severity(droverv1.Health_HEALTH_UNKNOWN)
			data.Online++
		}
		if r.problem {
			data.Problems++
		} else if data.Attention {
			continue
		}
		if data.GroupBy != "" {
			if g, ok := c.Labels[data.GroupBy]; ok {
				r.group = data.GroupBy + "=" + g
			} else {
				r.group = "no " + data.GroupBy + " label"
			}
		}
		r.title = c.Name + " — " + r.st.Word
		if c.Apps > 0 {
			r.title += " — " + strconv.Itoa(c.Healthy) + "/" + strconv.Itoa(c.Apps) + " apps healthy"
		}
		recs = append(recs, r)
	}
	for k := range keys {
		data.GroupKeys = append(data.GroupKeys, k)
	}
	sort.Strings(data.GroupKeys)
	data.Total = len(recs)
	// Within a group the worst come first, so that trouble is on the
	// first page however big the fleet.
	sort.Slice(recs, func(i, j int) bool {
		if recs[i].group != recs[j].group {
			return recs[i].group < recs[j].group
		}
		if recs[i].rank != recs[j].rank {
			return recs[i].rank > recs[j].rank
		}
		return recs[i].name < recs[j].name
	})

	// Group totals cover every matching cluster; tiles only this page's.
	totals := map[string]*group{}
	for _, r := range recs {
		g := totals[r.group]
		if g == nil {
			g = &group{Name: r.group}
			totals[r.group] = g
		}
		g.Total++
		if r.st == stateOffline {
			g.Offline++
		}
		if r.problem {
			g.Problem++
		}
	}
	data.Pages = max((len(recs)+tilesPerPage-1)/tilesPerPage, 1)
	page = min(page, data.Pages)
	data.Page = page
	lo, hi := (page-1)*tilesPerPage, min(page*tilesPerPage, len(recs))
	shown := recs[lo:hi]
	data.Shown = len(shown)
	for i, r := range shown {
		if i == 0 || r.group != shown[i-1].group {
			g := *totals[r.group]
			g.ID = "g-" + url.QueryEscape(r.group)
			data.Groups = append(data.Groups, g)
		}
		g := &data.Groups[len(data.Groups)-1]
		g.Tiles = append(g.Tiles, tile{Name: r.name, Title: r.title, State: r.st, Named: len(shown) <= namedTiles})
	}
	// Small views show every group; big ones open only the groups with
	// something wrong, so trouble is what the eye lands on.
	for i := range data.Groups {
		g := &data.Groups[i]
		g.Open = len(shown) <= openGroupTiles || g.Problem > 0 || len(data.Groups) == 1
	}
	// withQuery is this page's URL with key set to value (removed when
	// empty), on its first page unless key is the page.
	withQuery := func(key, value string) string {
		u := url.Values{}
		for k, vs := range q {
			if k != "page" && k != "fragment" && k != key {
				u[k] = vs
			}
		}
		if value != "" {
			u.Set(key, value)
		}
		if len(u) == 0 {
			return "/"
		}
		return "/?" + u.Encode()
	}
	pageURL := func(p int) string { return withQuery("page", strconv.Itoa(p)) }
	data.AttentionURL, data.AllURL = withQuery("attention", "1"), withQuery("attention", "")
	if page > 1 {
		data.PrevURL = pageURL(page - 1)
	}
	if page < data.Pages {
		data.NextURL = pageURL(page + 1)
	}

	if data.HealthCounts, data.Apps, err = d.appHealthCounts(ctx); err != nil {
		return v, err
	}
	if data.Replicas, err = d.replicaCount(ctx); err != nil {
		return v, err
	}
	if data.Rollouts, err = d.rolloutSummary(ctx); err != nil {
		return v, err
	}
	evs, err := d.cfg.Admin.ListEvents(ctx, &droverv1.ListEventsRequest{PageSize: sideEvents})
	if err != nil {
		return v, fromAdmin(err)
	}
	data.Events = evs.GetEvents()
	if data.SelectorErr != "" {
		v.Code = http.StatusBadRequest
	}
	return v, nil
}

// worstReported is the worst health some application on the cluster
// reports; ok is false before its first report.
func worstReported(c store.ClusterOverview) (h droverv1.Health, ok bool) {
	best := -1
	for v := range droverv1.Health_name {
		if hv := droverv1.Health(v); c.Reports(hv) && severity(hv) > best {
			best, h, ok = severity(hv), hv, true
		}
	}
	return h, ok
}

func countsHealth(c *store.StatusCounts) map[droverv1.Health]int32 {
	if c == nil {
		return nil
	}
	return c.Health
}

// appHealthCounts counts applications by their worst health anywhere in
// the fleet.
func (d *Dashboard) appHealthCounts(ctx context.Context) ([]countBadge, int, error) {
	apps, err := d.cfg.Store.ListApplications(ctx)
	if err != nil {
		return nil, 0, err
	}
	counts, err := d.cfg.Store.ApplicationStatusCounts(ctx)
	if err != nil {
		return nil, 0, err
	}
	by := map[state]int{}
	for _, a := range apps {
		st := state{"none", "·", "No status yet"}
		if h, ok := worst(countsHealth(counts[a.GetName()])); ok {
			st = healthState(h)
		}
		by[st]++
	}
	var out []countBadge
	for _, st := range []state{stateDegraded, stateMissing, stateProgressing, stateUnknown, stateSuspended, stateHealthy} {
		if by[st] > 0 {
			out = append(out, countBadge{st, by[st]})
			delete(by, st)
		}
	}
	for st, n := range by {
		out = append(out, countBadge{st, n})
	}
	return out, len(apps), nil
}

// Cluster page.

type appRow struct {
	Status        *droverv1.ApplicationStatus
	CommitURL     string
	Current       string // the commit the application's clusters should run: its current release's content commit
	Behind        bool
	ID            string
	DriftedCount  int
	ResourceCount int
}

type clusterData struct {
	Cluster  *droverv1.Cluster
	Online   bool
	Acked    bool
	Apps     []appRow
	Events   []*droverv1.Event
	LastSeen time.Time
}

func (d *Dashboard) cluster(r *http.Request) (view, error) {
	ctx := r.Context()
	name := r.PathValue("name")
	resp, err := d.cfg.Admin.GetCluster(ctx, &droverv1.GetClusterRequest{Name: name})
	if err != nil {
		return view{}, fromAdmin(err)
	}
	c := resp.GetCluster()
	data := &clusterData{Cluster: c, Online: d.online(c)}
	data.Acked = c.GetAssignmentVersion() != "" && c.GetAssignmentVersion() == c.GetAckedVersion()
	apps, err := d.cfg.Store.ListApplications(ctx)
	if err != nil {
		return view{}, err
	}
	repos := make(map[string]string, len(apps))
	for _, a := range apps {
		repos[a.GetName()] = a.GetSpec().GetSource().GetRepoUrl()
	}
	rels, err := d.cfg.Store.CurrentReleases(ctx)
	if err != nil {
		return view{}, err
	}
	for _, st := range resp.GetApplications() {
		row := appRow{Status: st, CommitURL: forgeCommitURL(repos[st.GetApplication()], st.GetCommit()), ID: "res-" + st.GetApplication(), ResourceCount: len(st.GetResources())}
		row.Current = rels[st.GetApplication()].GetContentCommit()
		// A removing application is not behind: it is leaving.
		row.Behind = !st.GetRemoving() && row.Current != "" && st.GetCommit() != row.Current
		for _, res := range st.GetResources() {
			if res.GetDrifted() {
				row.DriftedCount++
			}
		}
		data.Apps = append(data.Apps, row)
	}
	evs, err := d.cfg.Admin.ListEvents(ctx, &droverv1.ListEventsRequest{Cluster: c.GetName(), PageSize: clusterEvents})
	if err != nil {
		return view{}, fromAdmin(err)
	}
	data.Events = evs.GetEvents()
	return view{Title: "Cluster " + c.GetName(), Nav: "cluster", Data: data}, nil
}

// Applications list.

type appSummary struct {
	App       *droverv1.Application
	Commit    string
	CommitURL string
	Counts    []countBadge
}

func (d *Dashboard) apps(r *http.Request) (view, error) {
	ctx := r.Context()
	apps, err := d.cfg.Store.ListApplications(ctx)
	if err != nil {
		return view{}, err
	}
	counts, err := d.cfg.Store.ApplicationStatusCounts(ctx)
	if err != nil {
		return view{}, err
	}
	rels, err := d.cfg.Store.CurrentReleases(ctx)
	if err != nil {
		return view{}, err
	}
	var out []appSummary
	for _, a := range apps {
		s := appSummary{App: a, Commit: rels[a.GetName()].GetCommit()}
		s.CommitURL = forgeCommitURL(a.GetSpec().GetSource().GetRepoUrl(), s.Commit)
		if c := counts[a.GetName()]; c != nil {
			for _, h := range []droverv1.Health{droverv1.Health_HEALTH_DEGRADED, droverv1.Health_HEALTH_MISSING, droverv1.Health_HEALTH_PROGRESSING,
				droverv1.Health_HEALTH_UNKNOWN, droverv1.Health_HEALTH_SUSPENDED, droverv1.Health_HEALTH_HEALTHY} {
				n := c.Health[h]
				if h == droverv1.Health_HEALTH_UNKNOWN {
					n += c.Health[droverv1.Health_HEALTH_UNSPECIFIED]
				}
				if n > 0 {
					s.Counts = append(s.Counts, countBadge{healthState(h), int(n)})
				}
			}
		}
		out = append(out, s)
	}
	return view{Title: "Applications", Nav: "apps", Data: out}, nil
}

// Application page.

type matrixRow struct {
	Cluster   string
	Online    bool
	Status    *droverv1.ApplicationStatus // nil before the first report
	CommitURL string
	Behind    bool
	// Wave and WavePhase are the cluster's place in the rollout; empty
	// without a strategy.
	Wave      string
	WavePhase string
}

type releaseRow struct {
	Release   *droverv1.Release
	CommitURL string
}

type appData struct {
	App              *droverv1.Application
	SourceError      string
	Current, Prev    *releaseRow
	Selector         string
	SelectorErr      string
	Placed, Matching int
	// Offline and Behind count the matching clusters that are offline,
	// and those whose status is at another commit than the current release.
	Offline, Behind  int
	Counts           []countBadge
	Rows             []matrixRow
	Page, Pages      int
	PrevURL, NextURL string
	Events           []*droverv1.Event
	Refreshed        string
	// Rollout is nil without a strategy (the release goes everywhere at
	// once).
	Rollout *rolloutView
}

func (d *Dashboard) app(r *http.Request) (view, error) {
	ctx := r.Context()
	name := r.PathValue("name")
	resp, err := d.cfg.Admin.GetApplication(ctx, &droverv1.GetApplicationRequest{Name: name})
	if err != nil {
		return view{}, fromAdmin(err)
	}
	a := resp.GetApplication()
	repo := a.GetSpec().GetSource().GetRepoUrl()
	data := &appData{App: a, SourceError: resp.GetSourceError(), Placed: len(resp.GetPlacedClusters()), Refreshed: r.URL.Query().Get("refreshed")}
	v := view{Title: "Application " + a.GetName(), Nav: "app", Data: data}
	rels := resp.GetReleases()
	if len(rels) > 0 {
		data.Current = &releaseRow{rels[0], forgeCommitURL(repo, rels[0].GetCommit())}
	}
	if len(rels) > 1 {
		data.Prev = &releaseRow{rels[1], forgeCommitURL(repo, rels[1].GetCommit())}
	}
	raw, sel, err := parseSelector(r)
	data.Selector = raw
	if err != nil {
		data.SelectorErr = err.Error()
		v.Code = http.StatusBadRequest
		sel = labels.Nothing()
	}

	placed := make(map[string]bool, len(resp.GetPlacedClusters()))
	for _, c := range resp.GetPlacedClusters() {
		placed[c] = true
	}
	if data.Rollout, err = d.appRollout(ctx, a); err != nil {
		return v, err
	}
	inWave := map[string]*droverv1.RolloutClusterStatus{}
	if data.Rollout != nil {
		for _, c := range data.Rollout.Status.GetClusters() {
			inWave[c.GetName()] = c
		}
	}
	byCluster := make(map[string]*droverv1.ApplicationStatus, len(resp.GetStatuses()))
	for _, st := range resp.GetStatuses() {
		byCluster[st.GetCluster()] = st
	}
	var rows []matrixRow
	healthN := map[state]int{}
	current := ""
	if data.Current != nil {
		// A release that changed nothing under the application's paths
		// leaves its clusters on the content commit, not behind.
		current = data.Current.Release.GetContentCommit()
	}
	if len(placed) > 0 {
		err = d.eachCluster(ctx, sel, func(c *droverv1.Cluster, _ *store.StatusCounts) {
			if !placed[c.GetName()] {
				return
			}
			row := matrixRow{Cluster: c.GetName(), Online: d.online(c), Status: byCluster[c.GetName()]}
			if !row.Online {
				data.Offline++
			}
			if rc := inWave[c.GetName()]; rc != nil {
				row.Wave, row.WavePhase = rc.GetWave(), rc.GetPhase()
			}
			if row.Status != nil {
				row.CommitURL = forgeCommitURL(repo, row.Status.GetCommit())
				row.Behind = current != "" && row.Status.GetCommit() != current
				if row.Behind {
					data.Behind++
				}
				healthN[healthState(row.Status.GetHealth())]++
			} else {
				healthN[state{"none", "·", "No status yet"}]++
			}
			rows = append(rows, row)
		})
		if err != nil {
			return v, err
		}
	}
	for _, st := range []state{stateDegraded, stateMissing, stateProgressing, stateUnknown, stateSuspended, stateHealthy} {
		if healthN[st] > 0 {
			data.Counts = append(data.Counts, countBadge{st, healthN[st]})
			delete(healthN, st)
		}
	}
	for st, n := range healthN {
		data.Counts = append(data.Counts, countBadge{st, n})
	}
	data.Matching = len(rows)
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	data.Pages = max((len(rows)+matrixPerPage-1)/matrixPerPage, 1)
	data.Page = min(max(page, 1), data.Pages)
	lo, hi := (data.Page-1)*matrixPerPage, min(data.Page*matrixPerPage, len(rows))
	data.Rows = rows[lo:hi]
	pageURL := func(p int) string {
		u := url.Values{"page": {strconv.Itoa(p)}}
		if raw != "" {
			u.Set("selector", raw)
		}
		return "/apps/" + url.PathEscape(a.GetName()) + "?" + u.Encode()
	}
	if data.Page > 1 {
		data.PrevURL = pageURL(data.Page - 1)
	}
	if data.Page < data.Pages {
		data.NextURL = pageURL(data.Page + 1)
	}
	evs, err := d.cfg.Admin.ListEvents(ctx, &droverv1.ListEventsRequest{Application: a.GetName(), PageSize: clusterEvents})
	if err != nil {
		return v, fromAdmin(err)
	}
	data.Events = evs.GetEvents()
	return v, nil
}

// Events page.

type eventsData struct {
	Cluster, App, Kind string
	Events             []*droverv1.Event
	NextURL            string
	First              bool
}

func (d *Dashboard) events(r *http.Request) (view, error) {
	q := r.URL.Query()
	data := &eventsData{Cluster: strings.TrimSpace(q.Get("cluster")), App: strings.TrimSpace(q.Get("app")), Kind: strings.TrimSpace(q.Get("kind")), First: q.Get("before") == ""}
	resp, err := d.cfg.Admin.ListEvents(r.Context(), &droverv1.ListEventsRequest{
		Cluster: data.Cluster, Application: data.App, Kind: data.Kind, PageSize: eventsPerPage, PageToken: q.Get("before"),
	})
	if err != nil {
		return view{}, fromAdmin(err)
	}
	data.Events = resp.GetEvents()
	if next := resp.GetNextPageToken(); next != "" {
		u := url.Values{"before": {next}}
		for k, val := range map[string]string{"cluster": data.Cluster, "app": data.App, "kind": data.Kind} {
			if val != "" {
				u.Set(k, val)
			}
		}
		data.NextURL = "/events?" + u.Encode()
	}
	return view{Title: "Events", Nav: "events", Data: data}, nil
}

// search takes the top bar's query to the cluster or application of that
// name, or to the overview filtered by it.
func (d *Dashboard) search(w http.ResponseWriter, r *http.Request) {
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	ctx := r.Context()
	if q != "" {
		if _, err := d.cfg.Admin.GetCluster(ctx, &droverv1.GetClusterRequest{Name: q}); err == nil {
			http.Redirect(w, r, "/clusters/"+url.PathEscape(q), http.StatusSeeOther)
			return
		}
		if _, err := d.cfg.Admin.GetApplication(ctx, &droverv1.GetApplicationRequest{Name: q}); err == nil {
			http.Redirect(w, r, "/apps/"+url.PathEscape(q), http.StatusSeeOther)
			return
		}
	}
	http.Redirect(w, r, "/?"+url.Values{"q": {q}}.Encode(), http.StatusSeeOther)
}

// refresh resolves an application's ref now (admins only; see action).
func (d *Dashboard) refresh(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	resp, err := d.cfg.Admin.RefreshApplication(r.Context(), &droverv1.RefreshApplicationRequest{Name: name})
	if err != nil {
		err = fromAdmin(err)
		var pe *pageError
		if !errors.As(err, &pe) {
			d.log.Error("dashboard refresh", "app", name, "err", err)
			pe = &pageError{code: http.StatusServiceUnavailable, msg: "The hub could not refresh the application; it logged why."}
		}
		d.renderError(w, r, pe.code, pe.msg)
		return
	}
	http.Redirect(w, r, "/apps/"+url.PathEscape(name)+"?"+url.Values{"refreshed": {resp.GetCommit()}}.Encode(), http.StatusSeeOther)
}
