package node

import "github.com/clusterinfra/ci/clms"

// Status is what an admin endpoint reports about a node (JSON-ready).
type Status struct {
	Cluster        string       `json:"cluster"`
	Node           clms.NodeNum `json:"node"`
	Address        string       `json:"address"`
	Incarnation    uint64       `json:"incarnation"`
	MasterEligible bool         `json:"master_eligible"`
	// Master is the node this one believes is the CLMS master (0: none
	// known); IsMaster says this node acts as master now.
	Master   clms.NodeNum `json:"master"`
	IsMaster bool         `json:"is_master"`
	Joined   bool         `json:"joined"` // this incarnation's COMINGUP is committed
	Left     bool         `json:"left"`   // its planned SHUTDOWN is committed
	// LeaseValid: it may act as a member now (a member with a valid lease).
	LeaseValid bool `json:"lease_valid"`
	// Formed: every critical key service has had a ready owner since this
	// incarnation joined. Ready = LeaseValid && Formed (readyz).
	Formed      bool   `json:"formed"`
	Ready       bool   `json:"ready"`
	Fenced      bool   `json:"fenced"`
	FenceReason string `json:"fence_reason,omitempty"`
	Fencing     string `json:"fencing"` // "halt" or "debug"
	RaftTerm    uint64 `json:"raft_term,omitempty"`
	// LastTransition is the id of the last transition this node applied.
	LastTransition clms.TransitionID `json:"last_transition"`
	Members        []MemberStatus    `json:"members"`
	// KeyServices is every key service's committed state as this node
	// applied it; Degraded names critical ones the cluster runs without
	// (key_service_panic = "degraded").
	KeyServices []KeyServiceStatus `json:"key_services,omitempty"`
	Degraded    []string           `json:"degraded,omitempty"`
}

// KeyServiceStatus is one key service in Status.
type KeyServiceStatus struct {
	Name     string       `json:"name"`
	Owner    clms.NodeNum `json:"owner"` // 0: unowned
	Epoch    uint64       `json:"epoch"`
	Phase    string       `json:"phase"` // unowned, failover, ready, handover
	Critical bool         `json:"critical"`
	Acting   bool         `json:"acting"` // this node acts as its owner now
}

// MemberStatus is one row of the membership as this node applied it.
type MemberStatus struct {
	Node           clms.NodeNum      `json:"node"`
	State          string            `json:"state"`
	Incarnation    uint64            `json:"incarnation,omitempty"`
	Address        string            `json:"address"`
	MasterEligible bool              `json:"master_eligible"`
	LastChange     clms.TransitionID `json:"last_change,omitempty"`
	Info           clms.NodeInfo     `json:"info"`
}

// Status returns the node's current status.
func (n *Node) Status() Status {
	rs := n.runner.Status()
	s := Status{
		Cluster: n.settings.Cluster, Node: n.cfg.Node, Address: n.eng.Addr(), Incarnation: rs.Incarnation,
		MasterEligible: n.settings.Self.MasterEligible, Master: rs.Master, IsMaster: rs.IsMaster,
		Joined: rs.Joined, Left: rs.Left, LeaseValid: rs.LeaseValid, Fenced: rs.Fenced, FenceReason: rs.FenceReason,
		Fencing: string(rs.Fencing), RaftTerm: rs.RaftTerm, LastTransition: rs.Last,
		Formed: rs.Formed, Ready: rs.Ready, Degraded: rs.Stats.KeyDegraded,
	}
	for _, k := range rs.Stats.KeyServices {
		s.KeyServices = append(s.KeyServices, KeyServiceStatus{Name: k.Name, Owner: k.Owner, Epoch: k.Epoch,
			Phase: k.Phase.String(), Critical: k.Critical, Acting: k.Acting})
	}
	entries := map[clms.NodeNum]clms.NodeEntry{}
	for _, e := range n.settings.Nodes {
		entries[e.Num] = e
	}
	members, _ := n.backend.Membership()
	for _, m := range members {
		e := entries[m.Node]
		s.Members = append(s.Members, MemberStatus{Node: m.Node, State: m.State.String(), Incarnation: m.Incarnation,
			Address: e.Address, MasterEligible: e.MasterEligible, LastChange: m.LastChange, Info: m.Info})
	}
	return s
}
