package ovsdb

import "github.com/ovn-org/libovsdb/model"

// The typed rows of the Open_vSwitch database nsx-ujo reads and writes.
// Only the columns it uses are declared: libovsdb checks them against the
// server's schema when it connects, and monitors only these.

// DBName is the Open vSwitch database.
const DBName = "Open_vSwitch"

// OpenvSwitch is the root row of table Open_vSwitch.
type OpenvSwitch struct {
	UUID        string            `ovsdb:"_uuid"`
	Bridges     []string          `ovsdb:"bridges"`
	NextCfg     int               `ovsdb:"next_cfg"`
	CurCfg      int               `ovsdb:"cur_cfg"`
	OtherConfig map[string]string `ovsdb:"other_config"`
}

// BridgeRow is a row of table Bridge.
type BridgeRow struct {
	UUID         string            `ovsdb:"_uuid"`
	Name         string            `ovsdb:"name"`
	DatapathType string            `ovsdb:"datapath_type"`
	Ports        []string          `ovsdb:"ports"`
	OtherConfig  map[string]string `ovsdb:"other_config"`
	FlowTables   map[int]string    `ovsdb:"flow_tables"`
}

// PortRow is a row of table Port.
type PortRow struct {
	UUID        string            `ovsdb:"_uuid"`
	Name        string            `ovsdb:"name"`
	Interfaces  []string          `ovsdb:"interfaces"`
	Tag         *int              `ovsdb:"tag"`
	ExternalIDs map[string]string `ovsdb:"external_ids"`
}

// InterfaceRow is a row of table Interface.
type InterfaceRow struct {
	UUID        string            `ovsdb:"_uuid"`
	Name        string            `ovsdb:"name"`
	Type        string            `ovsdb:"type"`
	OFPort      *int              `ovsdb:"ofport"`
	Error       *string           `ovsdb:"error"`
	MTURequest  *int              `ovsdb:"mtu_request"`
	ExternalIDs map[string]string `ovsdb:"external_ids"`
}

// FlowTableRow is a row of table Flow_Table (names OpenFlow tables).
type FlowTableRow struct {
	UUID string  `ovsdb:"_uuid"`
	Name *string `ovsdb:"name"`
}

func clientModel() (model.ClientDBModel, error) {
	return model.NewClientDBModel(DBName, map[string]model.Model{
		"Open_vSwitch": &OpenvSwitch{},
		"Bridge":       &BridgeRow{},
		"Port":         &PortRow{},
		"Interface":    &InterfaceRow{},
		"Flow_Table":   &FlowTableRow{},
	})
}
