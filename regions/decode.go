package regions

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// This file turns yaml.v3's decode errors into reasons a person can act on:
// one reason per problem, named by its path in the document
// ("retry.max_attempt: unknown field, did you mean max_attempts? (line 7)")
// rather than by Go type, and malformed YAML located on the line where it
// goes wrong (yaml.v3 reports the line where the enclosing block began).

// decodeProblem is one field of a document that did not decode.
type decodeProblem struct {
	path string // "retry.max_attempt", "regions[0].backends[1].weight"
	line int
	msg  string // what is wrong, without path and line
	// mistyped: the field exists but its value did not decode (it is zero
	// in the partial Config), as opposed to an unknown or repeated field.
	mistyped bool
}

func (p decodeProblem) String() string {
	path := p.path
	if path == "" {
		path = "document"
	}
	return fmt.Sprintf("%s: %s (line %d)", path, p.msg, p.line)
}

// decodeError is what parse reports about a document that did not decode.
type decodeError struct {
	reasons  []string
	mistyped []string // paths of values that did not decode
}

// parse is Parse with the paths of the mistyped values, which Load and
// JoinReasons use to drop semantic reasons that only repeat them.
func parse(doc []byte) (*Config, *decodeError) {
	var root yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(doc)).Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &decodeError{reasons: []string{"document is empty"}}
		}
		return nil, &decodeError{reasons: []string{syntaxReason(doc, err)}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	dec.KnownFields(true)
	var c Config
	strictErr := dec.Decode(&c)
	if strictErr == nil {
		return &c, nil
	}
	// The strict decode is the authority on what is accepted; the walk
	// explains what it refused, field by field.
	var w walker
	w.walk(&root, reflect.TypeFor[Config](), "")
	de := &decodeError{}
	covered := map[int]bool{}
	for _, p := range w.problems {
		de.reasons = append(de.reasons, p.String())
		covered[p.line] = true
		if p.mistyped {
			de.mistyped = append(de.mistyped, p.path)
		}
	}
	// Anything the walk did not explain is reported as yaml.v3 says it.
	for _, r := range yamlReasons(strictErr) {
		if n, ok := reasonLine(r); !ok || !covered[n] {
			de.reasons = append(de.reasons, r)
		}
	}
	if len(w.problems) == 0 {
		return nil, de
	}
	// The rest of the document, without what did not decode (the walk
	// nulled those values and dropped repeated keys), for Validate.
	var partial Config
	if err := root.Decode(&partial); err != nil {
		return nil, de
	}
	return &partial, de
}

// JoinReasons returns the reasons of a decode error from Parse followed by
// those of semantic, the error of Validate on the partial Config that Parse
// returned with it, as one *ValidationError. A semantic reason that only
// follows from a value that did not decode (a mistyped endpoint is not also
// "required") is left out. Either error may be nil; JoinReasons returns nil
// when both are.
func JoinReasons(decode, semantic error) error {
	var out []string
	var mistyped []string
	var ve *ValidationError
	if errors.As(decode, &ve) {
		out = append(out, ve.Reasons...)
		mistyped = ve.mistyped
	} else if decode != nil {
		out = append(out, decode.Error())
	}
	if errors.As(semantic, &ve) {
		for _, r := range ve.Reasons {
			if !followsFrom(r, mistyped) {
				out = append(out, r)
			}
		}
	} else if semantic != nil {
		out = append(out, semantic.Error())
	}
	if len(out) == 0 {
		return nil
	}
	return &ValidationError{Reasons: out, mistyped: mistyped}
}

// namesRE matches the " (name)" that Validate adds after a region or
// backend's path.
var namesRE = regexp.MustCompile(` \([^)]*\)`)

// followsFrom reports whether the semantic reason r is about a value whose
// path is in mistyped (or under it), or about such a field of the same
// parent ("regions[0].backends[1] (x): endpoint is required" for
// "regions[0].backends[1].endpoint").
func followsFrom(r string, mistyped []string) bool {
	loc, rest, ok := strings.Cut(r, ": ")
	if !ok {
		return false
	}
	loc = namesRE.ReplaceAllString(loc, "")
	for _, m := range mistyped {
		if m == "" { // the whole document
			return true
		}
		if loc == m || strings.HasPrefix(loc, m+".") || strings.HasPrefix(loc, m+"[") {
			return true
		}
		i := strings.LastIndexAny(m, ".[")
		if i < 0 {
			if loc == m {
				return true
			}
			continue
		}
		parent, field := m[:i], strings.TrimSuffix(m[i+1:], "]")
		if loc != parent {
			continue
		}
		for _, word := range strings.FieldsFunc(rest, func(r rune) bool { return r == ' ' || r == '.' || r == ',' }) {
			if word == field || word == strings.TrimSuffix(field, "s") {
				return true
			}
		}
	}
	return false
}

// yamlReasons splits a yaml.v3 decode error into one reason per problem.
func yamlReasons(err error) []string {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		return slices.Clone(te.Errors)
	}
	return []string{strings.TrimPrefix(err.Error(), "yaml: ")}
}

