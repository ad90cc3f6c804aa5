package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// profileDetour fetches a CPU profile of d (a `detour serve --metrics ADDR
// --pprof` child) covering the next dur and writes it to path. It returns at
// once; wait reports how the fetch ended. Run the load while it lasts.
func profileDetour(ctx context.Context, d *detourProc, dur time.Duration, path string) (wait func() error) {
	done := make(chan error, 1)
	go func() { done <- fetchProfile(ctx, d.metrics, dur, path) }()
	return func() error { return <-done }
}

func fetchProfile(ctx context.Context, addr string, dur time.Duration, path string) error {
	if addr == "" {
		return errors.New("detour has no --metrics listener to profile through")
	}
	secs := max(int(dur.Round(time.Second)/time.Second), 1)
	ctx, cancel := context.WithTimeout(ctx, dur+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, secs), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET /debug/pprof/profile: %s: %s", resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
