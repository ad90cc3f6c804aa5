package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"slices"
	"strings"
	"sync"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

// Key identifies an answer: requests with the same Key get the same answer.
type Key [sha256.Size]byte

// String returns k in hex.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// keyVersion starts every encoding; change it when the encoding or the
// normalization changes, so that old entries are no longer found.
const keyVersion = "detour.cache.v2\x00"

// KeyOf returns the canonical key of req: the SHA-256 of a length-prefixed
// binary encoding, in a fixed order, of everything that changes the answer:
//
//   - model;
//   - each message, in order: role, content and name;
//   - temperature and top_p, each as "unset" or its value (-0 is 0);
//   - max_tokens;
//   - the stop sequences as a set (sorted, without duplicates);
//   - the tenant, when the cache is scoped to tenants (empty: shared);
//   - user, only when perUser is true (Config.PerUser).
//
// Routing hints and cache hints are not part of the key: they change where
// and whether an answer comes from, not what it says. Leading and trailing
// whitespace of the model, of each role, name and content is insignificant,
// and so is the case of a role; whitespace inside a content, and any in a
// stop sequence, is significant. Every string is length-prefixed, so no two
// different normalized requests share an encoding.
//
// KeyOf does not allocate (it encodes into a pooled buffer) and is safe for
// concurrent use.
func KeyOf(req *detourv1.CompleteRequest, tenant string, perUser bool) Key {
	bp := keyBufs.Get().(*[]byte)
	b := append((*bp)[:0], keyVersion...)
	b = appendString(b, 'T', tenant)
	b = appendString(b, 'm', strings.TrimSpace(req.GetModel()))
	for _, m := range req.GetMessages() {
		b = appendString(b, 'r', strings.ToLower(strings.TrimSpace(m.GetRole())))
		b = appendString(b, 'c', strings.TrimSpace(m.GetContent()))
		b = appendString(b, 'n', strings.TrimSpace(m.GetName()))
	}
	b = appendFloat(b, 't', req.Temperature)
	b = appendFloat(b, 'p', req.TopP)
	b = append(b, 'x')
	b = binary.AppendVarint(b, int64(req.GetMaxTokens()))
	b = appendStops(b, req.GetStop())
	if perUser {
		b = appendString(b, 'u', req.GetUser())
	}
	k := Key(sha256.Sum256(b))
	if cap(b) <= maxPooledKeyBuf {
		*bp = b
		keyBufs.Put(bp)
	}
	return k
}

// maxPooledKeyBuf keeps buffers grown by a huge prompt out of the pool.
const maxPooledKeyBuf = 64 << 10

var keyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func appendString(b []byte, tag byte, s string) []byte {
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendFloat(b []byte, tag byte, f *float64) []byte {
	if f == nil {
		return append(b, tag, 0)
	}
	v := *f
	if v == 0 {
		v = 0 // -0 and 0 are the same setting
	}
	b = append(b, tag, 1)
	return binary.BigEndian.AppendUint64(b, math.Float64bits(v))
}

// appendStops encodes the stop sequences as a sorted set. The common cases
// (none, one, already sorted and distinct) do not allocate.
func appendStops(b []byte, stops []string) []byte {
	if !slices.IsSorted(stops) || hasAdjacentDup(stops) {
		stops = slices.Compact(slices.Sorted(slices.Values(stops)))
	}
	b = append(b, 's')
	b = binary.AppendUvarint(b, uint64(len(stops)))
	for _, s := range stops {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	return b
}

func hasAdjacentDup(s []string) bool {
	for i := 1; i < len(s); i++ {
		if s[i] == s[i-1] {
			return true
		}
	}
	return false
}
