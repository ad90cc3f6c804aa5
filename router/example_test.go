package router_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/router"
)

// echo is a Provider that answers with the backend's name, or busy.
type echo struct {
	name string
	busy bool
}

type busyError struct{}

func (busyError) Error() string   { return "HTTP 503: server busy" }
func (busyError) StatusCode() int { return 503 }

func (e echo) Complete(context.Context, *detourv1.CompleteRequest) (*detourv1.CompleteResponse, error) {
	if e.busy {
		return nil, busyError{}
	}
	return &detourv1.CompleteResponse{Content: "hello from " + e.name, FinishReason: "stop"}, nil
}

func (e echo) Stream(context.Context, *detourv1.CompleteRequest) (router.ChunkStream, error) {
	return nil, errors.New("not streamed here")
}

// A busy own region: the call is retried in the next region, and the
// answer says who served it and in how many attempts.
func ExampleRouter_Complete() {
	cfg := &regions.Config{Regions: []regions.Region{
		{Name: "eu-west", Backends: []regions.Backend{{Name: "eu-a", Endpoint: "http://eu.example/v1"}}},
		{Name: "us-east", Priority: 1, Backends: []regions.Backend{{Name: "us-a", Endpoint: "http://us.example/v1"}}},
	}}
	rt, err := router.New(&regions.Snapshot{Config: cfg}, router.Options{
		Region: "eu-west",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		NewProvider: func(b regions.Backend) (router.Provider, error) {
			return echo{name: b.Name, busy: b.Name == "eu-a"}, nil
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rt.Close()
	resp, err := rt.Complete(context.Background(), &detourv1.CompleteRequest{
		Model:    "deepseek-chat",
		Messages: []*detourv1.Message{{Role: "user", Content: "hi"}},
	})
	fmt.Println(resp.GetContent(), err)
	fmt.Println(resp.GetServedBy().GetRegion(), "after", resp.GetAttempts(), "attempts")
	// Output:
	// hello from us-a <nil>
	// us-east after 2 attempts
}
