package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// FieldError is an invalid ncp.ini value. Its message names the section and
// key so an operator can fix the file without reading code.
type FieldError struct {
	Section, Key, Value, Reason string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("ncp.ini [%s] %s = %q: %s", e.Section, e.Key, e.Value, e.Reason)
}

// Validate checks every value, returning all problems joined as *FieldError.
// Parse calls it; call it again after applying flags. node_type is compared
// case-insensitively (Parse stores it upper case).
func (c *Config) Validate() error {
	var errs []error
	for _, f := range c.fields() {
		if f.check == nil {
			continue
		}
		if reason := f.check(); reason != "" {
			errs = append(errs, &FieldError{f.section, f.key, format(f.ptr), reason})
		}
	}
	return errors.Join(errs...)
}

// format renders a field value the way it is written in ncp.ini.
func format(ptr any) string {
	switch p := ptr.(type) {
	case *string:
		return *p
	case *int:
		return strconv.Itoa(*p)
	case *bool:
		return strconv.FormatBool(*p)
	case *time.Duration:
		return strconv.FormatFloat(p.Seconds(), 'f', -1, 64)
	case *[]netip.Prefix:
		if len(*p) == 0 {
			return "primary"
		}
		s := make([]string, len(*p))
		for i, pf := range *p {
			s[i] = pf.String()
		}
		return strings.Join(s, ",")
	}
	panic(fmt.Sprintf("config: unsupported field type %T", ptr))
}

func between(p *int, lo, hi int) func() string {
	return func() string {
		if *p < lo || *p > hi {
			return fmt.Sprintf("must be between %d and %d", lo, hi)
		}
		return ""
	}
}

func positive(p *time.Duration) func() string {
	return func() string {
		if *p <= 0 {
			return "must be a positive number of seconds"
		}
		return ""
	}
}

func nonNegative(p *time.Duration) func() string {
	return func() string {
		if *p < 0 {
			return "must not be negative"
		}
		return ""
	}
}

func oneOf(p *string, fold bool, values ...string) func() string {
	return func() string {
		v := *p
		if fold {
			v = strings.ToUpper(v)
		}
		if !slices.Contains(values, v) {
			return "must be one of " + strings.Join(values, ", ")
		}
		return ""
	}
}

func cidr(p *string) func() string {
	return func() string {
		if _, err := netip.ParsePrefix(*p); err != nil {
			return "not a CIDR (address/prefix-length)"
		}
		return ""
	}
}

func absPath(p *string, emptyOK bool) func() string {
	return func() string {
		if (*p != "" || !emptyOK) && !filepath.IsAbs(*p) {
			return "must be an absolute path"
		}
		return ""
	}
}

// ifName applies the kernel's dev_valid_name rules, so a bad bridge name
// fails at start rather than at the first OVS call.
func ifName(p *string) func() string {
	return func() string {
		v := *p
		switch {
		case v == "":
			return "must not be empty"
		case len(v) > 15:
			return "longer than 15 characters (IFNAMSIZ)"
		case v == "." || v == "..":
			return "not a valid interface name"
		case strings.ContainsFunc(v, func(r rune) bool { return r == '/' || r == ':' || unicode.IsSpace(r) }):
			return "must not contain '/', ':' or whitespace"
		}
		return ""
	}
}

// hostPort accepts "" (disabled) or host:port with a numeric port.
func hostPort(p *string) func() string {
	return func() string {
		if *p == "" {
			return ""
		}
		_, port, err := net.SplitHostPort(*p)
		if err != nil {
			return "not host:port"
		}
		if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return "port must be a number between 0 and 65535"
		}
		return ""
	}
}
