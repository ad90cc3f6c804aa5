package regions

import (
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"gopkg.in/yaml.v3"
)

// FuzzLoad checks that Load never panics, that it refuses a document only
// with a *ValidationError wrapping ErrInvalid, and that a document it accepts
// marshals back to YAML that loads to an equal Config (empty and absent
// lists are the same). Seeds are testdata/full.yaml and
// testdata/fuzz/FuzzLoad; any crasher found is kept there.
//
//	go test ./regions -run='^$' -fuzz=FuzzLoad -fuzztime=60s
func FuzzLoad(f *testing.F) {
	f.Setenv("DETOUR_KEY_TEST", "sk-test") // full.yaml's api_key_env
	if full, err := os.ReadFile("testdata/full.yaml"); err == nil {
		f.Add(full)
	} else {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, doc []byte) {
		if len(doc) > 64<<10 {
			t.Skip("documents this large are not interesting here")
		}
		c, err := Load(doc)
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) || len(ve.Reasons) == 0 {
				t.Fatalf("Load error %v (%T) is not a *ValidationError with reasons wrapping ErrInvalid", err, err)
			}
			return
		}
		// Every range check in Validate must refuse NaN: a NaN qps or ratio
		// would disable the limit or breaker it configures.
		for _, path := range nanFields(reflect.ValueOf(c), "config") {
			t.Errorf("Load accepted NaN in %s\ndocument:\n%s", path, doc)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("a loaded config does not marshal: %v", err)
		}
		again, err := Load(out)
		if err != nil {
			t.Fatalf("the re-marshalled config does not load: %v\ndocument:\n%s\nre-marshalled:\n%s", err, doc, out)
		}
		if diff := cmp.Diff(c, again, cmpopts.EquateEmpty(), cmpopts.EquateNaNs()); diff != "" {
			t.Errorf("config changed through marshal and load (-first +second):\n%s\ndocument:\n%s\nre-marshalled:\n%s", diff, doc, out)
		}
	})
}

// nanFields lists the paths of the float fields of v that hold NaN.
func nanFields(v reflect.Value, path string) []string {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return nanFields(v.Elem(), path)
	case reflect.Struct:
		var out []string
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				out = append(out, nanFields(v.Field(i), path+"."+v.Type().Field(i).Name)...)
			}
		}
		return out
	case reflect.Slice, reflect.Array:
		var out []string
		for i := range v.Len() {
			out = append(out, nanFields(v.Index(i), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	case reflect.Float32, reflect.Float64:
		if math.IsNaN(v.Float()) {
			return []string{path}
		}
	}
	return nil
}
