package dashboard

import (
	"context"
	"net/http"

	"github.com/drover-dev/drover/hub/adminapi"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// replicaState is how a replica's state shows: glyph and word, never
// colour alone.
func replicaState(s string) state {
	switch s {
	case adminapi.ReplicaAlive:
		return state{"ok", "●", "Alive"}
	case adminapi.ReplicaSuspect:
		return state{"warn", "!", "Suspect"}
	case adminapi.ReplicaGone:
		return state{"off", "○", "Gone"}
	}
	return stateUnknown
}

// replicaCount is the overview's "2/3 replicas alive": gone replicas (stopped
// or long silent, kept in the table for the record) are not counted.
// Recorded counts every row, gone ones too.
type replicaCount struct {
	Alive, Total, Recorded int
}

func (d *Dashboard) replicaCount(ctx context.Context) (replicaCount, error) {
	resp, err := d.cfg.Admin.ListReplicas(ctx, &droverv1.ListReplicasRequest{})
	if err != nil {
		return replicaCount{}, fromAdmin(err)
	}
	c := replicaCount{Recorded: len(resp.GetReplicas())}
	for _, r := range resp.GetReplicas() {
		switch r.GetState() {
		case adminapi.ReplicaAlive:
			c.Alive++
			c.Total++
		case adminapi.ReplicaSuspect:
			c.Total++
		}
	}
	return c, nil
}

type replicasData struct {
	Replicas   []*droverv1.Replica
	AnsweredBy string
	Alive      int
}

func (d *Dashboard) replicas(r *http.Request) (view, error) {
	resp, err := d.cfg.Admin.ListReplicas(r.Context(), &droverv1.ListReplicasRequest{})
	if err != nil {
		return view{}, fromAdmin(err)
	}
	data := &replicasData{Replicas: resp.GetReplicas(), AnsweredBy: resp.GetAnsweredBy()}
	for _, rep := range data.Replicas {
		if rep.GetState() == adminapi.ReplicaAlive {
			data.Alive++
		}
	}
	return view{Title: "Hub replicas", Nav: "replicas", Data: data}, nil
}

type replicaData struct {
	Replica    *droverv1.Replica
	AnsweredBy string
}

func (d *Dashboard) replica(r *http.Request) (view, error) {
	name := r.PathValue("name")
	resp, err := d.cfg.Admin.ListReplicas(r.Context(), &droverv1.ListReplicasRequest{Name: name})
	if err != nil {
		return view{}, fromAdmin(err)
	}
	if len(resp.GetReplicas()) != 1 {
		return view{}, notFound("hub replica %q", name)
	}
	rep := resp.GetReplicas()[0]
	return view{Title: "Hub replica " + rep.GetName(), Nav: "replica", Data: &replicaData{Replica: rep, AnsweredBy: resp.GetAnsweredBy()}}, nil
}
