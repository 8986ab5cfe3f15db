package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
)

// manifest is <host-root>/var/lib/nsx-ujo/bootstrap-installed.json: the
// host paths the bootstrap installed, so that cleanup removes exactly those
// and never a file that was there before (a distribution's loopback).
type manifest struct {
	// Version is the build that last wrote the manifest, for operators.
	Version string `json:"version"`
	// Files are host paths (without the host root) in install order;
	// cleanup removes them in reverse.
	Files []string `json:"files"`
}

func (m *manifest) has(path string) bool { return slices.Contains(m.Files, path) }

func (m *manifest) add(path string) {
	if !m.has(path) {
		m.Files = append(m.Files, path)
	}
}

func (m *manifest) encode() []byte {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		panic(err) // a string and a string slice always marshal
	}
	return append(data, '\n')
}

// readManifest returns the manifest at path, nil when there is none. A
// manifest that does not parse is an error: guessing would risk removing a
// file the bootstrap did not install.
func readManifest(path string) (*manifest, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var m manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w (move it away to start over)", path, err)
	}
	return &m, nil
}
