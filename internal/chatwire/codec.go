package chatwire

import (
	"errors"

	gojson "github.com/goccy/go-json"
)

// Unmarshal and Marshal are the JSON codec of these types, for detour's
// hot path: github.com/goccy/go-json, which takes the same struct tags,
// Marshaler and Unmarshaler methods and json.RawMessage as encoding/json
// and writes the same bytes (provider's TestGolden holds it), at a fifth
// of encoding/json's decoding time and under half its encoding time for an
// answer (bench http's profile: encoding/json was 18% of detour's CPU per
// HTTP call, a tenth of it decoding the upstream's answer).
func Unmarshal(data []byte, v any) error { return gojson.Unmarshal(data, v) }

// Marshal returns the JSON encoding of v.
func Marshal(v any) ([]byte, error) { return gojson.Marshal(v) }

// typeError is the codec's error for a value of the wrong JSON type.
type typeError = gojson.UnmarshalTypeError

// syntaxError is the codec's error for text that is not JSON.
type syntaxError = gojson.SyntaxError

// asTypeError reports err's *typeError, if any.
func asTypeError(err error) (*typeError, bool) {
	var te *typeError
	ok := errors.As(err, &te)
	return te, ok
}
