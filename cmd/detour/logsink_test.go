package main

import (
	"strings"
	"testing"
	"time"
)

func TestLogSinkOrderAndFlush(t *testing.T) {
	out := &lockedBuffer{}
	s := newLogSink(out)
	b := s.Buffered()
	b.Write([]byte("call 1\n"))
	b.Write([]byte("call 2\n"))
	if got := out.String(); got != "" {
		t.Fatalf("buffered lines written at once: %q", got)
	}
	// A line written at once goes out after the buffered ones, in order.
	s.Write([]byte("config applied\n"))
	if got, want := out.String(), "call 1\ncall 2\nconfig applied\n"; got != want {
		t.Fatalf("after an unbuffered line: %q, want %q", got, want)
	}
	// Buffered lines go out by themselves within flushEvery.
	b.Write([]byte("call 3\n"))
	deadline := time.Now().Add(5 * time.Second)
	for !strings.HasSuffix(out.String(), "call 3\n") {
		if time.Now().After(deadline) {
			t.Fatalf("buffered line not flushed within 5s: %q", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A full buffer is written without waiting.
	big := strings.Repeat("x", bufferLimit)
	b.Write([]byte(big))
	if !strings.HasSuffix(out.String(), big) {
		t.Fatal("a full buffer was not written at once")
	}
	// Close writes what waits; later lines go out at once.
	b.Write([]byte("call 4\n"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.String(), "call 4\n") {
		t.Fatal("Close did not flush")
	}
	b.Write([]byte("call 5\n"))
	if !strings.HasSuffix(out.String(), "call 5\n") {
		t.Fatal("a line after Close waited")
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
}
