package main

import "testing"

func TestMemoryLimit(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    int64
		wantErr bool
	}{
		{name: "unset", env: map[string]string{}},
		{name: "512Mi", env: map[string]string{"DETOUR_MEMORY_LIMIT": "536870912"}, want: 536870912 / 100 * 90},
		{name: "GOMEMLIMIT wins", env: map[string]string{"DETOUR_MEMORY_LIMIT": "536870912", "GOMEMLIMIT": "400MiB"}},
		{name: "a quantity, not bytes", env: map[string]string{"DETOUR_MEMORY_LIMIT": "512Mi"}, wantErr: true},
		{name: "zero", env: map[string]string{"DETOUR_MEMORY_LIMIT": "0"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := memoryLimit(func(k string) string { return tt.env[k] })
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("memoryLimit = %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
