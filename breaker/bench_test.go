package breaker

import (
	"testing"

	"github.com/detour-dev/detour/regions"
)

// BenchmarkLocalBreaker is the local breaker's Allow and done, for scale.
func BenchmarkLocalBreaker(b *testing.B) {
	br := New("b", regions.BreakerPolicy{}, WithOnChange(nil))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			done, err := br.Allow()
			if err != nil {
				b.Fatal(err)
			}
			done(OK, 0)
		}
	})
}
