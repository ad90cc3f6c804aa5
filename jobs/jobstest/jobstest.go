// Package jobstest gives the tests of packages that run asynchronous jobs
// (jobs, server, cmd/detour) real job databases: SQLite in a temp dir
// always, and a fresh database on the Postgres named by
// DETOUR_TEST_POSTGRES_URL (set by .ci/services/postgres.sh). Without that
// variable the Postgres tests skip, saying how to run them, except under
// CI (CI set), where they fail.
package jobstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvPostgres names the variable holding the URL of a Postgres the tests
// may create databases on.
const EnvPostgres = "DETOUR_TEST_POSTGRES_URL"

// SQLite returns sqlite:PATH for a new file in t's temp dir.
func SQLite(t testing.TB) string {
	return "sqlite:" + filepath.Join(t.TempDir(), "jobs.db")
}

// Postgres returns the URL of a new, empty database on the Postgres of
// DETOUR_TEST_POSTGRES_URL, dropped when t ends.
func Postgres(t testing.TB) string {
	t.Helper()
	admin := os.Getenv(EnvPostgres)
	if admin == "" {
		msg := "no Postgres for the jobs tests: set " + EnvPostgres + "=postgres://USER@127.0.0.1:PORT/postgres (bash .ci/services/postgres.sh installs and starts one)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("%s: %v", EnvPostgres, err)
	}
	defer conn.Close(context.Background())
	var b [6]byte
	rand.Read(b[:])
	name := "detour_test_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("%s: %v", EnvPostgres, err)
	}
	u.Path = "/" + name
	return u.String()
}

// Each runs f as a subtest on each kind of job database: "sqlite", then
// "postgres" (skipped or failed as Postgres says).
func Each(t *testing.T, f func(t *testing.T, url string)) {
	t.Run("sqlite", func(t *testing.T) { f(t, SQLite(t)) })
	t.Run("postgres", func(t *testing.T) { f(t, Postgres(t)) })
}