var lineRE = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// reasonLine reads the "line N: " a yaml.v3 message starts with.
func reasonLine(r string) (int, bool) {
	m := lineRE.FindStringSubmatch(r)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

// maxSyntaxSearch bounds the documents whose syntax error is located line
// by line (each step parses a prefix of the document).
const maxSyntaxSearch = 2000

// syntaxReason explains a document that is not well-formed YAML, on the
// line where it goes wrong. yaml.v3 names the line where the enclosing
// block began (and counts it from 0), so an indentation error deep in a
// list is reported at the list's start. The first line whose inclusion
// makes the document fail with the same problem is where it goes wrong.
func syntaxReason(doc []byte, err error) string {
	problem := lineRE.ReplaceAllString(err.Error(), "")
	problem = strings.TrimPrefix(problem, "yaml: ")
	lines := bytes.SplitAfter(doc, []byte("\n"))
	from, _ := reasonLine(err.Error())
	from = max(from, 1)
	if len(lines) <= maxSyntaxSearch {
		for k := from; k <= len(lines); k++ {
			var n yaml.Node
			perr := yaml.NewDecoder(bytes.NewReader(bytes.Join(lines[:k], nil))).Decode(&n)
			if perr == nil {
				continue
			}
			p := strings.TrimPrefix(lineRE.ReplaceAllString(perr.Error(), ""), "yaml: ")
			if p == problem {
				return fmt.Sprintf("line %d: malformed YAML: %s", k, problem)
			}
		}
	}
	if n, ok := reasonLine(err.Error()); ok {
		return fmt.Sprintf("line %d: malformed YAML: %s", n, problem)
	}
	return "malformed YAML: " + problem
}

// walker follows a document's nodes along the Go type they decode into,
// records a decodeProblem for each field the schema lacks, each key given
// twice and each value of the wrong kind, and edits the nodes so that the
// rest decodes: mistyped values become null, repeated keys are dropped.
type walker struct {
	problems []decodeProblem
}

var (
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	durationType    = reflect.TypeFor[time.Duration]()
	configDuration  = reflect.TypeFor[Duration]()
)

func (w *walker) add(n *yaml.Node, path string, mistyped bool, format string, args ...any) {
	w.problems = append(w.problems, decodeProblem{path: path, line: n.Line, msg: fmt.Sprintf(format, args...), mistyped: mistyped})
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	for n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		w.walk(n.Alias, t, path)
		return
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // leaves the zero value
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) || t == durationType || isScalarKind(t.Kind()) {
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			w.add(n, path, true, "want %s, got %s", kindWords(t), nodeWords(n))
			nullify(n)
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.add(n, path, true, "want a mapping (key: value lines), got %s", nodeWords(n))
			nullify(n)
			return
		}
		w.mapping(n, t, path)
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			w.add(n, path, true, "want a list, got %s", nodeWords(n))
			nullify(n)
			return
		}
		for i, e := range n.Content {
			w.walk(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.add(n, path, true, "want a mapping (key: value lines), got %s", nodeWords(n))
			nullify(n)
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			w.walk(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value))
		}
	}
}

// mapping checks a mapping node against struct type t.
func (w *walker) mapping(n *yaml.Node, t reflect.Type, path string) {
	fields := yamlFields(t)
	seen := map[string]int{}
	kept := n.Content[:0:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.ShortTag() == "!!merge" {
			kept = append(kept, k, v)
			w.merge(v, t, path)
			continue
		}
		if first, dup := seen[k.Value]; dup {
			w.add(k, join(path, k.Value), false, "given twice (first at line %d); the first is used", first)
			continue
		}
		seen[k.Value] = k.Line
		kept = append(kept, k, v)
		ft, ok := fields[k.Value]
		if !ok {
			w.add(k, join(path, k.Value), false, "unknown field%s", suggest(k.Value, fields))
			continue
		}
		w.walk(v, ft, join(path, k.Value))
	}
	n.Content = kept
}

// merge checks the value of a "<<" key: a mapping, or a list of them.
func (w *walker) merge(v *yaml.Node, t reflect.Type, path string) {
	if v.Kind == yaml.AliasNode && v.Alias != nil {
		v = v.Alias
	}
	switch v.Kind {
	case yaml.MappingNode:
		w.mapping(v, t, path)
	case yaml.SequenceNode:
		for _, e := range v.Content {
			w.merge(e, t, path)
		}
	}
}

// yamlFields maps the names a struct's fields have in a document to their
// types, as yaml.v3 names them: the yaml tag's name, else the field's name
// in lower case; inline structs' fields are the struct's own.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if slices.Contains(strings.Split(opts, ","), "inline") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for k, v := range yamlFields(ft) {
					out[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

// suggest names the known field closest to an unknown one, or lists them
// all when none is close.
func suggest(name string, fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for k := range fields {
		names = append(names, k)
	}
	slices.Sort(names)
	best, bestD := "", 0
	for _, k := range names {
		d := editDistance(strings.ToLower(name), k)
		if best == "" || d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" && bestD <= max(1, min(3, len(name)/3)) {
		return ", did you mean " + best + "?"
	}
	// A shortened name ("hedge" for hedge_after).
	if len(name) >= 3 {
		for _, k := range names {
			if strings.HasPrefix(k, strings.ToLower(name)) {
				return ", did you mean " + k + "?"
			}
		}
	}
	if len(names) == 0 {
		return ""
	}
	return "; the fields here are " + strings.Join(names, ", ")
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// nullify makes n a null value, which decodes to the zero value.
func nullify(n *yaml.Node) {
	*n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "", Line: n.Line, Column: n.Column}
}

func isScalarKind(k reflect.Kind) bool {
	switch k {
	case reflect.Bool, reflect.String,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

// kindWords says what a value of type t is written as.
func kindWords(t reflect.Type) string {
	switch {
	case t == durationType || t == configDuration:
		return `a duration such as "250ms" or "30s"`
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	}
	return "another kind of value"
}

// nodeWords describes what a node holds.
func nodeWords(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	return strconv.Quote(v)
}
