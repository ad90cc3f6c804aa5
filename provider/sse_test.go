package provider

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/google/go-cmp/cmp"
)

// readEvents reads every event of input and the error that ended them.
func readEvents(r io.Reader, max int) ([]string, error) {
	s := newSSEReader(r, max, nil)
	var events []string
	for {
		data, err := s.Next()
		if err != nil {
			return events, err
		}
		events = append(events, string(data))
	}
}

func TestSSEReader(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		max     int
		want    []string
		wantErr error
	}{
		{name: "empty", input: "", wantErr: io.EOF},
		{
			name:    "openai",
			input:   "data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n",
			want:    []string{`{"a":1}`, `{"b":2}`, "[DONE]"},
			wantErr: io.EOF,
		},
		{
			name:    "crlf",
			input:   "data: x\r\n\r\ndata: y\r\n\r\n",
			want:    []string{"x", "y"},
			wantErr: io.EOF,
		},
		{
			name:    "cr",
			input:   "data: x\r\rdata: y\rdata: z\r\n\r",
			want:    []string{"x", "y\nz"},
			wantErr: io.EOF,
		},
		{
			name:    "comments, other fields and keep-alive blank lines",
			input:   ": keep-alive\n\n\nevent: message\nid: 7\nretry: 100\ndata: x\n\n: ping\n\n",
			want:    []string{"x"},
			wantErr: io.EOF,
		},
		{
			name:    "multi-line data",
			input:   "data: one\ndata: two\ndata:\n\n",
			want:    []string{"one\ntwo\n"},
			wantErr: io.EOF,
		},
		{
			name:    "only one leading space is dropped",
			input:   "data:x\n\ndata:  y\n\n",
			want:    []string{"x", " y"},
			wantErr: io.EOF,
		},
		{
			name:    "empty data is an event",
			input:   "data\n\ndata:\n\n",
			want:    []string{"", ""},
			wantErr: io.EOF,
		},
		{
			name:    "event without data is not",
			input:   "event: ping\n\n",
			wantErr: io.EOF,
		},
		{
			name:    "bom",
			input:   "\xef\xbb\xbfdata: x\n\n",
			want:    []string{"x"},
			wantErr: io.EOF,
		},
		{
			name:    "cut inside an event",
			input:   "data: x\n\ndata: y\n",
			want:    []string{"x"},
			wantErr: io.ErrUnexpectedEOF,
		},
		{
			name:    "cut inside a line",
			input:   "data: x\n\ndata: {\"a\"",
			want:    []string{"x"},
			wantErr: io.ErrUnexpectedEOF,
		},
		{
			name:    "event over the limit",
			input:   "data: 12345\n\ndata: 123456\n\n",
			max:     5,
			want:    []string{"12345"},
			wantErr: errEventTooLarge,
		},
		{
			name:    "lines over the buffer",
			input:   "data: " + strings.Repeat("x", 40000) + "\n\n",
			want:    []string{strings.Repeat("x", 40000)},
			wantErr: io.EOF,
		},
		{
			name:    "line over the limit",
			input:   "data: " + strings.Repeat("x", 40000) + "\n\n",
			max:     20000,
			wantErr: errEventTooLarge,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			max := tt.max
			if max == 0 {
				max = maxEventBytes
			}
			for _, r := range []struct {
				name string
				r    io.Reader
			}{
				{"whole", strings.NewReader(tt.input)},
				{"byte by byte", iotest.OneByteReader(strings.NewReader(tt.input))},
			} {
				got, err := readEvents(r.r, max)
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("%s: events (-want +got):\n%s", r.name, diff)
				}
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("%s: error = %v, want %v", r.name, err, tt.wantErr)
				}
			}
		})
	}
}

func TestSSEReaderPassesReadErrors(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader("data: x\n\n"), iotest.ErrReader(boom))
	got, err := readEvents(r, maxEventBytes)
	if diff := cmp.Diff([]string{"x"}, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if !errors.Is(err, boom) {
		t.Errorf("error = %v, want %v", err, boom)
	}
}

// FuzzSSEReader checks that any input is read without panic, within the
// limit, the same way whatever the read sizes, and that the events it yields
// survive a round trip through the format.
func FuzzSSEReader(f *testing.F) {
	for _, seed := range []string{
		"data: {\"a\":1}\n\ndata: [DONE]\n\n",
		"data: x\r\n\r\n: c\r\nevent: e\r\ndata: y\r\ndata: z\r\n\r\n",
		"\xef\xbb\xbfdata\n\ndata:\n\ndata:  sp\n\n",
		"data: cut",
		"data: 0123456789abcdef\n\n",
		"\r\n\n\r",
		"data:\r\r\n\n",
	} {
		f.Add([]byte(seed))
	}
	const max = 64
	f.Fuzz(func(t *testing.T, input []byte) {
		events, err := readEvents(bytes.NewReader(input), max)
		if err == nil {
			t.Fatal("reader ended without an error")
		}
		for _, e := range events {
			if len(e) > max {
				t.Fatalf("event of %d bytes over the %d limit", len(e), max)
			}
		}
		oneByte, oneByteErr := readEvents(iotest.OneByteReader(bytes.NewReader(input)), max)
		if diff := cmp.Diff(events, oneByte); diff != "" || !errors.Is(oneByteErr, err) && oneByteErr.Error() != err.Error() {
			t.Fatalf("byte-by-byte read differs: err %v vs %v; events (-whole +bytes):\n%s", err, oneByteErr, diff)
		}
		var enc strings.Builder
		for _, e := range events {
			for _, line := range strings.Split(e, "\n") {
				enc.WriteString("data: " + line + "\n")
			}
			enc.WriteString("\n")
		}
		again, err := readEvents(strings.NewReader(enc.String()), max+maxLineOverhead)
		if !errors.Is(err, io.EOF) {
			t.Fatalf("re-encoded events: error %v", err)
		}
		if diff := cmp.Diff(events, again); diff != "" {
			t.Fatalf("round trip (-first +again):\n%s", diff)
		}
	})
}
