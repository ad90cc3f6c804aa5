package jobs

import "sync"

// hub wakes the Watch calls of a job when this replica sees it change
// (River's events for the jobs it runs, Cancel); other changes are seen by
// polling. It is safe for concurrent use and never blocks.
type hub struct {
	mu   sync.Mutex
	subs map[int64]map[chan struct{}]struct{}
}

func newHub() *hub { return &hub{subs: map[int64]map[chan struct{}]struct{}{}} }

// subscribe returns a channel that receives after each change of job id,
// and the function that ends the subscription.
func (h *hub) subscribe(id int64) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.subs[id] == nil {
		h.subs[id] = map[chan struct{}]struct{}{}
	}
	h.subs[id][ch] = struct{}{}
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		delete(h.subs[id], ch)
		if len(h.subs[id]) == 0 {
			delete(h.subs, id)
		}
	}
}

func (h *hub) notify(id int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for ch := range h.subs[id] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
