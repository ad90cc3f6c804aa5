package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/detour-dev/detour/auth"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/detour-dev/detour/metrics"
	"github.com/detour-dev/detour/regions"
	"github.com/detour-dev/detour/regions/etcd"
	"github.com/detour-dev/detour/router"
	"github.com/detour-dev/detour/server"
)

// LiveOptions are Main's settings for a config held in etcd and for the
// Admin service. The zero value means a config file and the Admin service on
// the Router's listener.
type LiveOptions struct {
	// Etcd, when it has endpoints, is where the config is read and watched;
	// it replaces Main.ConfigPath.
	Etcd etcd.Config
	// LastKnownGood is the last-known-good file (see etcd.Watcher).
	// Empty means none: a start while etcd is down then waits for etcd.
	LastKnownGood string
	// ReadTimeout bounds a full read of etcd; at start, after it the
	// last-known-good file serves. Zero means 5s.
	ReadTimeout time.Duration
	// AdminListen is the address of a listener for detour.v1.Admin alone.
	// Empty means the Admin service shares the Router's listener.
	AdminListen string

	// Metrics records the metrics of the router and of the config source
	// (applies, rejections, last-known-good). Nil records nothing.
	Metrics *metrics.Metrics

	// adminReady, when set, receives the Admin listener's address (tests).
	adminReady func(addr net.Addr)
}

// register adds the etcd and Admin flags of `detour serve`.
func (o *LiveOptions) register(fs *flag.FlagSet) {
	if env := os.Getenv("DETOUR_ETCD_ENDPOINTS"); env != "" {
		o.Etcd.Endpoints = splitList(env)
	}
	fs.Func("etcd-endpoints", "comma-separated etcd endpoints (env DETOUR_ETCD_ENDPOINTS); the config is read and watched there instead of --config", func(s string) error {
		o.Etcd.Endpoints = splitList(s)
		return nil
	})
	fs.StringVar(&o.Etcd.Prefix, "etcd-prefix", etcd.DefaultPrefix, "root of detour's keys in etcd: PREFIX/config, PREFIX/drain/BACKEND")
	fs.StringVar(&o.Etcd.CAFile, "etcd-cacert", "", "CA bundle that verifies etcd's certificate (turns TLS on)")
	fs.StringVar(&o.Etcd.CertFile, "etcd-cert", "", "client certificate for etcd (mTLS)")
	fs.StringVar(&o.Etcd.KeyFile, "etcd-key", "", "client key for etcd (mTLS)")
	fs.BoolVar(&o.Etcd.TLS, "etcd-tls", false, "use TLS to etcd with the system roots (implied by https:// endpoints and the etcd-cert flags)")
	fs.StringVar(&o.Etcd.Username, "etcd-user", os.Getenv("DETOUR_ETCD_USER"), "etcd user name (env DETOUR_ETCD_USER); the password comes from $DETOUR_ETCD_PASSWORD or --etcd-password-file")
	fs.Func("etcd-password-file", "file holding the etcd password", func(p string) error {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		o.Etcd.Password = strings.TrimSpace(string(b))
		return nil
	})
	if o.Etcd.Password == "" {
		o.Etcd.Password = os.Getenv("DETOUR_ETCD_PASSWORD")
	}
	fs.StringVar(&o.LastKnownGood, "lkg", "", "last-known-good file: rewritten after each config applied from etcd, served when detour starts while etcd is down")
	fs.DurationVar(&o.ReadTimeout, "etcd-read-timeout", 5*time.Second, "how long a start waits for etcd before it serves the --lkg file")
	fs.StringVar(&o.AdminListen, "admin-listen", "", "address of a separate detour.v1.Admin listener (e.g. 127.0.0.1:50052); empty: Admin shares --listen")
}

// check lists the problems with the config source flags.
func (o *LiveOptions) check(configPath string) []string {
	var p []string
	fromEtcd := len(o.Etcd.Endpoints) > 0
	switch {
	case fromEtcd && configPath != "":
		p = append(p, "--config and --etcd-endpoints are alternatives; give one")
	case !fromEtcd && configPath == "":
		p = append(p, "--config FILE or --etcd-endpoints is required")
	case !fromEtcd && o.LastKnownGood != "":
		p = append(p, "--lkg needs --etcd-endpoints")
	}
	if fromEtcd {
		var ve *regions.ValidationError
		if err := o.Etcd.Check(); errors.As(err, &ve) {
			for _, r := range ve.Reasons {
				p = append(p, strings.Replace(r, "etcd: ", "--etcd flags: ", 1))
			}
		}
	}
	if o.ReadTimeout < 0 {
		p = append(p, "--etcd-read-timeout must be >= 0")
	}
	return p
}

