package chatwire

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unicode/utf8"
)

// known are the request members Request has a field for, as
// encoding/json matches them (case-insensitively). user_id is left out on
// purpose: a client's user_id goes upstream through extra_body.
var known = func() []string {
	var names []string
	t := reflect.TypeFor[Request]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" && name != "user_id" {
			names = append(names, name)
		}
	}
	return names
}()

func isKnown(name string) bool {
	for _, k := range known {
		if strings.EqualFold(name, k) {
			return true
		}
	}
	return false
}

// ErrNotObject is returned for a body that is not one JSON object.
var ErrNotObject = errors.New("the body must be one JSON object")

// ErrNotUTF8 is returned for a body that is not UTF-8, as JSON must be.
var ErrNotUTF8 = errors.New("the body must be UTF-8 text")

// DecodeRequest decodes a client's request body. The members Request has
// no field for are returned as one JSON object, in their order and as
// written (extra: "" when there are none): OpenAI's SDKs put what their
// extra_body option holds among the body's members, and detour passes them
// upstream as detour.v1's extra_body.
func DecodeRequest(body []byte) (r *Request, extra string, err error) {
	r = &Request{}
	if !utf8.Valid(body) {
		return nil, "", ErrNotUTF8
	}
	if err := Unmarshal(body, r); err != nil {
		if te, ok := asTypeError(err); ok && te.Field == "" {
			return nil, "", ErrNotObject
		}
		return nil, "", err
	}
	var b []byte
	var walkErr error
	members(body, func(name string, value []byte) {
		if isKnown(name) {
			return
		}
		if b == nil {
			b = append(b, '{')
		} else {
			b = append(b, ',')
		}
		q, err := json.Marshal(name)
		if err != nil {
			walkErr = err
			return
		}
		b = append(b, q...)
		b = append(b, ':')
		b = append(b, value...)
	})
	if walkErr != nil {
		return nil, "", walkErr
	}
	if b != nil {
		extra = string(append(b, '}'))
	}
	return r, extra, nil
}

// members calls f with the name and raw value of each member of the JSON
// object b, which must be valid JSON (json.Unmarshal checked it).
func members(b []byte, f func(name string, value []byte)) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return
	}
	i++
	for {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] == '}' {
			return
		}
		if b[i] == ',' {
			i++
			continue
		}
		end := skipValue(b, i) // the name, a string
		name := b[i:end]
		s, err := unquote(name)
		if err != nil {
			return
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return
		}
		i = skipSpace(b, i+1)
		end = skipValue(b, i)
		if end <= i {
			return
		}
		f(s, b[i:end])
		i = end
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value starting at b[i].
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		for j := i + 1; j < len(b); j++ {
			switch b[j] {
			case '\\':
				j++
			case '"':
				return j + 1
			}
		}
		return len(b)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipValue(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	return j
}

// Describe turns an error of DecodeRequest into a sentence for the caller
// and the member at fault ("" when unknown).
func Describe(err error) (msg, param string) {
	var se *syntaxError
	var p *Problem
	te, isType := asTypeError(err)
	switch {
	case errors.As(err, &p):
		return p.Message, p.Param
	case errors.Is(err, ErrNotObject), errors.Is(err, ErrNotUTF8):
		return err.Error(), ""
	case errors.Is(err, ErrContentPart):
		return err.Error(), ""
	case isType && te.Field != "":
		return fmt.Sprintf("%s must be %s, not %s", te.Field, jsonKind(te.Type), te.Value), te.Field
	case errors.As(err, &se):
		return fmt.Sprintf("the body is not valid JSON (at byte %d)", se.Offset), ""
	}
	return "the body is not a valid chat completion request: " + strings.TrimPrefix(err.Error(), "json: "), ""
}

func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice:
		return "an array"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "an object"
}
