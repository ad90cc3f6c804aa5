package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/detour-dev/detour/internal/fakellm"
	"github.com/detour-dev/detour/jobs/jobstest"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func dialJobs(t *testing.T, addr string) detourv1.JobsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return detourv1.NewJobsClient(conn)
}

// watchToEnd follows a job over Watch and returns its last message.
func watchToEnd(t *testing.T, c detourv1.JobsClient, id string) *detourv1.Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := c.Watch(ctx, &detourv1.WatchJobRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	var last *detourv1.Job
	for {
		j, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return last
		}
		if err != nil {
			t.Fatalf("watch %s: %v (last %v)", id, err, last)
		}
		last = j
	}
}

// child is `detour serve` run from this test binary (TestMain).
type child struct {
	cmd    *exec.Cmd
	addr   string
	mu     sync.Mutex
	logs   bytes.Buffer
	copied chan struct{}
}

func (c *child) log() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.logs.String()
}

func startChild(t *testing.T, args ...string) *child {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &child{addr: lis.Addr().String(), copied: make(chan struct{})}
	lis.Close()
	c.cmd = exec.Command(os.Args[0], append([]string{"serve", "--listen", c.addr}, args...)...)
	c.cmd.Env = append(os.Environ(), "DETOUR_TEST_AS_MAIN=1")
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	serving := make(chan struct{})
	go func() {
		defer close(c.copied)
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			c.mu.Lock()
			c.logs.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
			if strings.Contains(sc.Text(), "detour serving") {
				once.Do(func() { close(serving) })
			}
		}
	}()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.copied
		c.cmd.Wait()
	})
	select {
	case <-serving:
	case <-c.copied:
		t.Fatalf("detour exited before serving:\n%s", c.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("detour did not start:\n%s", c.log())
	}
	return c
}

// endLeadership deletes River's leader row of the database at dbURL: the
// leadership of a replica killed with SIGKILL lapses after River's 15 s
// lease, which the test does not wait for.
func endLeadership(t *testing.T, dbURL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p, ok := strings.CutPrefix(dbURL, "sqlite:"); ok {
		db, err := sql.Open("sqlite", "file:"+p+"?_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.ExecContext(ctx, "DELETE FROM river_leader"); err != nil {
			t.Fatal(err)
		}
		return
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "DELETE FROM river_leader"); err != nil {
		t.Fatal(err)
	}
}

// runStartedBefore reports whether job id's current run started more than
// d ago (so that River's rescuer takes it as stuck).
func runStartedBefore(t *testing.T, dbURL string, id string, d time.Duration) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	secs := d.Seconds()
	var n int
	if p, ok := strings.CutPrefix(dbURL, "sqlite:"); ok {
		db, err := sql.Open("sqlite", "file:"+p+"?_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		err = db.QueryRowContext(ctx, "SELECT count(*) FROM river_job WHERE id = ? AND state = 'running' AND julianday(attempted_at) < julianday('now') - ?/86400.0", id, secs).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	err = conn.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE id = $1::bigint AND state = 'running' AND attempted_at < now() - make_interval(secs => $2)", id, secs).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// TestKilledReplicaJobFinishesElsewhere: a replica killed with SIGKILL in
// the middle of a job's upstream call leaves the job running in the
// database; another replica runs it again after --jobs-rescue-after, and
// the job ends with one answer.
func TestKilledReplicaJobFinishesElsewhere(t *testing.T) {
	jobstest.Each(t, func(t *testing.T, dbURL string) {
		up := startFake(t, fakellm.Config{Region: "a", Name: "a-1", Settings: fakellm.Settings{HangRate: 1}}, false)
		cfgPath := filepath.Join(t.TempDir(), "detour.yaml")
		doc := fmt.Sprintf("regions:\n  - name: a\n    backends:\n      - name: a-1\n        endpoint: http://%s/v1\n", up.HTTPAddr())
		if err := os.WriteFile(cfgPath, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		const rescueAfter = 2 * time.Second
		jobFlags := []string{"--jobs-db", dbURL, "--jobs-attempt-timeout", "1s", "--jobs-rescue-after", rescueAfter.String()}
		victim := startChild(t, append([]string{"--config", cfgPath, "--region", "a"}, jobFlags...)...)
		c := dialJobs(t, victim.addr)
		job, err := c.Submit(callCtx(t), &detourv1.SubmitRequest{Request: userReq("finish me"), IdempotencyKey: "crash-1"})
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, 10*time.Second, func() bool { return up.Stats().InFlight == 1 }, "the job's upstream call to start")
		if err := victim.cmd.Process.Kill(); err != nil { // SIGKILL: no chance to put the job back
			t.Fatal(err)
		}
		<-victim.copied
		victim.cmd.Wait()
		eventually(t, 10*time.Second, func() bool { return up.Stats().InFlight == 0 }, "the dead replica's upstream call to end")
		up.SetSettings(fakellm.Settings{})
		eventually(t, 10*time.Second, func() bool { return runStartedBefore(t, dbURL, job.GetId(), rescueAfter) },
			"the killed run to be older than --jobs-rescue-after")
		endLeadership(t, dbURL)

		m := &Main{Listen: "127.0.0.1:0", Region: "a", Grace: 5 * time.Second, ConfigPath: cfgPath,
			Jobs: demoJobs(dbURL)}
		m.Jobs.AttemptTimeout, m.Jobs.RescueAfter = time.Second, rescueAfter
		addr, _ := runMain(t, m)
		other := dialJobs(t, addr.String())
		last := watchToEnd(t, other, job.GetId())
		if last.GetState() != detourv1.JobState_JOB_STATE_SUCCEEDED || last.GetRuns() != 2 {
			t.Fatalf("job ended %v, want SUCCEEDED on its second run", last)
		}
		if st := up.Stats(); st.OK != 1 {
			t.Errorf("upstream answered %d times, want once (the killed run's call never answered)", st.OK)
		}
		again, err := other.Submit(callCtx(t), &detourv1.SubmitRequest{Request: userReq("finish me"), IdempotencyKey: "crash-1"})
		if err != nil || again.GetId() != job.GetId() || again.GetResult().GetId() != last.GetResult().GetId() {
			t.Errorf("resubmission after the crash: %v, %v; want the same job and result", again, err)
		}
	})
}
