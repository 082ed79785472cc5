package store

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/drover-dev/drover/internal/testlog"
	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// BenchmarkWriteStatuses measures status writes into PostgreSQL: batches
// of 500 application statuses with 20 resources each, upserted over rows
// that exist (the steady state), reported as resource entries per second.
//
// writer is what the hub ships and what its budget tracks: the statuses
// enqueued one by one, as the agent endpoint does with a report's deltas,
// into a StatusWriter made as the hub makes it and running as in the hub,
// and each batch waited for with Flush. unnest is the store's write alone,
// and copy the alternative the design names, kept as the measured baseline
// for the choice in writeStatusColumns.
func BenchmarkWriteStatuses(b *testing.B) {
	for _, impl := range []struct {
		name  string
		write func(b *testing.B, s *Store) func(context.Context, []*droverv1.ApplicationStatus) error
	}{
		{"writer", hubStatusWriter},
		{"unnest", func(_ *testing.B, s *Store) func(context.Context, []*droverv1.ApplicationStatus) error {
			return s.WriteStatuses
		}},
		{"copy", func(_ *testing.B, s *Store) func(context.Context, []*droverv1.ApplicationStatus) error {
			return func(ctx context.Context, sts []*droverv1.ApplicationStatus) error {
				return writeStatusesCopy(ctx, s, sts)
			}
		}},
	} {
		b.Run(impl.name, func(b *testing.B) {
			benchmarkWriteStatuses(b, impl.write)
		})
	}
}

// hubStatusWriter returns a write through a StatusWriter with the hub's
// settings (hub/server's NewStatusWriter call) and its Run loop going: it
// enqueues every status and returns once Flush has seen them written.
func hubStatusWriter(b *testing.B, s *Store) func(context.Context, []*droverv1.ApplicationStatus) error {
	w := NewStatusWriter(s, testlog.New(b), 0, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	return func(ctx context.Context, sts []*droverv1.ApplicationStatus) error {
		for _, st := range sts {
			if !w.Enqueue(st) {
				return fmt.Errorf("status of %s on %s refused: backlog full", st.GetApplication(), st.GetCluster())
			}
		}
		if err := w.Flush(ctx); err != nil {
			return err
		}
		if st := w.Stats(); st.Dropped != 0 {
			return fmt.Errorf("%d statuses dropped", st.Dropped)
		}
		return nil
	}
}

func benchmarkWriteStatuses(b *testing.B, writer func(*testing.B, *Store) func(context.Context, []*droverv1.ApplicationStatus) error) {
	const (
		clusters  = 25
		apps      = 20 // 25 × 20 = 500 statuses per batch
		resources = 20
	)
	s := newStore(b)
	ctx := context.Background()
	var names []string
	for c := 0; c < clusters; c++ {
		names = append(names, fmt.Sprintf("c%02d", c))
	}
	registerClusters(b, s, nil, names...)
	batches := make([][]*droverv1.ApplicationStatus, 4)
	for gen := range batches {
		for _, c := range names {
			for a := 0; a < apps; a++ {
				batches[gen] = append(batches[gen], makeStatus(c, fmt.Sprintf("app-%02d", a), resources, gen))
			}
		}
	}
	write := writer(b, s)
	if err := write(ctx, batches[0]); err != nil {
		b.Fatalf("first write: %v", err)
	}
	b.ResetTimer()
	n := 0
	for i := 0; b.Loop(); i++ {
		batch := batches[i%len(batches)]
		if err := write(ctx, batch); err != nil {
			b.Fatalf("write: %v", err)
		}
		n += len(batch) * resources
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "resources/s")
}

// writeStatusesCopy is WriteStatuses by COPY into a per-connection
// temporary staging table and INSERT ... SELECT ... ON CONFLICT.
func writeStatusesCopy(ctx context.Context, s *Store, sts []*droverv1.ApplicationStatus) error {
	cols, _, err := newStatusColumns(sts)
	if err != nil {
		return err
	}
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			CREATE TEMP TABLE IF NOT EXISTS status_staging (
				cluster text, application text, commit text, sync int2, health int2,
				message text, resources jsonb, observed_at timestamptz
			) ON COMMIT DELETE ROWS`); err != nil {
			return err
		}
		rows := make([][]any, cols.len())
		for i := range rows {
			rows[i] = []any{cols.cluster[i], cols.application[i], cols.commit[i], cols.sync[i], cols.health[i],
				cols.message[i], cols.resources[i], cols.observedAt[i]}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"status_staging"},
			[]string{"cluster", "application", "commit", "sync", "health", "message", "resources", "observed_at"},
			pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO app_status AS a
				(cluster, application, commit, sync, health, message, resources, observed_at, updated_at)
			SELECT u.cluster, u.application, u.commit, u.sync, u.health, u.message, u.resources, u.observed_at, now()
			FROM status_staging u
			WHERE EXISTS (SELECT 1 FROM clusters c WHERE c.name = u.cluster)
			ORDER BY u.cluster, u.application
			ON CONFLICT (cluster, application) DO UPDATE SET
				commit = EXCLUDED.commit, sync = EXCLUDED.sync, health = EXCLUDED.health,
				message = EXCLUDED.message, resources = EXCLUDED.resources,
				observed_at = EXCLUDED.observed_at, updated_at = EXCLUDED.updated_at`)
		return err
	})
}
