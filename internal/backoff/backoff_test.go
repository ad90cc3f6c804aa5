package backoff

import (
	"math"
	"testing"
	"time"
)

func TestCeiling(t *testing.T) {
	tests := []struct {
		name    string
		e       Exponential
		retries int
		want    time.Duration
	}{
		{name: "first", e: Exponential{Base: 50 * time.Millisecond, Max: 5 * time.Second}, retries: 0, want: 50 * time.Millisecond},
		{name: "doubles", e: Exponential{Base: 50 * time.Millisecond, Max: 5 * time.Second}, retries: 3, want: 400 * time.Millisecond},
		{name: "capped", e: Exponential{Base: 50 * time.Millisecond, Max: 5 * time.Second}, retries: 7, want: 5 * time.Second},
		{name: "exactly max", e: Exponential{Base: time.Second, Max: 4 * time.Second}, retries: 2, want: 4 * time.Second},
		{name: "would overflow", e: Exponential{Base: time.Hour, Max: math.MaxInt64}, retries: 40, want: math.MaxInt64},
		{name: "shift past 63", e: Exponential{Base: time.Nanosecond, Max: time.Second}, retries: 100, want: time.Second},
		{name: "negative retries", e: Exponential{Base: 25 * time.Millisecond, Max: time.Second}, retries: -1, want: 25 * time.Millisecond},
		{name: "max below base", e: Exponential{Base: 2 * time.Second, Max: time.Second}, retries: 0, want: time.Second},
		{name: "no base", e: Exponential{Max: time.Second}, retries: 3, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.e.Ceiling(tt.retries); got != tt.want {
				t.Errorf("Ceiling(%d) = %v, want %v", tt.retries, got, tt.want)
			}
		})
	}
}

func TestJitterStaysInItsRange(t *testing.T) {
	e := Exponential{Base: 10 * time.Millisecond, Max: time.Second}
	for retries := range 10 {
		c := e.Ceiling(retries)
		lowFull := c
		for range 2000 {
			f, q := e.Full(retries), e.Equal(retries)
			if f < 0 || f > c {
				t.Fatalf("Full(%d) = %v, want within [0, %v]", retries, f, c)
			}
			if q < c/2 || q > c {
				t.Fatalf("Equal(%d) = %v, want within [%v, %v]", retries, q, c/2, c)
			}
			lowFull = min(lowFull, f)
		}
		// Full jitter reaches well below half the ceiling; equal never does.
		if lowFull >= c/4 {
			t.Errorf("Full(%d): lowest of 2000 draws %v, want some below %v", retries, lowFull, c/4)
		}
	}
	if d := (Exponential{}).Full(3); d != 0 {
		t.Errorf("zero Exponential: Full = %v, want 0", d)
	}
	if d := (Exponential{}).Equal(3); d != 0 {
		t.Errorf("zero Exponential: Equal = %v, want 0", d)
	}
}
