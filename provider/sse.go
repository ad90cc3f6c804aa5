package provider

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// errEventTooLarge is returned by sseReader.Next for an event over its limit.
var errEventTooLarge = errors.New("event too large")

// sseReader splits a text/event-stream (the Server-Sent Events format of the
// WHATWG HTML standard) into the data of its events. Lines end in CRLF, LF or
// CR. Comment lines (":...") and fields other than "data" ("event", "id",
// "retry") are skipped; comments and empty lines that end no event
// (keep-alives) are reported to alive. An sseReader is not safe for
// concurrent use.
type sseReader struct {
	br     *bufio.Reader
	alive  func() // nil: keep-alives go unreported
	hold   *hold  // where line and data reserve their bytes; nil: nowhere
	max    int    // bytes of data per event
	line   []byte // a line longer than br's buffer, being assembled
	data   []byte // the event being assembled, "\n" after each data line
	has    bool   // the event has at least one data field
	first  bool   // the next line is the stream's first (may carry a BOM)
	skipLF bool   // the last line ended in CR: an LF next completes a CRLF
}

// sseBufferBytes is the size of an sseReader's read buffer: a fixed cost
// per open stream, like its goroutine, which the body budget leaves out.
// A chunk's event is a few hundred bytes; a longer line is assembled in
// line (budgeted), so the buffer only bounds how much one read takes in.
// 4 KiB rather than 16: ten thousand open streams hold 40 MiB, not 160.
const sseBufferBytes = 4 << 10

// newSSEReader reads events from r. The memory its line and event buffers
// grow to, which an upstream decides (up to max per event), is reserved in
// h (nil: not accounted); a buffer the budget cannot take makes Next fail
// with an error wrapping ErrBodyBudget.
func newSSEReader(r io.Reader, max int, h *hold) *sseReader {
	return &sseReader{br: bufio.NewReaderSize(r, sseBufferBytes), hold: h, max: max, first: true}
}

// room makes room for n more bytes in *b, reserving the new capacity
// before it allocates it.
func (s *sseReader) room(b *[]byte, n int) error {
	if len(*b)+n <= cap(*b) {
		return nil
	}
	size := max(2*cap(*b), len(*b)+n, 512)
	if s.hold != nil && !s.hold.grow(int64(size-cap(*b))) {
		return overBudget(int64(size - cap(*b)))
	}
	nb := make([]byte, len(*b), size)
	copy(nb, *b)
	*b = nb
	return nil
}

// Next returns the data of the next event: its data lines joined by "\n".
// The slice is valid until the next call. An event is dispatched only when
// the blank line that ends it arrives, so Next blocks until then.
//
// Next returns io.EOF when the input ends between events, io.ErrUnexpectedEOF
// when it ends inside one (the partial event is dropped, as the standard
// says), errEventTooLarge when an event's data exceeds the limit, and the
// reader's error otherwise.
func (s *sseReader) Next() ([]byte, error) {
	s.data = s.data[:0]
	s.has = false
	for {
		line, err := s.readLine()
		if err != nil {
			if errors.Is(err, io.EOF) && (s.has || len(s.line) > 0) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if len(line) == 0 {
			if !s.has {
				s.keepAlive()
				continue
			}
			return s.data[:len(s.data)-1], nil
		}
		if line[0] == ':' {
			s.keepAlive()
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		if string(field) != "data" {
			continue
		}
		if len(s.data)+len(value)+1 > s.max+1 {
			return nil, fmt.Errorf("%w: over %d bytes", errEventTooLarge, s.max)
		}
		if err := s.room(&s.data, len(value)+1); err != nil {
			return nil, err
		}
		s.data = append(s.data, value...)
		s.data = append(s.data, '\n')
		s.has = true
	}
}

func (s *sseReader) keepAlive() {
	if s.alive != nil {
		s.alive()
	}
}

// readLine returns the next line without its line end (CRLF, LF or CR).
// The slice is valid until the next call. At the end of input it returns
// io.EOF, and leaves an unterminated last line in s.line so that Next can
// tell a cut.
//
// It reads only what bufio already holds, plus one byte when that is empty,
// so a line is returned as soon as its end arrives; after a CR it looks for
// the LF of a CRLF only once the next line is wanted.
func (s *sseReader) readLine() ([]byte, error) {
	s.line = s.line[:0]
	for {
		n := max(s.br.Buffered(), 1)
		buf, err := s.br.Peek(n)
		if len(buf) == 0 {
			return nil, err
		}
		if s.skipLF {
			s.skipLF = false
			if buf[0] == '\n' {
				_, _ = s.br.Discard(1)
				continue
			}
		}
		i := bytes.IndexAny(buf, "\r\n")
		if i < 0 {
			if len(s.line)+len(buf) > s.max+maxLineOverhead {
				return nil, fmt.Errorf("%w: line over %d bytes", errEventTooLarge, s.max)
			}
			if err := s.room(&s.line, len(buf)); err != nil {
				return nil, err
			}
			s.line = append(s.line, buf...)
			_, _ = s.br.Discard(len(buf))
			continue
		}
		if len(s.line)+i > s.max+maxLineOverhead {
			return nil, fmt.Errorf("%w: line over %d bytes", errEventTooLarge, s.max)
		}
		line := buf[:i]
		if len(s.line) > 0 {
			if err := s.room(&s.line, len(line)); err != nil {
				return nil, err
			}
			s.line = append(s.line, line...)
			line = s.line
		}
		end := i + 1
		if buf[i] == '\r' {
			if i+1 < len(buf) {
				if buf[i+1] == '\n' {
					end++
				}
			} else {
				s.skipLF = true
			}
		}
		// Discard leaves buf's bytes in place until the next Peek.
		_, _ = s.br.Discard(end)
		if s.first {
			s.first = false
			line = bytes.TrimPrefix(line, []byte("\xef\xbb\xbf"))
		}
		return line, nil
	}
}

// maxLineOverhead is room for a field name and line end beyond an event's
// data limit.
const maxLineOverhead = 64
