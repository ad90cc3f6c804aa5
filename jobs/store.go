package jobs

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
	_ "modernc.org/sqlite" // the CGO-free SQLite driver, "sqlite"
)

// Kinds of job database, from the URL's scheme.
const (
	KindPostgres = "postgres"
	KindSQLite   = "sqlite"
)

// ParseURL checks a job database URL and returns its kind: postgres://… or
// postgresql://… (a fleet of replicas on one Postgres), or sqlite:PATH (one
// replica; the file is created).
func ParseURL(s string) (kind string, err error) {
	switch {
	case strings.HasPrefix(s, "postgres://"), strings.HasPrefix(s, "postgresql://"):
		if _, err := pgxpool.ParseConfig(s); err != nil {
			return "", fmt.Errorf("jobs database %s: %w", redact(s), err)
		}
		return KindPostgres, nil
	case strings.HasPrefix(s, "sqlite:"):
		if sqlitePath(s) == "" {
			return "", errors.New("jobs database sqlite: needs a file path (sqlite:/var/lib/detour/jobs.db)")
		}
		return KindSQLite, nil
	}
	return "", fmt.Errorf("jobs database %q: give postgres://USER@HOST/DB or sqlite:PATH", redact(s))
}

// redact hides a URL's password.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
			return u.String()
		}
	}
	return s
}

func sqlitePath(s string) string {
	p := strings.TrimPrefix(strings.TrimPrefix(s, "sqlite:"), "//")
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	return p
}

// store is the job database: the River client on its driver, and the few
// read-only queries River has no API for (fleet-wide counts for metrics
// and limits, the tenants with unfinished jobs).
type store struct {
	kind   string
	client riverClient
	query  func(ctx context.Context, q string) (rows, error)
	close  func()
}

// rows is the part of *sql.Rows and pgx.Rows the queries use.
type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { r.Rows.Close() }

// riverClient is the part of *river.Client[TTx] the engine uses, whatever
// the driver's transaction type.
type riverClient interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	StopAndCancel(ctx context.Context) error
	Insert(ctx context.Context, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error)
	JobGet(ctx context.Context, id int64) (*rivertype.JobRow, error)
	JobCancel(ctx context.Context, id int64) (*rivertype.JobRow, error)
	JobList(ctx context.Context, params *river.JobListParams) (*river.JobListResult, error)
	Queues() *river.QueueBundle
	Subscribe(kinds ...river.EventKind) (<-chan *river.Event, func())
}

// openStore opens the database, brings River's tables up to date and makes
// the client (not started).
func openStore(ctx context.Context, dbURL string, rc *river.Config, log *slog.Logger) (*store, error) {
	kind, err := ParseURL(dbURL)
	if err != nil {
		return nil, err
	}
	if kind == KindPostgres {
		return openPostgres(ctx, dbURL, rc, log)
	}
	return openSQLite(ctx, sqlitePath(dbURL), rc, log)
}

// migrateLock is the Postgres advisory lock that keeps replicas starting
// together from migrating at once ("detour" in ASCII).
const migrateLock = 0x64_65_74_6f_75_72

func openPostgres(ctx context.Context, dbURL string, rc *river.Config, log *slog.Logger) (*store, error) {
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return nil, fmt.Errorf("jobs database %s: %w", redact(dbURL), err)
	}
	drv := riverpgxv5.New(pool)
	err = func() error {
		// A session lock held on one connection while River migrates on
		// others (each migration in its own transaction, as some must be).
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(migrateLock)); err != nil {
			return err
		}
		defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", int64(migrateLock))
		m, err := rivermigrate.New(drv, &rivermigrate.Config{Logger: log})
		if err != nil {
			return err
		}
		_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
		return err
	}()
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("jobs database %s: migrate: %w", redact(dbURL), err)
	}
	client, err := river.NewClient(drv, rc)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &store{
		kind:   KindPostgres,
		client: client,
		query: func(ctx context.Context, q string) (rows, error) {
			r, err := pool.Query(ctx, q)
			if err != nil {
				return nil, err
			}
			return pgxRows{r}, nil
		},
		close: pool.Close,
	}, nil
}

type pgxRows struct{ pgx.Rows }

func (r pgxRows) Close() { r.Rows.Close() }

func openSQLite(ctx context.Context, path string, rc *river.Config, log *slog.Logger) (*store, error) {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("jobs database sqlite:%s: %w", path, err)
		}
	}
	// WAL with a full sync: a job is on disk once Submit returns. One
	// connection, as River's SQLite driver asks: SQLite runs one writer at a
	// time anyway.
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(ON)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("jobs database sqlite:%s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	drv := riversqlite.New(db)
	m, err := rivermigrate.New(drv, &rivermigrate.Config{Logger: log})
	if err == nil {
		_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("jobs database sqlite:%s: migrate: %w", path, err)
	}
	client, err := river.NewClient(drv, rc)
	if err != nil {
		db.Close()
		return nil, err
	}
	return &store{
		kind:   KindSQLite,
		client: client,
		query: func(ctx context.Context, q string) (rows, error) {
			r, err := db.QueryContext(ctx, q)
			if err != nil {
				return nil, err
			}
			return sqlRows{r}, nil
		},
		close: func() { db.Close() },
	}, nil
}

// unfinished are River's states of a job not yet final.
const unfinished = "('available','scheduled','retryable','pending','running')"

// groupRow is the jobs of one tenant, priority and River state.
type groupRow struct {
	tenant   string
	priority int
	state    string
	n        int
	oldest   float64 // age in seconds of the oldest (by creation)
}

// groups counts the unfinished jobs by tenant, priority and state.
func (s *store) groups(ctx context.Context) ([]groupRow, error) {
	q := `SELECT coalesce(args->>'tenant', ''), priority, state, count(*),
	coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM river_job WHERE kind = '` + kindComplete + `' AND state IN ` + unfinished + ` GROUP BY 1, 2, 3`
	if s.kind == KindSQLite {
		q = `SELECT coalesce(json_extract(args, '$.tenant'), ''), priority, state, count(*),
	coalesce((julianday('now') - julianday(min(created_at))) * 86400.0, 0)
FROM river_job WHERE kind = '` + kindComplete + `' AND state IN ` + unfinished + ` GROUP BY 1, 2, 3`
	}
	r, err := s.query(ctx, q)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out []groupRow
	for r.Next() {
		var g groupRow
		if err := r.Scan(&g.tenant, &g.priority, &g.state, &g.n, &g.oldest); err != nil {
			return nil, err
		}
		out = append(out, g)
	}
	return out, r.Err()
}

// activeQueues lists the queues that hold unfinished jobs.
func (s *store) activeQueues(ctx context.Context) ([]string, error) {
	r, err := s.query(ctx, `SELECT DISTINCT queue FROM river_job WHERE kind = '`+kindComplete+`' AND state IN `+unfinished)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var out []string
	for r.Next() {
		var q string
		if err := r.Scan(&q); err != nil {
			return nil, err
		}
		out = append(out, q)
	}
	return out, r.Err()
}
