package ovs_test

import (
	"testing"

	"github.com/nsx-ujo/nsx-ujo/tests/conformance"
)

func TestConformance(t *testing.T) { conformance.Run(t, conformance.OVS) }
