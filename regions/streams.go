package regions

// StreamPolicy is how streams start and survive breaks. The zero value
// bounds nothing beyond the backends' timeouts, hedges nothing and
// continues nothing.
type StreamPolicy struct {
	// FirstTokenTimeout bounds every stream attempt's wait for its first
	// token (content, reasoning or a tool call; keep-alives are not tokens)
	// where the backend sets no first_token_timeout. Zero: no bound of its
	// own (the backend's timeout and queue_timeout still apply).
	FirstTokenTimeout Duration `yaml:"first_token_timeout,omitempty" json:"first_token_timeout,omitempty"`
	// HedgeAfter starts a stream on the next candidate when the first has
	// sent no token this long; the first attempt to send one wins and the
	// other is cancelled (it does not count against its backend). Hedges
	// spend the retry budget. Zero: no hedged starts (a call may ask for
	// one with RoutingHints.hedge_after).
	HedgeAfter Duration `yaml:"hedge_after,omitempty" json:"hedge_after,omitempty"`
	// Continuation continues a stream that breaks after it started on
	// another backend, and splices the new stream onto the caller's (see
	// Backend.PrefixCompletion for how). A caller may turn it on or off
	// for its call (RoutingHints.continuation).
	Continuation bool `yaml:"continuation,omitempty" json:"continuation,omitempty"`
	// ContinuePrompt is the user turn sent after the text so far to a
	// backend without prefix completion. Empty means
	// DefaultContinuePrompt.
	ContinuePrompt string `yaml:"continue_prompt,omitempty" json:"continue_prompt,omitempty"`
	// MaxContinuations bounds the splices of one stream. Zero means 2.
	MaxContinuations int `yaml:"max_continuations,omitempty" json:"max_continuations,omitempty"`
}

// Stream defaults.
const (
	DefaultContinuePrompt   = "Your previous answer was cut off. Continue it exactly where it stopped, without repeating anything already written and without any preamble."
	DefaultMaxContinuations = 2
	maxContinuePromptBytes  = 4096
)

// ContinuePromptOrDefault returns the continue prompt in force.
func (p StreamPolicy) ContinuePromptOrDefault() string {
	if p.ContinuePrompt == "" {
		return DefaultContinuePrompt
	}
	return p.ContinuePrompt
}

// MaxContinuationsOrDefault returns the bound on splices per stream.
func (p StreamPolicy) MaxContinuationsOrDefault() int {
	if p.MaxContinuations <= 0 {
		return DefaultMaxContinuations
	}
	return p.MaxContinuations
}

func (v *validator) streams(p StreamPolicy) {
	if p.FirstTokenTimeout < 0 {
		v.add("streams.first_token_timeout must be >= 0")
	}
	if p.HedgeAfter < 0 {
		v.add("streams.hedge_after must be >= 0")
	}
	if p.MaxContinuations < 0 || p.MaxContinuations > 10 {
		v.add("streams.max_continuations: %d must be in 0..10", p.MaxContinuations)
	}
	if len(p.ContinuePrompt) > maxContinuePromptBytes {
		v.add("streams.continue_prompt: %d bytes, at most %d", len(p.ContinuePrompt), maxContinuePromptBytes)
	}
}
