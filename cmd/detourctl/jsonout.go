package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// printJSON writes m as indented JSON with the proto field names, the same
// bytes every time: protojson deliberately varies its whitespace from run
// to run (so that nobody depends on it), which broke scripts and tests
// that compare the output; the compact form is re-indented with
// encoding/json instead. unpopulated adds the fields left at their zero
// value.
func printJSON(w io.Writer, m proto.Message, unpopulated bool) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: unpopulated}.Marshal(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return fmt.Errorf("indenting the JSON of %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	out.WriteByte('\n')
	_, err = w.Write(out.Bytes())
	return err
}
