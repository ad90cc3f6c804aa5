package server

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/detour-dev/detour/internal/excerpt"
	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// codec is the server's message codec: grpc-go's proto codec, except for a
// CompleteRequest whose string fields hold invalid UTF-8, which proto3
// forbids. grpc-go turns any decoding error into INTERNAL before a handler
// or interceptor runs, so that a caller's bad bytes would read as detour's
// bug, unlogged. codec instead decodes such a request with each invalid
// byte replaced by U+FFFD and the paths of the fields it replaced them in
// recorded in the message (badUTF8Field, an unknown field): begin refuses
// it with INVALID_ARGUMENT naming them. Any other decoding error is left
// as it was.
type codec struct{ encoding.CodecV2 }

func newCodec() codec { return codec{encoding.GetCodecV2(grpcproto.Name)} }

// badUTF8Field is the field number under which codec records the paths of
// the fields whose invalid UTF-8 it replaced: the largest a field may have,
// unused by detour.v1.
const badUTF8Field protowire.Number = protowire.MaxValidNumber

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	req, ok := v.(*detourv1.CompleteRequest)
	if !ok || !strings.Contains(err.Error(), "invalid UTF-8") {
		return err
	}
	fixed, paths := validUTF8(data.Materialize(), req.ProtoReflect().Descriptor(), "")
	proto.Reset(req)
	if len(paths) == 0 || proto.Unmarshal(fixed, req) != nil {
		return err
	}
	var mark []byte
	for _, p := range paths {
		mark = protowire.AppendTag(mark, badUTF8Field, protowire.BytesType)
		mark = protowire.AppendString(mark, p)
	}
	req.ProtoReflect().SetUnknown(append(req.ProtoReflect().GetUnknown(), mark...))
	return nil
}

// validUTF8 returns the wire message b of type md with invalid UTF-8 in
// its string fields (and those of its messages) replaced by U+FFFD, and
// the paths of those fields, such as "messages[2].content", under prefix.
// Fields it cannot parse are copied as they are.
func validUTF8(b []byte, md protoreflect.MessageDescriptor, prefix string) ([]byte, []string) {
	out := make([]byte, 0, len(b))
	var paths []string
	seen := map[protowire.Number]int{} // occurrences, for repeated fields' indices
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return append(out, b...), paths
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return append(out, b...), paths
		}
		field, value := b[:n+m], b[n:n+m]
		b = b[n+m:]
		fd := md.Fields().ByNumber(num)
		if fd == nil || typ != protowire.BytesType || fd.IsMap() {
			out = append(out, field...)
			continue
		}
		path := prefix + string(fd.Name())
		if fd.IsList() {
			path += "[" + strconv.Itoa(seen[num]) + "]"
		}
		seen[num]++
		v, _ := protowire.ConsumeBytes(value)
		switch fd.Kind() {
		case protoreflect.StringKind:
			if !utf8.Valid(v) {
				paths = append(paths, path)
				v = []byte(strings.ToValidUTF8(string(v), "\uFFFD"))
			}
		case protoreflect.MessageKind:
			var sub []string
			v, sub = validUTF8(v, fd.Message(), path+".")
			paths = append(paths, sub...)
		default:
			out = append(out, field...)
			continue
		}
		out = protowire.AppendTag(out, num, typ)
		out = protowire.AppendBytes(out, v)
	}
	return out, paths
}

// badUTF8 returns the paths codec recorded in req, if any: the fields
// whose invalid UTF-8 it replaced.
func badUTF8(req *detourv1.CompleteRequest) []string {
	u := req.ProtoReflect().GetUnknown()
	if len(u) == 0 {
		return nil
	}
	var paths []string
	for len(u) > 0 {
		num, typ, n := protowire.ConsumeTag(u)
		if n < 0 {
			break
		}
		m := protowire.ConsumeFieldValue(num, typ, u[n:])
		if m < 0 {
			break
		}
		if num == badUTF8Field && typ == protowire.BytesType {
			v, _ := protowire.ConsumeString(u[n : n+m])
			paths = append(paths, excerpt.Clip(v, 64))
		}
		u = u[n+m:]
	}
	return paths
}
