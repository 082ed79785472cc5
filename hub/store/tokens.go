package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	droverv1 "github.com/drover-dev/drover/proto/drover/v1"
)

// Tokens (join and API alike) read "<id>.<secret>": id is public (it names
// the token in lists and logs), secret is 160 random bits. Only SHA-256 of
// the secret is stored; a slow hash adds nothing for a secret this long.
const (
	tokenIDBytes     = 5  // 8 base32 characters
	tokenSecretBytes = 20 // 32 base32 characters
	// idAttempts bounds retries when a fresh random id is taken already.
	idAttempts = 3
)

var tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

var (
	tokenIDLen     = tokenEncoding.EncodedLen(tokenIDBytes)
	tokenSecretLen = tokenEncoding.EncodedLen(tokenSecretBytes)
)

// DefaultJoinTokenTTL is a join token's lifetime when the request names
// none.
const DefaultJoinTokenTTL = 24 * time.Hour

// maxDescriptionBytes bounds free text operators attach to tokens.
const maxDescriptionBytes = 1024

// newToken returns a fresh token, its id and the hash of its secret.
func newToken() (token, id string, secretHash []byte) {
	b := make([]byte, tokenIDBytes+tokenSecretBytes)
	rand.Read(b) // never returns an error; it crashes the program instead
	id = tokenEncoding.EncodeToString(b[:tokenIDBytes])
	secret := tokenEncoding.EncodeToString(b[tokenIDBytes:])
	h := sha256.Sum256([]byte(secret))
	return id + "." + secret, id, h[:]
}

// parseToken splits a token into its id and the hash of its secret.
func parseToken(token string) (id string, secretHash []byte, err error) {
	id, secret, ok := strings.Cut(token, ".")
	if !ok || len(id) != tokenIDLen || len(secret) != tokenSecretLen || !isTokenText(id) || !isTokenText(secret) {
		return "", nil, &TokenError{Reason: TokenMalformed}
	}
	h := sha256.Sum256([]byte(secret))
	return id, h[:], nil
}

