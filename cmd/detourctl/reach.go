package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"
)

// maxReachWait bounds the check that some etcd endpoint accepts
// connections (less when --timeout is shorter).
const maxReachWait = 3 * time.Second

// errEtcdUnreachable: no etcd endpoint accepted a connection.
var errEtcdUnreachable = errors.New("etcd unreachable")

// reachEtcd checks that at least one etcd endpoint accepts a TCP (or Unix
// socket) connection before a command uses etcd. The etcd client itself
// retries an endpoint where nothing listens until the command's deadline
// and then reports only "context deadline exceeded"; this says at once
// which endpoint refused or did not answer.
func reachEtcd(ctx context.Context, endpoints []string, wait time.Duration) error {
	wait = min(wait, maxReachWait)
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	errs := make(chan error, len(endpoints))
	for _, ep := range endpoints {
		go func() {
			network, addr := dialTarget(ep)
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				c.Close()
				errs <- nil
				return
			}
			errs <- fmt.Errorf("%s: %s", ep, dialWords(err, wait))
		}()
	}
	var failed []string
	for range endpoints {
		err := <-errs
		if err == nil {
			return nil // reachable: the client takes over
		}
		failed = append(failed, err.Error())
	}
	return fmt.Errorf("%w: %s\n  hint: start etcd, or point --endpoints (or $DETOUR_ETCD_ENDPOINTS) at it; for one on this machine, 'detour dev etcd' prints its endpoint",
		errEtcdUnreachable, strings.Join(failed, "; "))
}

// dialTarget is the network and address an etcd endpoint is dialled at:
// "https://h:2379" and "h:2379" are TCP, "unix://path" a Unix socket.
func dialTarget(ep string) (network, addr string) {
	for _, p := range []string{"unixs://", "unix://"} {
		if rest, ok := strings.CutPrefix(ep, p); ok {
			return "unix", rest
		}
	}
	for _, p := range []string{"https://", "http://"} {
		if rest, ok := strings.CutPrefix(ep, p); ok {
			ep = rest
		}
	}
	return "tcp", strings.TrimSuffix(ep, "/")
}

// dialWords says why a connection failed, in words.
func dialWords(err error, wait time.Duration) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused (nothing listens there)"
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s", wait)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Sprintf("cannot resolve %s", dnsErr.Name)
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Err != nil {
		return opErr.Err.Error()
	}
	return err.Error()
}

// explainEtcd adds a hint to an etcd error the client gives after the
// connection was accepted: a deadline then usually means a TLS mismatch.
func (g *globals) explainEtcd(err error) error {
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	eps := strings.Join(g.etcd.Endpoints, ",")
	hint := "if it serves TLS, add --cacert (and --cert, --key for mutual TLS); or raise --timeout"
	if g.etcd.CAFile != "" || g.etcd.CertFile != "" || g.etcd.TLS {
		hint = "check that it serves TLS and that --cacert verifies its certificate; or raise --timeout"
	}
	return fmt.Errorf("%w\n  hint: etcd at %s accepted the connection but did not answer: %s", err, eps, hint)
}
