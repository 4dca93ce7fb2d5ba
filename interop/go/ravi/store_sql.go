package ravi

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	meshv1 "github.com/ravi-mesh/ravi/gen/go/ravi/mesh/v1"
	"google.golang.org/grpc/codes"
	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, pure Go
)

// HolderLease is how long a node that stopped renewing its lease (it died)
// keeps its agents in a shared store, the same in every language.
const HolderLease = meshv1.HolderLease

// The tables every language's SQL stores use (docs/state.md).
const (
	sqliteSchema = `CREATE TABLE IF NOT EXISTS ravi_agent_state (
    agent_type TEXT NOT NULL,
    agent_key TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT,
    holder TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (agent_type, agent_key)
) WITHOUT ROWID`
	postgresSchema = `CREATE TABLE IF NOT EXISTS ravi_agent_state (
    agent_type text NOT NULL,
    agent_key text NOT NULL,
    version bigint NOT NULL,
    state jsonb,
    holder text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_type, agent_key)
);
CREATE TABLE IF NOT EXISTS ravi_holders (
    holder text PRIMARY KEY,
    renewed_at timestamptz NOT NULL
)`
	postgresClaim = `INSERT INTO ravi_agent_state AS s (agent_type, agent_key, version, holder)
VALUES ($1, $2, 0, $3)
ON CONFLICT (agent_type, agent_key) DO UPDATE SET holder = EXCLUDED.holder
WHERE s.holder = '' OR s.holder = EXCLUDED.holder OR NOT EXISTS (
    SELECT 1 FROM ravi_holders h
    WHERE h.holder = s.holder AND h.renewed_at > now() - make_interval(secs => $4)
)
RETURNING version, state::text`
	postgresSave = `UPDATE ravi_agent_state
SET version = version + 1, state = $3::jsonb, updated_at = now(),
    holder = CASE WHEN $6 THEN '' ELSE holder END
WHERE agent_type = $1 AND agent_key = $2 AND version = $4 AND holder = $5
RETURNING version`
	// A first save: a new record, or the one this node's claim created (version 0).
	postgresCreate = `INSERT INTO ravi_agent_state AS s (agent_type, agent_key, version, state, holder, updated_at)
VALUES ($1, $2, 1, $3::jsonb, CASE WHEN $5 THEN '' ELSE $4 END, now())
ON CONFLICT (agent_type, agent_key) DO UPDATE
SET version = 1, state = EXCLUDED.state, holder = EXCLUDED.holder, updated_at = now()
WHERE s.version = 0 AND s.holder = $4
RETURNING version`
	postgresRenew = `INSERT INTO ravi_holders (holder, renewed_at) VALUES ($1, now())
ON CONFLICT (holder) DO UPDATE SET renewed_at = now()`
)

// SQLiteStore keeps agent state in one SQLite file of one node (WAL mode;
// every save is committed before it returns, so a killed process loses no
// saved state), with the pure-Go modernc.org/sqlite driver.
type SQLiteStore struct {
	path   string
	db     *sql.DB
	holder string
}

// NewSQLiteStore returns a store in the file path (created when missing).
func NewSQLiteStore(path string) *SQLiteStore { return &SQLiteStore{path: path} }

// Open opens the file and creates the table.
func (s *SQLiteStore) Open(ctx context.Context, holder string) error {
	s.holder = holder
	if s.db != nil {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o755); err != nil {
		return unavailable("cannot open the state store %s: %v", s.path, err)
	}
	db, err := sql.Open("sqlite", "file:"+s.path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)")
	if err != nil {
		return unavailable("cannot open the state store %s: %v", s.path, err)
	}
	if _, err := db.ExecContext(ctx, sqliteSchema); err != nil {
		_ = db.Close()
		return unavailable("cannot use %s as a state store: %v", s.path, err)
	}
	s.db = db
	return nil
}

