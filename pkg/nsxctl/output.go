package nsxctl

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Format is an output format (-o).
type Format string

// The output formats. JSON and YAML carry every field, under names that
// stay stable (scripts read them); the table is for people.
const (
	Table Format = "table"
	JSON  Format = "json"
	YAML  Format = "yaml"
)

// ParseFormat reads -o.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case Table, JSON, YAML:
		return f, nil
	}
	return "", fmt.Errorf("-o %q: want table, json or yaml", s)
}

// Tabler is a report that prints as a table.
type Tabler interface {
	Table() (header []string, rows [][]string)
}

// Print writes v in format f.
func Print(w io.Writer, f Format, v Tabler) error {
	switch f {
	case JSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case YAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	header, rows := v.Table()
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		for i := range r {
			if r[i] == "" {
				r[i] = "-"
			}
		}
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// list joins items for a table cell, the first few only.
func list(items []string, most int) string {
	if len(items) <= most {
		return strings.Join(items, ",")
	}
	return strings.Join(items[:most], ",") + fmt.Sprintf(",+%d more", len(items)-most)
}

// Table prints one row per frontend.
func (r *ServicesReport) Table() ([]string, [][]string) {
	header := []string{"FRONTEND", "SERVICE", "KIND", "ENDPOINTS", "AFFINITY", "POLICY", "NO-ENDPOINTS", "NEW-CONNS", "DRIFT"}
	var rows [][]string
	for _, s := range r.Services {
		kind := s.Kind
		if kind == "" && s.External {
			kind = "external"
		}
		drift := strings.Join(s.Drift, "; ")
		if s.Refused != "" {
			drift = "refused: " + s.Refused
		}
		rows = append(rows, []string{s.Frontend, s.Service, kind, list(s.Endpoints, 3), s.Affinity, s.TrafficPolicy,
			s.NoEndpoints, fmt.Sprint(s.NewConnections), drift})
	}
	return header, rows
}
