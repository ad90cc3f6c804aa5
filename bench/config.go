package main

import (
	"fmt"

	"gopkg.in/yaml.v3"

	"github.com/detour-dev/detour/regions"
)

// configYAML is cfg as the document detour serve reads: validated as detour
// will validate it, then marshalled. Scenarios build their configs from the
// schema's own types, so a field the schema renames or drops fails to
// compile here rather than at detour's start.
func configYAML(cfg *regions.Config) (string, error) {
	if err := cfg.Validate(); err != nil {
		return "", fmt.Errorf("bench config: %w", err)
	}
	out, err := yaml.Marshal(cfg)
	return string(out), err
}

// editConfig returns doc with edit applied to a fresh copy, validated as
// detour will.
func editConfig(doc string, edit func(*regions.Config) error) ([]byte, error) {
	cfg, err := regions.Load([]byte(doc))
	if err != nil {
		return nil, err
	}
	if err := edit(cfg); err != nil {
		return nil, err
	}
	out, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	if _, err := regions.Load(out); err != nil {
		return nil, fmt.Errorf("edited config: %w", err)
	}
	return out, nil
}

// backendOf returns the named backend of cfg's regions.
func backendOf(cfg *regions.Config, name string) (*regions.Backend, error) {
	for i := range cfg.Regions {
		for j := range cfg.Regions[i].Backends {
			if b := &cfg.Regions[i].Backends[j]; b.Name == name {
				return b, nil
			}
		}
	}
	return nil, fmt.Errorf("no backend %s in the config", name)
}

// region is a region of the given backends.
func region(name string, priority int, backends ...regions.Backend) regions.Region {
	return regions.Region{Name: name, Priority: priority, Backends: backends}
}
