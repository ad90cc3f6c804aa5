package regions

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// reasons loads doc and returns its validation reasons (nil when valid).
func reasons(t *testing.T, doc string) []string {
	t.Helper()
	_, err := Load([]byte(doc))
	if err == nil {
		return nil
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Load error = %v, want a *ValidationError", err)
	}
	return ve.Reasons
}

const oneBackend = "regions:\n  - name: a\n    backends:\n      - name: x\n        endpoint: http://h/v1\n"

// TestDuplicatePrincipalNames: two tenants with one name (and different
// quotas), or a tenant and an admin with one name, are one name for two
// principals in logs, metrics and quotas: refused.
func TestDuplicatePrincipalNames(t *testing.T) {
	doc := oneBackend + `tenants:
  - name: search
    qps: 5
  - name: search
    qps: 500
  - name: billing
admins:
  - name: billing
  - name: oncall
  - name: oncall
`
	want := []string{
		"tenants[1] (search): duplicate principal name, first used at tenants[0]",
		"admins[0] (billing): duplicate principal name, first used at tenants[2]",
		"admins[2] (oncall): duplicate principal name, first used at admins[1]",
	}
	if diff := cmp.Diff(reasons(t, doc), want); diff != "" {
		t.Errorf("reasons (-got +want):\n%s", diff)
	}
}

// TestUnsafeEndpoints: an endpoint at a link-local or cloud metadata
// address, or with credentials in its URL, could aim detour's API keys at
// the instance metadata service or carry a secret in the document; refused
// unless the backend sets allow_unsafe_endpoint.
func TestUnsafeEndpoints(t *testing.T) {
	tests := []struct {
		kind, endpoint string
		bad            string // a part of the reason; "" when the endpoint is fine
	}{
		{"", "http://169.254.169.254/latest/v1", "link-local"},
		{"", "http://169.254.169.254.:80/v1", "link-local"}, // a trailing dot changes nothing
		{"", "http://[fe80::1%25eth0]:8080/v1", "link-local"},
		{"", "http://[fd00:ec2::254]/v1", "metadata"},
		{"", "http://[::ffff:169.254.169.254]/v1", "link-local"},
		{"", "http://metadata.google.internal/computeMetadata/v1", "metadata"},
		{"", "http://METADATA.GOOGLE.INTERNAL./v1", "metadata"},
		{"", "http://2852039166/v1", "link-local"},          // 169.254.169.254 as one number
		{"", "http://0xa9.0xfe.0xa9.0xfe/v1", "link-local"}, // and in hex
		{"", "http://100.100.100.200/v1", "metadata"},
		{"", "https://user:hunter2@api.example.com/v1", "credentials"},
		{"", "https://token@api.example.com/v1", "credentials"},
		{KindDetour, "169.254.169.254:50051", "link-local"},
		{KindDetour, "dns:///metadata.google.internal:50051", "metadata"},
		{KindDetour, "user:hunter2@detour.svc:50051", "credentials"},
		{"", "https://api.deepseek.com/v1", ""},
		{"", "http://10.0.0.7:8080/v1", ""},
		{"", "http://127.0.0.1:8080/v1", ""},
		{KindDetour, "detour.us-east.svc:50051", ""},
	}
	for _, tt := range tests {
		t.Run(tt.kind+" "+tt.endpoint, func(t *testing.T) {
			doc := "regions:\n  - name: a\n    backends:\n      - name: x\n        kind: " + orOpenAI(tt.kind) + "\n        endpoint: \"" + tt.endpoint + "\"\n"
			got := reasons(t, doc)
			switch {
			case tt.bad == "" && len(got) > 0:
				t.Errorf("refused: %q", got)
			case tt.bad != "" && (len(got) != 1 || !strings.Contains(got[0], tt.bad) || !strings.Contains(got[0], "allow_unsafe_endpoint")):
				t.Errorf("reasons %q, want one about %q that names allow_unsafe_endpoint", got, tt.bad)
			case tt.bad != "" && strings.Contains(got[0], "hunter2"):
				t.Errorf("the reason quotes the credentials: %q", got[0])
			}
			if tt.bad != "" {
				if got := reasons(t, doc+"        allow_unsafe_endpoint: true\n"); len(got) > 0 {
					t.Errorf("refused with allow_unsafe_endpoint: %q", got)
				}
			}
		})
	}
}

func orOpenAI(kind string) string {
	if kind == "" {
		return KindOpenAI
	}
	return kind
}
