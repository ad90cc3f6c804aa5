package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestInflightJudge(t *testing.T) {
	h1 := inflightModes[0]  // http1-unary
	h2c := inflightModes[2] // h2c-unary
	const mib = 1 << 20
	// row holds n calls at once on top of a 30 MiB, 80-goroutine idle
	// detour, each adding kib KiB, gor goroutines; sockets upstream.
	row := func(m inflightMode, n, held int, kib, gor float64, sockets int) inflightRow {
		return inflightRow{mode: m, calls: n, held: held,
			baseRSS: 30 * mib, rss: 30*mib + int64(kib*1024*float64(held)),
			baseGor: 80, gor: 80 + gor*float64(held), sockets: sockets}
	}
	targets := inflightTargets{maxKiB: 16, maxGor: 1.5, callsPerSocket: 100, h1MaxKiB: 55, h1MaxGor: 3.1}
	tests := []struct {
		name    string
		rows    []inflightRow
		noH1    bool // no http1 bounds given
		want    []string
		wantErr bool
	}{
		{name: "nothing measured", wantErr: true},
		{name: "every target met", rows: []inflightRow{
			row(h2c, 10000, 10000, 15, 1.2, 40),
			row(h1, 10000, 10000, 50, 3, 10000),
		}},
		{name: "h2c over every bound", rows: []inflightRow{row(h2c, 4000, 4000, 40, 2, 50)}, want: []string{
			"h2c-unary 4000: 40.0 KiB per call in flight, over 16.0",
			"h2c-unary 4000: 2.00 goroutines per call in flight, over 1.50",
			"h2c-unary 4000: 50 upstream sockets for 4000 calls, over one per 100",
		}},
		{name: "http1 worse than before", rows: []inflightRow{row(h1, 1000, 1000, 60, 4, 1000)}, want: []string{
			"http1-unary 1000: 60.0 KiB per call in flight, over 55.0",
			"http1-unary 1000: 4.00 goroutines per call in flight, over 3.10",
		}},
		{name: "http1 not judged without its bounds", rows: []inflightRow{row(h1, 1000, 1000, 60, 4, 1000)}, noH1: true},
		{name: "calls not all in flight, some failed", rows: []inflightRow{func() inflightRow {
			r := row(h2c, 10000, 6000, 10, 1, 30)
			r.failed, r.codes = 26, "Unavailable 26"
			return r
		}()}, want: []string{
			"h2c-unary 10000: only 6000 calls in flight at once",
			"h2c-unary 10000: 26 calls failed (Unavailable 26)",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := targets
			if tt.noH1 {
				tg.h1MaxKiB, tg.h1MaxGor = 0, 0
			}
			got, err := inflightJudge(tt.rows, tg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("misses (-got +want):\n%s", diff)
			}
		})
	}
}

func TestInflightPerCall(t *testing.T) {
	r := inflightRow{held: 1000, baseRSS: 10 << 20, rss: 10<<20 + 1000*20*1024, baseGor: 80, gor: 2080, sockets: 10}
	kib, gor, sock := r.perCall()
	if kib != 20 || gor != 2 || sock != 0.01 {
		t.Errorf("perCall = %v KiB, %v goroutines, %v sockets; want 20, 2, 0.01", kib, gor, sock)
	}
	if kib, gor, sock := (inflightRow{}).perCall(); kib != 0 || gor != 0 || sock != 0 {
		t.Errorf("perCall of nothing held = %v, %v, %v; want zeros", kib, gor, sock)
	}
}
