package main

import (
	"io"
	"sync"
	"time"
)

// logSink is the one writer of serve's log lines. Lines written to it go
// out at once; lines written to its Buffered side (the per-call lines) are
// kept in memory and written together, at most flushEvery later or when
// bufferLimit bytes are waiting, so that a busy replica does not make one
// write(2) per call. A line written at once first flushes what is waiting,
// so the output keeps the order of the calls to Write. Close flushes.
type logSink struct {
	mu        sync.Mutex
	w         io.Writer
	buf       []byte
	closed    bool // after Close, buffered lines go out at once too
	stop      chan struct{}
	closeOnce sync.Once
	done      chan struct{}
}

const (
	flushEvery  = 100 * time.Millisecond
	bufferLimit = 64 << 10
)

func newLogSink(w io.Writer) *logSink {
	s := &logSink{w: w, buf: make([]byte, 0, bufferLimit), stop: make(chan struct{}), done: make(chan struct{})}
	go s.flushLoop()
	return s
}

// Write writes p, after anything buffered.
func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, p...)
	if err := s.flushLocked(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Buffered returns the side of s whose lines may wait up to flushEvery.
func (s *logSink) Buffered() io.Writer { return bufferedSide{s} }

type bufferedSide struct{ s *logSink }

func (b bufferedSide) Write(p []byte) (int, error) {
	s := b.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, p...)
	if len(s.buf) >= bufferLimit || s.closed {
		if err := s.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (s *logSink) flushLocked() error {
	if len(s.buf) == 0 {
		return nil
	}
	_, err := s.w.Write(s.buf)
	// A failed write drops the lines rather than growing without bound:
	// logging must never stop calls.
	s.buf = s.buf[:0]
	return err
}

func (s *logSink) flushLoop() {
	defer close(s.done)
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			s.flushLocked()
			s.mu.Unlock()
		}
	}
}

// Close stops the periodic flush and writes what is waiting. It is safe to
// call more than once; later writes go out at once.
func (s *logSink) Close() error {
	s.closeOnce.Do(func() { close(s.stop) })
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.flushLocked()
}