func isTokenText(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// secretMatches compares hashes in constant time.
func secretMatches(stored, presented []byte) bool {
	return subtle.ConstantTimeCompare(stored, presented) == 1
}

// CreateJoinToken makes a join token as req asks and returns the token
// itself (shown once; only its hash is kept) with its description. An empty
// req.Ttl means DefaultJoinTokenTTL.
func (s *Store) CreateJoinToken(ctx context.Context, req *droverv1.CreateJoinTokenRequest, createdBy string, now time.Time) (string, *droverv1.JoinToken, error) {
	ttl := DefaultJoinTokenTTL
	if req.GetTtl() != "" {
		d, err := time.ParseDuration(req.GetTtl())
		if err != nil {
			return "", nil, invalid("ttl", "%q is not a Go duration such as 24h", req.GetTtl())
		}
		ttl = d
	}
	if ttl <= 0 {
		return "", nil, invalid("ttl", "must be positive, got %v", ttl)
	}
	if err := validateLabels("labels", req.GetLabels()); err != nil {
		return "", nil, err
	}
	if len(req.GetDescription()) > maxDescriptionBytes {
		return "", nil, invalid("description", "longer than %d bytes", maxDescriptionBytes)
	}
	labels, err := labelsJSON(req.GetLabels())
	if err != nil {
		return "", nil, fmt.Errorf("create join token: %w", err)
	}
	description := cleanText(req.GetDescription(), 0)
	createdBy = cleanText(createdBy, 0)
	expires := now.Add(ttl)

	for attempt := 1; ; attempt++ {
		token, id, hash := newToken()
		err := s.execOne(ctx, "create join token", `
			INSERT INTO join_tokens (id, secret_hash, reusable, labels, description, created_at, expires_at, created_by)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			id, hash, req.GetReusable(), labels, description, now, expires, createdBy)
		if errors.Is(err, ErrConflict) && attempt < idAttempts {
			continue // a random id collided; draw another
		}
		if err != nil {
			return "", nil, err
		}
		return token, &droverv1.JoinToken{
			Id:          id,
			Reusable:    req.GetReusable(),
			Labels:      cloneLabels(req.GetLabels()),
			Description: description,
			CreatedAt:   ts(now),
			ExpiresAt:   ts(expires),
			CreatedBy:   createdBy,
		}, nil
	}
}

// ListJoinTokens lists every join token, expired ones included, oldest
// first.
func (s *Store) ListJoinTokens(ctx context.Context) ([]*droverv1.JoinToken, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `
		SELECT id, reusable, labels, description, created_at, expires_at, use_count, created_by
		FROM join_tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, classify("list join tokens", err)
	}
	var out []*droverv1.JoinToken
	for rows.Next() {
		var (
			t              droverv1.JoinToken
			labels         []byte
			created, expir time.Time
		)
		if err := rows.Scan(&t.Id, &t.Reusable, &labels, &t.Description, &created, &expir, &t.UseCount, &t.CreatedBy); err != nil {
			return nil, classify("list join tokens", err)
		}
		if t.Labels, err = labelsFromJSON(labels); err != nil {
			return nil, fmt.Errorf("list join tokens: %s: %w", t.Id, err)
		}
		t.CreatedAt, t.ExpiresAt = ts(created), ts(expir)
		out = append(out, &t)
	}
	if err := rows.Err(); err != nil {
		return nil, classify("list join tokens", err)
	}
	return out, nil
}

// DeleteJoinToken deletes a join token by id; clusters it registered stay.
func (s *Store) DeleteJoinToken(ctx context.Context, id string) error {
	return s.execOne(ctx, fmt.Sprintf("delete join token %q", id), `DELETE FROM join_tokens WHERE id = $1`, id)
}

// CreateClusterWithJoinToken registers cluster name with a join token, in
// one transaction: the token must exist, carry the right secret, not have
// expired, and (unless reusable) never have been used; the name must be
// free. A refused token returns a *TokenError, a taken name ErrConflict
// (re-registering a name, revoked or not, needs the cluster deleted first);
// either way nothing changes. On success the cluster starts with the
// token's labels and certSerial as its only valid certificate, and the
// token's use is counted.
func (s *Store) CreateClusterWithJoinToken(ctx context.Context, token, name, certSerial string, now time.Time) (*droverv1.Cluster, error) {
	id, presented, err := parseToken(token)
	if err != nil {
		return nil, err
	}
	if err := validateName("cluster_name", name); err != nil {
		return nil, err
	}
	if certSerial == "" {
		return nil, invalid("cert_serial", "must not be empty")
	}
	var c *droverv1.Cluster
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var (
			stored   []byte
			reusable bool
			labels   []byte
			expires  time.Time
			uses     int32
		)
		// FOR UPDATE: two registrations racing for one single-use token
		// take turns, and the second sees use_count 1.
		err := tx.QueryRow(ctx, `
			SELECT secret_hash, reusable, labels, expires_at, use_count
			FROM join_tokens WHERE id = $1 FOR UPDATE`, id).
			Scan(&stored, &reusable, &labels, &expires, &uses)
		if errors.Is(err, pgx.ErrNoRows) {
			return &TokenError{Reason: TokenUnknown}
		}
		if err != nil {
			return classify("look up join token", err)
		}
		// The secret first: only its holder learns that the token expired
		// or was used.
		if !secretMatches(stored, presented) {
			return &TokenError{Reason: TokenUnknown}
		}
		if !now.Before(expires) {
			return &TokenError{Reason: TokenExpired}
		}
		if !reusable && uses > 0 {
			return &TokenError{Reason: TokenUsed}
		}
		row := tx.QueryRow(ctx, `
			INSERT INTO clusters (name, labels, created_at, cert_serial)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (name) DO NOTHING
			RETURNING `+clusterColumns, name, labels, now, certSerial)
		c, err = scanCluster(row)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("cluster %q: %w", name, ErrConflict)
		}
		if err != nil {
			return classify("insert cluster", err)
		}
		if _, err := tx.Exec(ctx, `
			UPDATE join_tokens SET use_count = use_count + 1, last_used_at = $2 WHERE id = $1`, id, now); err != nil {
			return classify("count join token use", err)
		}
		return s.notifyTx(ctx, tx, Change{Kind: ChangeCluster, Name: name})
	})
	if err != nil {
		var te *TokenError
		if errors.As(err, &te) {
			return nil, err
		}
		return nil, fmt.Errorf("register cluster %q: %w", name, err)
	}
	return c, nil
}

