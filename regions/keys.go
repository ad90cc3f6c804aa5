package regions

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Where a backend's API key may come from. Whoever can write the config
// document (in etcd, say) must not be able to point a backend at any
// variable or file of the process: api_key_env: DETOUR_ETCD_PASSWORD and an
// endpoint of their own would receive detour's etcd password as a bearer
// token. So the document may only name
//
//   - environment variables called DETOUR_KEY_* (or listed, comma-separated,
//     in the process's DETOUR_KEY_ENV_ALLOW, which only the deployer sets);
//   - files inside the directories of DETOUR_KEY_DIRS (colon-separated;
//     default /var/run/secrets, /run/secrets and /etc/detour/keys), after
//     symbolic links are resolved.
const (
	KeyEnvPrefix    = "DETOUR_KEY_"
	KeyEnvAllowVar  = "DETOUR_KEY_ENV_ALLOW"
	KeyDirsVar      = "DETOUR_KEY_DIRS"
	defaultKeyDirs  = "/var/run/secrets:/run/secrets:/etc/detour/keys"
	keyPlacesReason = "see README, \"Secrets\""
)

// errKeyPlace is wrapped by a key reference the rules above refuse.
var errKeyPlace = errors.New("not a place a backend key may come from")

// checkKeyEnv refuses an api_key_env the process does not let documents name.
func checkKeyEnv(name string) error {
	if strings.HasPrefix(name, KeyEnvPrefix) && len(name) > len(KeyEnvPrefix) {
		return nil
	}
	for _, allowed := range strings.Split(os.Getenv(KeyEnvAllowVar), ",") {
		if strings.TrimSpace(allowed) == name && name != "" {
			return nil
		}
	}
	return fmt.Errorf("%w: only variables named %s* (or listed in %s) may hold a backend key; %s", errKeyPlace, KeyEnvPrefix, KeyEnvAllowVar, keyPlacesReason)
}

// keyDirs returns the directories key files may live in.
func keyDirs() []string {
	v := os.Getenv(KeyDirsVar)
	if v == "" {
		v = defaultKeyDirs
	}
	var out []string
	for _, d := range strings.Split(v, ":") {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, filepath.Clean(d))
		}
	}
	return out
}

// checkKeyFile refuses an api_key_file outside the key directories,
// following symbolic links (a link in a key directory to /etc/shadow is
// outside). A file that does not exist yet is judged by its path.
func checkKeyFile(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("%w: api_key_file must be an absolute path", errKeyPlace)
	}
	real := filepath.Clean(path)
	if r, err := filepath.EvalSymlinks(real); err == nil {
		real = r
	}
	for _, d := range keyDirs() {
		rd := d
		if r, err := filepath.EvalSymlinks(d); err == nil {
			rd = r
		}
		if rel, err := filepath.Rel(rd, real); err == nil && rel != "." && !strings.HasPrefix(rel, "..") {
			return nil
		}
	}
	return fmt.Errorf("%w: api_key_file must be inside %s (%s); %s", errKeyPlace, strings.Join(keyDirs(), ", "), KeyDirsVar, keyPlacesReason)
}
