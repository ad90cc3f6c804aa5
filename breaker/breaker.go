// Package breaker classifies upstream outcomes (busy, failed, client error,
// canceled) and keeps one circuit breaker per backend, wrapping
// github.com/sony/gobreaker/v2.
package breaker
