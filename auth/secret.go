package auth

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// redacted is what a Secret prints as, whatever the verb or encoder.
const redacted = "[redacted]"

// Secret is a credential (a bearer token, an API key) that must not leak: it
// prints, logs and encodes as "[redacted]" through fmt (every verb, %x and
// %#v included), log/slog, encoding/json and any other encoder that honours
// encoding.TextMarshaler. Only Reveal gives the value, and only code that
// puts it on the wire should call it. Converting it back with string(s)
// defeats the protection; don't.
//
// A Secret is an immutable value, safe for concurrent use.
type Secret string

// Reveal returns the secret's value.
func (s Secret) Reveal() string { return string(s) }

// String returns "[redacted]".
func (Secret) String() string { return redacted }

// GoString returns "[redacted]", for %#v.
func (Secret) GoString() string { return redacted }

// Format prints "[redacted]" for every verb.
func (Secret) Format(f fmt.State, _ rune) { io.WriteString(f, redacted) }

// LogValue implements slog.LogValuer.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText returns "[redacted]", so JSON and YAML encoders never see the
// value.
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// UnmarshalText sets the secret from text (flag.TextVar, decoders).
func (s *Secret) UnmarshalText(b []byte) error {
	*s = Secret(b)
	return nil
}

var _ slog.LogValuer = Secret("")

// ErrEmptySecret is returned when a secret file holds nothing.
var ErrEmptySecret = errors.New("secret is empty")

// ReadSecretFile reads a secret from a file (a mounted Kubernetes Secret),
// trimming surrounding white space. Its errors name the file, never the
// content.
func ReadSecretFile(path string) (Secret, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("secret file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("secret file %s: %w", path, ErrEmptySecret)
	}
	return Secret(s), nil
}

// Scrub replaces every occurrence of the secrets in text with "[redacted]".
// Use it on text that came from elsewhere (an upstream's error body) before
// it reaches a log or a status message. Empty secrets are ignored.
func Scrub(text string, secrets ...Secret) string {
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, string(s), redacted)
		}
	}
	return text
}
