package regions

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestLoadDecodeErrors guards the exact reasons a document that does not
// decode is refused with: one reason per problem, named by its path in the
// document (never a Go type), with a suggestion for a misspelt field, the
// line of a YAML syntax error where it goes wrong, and the semantic reasons
// of the rest of the document as well.
func TestLoadDecodeErrors(t *testing.T) {
	const backend = "regions:\n  - name: eu\n    backends:\n      - name: a\n        endpoint: http://h/v1\n"
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{
			name: "misspelt fields, one reason each",
			doc:  backend + "retry:\n  max_attempt: 3\n  backof_base: 25ms\n",
			want: []string{
				"retry.max_attempt: unknown field, did you mean max_attempts? (line 7)",
				"retry.backof_base: unknown field, did you mean backoff_base? (line 8)",
			},
		},
		{
			name: "unknown field far from any lists the fields",
			doc:  backend + "retires: {}\n",
			want: []string{"retires: unknown field; the fields here are admins, breaker, cache, capacity, fallbacks, limits, regions, retry, spend, streams, tenants (line 6)"},
		},
		{
			name: "unknown field in a list item",
			doc:  "regions:\n  - name: eu\n    backends:\n      - name: a\n        endpiont: http://h/v1\n",
			want: []string{
				"regions[0].backends[0].endpiont: unknown field, did you mean endpoint? (line 5)",
				"regions[0].backends[0] (a): endpoint is required",
			},
		},
		{
			name: "a field of an inline struct",
			doc:  backend + "tenants:\n  - name: search\n    identitys: [CN=search]\n",
			want: []string{"tenants[0].identitys: unknown field, did you mean identities? (line 8)"},
		},
		{
			name: "decode error does not hide semantic ones",
			doc:  backend + "retry:\n  max_attempts: 11\n  hedge: 1s\nbreaker:\n  busy_ratio: 2\n",
			want: []string{
				"retry.hedge: unknown field, did you mean hedge_after? (line 8)",
				"retry.max_attempts: 11 must be in 0..10",
				"breaker.busy_ratio: 2 must be in 0..1",
			},
		},
		{
			name: "wrong kinds, without what follows from them",
			doc:  "regions:\n  - name: eu\n    backends:\n      - name: a\n        endpoint: [http://h/v1]\n        weight: heavy\n        drained: maybe\n",
			want: []string{
				`regions[0].backends[0].endpoint: want a string, got a list (line 5)`,
				`regions[0].backends[0].weight: want a whole number, got "heavy" (line 6)`,
				`regions[0].backends[0].drained: want true or false, got "maybe" (line 7)`,
			},
		},
		{
			name: "bad duration",
			doc:  backend + "retry:\n  backoff_base: soon\n",
			want: []string{`retry.backoff_base: want a duration such as "250ms" or "30s", got "soon" (line 7)`},
		},
		{
			name: "a list where a mapping goes",
			doc:  backend + "retry: [1, 2]\n",
			want: []string{"retry: want a mapping (key: value lines), got a list (line 6)"},
		},
		{
			name: "a key given twice",
			doc:  backend + "retry:\n  max_attempts: 2\n  max_attempts: 3\n",
			want: []string{"retry.max_attempts: given twice (first at line 7); the first is used (line 8)"},
		},
		{
			name: "not a mapping at all",
			doc:  "- a\n- b\n",
			want: []string{"document: want a mapping (key: value lines), got a list (line 1)"},
		},
		{
			name: "indentation error reported on its own line",
			doc: `regions:
  - name: eu-west
    priority: 0
    backends:
      - name: deepseek-eu
        kind: openai
        endpoint: https://api.deepseek.com/v1
        models: [deepseek-chat, deepseek-reasoner]
        weight: 1
  - name: us-east
    priority: 1
    backends:
      - name: detour-us
       kind: detour
        endpoint: detour.us-east.svc:50051
retry:
  max_attempts: 2
`,
			want: []string{"line 14: malformed YAML: did not find expected '-' indicator"},
		},
		{
			name: "tab indentation",
			doc:  backend + "retry:\n\tmax_attempts: 2\n",
			want: []string{"line 7: malformed YAML: found character that cannot start any token"},
		},
		{
			name: "merge keys are checked too",
			doc:  "defaults: &d\n  endpiont: http://h/v1\nregions:\n  - name: eu\n    backends:\n      - <<: *d\n        name: a\n",
			want: []string{
				"defaults: unknown field; the fields here are admins, breaker, cache, capacity, fallbacks, limits, regions, retry, spend, streams, tenants (line 1)",
				"regions[0].backends[0].endpiont: unknown field, did you mean endpoint? (line 2)",
				"regions[0].backends[0] (a): endpoint is required",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load([]byte(tt.doc))
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Load error = %v, want a *ValidationError wrapping ErrInvalid", err)
			}
			if diff := cmp.Diff(ve.Reasons, tt.want); diff != "" {
				t.Errorf("reasons (-got +want):\n%s", diff)
			}
		})
	}
}

// TestParseAcceptsWhatItAlwaysDid: explaining decode errors changed no
// document's fate; merges, JSON and nulls still decode.
func TestParseAcceptsWhatItAlwaysDid(t *testing.T) {
	for _, doc := range []string{
		"defaults: &d\n  endpoint: http://h/v1\n",
		`{"regions":[{"name":"eu","backends":[{"name":"a","endpoint":"http://h/v1"}]}],"retry":{"max_attempts":2}}`,
		"regions:\n  - name: eu\n    backends:\n      - name: a\n        endpoint: http://h/v1\n        breaker: ~\nretry:\n  backoff_base: 10ms\n",
		"regions:\n  - name: eu\n    backends:\n      - &a {name: a, endpoint: 'http://h/v1'}\nfallbacks:\n  - <<: *a\n    name: f\n",
	} {
		_, err := Parse([]byte(doc))
		if want := doc[0] == 'd'; (err != nil) != want {
			t.Errorf("Parse(%q) error = %v, want error %v", doc, err, want)
		}
	}
}
