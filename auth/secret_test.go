package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"gopkg.in/yaml.v3"

	detourv1 "github.com/detour-dev/detour/proto/detour/v1"
)

func TestSecretNeverPrints(t *testing.T) {
	const value = "sk-live-0123456789abcdef"
	s := Secret(value)
	type holder struct {
		Name  string
		Token Secret
		Ptr   *Secret
	}
	h := holder{Name: "n", Token: s, Ptr: &s}
	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10.3s"} {
		out = append(out, fmt.Sprintf(verb, s), fmt.Sprintf(verb, h), fmt.Sprintf(verb, []Secret{s}), fmt.Sprintf(verb, Bearer{Token: s}))
	}
	out = append(out, fmt.Sprint(s), fmt.Sprintln(h), s.String(), s.GoString(), fmt.Errorf("wrapped: %v", s).Error(),
		fmt.Errorf("wrapped: %w", errors.New(fmt.Sprint(h))).Error())
	var logs bytes.Buffer
	for _, log := range []*slog.Logger{slog.New(slog.NewJSONHandler(&logs, nil)), slog.New(slog.NewTextHandler(&logs, nil))} {
		log.Info("secret", "s", s, "h", h, "ptr", &s, slog.Any("any", s), slog.Group("g", "s", s))
	}
	out = append(out, logs.String())
	for _, v := range []any{s, h, map[string]Secret{"k": s}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		y, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b), string(y))
	}
	for _, o := range out {
		if strings.Contains(o, value) || strings.Contains(o, fmt.Sprintf("%x", value)) {
			t.Errorf("secret printed: %s", o)
		}
	}
	if !strings.Contains(logs.String(), redacted) {
		t.Errorf("log shows no %s:\n%s", redacted, logs.String())
	}
	if s.Reveal() != value {
		t.Errorf("Reveal() = %q", s.Reveal())
	}
	var back Secret
	if err := back.UnmarshalText([]byte(value)); err != nil || back.Reveal() != value {
		t.Errorf("UnmarshalText: %v", err)
	}
	if got := Scrub("upstream said: bad key "+value+".", "", s); got != "upstream said: bad key [redacted]." {
		t.Errorf("Scrub = %q", got)
	}
}

func TestNewToken(t *testing.T) {
	tok, sum, err := NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if len(tok.Reveal()) < 40 || sum != TokenSHA256(tok) || len(sum) != 64 {
		t.Errorf("NewToken = %d chars, %q", len(tok.Reveal()), sum)
	}
	// The digest is what `printf %s TOKEN | sha256sum` prints.
	if got, want := TokenSHA256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Errorf("TokenSHA256(abc) = %s, want %s", got, want)
	}
}

// TestSecretsScan drives good and bad calls through real gRPC servers on
// loopback and looks for the test tokens in everything that comes out: every
// log line (detour's and grpc-go's), every status message and detail, every
// response, header and trailer.
func TestSecretsScan(t *testing.T) {
	canary := "tok-CANARY-" + TokenSHA256("canary")[:12]
	tokens := []string{tokSearch, tokBilling, tokAdmin, tokUnknown, canary}

	ca := newCA(t, "detour test CA")
	srvTLS := newServerTLS(t, ca, ca, -1, true)
	log, logs := newLogger()
	on, err := New(Options{Mode: ModeAny, Config: static(testConfig()), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	off, err := New(Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	onAddr, _ := serveAuth(t, on, srvTLS.Credentials())
	offAddr, _ := serveAuth(t, off, nil)
	clientCert := ca.issue(t, leaf{cn: "billing"}).tlsCert(t)
	conns := map[string]*grpc.ClientConn{
		"tls":            dial(t, onAddr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, ca, nil)))),
		"mtls":           dial(t, onAddr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(t, ca, &clientCert)))),
		"plaintext, off": dial(t, offAddr, grpc.WithTransportCredentials(insecure.NewCredentials())),
	}

	var seen []string // everything a caller or an operator could read
	record := func(resp fmt.Stringer, header, trailer metadata.MD, err error) {
		if resp != nil {
			seen = append(seen, resp.String())
		}
		seen = append(seen, fmt.Sprint(header), fmt.Sprint(trailer))
		if err != nil {
			seen = append(seen, err.Error(), status.Convert(err).Proto().String())
		}
	}
	calls, failures := 0, 0
	for _, tok := range tokens {
		mds := [][]string{
			bearer(tok),
			{"authorization", "bearer " + tok},
			{"authorization", "Basic " + tok},
			{"authorization", tok},
			{"authorization", "Bearer " + tok + " trailing"},
			append(bearer(tok), bearer(tokUnknown)...),
			append(bearer(tok), TenantKey, "claimed"),
			{TenantKey, tok + " not a tenant"},
		}
		for _, md := range mds {
			for _, conn := range conns {
				for _, model := range []string{"deepseek-chat", "deepseek-reasoner"} {
					ctx := metadata.NewOutgoingContext(callCtx(t), metadata.Pairs(md...))
					var header, trailer metadata.MD
					resp, err := detourv1.NewRouterClient(conn).Complete(ctx, request(model), grpc.Header(&header), grpc.Trailer(&trailer))
					record(resp, header, trailer, err)
					st, err := detourv1.NewRouterClient(conn).StreamComplete(ctx, request(model))
					if err == nil {
						var chunk *detourv1.CompleteChunk
						if chunk, err = st.Recv(); err == nil {
							seen = append(seen, chunk.String())
						}
						h, _ := st.Header()
						record(nil, h, st.Trailer(), err)
					}
					calls += 2
				}
				var header, trailer metadata.MD
				ctx := metadata.NewOutgoingContext(callCtx(t), metadata.Pairs(md...))
				resp, err := detourv1.NewAdminClient(conn).Drain(ctx, &detourv1.DrainRequest{Backend: "b-1"}, grpc.Header(&header), grpc.Trailer(&trailer))
				record(resp, header, trailer, err)
				calls++
				if err != nil {
					failures++
				}
			}
		}
	}
	seen = append(seen, logs.Lines()...)
	seen = append(seen, grpcLogs.Lines()...)

	for _, s := range seen {
		for _, tok := range tokens {
			if strings.Contains(s, tok) {
				t.Errorf("token %s leaked: %s", tok[:8], s)
			}
		}
	}
	// The scan looked at something.
	if failures == 0 || calls-failures == 0 {
		t.Errorf("%d calls, %d failed: want both successes and failures", calls, failures)
	}
	for _, want := range []string{`"msg":"call refused"`, `"msg":"admin call"`, "Unauthenticated", "PermissionDenied", "InvalidArgument"} {
		if !strings.Contains(strings.Join(seen, "\n"), want) {
			t.Errorf("nothing in the scanned output says %s", want)
		}
	}
	t.Logf("%d calls (%d admin failures), %d texts scanned, %d log lines", calls, failures, len(seen), len(logs.Lines()))
}