// Load returns the record of id.
func (s *SQLiteStore) Load(ctx context.Context, id AgentID) (StoredState, error) {
	var version int64
	var state sql.NullString
	err := s.db.QueryRowContext(ctx, `SELECT version, state FROM ravi_agent_state WHERE agent_type = ? AND agent_key = ?`,
		id.Type, id.Key).Scan(&version, &state)
	if errors.Is(err, sql.ErrNoRows) {
		return StoredState{}, nil
	}
	if err != nil {
		return StoredState{}, unavailable("loading the state of %s: %v", id, err)
	}
	return StoredState{State: nullBytes(state), Version: version}, nil
}

// Save writes state over version.
func (s *SQLiteStore) Save(ctx context.Context, id AgentID, state []byte, version int64, _ bool) (int64, error) {
	var res sql.Result
	var err error
	if version == 0 {
		res, err = s.db.ExecContext(ctx, `INSERT INTO ravi_agent_state (agent_type, agent_key, version, state) VALUES (?, ?, 1, ?)
ON CONFLICT (agent_type, agent_key) DO NOTHING`, id.Type, id.Key, string(state))
	} else {
		res, err = s.db.ExecContext(ctx, `UPDATE ravi_agent_state
SET version = version + 1, state = ?, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
WHERE agent_type = ? AND agent_key = ? AND version = ?`, string(state), id.Type, id.Key, version)
	}
	if err != nil {
		return 0, unavailable("saving the state of %s: %v", id, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return 0, staleState(id, version, s.found(ctx, id), s.holder)
	}
	return version + 1, nil
}

func (s *SQLiteStore) found(ctx context.Context, id AgentID) string {
	var version int64
	err := s.db.QueryRowContext(ctx, `SELECT version FROM ravi_agent_state WHERE agent_type = ? AND agent_key = ?`,
		id.Type, id.Key).Scan(&version)
	if err != nil {
		return "no record of it"
	}
	return fmt.Sprintf("version %d", version)
}

// Close closes the file.
func (s *SQLiteStore) Close(context.Context) error {
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	return err
}

// PostgresStore keeps agent state in PostgreSQL, shared by the nodes of a
// mesh (pgx as the database/sql driver). Each record names the node holding
// the agent: a node activating an agent another live node holds waits until
// that node saves and lets it go, and a node that died loses its agents once
// its lease (HolderLease) lapsed.
type PostgresStore struct {
	dsn    string
	db     *sql.DB
	claims *sql.DB // claims and lease renewals: commits that need not wait for the disk
	holder string
	lease  time.Duration
	stop   chan struct{}
	wg     sync.WaitGroup
}

// NewPostgresStore returns a store for the libpq URL dsn.
func NewPostgresStore(dsn string) *PostgresStore {
	return &PostgresStore{dsn: dsn, lease: HolderLease}
}

// Open connects, creates the tables and starts renewing the node's lease.
func (s *PostgresStore) Open(ctx context.Context, holder string) error {
	s.holder = holder
	if s.db != nil {
		return nil
	}
	db, err := sql.Open("pgx", s.dsn)
	if err != nil {
		return unavailable("cannot reach the state store %s: %v", redacted(s.dsn), err)
	}
	db.SetMaxOpenConns(10)
	if err := s.createTables(ctx, db); err != nil {
		_ = db.Close()
		return unavailable("cannot reach the state store %s: %v", redacted(s.dsn), err)
	}
	// A claim the server lost in a crash only lets another node claim the
	// agent, and the saves of this node, which do wait for the disk, are then
	// refused: claims need not wait for it.
	claims, err := sql.Open("pgx", withParam(s.dsn, "synchronous_commit", "off"))
	if err != nil {
		_ = db.Close()
		return unavailable("cannot reach the state store %s: %v", redacted(s.dsn), err)
	}
	claims.SetMaxOpenConns(10)
	s.db, s.claims = db, claims
	s.stop = make(chan struct{})
	s.wg.Add(1)
	go s.renew()
	return nil
}

func (s *PostgresStore) createTables(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	// Nodes starting together must not race to create the tables.
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(7261766900)`); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, postgresSchema); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, postgresRenew, s.holder)
	return err
}

func (s *PostgresStore) renew() {
	defer s.wg.Done()
	tick := time.NewTicker(s.lease / 3)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), s.lease/3)
			if _, err := s.claims.ExecContext(ctx, postgresRenew, s.holder); err != nil {
				slog.Warn("renewing the lease of a node failed", "holder", s.holder, "err", err)
			}
			cancel()
		}
	}
}

// Load claims id for this node and returns its record, or who holds it.
func (s *PostgresStore) Load(ctx context.Context, id AgentID) (StoredState, error) {
	var version int64
	var state sql.NullString
	err := s.claims.QueryRowContext(ctx, postgresClaim, id.Type, id.Key, s.holder, s.lease.Seconds()).Scan(&version, &state)
	if errors.Is(err, sql.ErrNoRows) {
		var holder string
		if err := s.db.QueryRowContext(ctx, `SELECT holder FROM ravi_agent_state WHERE agent_type = $1 AND agent_key = $2`,
			id.Type, id.Key).Scan(&holder); err != nil {
			return StoredState{}, unavailable("loading the state of %s: %v", id, err)
		}
		return StoredState{HeldBy: holder}, nil
	}
	if err != nil {
		return StoredState{}, unavailable("loading the state of %s: %v", id, err)
	}
	return StoredState{State: nullBytes(state), Version: version}, nil
}

// Save writes state over version, if this node still holds id.
func (s *PostgresStore) Save(ctx context.Context, id AgentID, state []byte, version int64, release bool) (int64, error) {
	var saved int64
	var err error
	if version == 0 {
		err = s.db.QueryRowContext(ctx, postgresCreate, id.Type, id.Key, string(state), s.holder, release).Scan(&saved)
	} else {
		err = s.db.QueryRowContext(ctx, postgresSave, id.Type, id.Key, string(state), version, s.holder, release).Scan(&saved)
	}
	if errors.Is(err, sql.ErrNoRows) {
		found := "no record of it"
		var current int64
		var holder string
		if s.db.QueryRowContext(ctx, `SELECT version, holder FROM ravi_agent_state WHERE agent_type = $1 AND agent_key = $2`,
			id.Type, id.Key).Scan(&current, &holder) == nil {
			found = fmt.Sprintf("version %d", current)
			if holder != "" && holder != s.holder {
				found += fmt.Sprintf(", held by node %q", holder)
			}
		}
		return 0, staleState(id, version, found, s.holder)
	}
	if err != nil {
		return 0, unavailable("saving the state of %s: %v", id, err)
	}
	return saved, nil
}

// Close stops the renewals, drops the lease (what the node still holds is
// free at once) and closes the connections.
func (s *PostgresStore) Close(ctx context.Context) error {
	if s.db == nil {
		return nil
	}
	close(s.stop)
	s.wg.Wait()
	if _, err := s.db.ExecContext(ctx, `DELETE FROM ravi_holders WHERE holder = $1`, s.holder); err != nil {
		slog.Warn("dropping the lease of a node failed", "holder", s.holder, "err", err)
	}
	err := errors.Join(s.db.Close(), s.claims.Close())
	s.db, s.claims = nil, nil
	return err
}

// withParam adds a query parameter (a run-time parameter for pgx) to a URL.
func withParam(dsn, name, value string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return dsn
	}
	q := u.Query()
	q.Set(name, value)
	u.RawQuery = q.Encode()
	return u.String()
}

func nullBytes(s sql.NullString) []byte {
	if !s.Valid {
		return nil
	}
	return []byte(s.String)
}

func unavailable(format string, args ...any) *Error {
	return &Error{Code: codes.Unavailable, Message: fmt.Sprintf(format, args...)}
}

var password = regexp.MustCompile(`(://[^:/@]+):[^@]*@`)

func redacted(dsn string) string { return password.ReplaceAllString(dsn, "$1:***@") }
