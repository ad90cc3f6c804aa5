package main

import (
	"flag"
	"os"
	"strings"

	"github.com/detour-dev/detour/fleet"
)

// RedisOptions are serve's settings of the Redis shared by the replicas
// (cache tier, breaker cooldowns, fleet-wide qps limits). They are process
// settings, not part of the live config document.
type RedisOptions struct {
	fleet.Config
	tls fleet.TLS
}

func (o *RedisOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.Addr, "redis-addr", os.Getenv("DETOUR_REDIS_ADDR"), "Redis host:port shared by the replicas (env DETOUR_REDIS_ADDR; empty: cache, cooldowns and limits stay local)")
	fs.StringVar(&o.Username, "redis-user", "", "Redis ACL user")
	o.PasswordEnv = "DETOUR_REDIS_PASSWORD"
	fs.StringVar(&o.PasswordFile, "redis-password-file", "", "file holding the Redis password (or env DETOUR_REDIS_PASSWORD)")
	fs.StringVar(&o.tls.CAFile, "redis-cacert", "", "CA bundle verifying Redis's TLS certificate; any --redis-cacert/--redis-cert turns TLS on")
	fs.StringVar(&o.tls.CertFile, "redis-cert", "", "client certificate for Redis TLS")
	fs.StringVar(&o.tls.KeyFile, "redis-key", "", "client key for Redis TLS")
	fs.StringVar(&o.KeyPrefix, "redis-prefix", "", `prefix of every Redis key (default "detour:")`)
	fs.IntVar(&o.Replicas, "redis-replicas", 0, "expected replicas: each admits 1/N of a backend's qps while Redis is unreachable (default 1)")
}

// config returns the fleet config with TLS set when a TLS flag was given.
func (o *RedisOptions) config() fleet.Config {
	c := o.Config
	if o.tls != (fleet.TLS{}) {
		t := o.tls
		c.TLS = &t
	}
	if _, ok := os.LookupEnv(c.PasswordEnv); !ok {
		c.PasswordEnv = ""
	}
	return c
}

func (o *RedisOptions) problems() []string {
	if err := o.config().Validate(); err != nil {
		return strings.Split(err.Error(), "\n")
	}
	return nil
}