// API tokens.

// Roles of API tokens.
const (
	RoleAdmin  = "admin"
	RoleViewer = "viewer"
)

// apiTokenUseResolution: last_used_at is written at most this often per
// token, so authenticating every request costs no write.
const apiTokenUseResolution = time.Minute

// reservedActors are actor names the hub itself uses in events.
var reservedActors = map[string]bool{"hub": true}

func validateAPIToken(name, role string, ttl time.Duration) error {
	if err := validateName("name", name); err != nil {
		return err
	}
	if reservedActors[name] {
		return invalid("name", "%q is reserved", name)
	}
	if role != RoleAdmin && role != RoleViewer {
		return invalid("role", "%q is neither %q nor %q", role, RoleAdmin, RoleViewer)
	}
	if ttl < 0 {
		return invalid("ttl", "must not be negative, got %v", ttl)
	}
	return nil
}

// CreateAPIToken makes an API token and returns the token itself (shown
// once; only its hash is kept). ttl 0 means it never expires. Names are
// unique (they are the actor in the audit log): a taken name is
// ErrConflict.
func (s *Store) CreateAPIToken(ctx context.Context, name, role string, ttl time.Duration, now time.Time) (string, *droverv1.APIToken, error) {
	if err := validateAPIToken(name, role, ttl); err != nil {
		return "", nil, err
	}
	var (
		token string
		t     *droverv1.APIToken
	)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		token, t, err = insertAPIToken(ctx, tx, name, role, ttl, now)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("create api token %q: %w", name, err)
	}
	return token, t, nil
}

// CreateFirstAPIToken makes an API token only when there is none at all:
// the hub's initial admin token. Replicas starting together take turns;
// all but the first get ErrConflict.
func (s *Store) CreateFirstAPIToken(ctx context.Context, name, role string, ttl time.Duration, now time.Time) (string, *droverv1.APIToken, error) {
	if err := validateAPIToken(name, role, ttl); err != nil {
		return "", nil, err
	}
	var (
		token string
		t     *droverv1.APIToken
	)
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		// Blocks concurrent inserts (and another caller of this) until
		// commit, so the count below stays true; reads go on.
		if _, err := tx.Exec(ctx, `LOCK TABLE api_tokens IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return classify("lock api tokens", err)
		}
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM api_tokens)`).Scan(&exists); err != nil {
			return classify("count api tokens", err)
		}
		if exists {
			return fmt.Errorf("api tokens exist: %w", ErrConflict)
		}
		var err error
		token, t, err = insertAPIToken(ctx, tx, name, role, ttl, now)
		return err
	})
	if err != nil {
		return "", nil, fmt.Errorf("create first api token %q: %w", name, err)
	}
	return token, t, nil
}

func insertAPIToken(ctx context.Context, tx pgx.Tx, name, role string, ttl time.Duration, now time.Time) (string, *droverv1.APIToken, error) {
	var expires *time.Time
	if ttl > 0 {
		e := now.Add(ttl)
		expires = &e
	}
	for attempt := 1; ; attempt++ {
		token, id, hash := newToken()
		// A savepoint, so an id collision does not abort the transaction.
		sp, err := tx.Begin(ctx)
		if err != nil {
			return "", nil, classify("savepoint", err)
		}
		_, err = sp.Exec(ctx, `
			INSERT INTO api_tokens (id, name, role, secret_hash, created_at, expires_at)
			VALUES ($1, $2, $3, $4, $5, $6)`, id, name, role, hash, now, expires)
		if err != nil {
			_ = sp.Rollback(ctx)
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.ConstraintName == "api_tokens_pkey" && attempt < idAttempts {
				continue // a random id collided; draw another
			}
			return "", nil, classify("insert api token", err)
		}
		if err := sp.Commit(ctx); err != nil {
			return "", nil, classify("release savepoint", err)
		}
		return token, &droverv1.APIToken{
			Id:        id,
			Name:      name,
			Role:      role,
			CreatedAt: ts(now),
			ExpiresAt: tsOpt(expires),
		}, nil
	}
}