func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// liveConfig is the config source of a running Main and the router it
// feeds: a file or an inline config applied once, or an etcd Watcher.
type liveConfig struct {
	rt      *router.Router
	watcher *etcd.Watcher // nil without etcd

	mu  sync.Mutex
	srv *server.Server // set once serving, for the config health status

	self atomic.Pointer[net.TCPAddr] // the Router listener, once bound (selfloop.go)
}

// openConfig builds the router from the config source. With etcd it waits
// for a first config (from etcd, or the last-known-good file); it returns
// nil, nil when ctx ends first.
func (m *Main) openConfig(ctx context.Context, log *slog.Logger) (*liveConfig, error) {
	opts := router.Options{Region: m.Region, Zone: m.Zone, Logger: log, Metrics: m.Live.Metrics, Fleet: m.fleet,
		AuthenticatedTenants: m.Security.Auth != auth.ModeOff}
	l := &liveConfig{}
	if len(m.Live.Etcd.Endpoints) == 0 {
		cfg, source := m.config, "inline"
		if cfg == nil {
			var err error
			if cfg, err = regions.LoadFile(m.ConfigPath); err != nil {
				return nil, err
			}
			source = "file:" + m.ConfigPath
		} else if err := cfg.Validate(); err != nil {
			return nil, err
		}
		snap := &regions.Snapshot{Config: cfg, Source: source, AppliedAt: time.Now()}
		rt, err := router.New(snap, opts)
		if err != nil {
			return nil, err
		}
		m.Live.Metrics.ConfigApplied(0, snap.AppliedAt, false)
		l.rt = rt
		return l, nil
	}
	if m.Live.LastKnownGood == "" {
		log.Warn("no --lkg file: a start while etcd is down will wait for etcd")
	}
	w, err := etcd.NewWatcher(etcd.WatcherConfig{
		Etcd:          m.Live.Etcd,
		LastKnownGood: m.Live.LastKnownGood,
		ReadTimeout:   m.Live.ReadTimeout,
		Logger:        log,
		Metrics:       m.Live.Metrics,
		// Called from the watcher's goroutine only; l.rt is set by the first
		// call, before Ready is closed.
		Apply: func(s *regions.Snapshot) error {
			if err := checkSelf(s.Config, l.self.Load()); err != nil {
				return err
			}
			if l.rt == nil {
				rt, err := router.New(s, opts)
				if err != nil {
					return err
				}
				l.rt = rt
			} else if err := l.rt.Apply(s); err != nil {
				return err
			}
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.srv != nil {
				l.srv.SetConfigLive(!isLastKnownGood(s))
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	log.Info("waiting for a config from etcd", "endpoints", strings.Join(m.Live.Etcd.Endpoints, ","), "key", m.Live.Etcd.Keys().Config())
	select {
	case <-w.Ready():
	case <-ctx.Done():
		w.Close()
		if l.rt != nil { // applied as ctx ended
			l.rt.Close()
		}
		return nil, nil
	}
	l.watcher = w
	return l, nil
}

func isLastKnownGood(s *regions.Snapshot) bool {
	return strings.HasPrefix(s.Source, etcd.SourceLastKnownGood)
}

// serving records the server, whose health then reports whether the config
// is live (see server.ConfigHealthService).
func (l *liveConfig) serving(srv *server.Server) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.srv = srv
	srv.SetConfigLive(!isLastKnownGood(l.rt.Snapshot()))
}

// Close stops watching etcd, then closes the router.
func (l *liveConfig) Close() {
	if l.watcher != nil {
		l.watcher.Close()
	}
	l.rt.Close()
}

// startAdmin serves detour.v1.Admin: on srv before it serves, or on its own
// listener. stop ends the separate listener, letting calls finish until ctx
// ends.
func (m *Main) startAdmin(l *liveConfig, srv *server.Server, log *slog.Logger, gopts []grpc.ServerOption) (stop func(ctx context.Context), err error) {
	opts := server.AdminOptions{Region: m.Region, Zone: m.Zone, Logger: log}
	if l.watcher != nil {
		opts.Config = l.watcher
	}
	if m.health != nil {
		opts.SharedState = m.health
	}
	admin := server.NewAdmin(l.rt, opts)
	if m.Live.AdminListen == "" {
		admin.Register(srv.GRPC())
		return func(context.Context) {}, nil
	}
	lis, err := net.Listen("tcp", m.Live.AdminListen)
	if err != nil {
		return nil, fmt.Errorf("admin listen: %w", err)
	}
	gs := server.NewAdminServer(admin, gopts...)
	log.Info("detour admin serving", "addr", lis.Addr().String())
	if m.Live.adminReady != nil {
		m.Live.adminReady(lis.Addr())
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Error("admin listener failed", "err", err)
		}
	}()
	return func(ctx context.Context) {
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-ctx.Done():
			gs.Stop()
			<-stopped
		}
		<-served
	}, nil
}
