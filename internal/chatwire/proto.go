package chatwire

import (
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// NewRequest maps req to its JSON request. The message contents point at
// req's strings; stream, stream_options and the tenant are the caller's
// to set.
func NewRequest(req *detourv1.CompleteRequest) *Request {
	cr := &Request{
		Model:               req.GetModel(),
		Messages:            make([]Message, len(req.GetMessages())),
		Temperature:         req.Temperature,
		TopP:                req.TopP,
		MaxTokens:           max(req.GetMaxTokens(), 0),
		MaxCompletionTokens: max(req.GetMaxCompletionTokens(), 0),
		Stop:                req.GetStop(),
		FrequencyPenalty:    req.FrequencyPenalty,
		PresencePenalty:     req.PresencePenalty,
		Seed:                req.Seed,
		Logprobs:            req.GetLogprobs(),
		TopLogprobs:         req.TopLogprobs,
		ParallelToolCalls:   req.ParallelToolCalls,
		ReasoningEffort:     req.GetReasoningEffort(),
		User:                req.GetUser(),
	}
	for i, m := range req.GetMessages() {
		cm := Message{Role: m.GetRole(), Content: (*Content)(&m.Content), Name: m.GetName(),
			ReasoningContent: m.GetReasoningContent(), ToolCallID: m.GetToolCallId(), Prefix: m.GetPrefix()}
		if len(m.GetToolCalls()) > 0 {
			cm.ToolCalls = make([]ToolCall, len(m.GetToolCalls()))
			for j, tc := range m.GetToolCalls() {
				cm.ToolCalls[j] = ToolCall{ID: tc.GetId(), Type: orFunction(tc.GetType()),
					Function: FunctionCall{Name: tc.GetFunction().GetName(), Arguments: Arguments(tc.GetFunction().GetArguments())}}
			}
			if m.GetContent() == "" {
				cm.Content = nil
			}
		}
		cr.Messages[i] = cm
	}
	if len(req.GetTools()) > 0 {
		cr.Tools = make([]Tool, len(req.GetTools()))
		for i, t := range req.GetTools() {
			f := t.GetFunction()
			cr.Tools[i] = Tool{Type: orFunction(t.GetType()), Function: Function{
				Name: f.GetName(), Description: f.GetDescription(), Parameters: rawJSON(f.GetParameters()), Strict: f.Strict}}
		}
	}
	switch c := req.GetToolChoice().GetChoice().(type) {
	case *detourv1.ToolChoice_Mode:
		cr.ToolChoice = &ToolChoice{Mode: c.Mode}
	case *detourv1.ToolChoice_Function:
		cr.ToolChoice = &ToolChoice{Function: c.Function}
	}
	if rf := req.GetResponseFormat(); rf != nil {
		cr.ResponseFormat = &ResponseFormat{Type: rf.GetType()}
		if js := rf.GetJsonSchema(); js != nil {
			cr.ResponseFormat.JSONSchema = &JSONSchema{Name: js.GetName(), Description: js.GetDescription(),
				Schema: rawJSON(js.GetSchema()), Strict: js.Strict}
		}
	}
	if th := req.GetThinking(); th != nil {
		cr.Thinking = &Thinking{Type: th.GetType()}
	}
	return cr
}

func orFunction(t string) string {
	if t == "" {
		return "function"
	}
	return t
}

// rawJSON returns s as a raw JSON member value, nil for an empty s.
func rawJSON(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

// Problem is a request member that cannot become a detour.v1 request.
type Problem struct {
	// Param is the member's path, such as "messages[2].content".
	Param   string
	Message string
}

func (p *Problem) Error() string { return p.Param + ": " + p.Message }

// Proto maps r to a detour.v1 request, without stream and stream_options
// (the transport's) and user_id (which goes upstream through extra_body).
// extraBody is the JSON object of the members r has no field for, or "".
// The values are taken as they are; server's validation checks them as it
// checks a gRPC request. Proto fails only for what detour.v1 cannot carry
// (n other than 1, a cache duration that does not parse).
func (r *Request) Proto(extraBody string) (*detourv1.CompleteRequest, error) {
	if r.N != nil && *r.N != 1 {
		return nil, &Problem{"n", "detour answers with one choice: n must be 1 or absent"}
	}
	out := &detourv1.CompleteRequest{
		Model:               r.Model,
		Messages:            make([]*detourv1.Message, len(r.Messages)),
		Temperature:         r.Temperature,
		TopP:                r.TopP,
		MaxTokens:           r.MaxTokens,
		MaxCompletionTokens: r.MaxCompletionTokens,
		Stop:                r.Stop,
		FrequencyPenalty:    r.FrequencyPenalty,
		PresencePenalty:     r.PresencePenalty,
		Seed:                r.Seed,
		Logprobs:            r.Logprobs,
		TopLogprobs:         r.TopLogprobs,
		ParallelToolCalls:   r.ParallelToolCalls,
		ReasoningEffort:     r.ReasoningEffort,
		User:                r.User,
		ExtraBody:           extraBody,
	}
	msgs := make([]detourv1.Message, len(r.Messages)) // one allocation for all
	for i := range r.Messages {
		m := &r.Messages[i]
		pm := &msgs[i]
		pm.Role, pm.Name, pm.ReasoningContent, pm.ToolCallId, pm.Prefix = m.Role, m.Name, m.ReasoningContent, m.ToolCallID, m.Prefix
		if m.Content != nil {
			pm.Content = string(*m.Content)
		}
		if len(m.ToolCalls) > 0 {
			pm.ToolCalls = make([]*detourv1.ToolCall, len(m.ToolCalls))
			for j, tc := range m.ToolCalls {
				pm.ToolCalls[j] = &detourv1.ToolCall{Id: tc.ID, Type: tc.Type,
					Function: &detourv1.FunctionCall{Name: tc.Function.Name, Arguments: string(tc.Function.Arguments)}}
			}
		}
		out.Messages[i] = pm
	}
	if len(r.Tools) > 0 {
		out.Tools = make([]*detourv1.Tool, len(r.Tools))
		for i, t := range r.Tools {
			out.Tools[i] = &detourv1.Tool{Type: t.Type, Function: &detourv1.FunctionDefinition{
				Name: t.Function.Name, Description: t.Function.Description,
				Parameters: string(t.Function.Parameters), Strict: t.Function.Strict}}
		}
	}
	if tc := r.ToolChoice; tc != nil {
		if tc.Function != "" {
			out.ToolChoice = &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Function{Function: tc.Function}}
		} else {
			out.ToolChoice = &detourv1.ToolChoice{Choice: &detourv1.ToolChoice_Mode{Mode: tc.Mode}}
		}
	}
	if rf := r.ResponseFormat; rf != nil {
		out.ResponseFormat = &detourv1.ResponseFormat{Type: rf.Type}
		if js := rf.JSONSchema; js != nil {
			out.ResponseFormat.JsonSchema = &detourv1.JsonSchema{Name: js.Name, Description: js.Description,
				Schema: string(js.Schema), Strict: js.Strict}
		}
	}
	if th := r.Thinking; th != nil {
		out.Thinking = &detourv1.Thinking{Type: th.Type}
	}
	if ext := r.Detour; ext != nil {
		if rt := ext.Routing; rt != nil {
			out.Routing = &detourv1.RoutingHints{PreferRegion: rt.PreferRegion, NoFallback: rt.NoFallback}
		}
		if c := ext.Cache; c != nil {
			ch, err := c.proto()
			if err != nil {
				return nil, err
			}
			out.Cache = ch
		}
	}
	return out, nil
}

// NewResponse maps an answer to its JSON, with created (Unix seconds) and
// detour's extension member.
func NewResponse(resp *detourv1.CompleteResponse, created int64) *Response {
	ans := Answer{Role: "assistant", ReasoningContent: resp.GetReasoningContent()}
	if c := resp.GetContent(); c != "" || len(resp.GetToolCalls()) == 0 {
		ans.Content = &resp.Content
	}
	if tcs := resp.GetToolCalls(); len(tcs) > 0 {
		ans.ToolCalls = make([]ToolCall, len(tcs))
		for i, tc := range tcs {
			ans.ToolCalls[i] = ToolCall{ID: tc.GetId(), Type: orFunction(tc.GetType()),
				Function: FunctionCall{Name: tc.GetFunction().GetName(), Arguments: Arguments(tc.GetFunction().GetArguments())}}
		}
	}
	return &Response{
		ID:      resp.GetId(),
		Object:  "chat.completion",
		Created: created,
		Model:   resp.GetModel(),
		Choices: []Choice{{Message: ans, Logprobs: NewLogprobs(resp.GetLogprobs()), FinishReason: resp.GetFinishReason()}},
		Usage:   NewUsage(resp.GetUsage()),
		Detour:  NewExtension(resp.GetServedBy(), resp.GetSource(), resp.GetAttempts(), resp.GetAge().AsDuration().Milliseconds(), resp.GetAge() != nil),
	}
}

// NewChunk maps a chunk to its JSON event, without usage (a stream sends
// it in an event of its own) and without detour's extension member (the
// caller adds it to the first event).
func NewChunk(ch *detourv1.CompleteChunk, created int64) *Chunk {
	c := &Chunk{ID: ch.GetId(), Object: "chat.completion.chunk", Created: created, Model: ch.GetModel(),
		Choices: []ChunkChoice{{Delta: Delta{Content: ch.GetDelta(), ReasoningContent: ch.GetReasoningDelta()},
			Logprobs: NewLogprobs(ch.GetLogprobs())}}}
	if f := ch.GetFinishReason(); f != "" {
		c.Choices[0].FinishReason = &f
	}
	if tds := ch.GetToolCallDeltas(); len(tds) > 0 {
		d := make([]ToolDelta, len(tds))
		for i, td := range tds {
			d[i] = ToolDelta{Index: td.GetIndex(), ID: td.GetId(), Type: td.GetType()}
			if f := td.GetFunction(); f != nil {
				d[i].Function = &FunctionCall{Name: f.GetName(), Arguments: Arguments(f.GetArguments())}
			}
		}
		c.Choices[0].Delta.ToolCalls = d
	}
	return c
}

// NewExtension is detour's extension member for an answer served by
// served, from source, after attempts upstream calls; ageMS counts when
// hasAge.
func NewExtension(served *detourv1.ServedBy, source detourv1.Source, attempts int32, ageMS int64, hasAge bool) *AnswerExtension {
	ext := &AnswerExtension{Source: SourceName(source), Attempts: attempts}
	if served != nil {
		ext.ServedBy = &ServedBy{Region: served.GetRegion(), Backend: served.GetBackend(), Kind: KindName(served.GetKind()), Zone: served.GetZone()}
	}
	if hasAge {
		ext.AgeMS = &ageMS
	}
	return ext
}

// SourceName is the lower-case name of s without its prefix: live, cache,
// stale_cache, fallback; "" when unspecified.
func SourceName(s detourv1.Source) string {
	if s == detourv1.Source_SOURCE_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "SOURCE_"))
}

