package breaker

import (
	"testing"
)

// BenchmarkLocalBreaker is the local breaker's Allow and done, for scale.
func BenchmarkLocalBreaker(b *testing.B) {
	br := New("b", Settings{}, WithOnChange(nil))
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