// AuthenticateAPIToken returns the token's description when token is a
// valid, unexpired API token, and a *TokenError otherwise.
func (s *Store) AuthenticateAPIToken(ctx context.Context, token string, now time.Time) (*droverv1.APIToken, error) {
	id, presented, err := parseToken(token)
	if err != nil {
		return nil, err
	}
	qctx, cancel := s.queryCtx(ctx)
	defer cancel()
	var (
		t                droverv1.APIToken
		stored           []byte
		created          time.Time
		expires, lastUse *time.Time
	)
	err = s.pool.QueryRow(qctx, `
		SELECT id, name, role, secret_hash, created_at, expires_at, last_used_at
		FROM api_tokens WHERE id = $1`, id).
		Scan(&t.Id, &t.Name, &t.Role, &stored, &created, &expires, &lastUse)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, &TokenError{Reason: TokenUnknown}
	}
	if err != nil {
		return nil, classify("authenticate api token", err)
	}
	if !secretMatches(stored, presented) {
		return nil, &TokenError{Reason: TokenUnknown}
	}
	if expires != nil && !now.Before(*expires) {
		return nil, &TokenError{Reason: TokenExpired}
	}
	if lastUse == nil || now.Sub(*lastUse) >= apiTokenUseResolution {
		// The condition again in SQL: replicas authenticating the same
		// token at once write it once.
		if _, err := s.pool.Exec(qctx, `
			UPDATE api_tokens SET last_used_at = $2
			WHERE id = $1 AND (last_used_at IS NULL OR last_used_at <= $2::timestamptz - $3::interval)`,
			id, now, apiTokenUseResolution); err != nil {
			// Authentication stands; only the bookkeeping failed.
			s.log.Warn("record api token use", "token_id", id, "err", err)
		} else {
			lastUse = &now
		}
	}
	t.CreatedAt, t.ExpiresAt, t.LastUsedAt = ts(created), tsOpt(expires), tsOpt(lastUse)
	return &t, nil
}

// ListAPITokens lists every API token, oldest first.
func (s *Store) ListAPITokens(ctx context.Context) ([]*droverv1.APIToken, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	rows, err := s.pool.Query(ctx, `
		SELECT id, name, role, created_at, expires_at, last_used_at
		FROM api_tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, classify("list api tokens", err)
	}
	var out []*droverv1.APIToken
	for rows.Next() {
		var (
			t                droverv1.APIToken
			created          time.Time
			expires, lastUse *time.Time
		)
		if err := rows.Scan(&t.Id, &t.Name, &t.Role, &created, &expires, &lastUse); err != nil {
			return nil, classify("list api tokens", err)
		}
		t.CreatedAt, t.ExpiresAt, t.LastUsedAt = ts(created), tsOpt(expires), tsOpt(lastUse)
		out = append(out, &t)
	}
	if err := rows.Err(); err != nil {
		return nil, classify("list api tokens", err)
	}
	return out, nil
}

// DeleteAPIToken deletes an API token by id; it stops working at once.
func (s *Store) DeleteAPIToken(ctx context.Context, id string) error {
	return s.execOne(ctx, fmt.Sprintf("delete api token %q", id), `DELETE FROM api_tokens WHERE id = $1`, id)
}

// CountAPITokens counts API tokens, expired ones included.
func (s *Store) CountAPITokens(ctx context.Context) (int, error) {
	ctx, cancel := s.queryCtx(ctx)
	defer cancel()
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM api_tokens`).Scan(&n); err != nil {
		return 0, classify("count api tokens", err)
	}
	return n, nil
}

func cloneLabels(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