// KindName is the lower-case name of k: openai, detour; "" when
// unspecified.
func KindName(k detourv1.ProviderKind) string {
	if k == detourv1.ProviderKind_PROVIDER_KIND_UNSPECIFIED {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(k.String(), "PROVIDER_KIND_"))
}

// Proto maps an answer's message, choice and usage to a detour.v1 answer.
func (r *Response) Proto() *detourv1.CompleteResponse {
	out := &detourv1.CompleteResponse{Id: r.ID, Model: r.Model, Usage: r.Usage.Proto()}
	if len(r.Choices) > 0 {
		c := &r.Choices[0]
		if c.Message.Content != nil {
			out.Content = *c.Message.Content
		}
		out.ReasoningContent = c.Message.ReasoningContent
		out.ToolCalls = c.Message.toolCalls()
		out.Logprobs = c.Logprobs.Proto()
		out.FinishReason = c.FinishReason
	}
	return out
}

// Proto maps a stream event's first choice and usage to a detour.v1 chunk.
func (c *Chunk) Proto() *detourv1.CompleteChunk {
	ch := &detourv1.CompleteChunk{Id: c.ID, Model: c.Model, Usage: c.Usage.Proto()}
	if len(c.Choices) > 0 {
		d := &c.Choices[0]
		ch.Delta = d.Delta.Content
		ch.ReasoningDelta = d.Delta.ReasoningContent
		ch.ToolCallDeltas = d.Delta.toolCallDeltas()
		ch.Logprobs = d.Logprobs.Proto()
		if d.FinishReason != nil {
			ch.FinishReason = *d.FinishReason
		}
	}
	return ch
}

