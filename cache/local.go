package cache

import (
	"math"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// entryOverhead approximates the memory an entry costs beyond its encoded
// size: the key, the LRU's list element and map slot, the decoded messages'
// headers.
const entryOverhead = 256

// local is the in-memory tier: an LRU (hashicorp/golang-lru's simplelru)
// bounded by the bytes of its entries rather than their number. Entries are
// dropped when they are past their stale window (lazily, when found) or
// when room is needed (least recently used first). It is safe for concurrent
// use; every method holds one mutex briefly.
type local struct {
	max int64

	mu    sync.Mutex
	lru   *simplelru.LRU[Key, *entry]
	bytes int64
}

func newLocal(maxBytes int64) *local {
	l := &local{max: maxBytes}
	// The count bound is never reached: bytes bound the LRU.
	l.lru, _ = simplelru.NewLRU[Key, *entry](math.MaxInt32, func(_ Key, e *entry) { l.bytes -= e.size })
	return l
}

// get returns k's entry unless it is past its stale window at now.
func (l *local) get(k Key, now time.Time) (*entry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.lru.Get(k)
	if !ok {
		return nil, false
	}
	if !now.Before(e.staleUntil) {
		l.lru.Remove(k)
		return nil, false
	}
	return e, true
}

// add stores e under k, evicting the least recently used entries until the
// tier fits its bound again. An entry larger than the whole bound is not
// stored.
func (l *local) add(k Key, e *entry) {
	if e.size > l.max {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.lru.Peek(k); ok {
		if !e.stored.After(old.stored) {
			return // keep the newer answer
		}
		l.bytes -= old.size // Add replaces it without the eviction callback
	}
	l.lru.Add(k, e)
	l.bytes += e.size
	for l.bytes > l.max {
		if _, _, ok := l.lru.RemoveOldest(); !ok {
			break
		}
	}
}

// stats returns the number of entries and their bytes.
func (l *local) stats() (int, int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len(), l.bytes
}