func (a *Answer) toolCalls() []*detourv1.ToolCall {
	if len(a.ToolCalls) == 0 {
		return nil
	}
	out := make([]*detourv1.ToolCall, len(a.ToolCalls))
	for i, tc := range a.ToolCalls {
		out[i] = &detourv1.ToolCall{Id: tc.ID, Type: tc.Type, Function: tc.Function.proto()}
	}
	return out
}

func (d *Delta) toolCallDeltas() []*detourv1.ToolCallDelta {
	if len(d.ToolCalls) == 0 {
		return nil
	}
	out := make([]*detourv1.ToolCallDelta, len(d.ToolCalls))
	for i, tc := range d.ToolCalls {
		out[i] = &detourv1.ToolCallDelta{Index: tc.Index, Id: tc.ID, Type: tc.Type}
		if tc.Function != nil {
			out[i].Function = tc.Function.proto()
		}
	}
	return out
}

func (f *FunctionCall) proto() *detourv1.FunctionCall {
	return &detourv1.FunctionCall{Name: f.Name, Arguments: string(f.Arguments)}
}

// Proto returns l, or nil when it holds no token.
func (l *Logprobs) Proto() *detourv1.Logprobs {
	if l == nil || len(l.Content) == 0 {
		return nil
	}
	out := &detourv1.Logprobs{Content: make([]*detourv1.TokenLogprob, len(l.Content))}
	for i, t := range l.Content {
		tl := &detourv1.TokenLogprob{Token: t.Token, Logprob: t.Logprob, Bytes: byteList(t.Bytes)}
		for _, top := range t.TopLogprobs {
			tl.TopLogprobs = append(tl.TopLogprobs, &detourv1.TopLogprob{Token: top.Token, Logprob: top.Logprob, Bytes: byteList(top.Bytes)})
		}
		out.Content[i] = tl
	}
	return out
}

// NewLogprobs maps l to its JSON; nil for nil.
func NewLogprobs(l *detourv1.Logprobs) *Logprobs {
	if l == nil {
		return nil
	}
	out := &Logprobs{Content: make([]TokenLogprob, len(l.GetContent()))}
	for i, t := range l.GetContent() {
		tl := TokenLogprob{Token: t.GetToken(), Logprob: t.GetLogprob(), Bytes: intList(t.GetBytes()), TopLogprobs: []TopLogprob{}}
		for _, top := range t.GetTopLogprobs() {
			tl.TopLogprobs = append(tl.TopLogprobs, TopLogprob{Token: top.GetToken(), Logprob: top.GetLogprob(), Bytes: intList(top.GetBytes())})
		}
		out.Content[i] = tl
	}
	return out
}

// byteList converts OpenAI's list of byte values; a list with a value that
// is not a byte is dropped.
func byteList(v []int) []byte {
	if len(v) == 0 {
		return nil
	}
	b := make([]byte, len(v))
	for i, x := range v {
		if x < 0 || x > 255 {
			return nil
		}
		b[i] = byte(x)
	}
	return b
}

func intList(b []byte) []int {
	if b == nil {
		return nil
	}
	out := make([]int, len(b))
	for i, x := range b {
		out[i] = int(x)
	}
	return out
}

// Proto maps u to detour.v1's usage; nil for nil. The cache-hit tokens
// come from DeepSeek's member, else from OpenAI's.
func (u *Usage) Proto() *detourv1.Usage {
	if u == nil {
		return nil
	}
	out := &detourv1.Usage{
		PromptTokens:          u.PromptTokens,
		CompletionTokens:      u.CompletionTokens,
		TotalTokens:           u.TotalTokens,
		PromptCacheHitTokens:  u.PromptCacheHitTokens,
		PromptCacheMissTokens: u.PromptCacheMissTokens,
	}
	if out.PromptCacheHitTokens == nil && u.PromptTokensDetails != nil {
		out.PromptCacheHitTokens = u.PromptTokensDetails.CachedTokens
	}
	if u.CompletionTokensDetails != nil {
		out.ReasoningTokens = u.CompletionTokensDetails.ReasoningTokens
	}
	return out
}

// NewUsage maps u to its JSON, with the cache-hit tokens in both
// spellings; nil for nil.
func NewUsage(u *detourv1.Usage) *Usage {
	if u == nil {
		return nil
	}
	out := &Usage{
		PromptTokens:          u.GetPromptTokens(),
		CompletionTokens:      u.GetCompletionTokens(),
		TotalTokens:           u.GetTotalTokens(),
		PromptCacheHitTokens:  u.PromptCacheHitTokens,
		PromptCacheMissTokens: u.PromptCacheMissTokens,
	}
	if u.PromptCacheHitTokens != nil {
		out.PromptTokensDetails = &PromptDetails{CachedTokens: u.PromptCacheHitTokens}
	}
	if u.ReasoningTokens != nil {
		out.CompletionTokensDetails = &CompletionDetails{ReasoningTokens: u.ReasoningTokens}
	}
	return out
}

// proto maps the cache hints, whose durations must parse.
func (c *CacheHints) proto() (*detourv1.CacheHints, error) {
	out := &detourv1.CacheHints{NoCache: c.NoCache, ForceCache: c.ForceCache}
	for _, d := range []struct {
		name, v string
		set     **durationpb.Duration
	}{{"detour.cache.max_stale", c.MaxStale, &out.MaxStale}, {"detour.cache.ttl", c.TTL, &out.Ttl}} {
		if d.v == "" {
			continue
		}
		v, err := time.ParseDuration(d.v)
		if err != nil {
			return nil, &Problem{d.name, `must be a duration such as "30s" or "2m"`}
		}
		*d.set = durationpb.New(v)
	}
	return out, nil
}
