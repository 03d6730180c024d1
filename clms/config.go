package clms

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/framing"
)

// The boot configuration, cluster.toml: what every node of a cluster must
// agree on before it can join (deploy/cluster.toml is the commented example).
//
//	cfg, err := clms.LoadConfig("/etc/ci/cluster.toml")  // parsed and validated
//	node, err := cfg.ForNode(3)                           // node 3's view, keys loaded
//	n, err := engine.New(node.EngineConfig())
//
// Every error is one line naming the file, the line and column, and the
// field: `cluster.toml:14:1: nodes[2].address: "127.0.0.3" has no port`.

// ErrClusterConfig is wrapped by every error about a cluster.toml.
var ErrClusterConfig = errors.New("clms: bad cluster configuration")

// MaxConfigSize bounds the size of a cluster.toml LoadConfig reads: a node
// table of thousands of nodes fits many times over; anything bigger is a
// wrong file.
const MaxConfigSize = 1 << 20

// SecurityMode is what ICS connections prove and hide: security.mode.
type SecurityMode string

// The security modes. There is no default: running without authentication
// must be written down.
const (
	SecurityEncrypt      SecurityMode = "encrypt"      // mutual authentication and encryption of every byte
	SecurityAuthenticate SecurityMode = "authenticate" // mutual authentication; frames in clear
	SecurityInsecure     SecurityMode = "insecure"     // no authentication: anyone who reaches a port may join
)

// FencingPolicy is what a node does when it learns it was declared down or
// its membership lease runs out: CI's CLMS_NODEDOWN_HALT or _DEBUG.
type FencingPolicy string

// The fencing policies.
const (
	FenceHalt  FencingPolicy = "halt"  // the process exits with a distinct code
	FenceDebug FencingPolicy = "debug" // stays up, isolated, and says so: for post-mortems
)

// DefaultFencing is halt: a fenced node that stays up can be mistaken for a
// member by anyone who still talks to it; an exited one cannot.
const DefaultFencing = FenceHalt

// NodePlaceholder in a key file name stands for a node's number:
// "keys/node{node}.pub" is keys/node3.pub for node 3.
const NodePlaceholder = "{node}"

// ClusterConfig is a parsed and validated cluster.toml.
type ClusterConfig struct {
	Name     string // the cluster's name; connections from other clusters are refused
	Security SecurityConfig
	// Profile names the timing profile ("default" or "lan-fast") and Timing
	// is that profile with the file's overrides applied.
	Profile string
	Timing  Timing
	Fencing FencingPolicy
	// KeyServicePanic is what the cluster does when the owner of a critical
	// key service dies and no capable node is left (key_service_panic):
	// PanicHalt (the default) or PanicDegraded.
	KeyServicePanic PanicPolicy
	KeyServices     []KeyServiceEntry
	Nodes           []NodeEntry // in file order
	// Compaction is the [compaction] table: the raft log and history each
	// node keeps (zero fields: DefaultCompaction), and APIHistory the
	// transitions each node's cluster API keeps (0: its default). Each node
	// applies its own: they need not agree.
	Compaction Compaction
	APIHistory int

	file string    // name used in errors
	dir  string    // relative key file names are relative to it
	pos  *posIndex // where each key is in the file; nil for a config built in Go
}

// SecurityConfig is the [security] table. File names are as written in the
// file; relative ones are relative to the directory of cluster.toml.
type SecurityConfig struct {
	Mode SecurityMode
	// ClusterKeyFiles are the accepted cluster keys; the first is the one
	// this node dials with. Two during a key rotation.
	ClusterKeyFiles []string
	// NodeKeyFile is this node's private key; {node} becomes its number.
	NodeKeyFile string
	// PublicKeyFile is every node's public key file unless its entry names
	// one; {node} becomes the node's number.
	PublicKeyFile string
}

// NodeEntry is one row of the node table, a [[nodes]] table.
type NodeEntry struct {
	Num            NodeNum
	Address        string   // ICS host:port, where the node listens and the others dial
	Admin          string   // admin endpoint: host:port or unix:/path; "" for cinode's default
	MasterEligible bool     // may be elected CLMS master (a raft voter)
	KeyServices    []string // key services the node may run
	PublicKeyFile  string   // overrides security.public_key_file for this node
}

// KeyServiceEntry is one [[key_services]] table.
type KeyServiceEntry struct {
	Name string
	// Critical key services hold back cluster formation until they have an
	// owner.
	Critical bool
}

// ConfigError is one problem in a cluster.toml, located in the file.
type ConfigError struct {
	File   string
	Line   int    // 1-based; 0 when the problem has no place in the file (a missing table)
	Column int    // 1-based; 0 when unknown
	Field  string // the key's path, as nodes[2].address; "" for a syntax error
	Msg    string
	Err    error // a more specific cause (engine.ErrKeyFile), or nil
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
		if e.Column > 0 {
			fmt.Fprintf(&b, ":%d", e.Column)
		}
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap lets errors.Is find ErrClusterConfig and the specific cause.
func (e *ConfigError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrClusterConfig, e.Err}
	}
	return []error{ErrClusterConfig}
}

// LoadConfig reads, parses and validates a cluster.toml. Relative key file
// names in it are relative to the file's directory.
func LoadConfig(path string) (*ClusterConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &ConfigError{File: path, Msg: "cannot read: " + pathErrText(err), Err: err}
	}
	defer f.Close()
	data, err := readLimited(f, MaxConfigSize)
	if err != nil {
		return nil, &ConfigError{File: path, Msg: err.Error()}
	}
	return ParseConfig(path, data)
}

func readLimited(f *os.File, limit int) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read: %v", err)
	}
	if len(b) > limit {
		return nil, fmt.Errorf("larger than %d bytes: not a cluster configuration", limit)
	}
	return b, nil
}

// ParseConfig parses and validates a cluster.toml held in data. name is
// used in errors and its directory anchors relative key file names.
func ParseConfig(name string, data []byte) (*ClusterConfig, error) {
	var fc fileConfig
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	decErr := dec.Decode(&fc)
	pos, idxErr := indexPositions(data)
	if decErr != nil {
		return nil, decodeError(name, pos, decErr)
	}
	if idxErr != nil {
		// The decoder accepted what the indexer could not walk: report
		// that rather than guess positions.
		return nil, &ConfigError{File: name, Msg: idxErr.Error()}
	}
	c := &ClusterConfig{file: name, dir: filepath.Dir(name), pos: pos}
	var errs errorList
	fc.convert(c, &errs)
	if err := errs.first(); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// File is the name the configuration was loaded from.
func (c *ClusterConfig) File() string { return c.file }

// MaxNodes is the highest node number in the table: CI's cluster_maxnodes.
func (c *ClusterConfig) MaxNodes() NodeNum {
	var m NodeNum
	for _, n := range c.Nodes {
		m = max(m, n.Num)
	}
	return m
}

// Node returns the table's entry for n.
func (c *ClusterConfig) Node(n NodeNum) (NodeEntry, bool) {
	for _, e := range c.Nodes {
		if e.Num == n {
			return e, true
		}
	}
	return NodeEntry{}, false
}

// MasterEligible lists the master-eligible nodes, in table order.
func (c *ClusterConfig) MasterEligible() []NodeNum {
	var out []NodeNum
	for _, e := range c.Nodes {
		if e.MasterEligible {
			out = append(out, e.Num)
		}
	}
	return out
}

// Validate checks everything that does not need the key files: ForNode
// reads those, since this node's private key exists only on this node. A
// ClusterConfig built in Go (cinode --dev) is checked the same way, its
// errors naming fields without lines.
func (c *ClusterConfig) Validate() error {
	var errs errorList
	at := func(field, format string, args ...any) { errs.add(c.errAt(field, format, args...)) }

	if c.Name == "" {
		at("name", "missing: the cluster's name, 1..%d bytes", framing.MaxClusterName)
	} else if len(c.Name) > framing.MaxClusterName {
		at("name", "%q is %d bytes; at most %d", c.Name, len(c.Name), framing.MaxClusterName)
	}

	c.validateSecurity(&errs)

	if err := c.Timing.Validate(); err != nil {
		field, msg := c.timingField(err)
		at(field, "%s", msg)
	}

	comp := c.Compaction
	if err := comp.Validate(); err != nil {
		at("compaction", "%v", err)
	}
	if c.APIHistory < 0 || c.APIHistory > maxAPIHistory {
		at("compaction.api_history", "%d is outside 1..%d transitions (0: the default)", c.APIHistory, maxAPIHistory)
	}

	switch c.Fencing {
	case FenceHalt, FenceDebug:
	default:
		at("fencing", "%q: want \"halt\" or \"debug\"", c.Fencing)
	}
	switch c.KeyServicePanic {
	case PanicHalt, PanicDegraded:
	default:
		at("key_service_panic", "%q: want \"halt\" or \"degraded\"", c.KeyServicePanic)
	}

	ksIndex := map[string]int{}
	for i, ks := range c.KeyServices {
		f := fmt.Sprintf("key_services[%d].name", i)
		switch {
		case ks.Name == "":
			at(f, "missing: every key service needs a name")
		case len(ks.Name) > 64 || strings.ContainsFunc(ks.Name, func(r rune) bool { return r <= ' ' || r == 0x7f }):
			at(f, "%q: want 1..64 bytes without spaces or control characters", ks.Name)
		default:
			if j, dup := ksIndex[ks.Name]; dup {
				at(f, "%q is also key_services[%d].name", ks.Name, j)
			} else {
				ksIndex[ks.Name] = i
			}
		}
	}

	if len(c.Nodes) == 0 {
		at("nodes", "the node table is empty: add a [[nodes]] table per node")
	}
	numIndex := map[NodeNum]int{}
	addrIndex := map[string]int{}
	eligible := false
	capable := map[string]bool{}
	for i, n := range c.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		if n.Num == 0 {
			if c.pos.has(p + ".number") {
				at(p+".number", "0 is not a node number: they start at 1")
			} else {
				at(p+".number", "missing: every node needs a number (1 or more)")
			}
		} else if j, dup := numIndex[n.Num]; dup {
			at(p+".number", "%d is also nodes[%d].number", n.Num, j)
		} else {
			numIndex[n.Num] = i
		}
		if msg := checkHostPort(n.Address); msg != "" {
			at(p+".address", "%s", msg)
		} else if j, dup := addrIndex[n.Address]; dup {
			at(p+".address", "%q is also nodes[%d].address", n.Address, j)
		} else {
			addrIndex[n.Address] = i
		}
		if n.Admin != "" {
			if path, ok := strings.CutPrefix(n.Admin, "unix:"); ok {
				if path == "" {
					at(p+".admin", "%q names no socket: want unix:/path/to/socket", n.Admin)
				}
			} else if msg := checkHostPort(n.Admin); msg != "" {
				at(p+".admin", "%s (or unix:/path/to/socket)", msg)
			} else if n.Admin == n.Address {
				at(p+".admin", "%q is also the node's ICS address", n.Admin)
			}
		}
		eligible = eligible || n.MasterEligible
		seen := map[string]bool{}
		for j, ks := range n.KeyServices {
			f := fmt.Sprintf("%s.key_services[%d]", p, j)
			if _, ok := ksIndex[ks]; !ok {
				at(f, "%q is not a declared key service (add a [[key_services]] table with name = %q)", ks, ks)
			} else if seen[ks] {
				at(f, "%q is listed twice", ks)
			}
			seen[ks] = true
			capable[ks] = true
		}
	}
	if len(c.Nodes) > 0 && !eligible {
		at("nodes", "no node is master_eligible: at least one must be, to run the CLMS master")
	}
	for i, ks := range c.KeyServices {
		if ks.Critical && ks.Name != "" && !capable[ks.Name] {
			at(fmt.Sprintf("key_services[%d].critical", i), "critical key service %q has no node that may run it: the cluster could never form (list it in some node's key_services)", ks.Name)
		}
	}
	return errs.first()
}

func (c *ClusterConfig) validateSecurity(errs *errorList) {
	at := func(field, format string, args ...any) { errs.add(c.errAt(field, format, args...)) }
	s := c.Security
	switch s.Mode {
	case SecurityEncrypt, SecurityAuthenticate:
	case SecurityInsecure:
		return // key settings, if any, are not used
	case "":
		at("security.mode", `missing: say "encrypt", "authenticate" or "insecure" (no default: running without authentication must be a choice)`)
		return
	default:
		at("security.mode", `%q: want "encrypt", "authenticate" or "insecure"`, s.Mode)
		return
	}
	if len(s.ClusterKeyFiles) == 0 {
		at("security.cluster_key_files", "missing: mode %q needs the cluster key file (make one with: cikey cluster -o FILE)", s.Mode)
	}
	for i, f := range s.ClusterKeyFiles {
		if f == "" {
			at(fmt.Sprintf("security.cluster_key_files[%d]", i), "empty file name")
		}
	}
	if s.NodeKeyFile == "" {
		at("security.node_key_file", "missing: mode %q needs this node's key file (make one with: cikey node -o FILE)", s.Mode)
	}
	if s.PublicKeyFile != "" && len(c.Nodes) > 1 && !strings.Contains(s.PublicKeyFile, NodePlaceholder) {
		at("security.public_key_file", "%q would be every node's public key: put %s in it (keys/node%s.pub) or name one per node", s.PublicKeyFile, NodePlaceholder, NodePlaceholder)
	}
	for i, n := range c.Nodes {
		if n.PublicKeyFile == "" && s.PublicKeyFile == "" {
			at(fmt.Sprintf("nodes[%d]", i), "no public key file: set security.public_key_file or this node's public_key_file (mode %q)", s.Mode)
		}
	}
}

// timingField finds the field a Timing.Validate error is about: the first
// field it names that the file sets, else the first the file sets, else the
// profile.
func (c *ClusterConfig) timingField(err error) (string, string) {
	msg := strings.TrimPrefix(err.Error(), "clms: timing: ")
	best, bestAt := "timing.profile", len(msg)+1
	for _, name := range timingFieldNames {
		i := strings.Index(msg, name)
		if i >= 0 && i < bestAt && c.pos.has("timing."+name) {
			best, bestAt = "timing."+name, i
		}
	}
	if best == "timing.profile" {
		// The message names no field the file sets (a profile field the
		// overrides now contradict): point at the first override.
		for _, name := range timingFieldNames {
			if c.pos.has("timing." + name) {
				return "timing." + name, msg
			}
		}
		if !c.pos.has(best) && c.pos.has("timing") {
			best = "timing"
		}
	}
	return best, msg
}

// checkHostPort explains what is wrong with a host:port address, or
// returns "".
func checkHostPort(addr string) string {
	if addr == "" {
		return "missing: want host:port"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) && ae.Err == "missing port in address" {
			return fmt.Sprintf("%q has no port (want host:port)", addr)
		}
		if errors.As(err, &ae) {
			return fmt.Sprintf("%q is not host:port (%s)", addr, ae.Err)
		}
		return fmt.Sprintf("%q is not host:port", addr)
	}
	if host == "" {
		return fmt.Sprintf("%q has no host: the other nodes dial this address", addr)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return fmt.Sprintf("%q has port %q: want a number 1..65535", addr, port)
	}
	return ""
}

// NodeSettings is one node's view of the cluster configuration, with its
// keys loaded: what cinode needs to start that node.
type NodeSettings struct {
	Cluster  string
	Self     NodeEntry   // this node's row
	Nodes    []NodeEntry // the whole table, in file order
	MaxNodes NodeNum
	Timing   Timing
	Fencing  FencingPolicy
	// KeyServicePanic is the cluster's panic policy for critical key
	// services (Config.Keys.Panic).
	KeyServicePanic PanicPolicy
	KeyServices     []KeyServiceEntry
	Compaction      Compaction // zero fields: the defaults
	APIHistory      int        // transitions the cluster API keeps; 0: its default
	// Security is nil in insecure mode.
	Security *engine.Security
}

// ForNode returns node n's settings. It fails if n is not in the table, and
// it reads the key files: the cluster keys, n's private key (which must
// match its public key file) and every other node's public key. A key file
// that is missing, malformed, or (a secret one) readable by group or others
// is an error naming the setting that points at it.
func (c *ClusterConfig) ForNode(n NodeNum) (*NodeSettings, error) {
	self, ok := c.Node(n)
	if !ok {
		nums := make([]string, len(c.Nodes))
		for i, e := range c.Nodes {
			nums[i] = strconv.FormatUint(uint64(e.Num), 10)
		}
		return nil, c.errAt("nodes", "node %d is not in the node table (it lists %s)", n, strings.Join(nums, ", "))
	}
	s := &NodeSettings{
		Cluster:     c.Name,
		Self:        cloneEntry(self),
		MaxNodes:    c.MaxNodes(),
		Timing:      c.Timing,
		Fencing:     c.Fencing,
		KeyServices: slices.Clone(c.KeyServices),
		Compaction:  c.Compaction,
		APIHistory:  c.APIHistory,

		KeyServicePanic: c.KeyServicePanic,
	}
	for _, e := range c.Nodes {
		s.Nodes = append(s.Nodes, cloneEntry(e))
	}
	if c.Security.Mode == SecurityInsecure {
		return s, nil
	}
	sec := &engine.Security{PeerKeys: map[NodeNum]engine.PublicKey{}}
	switch c.Security.Mode {
	case SecurityEncrypt:
		sec.Mode = engine.SecurityEncrypt
	case SecurityAuthenticate:
		sec.Mode = engine.SecurityAuthenticate
	default:
		return nil, c.errAt("security.mode", "%q: want \"encrypt\", \"authenticate\" or \"insecure\"", c.Security.Mode)
	}
	for i, f := range c.Security.ClusterKeyFiles {
		field := fmt.Sprintf("security.cluster_key_files[%d]", i)
		path := c.resolve(f, n)
		if err := c.checkSecret(field, path); err != nil {
			return nil, err
		}
		k, err := engine.LoadClusterKey(path)
		if err != nil {
			return nil, c.keyErr(field, "%s", keyErrText(err))
		}
		sec.ClusterKeys = append(sec.ClusterKeys, k)
	}
	nodeKey := c.resolve(c.Security.NodeKeyFile, n)
	if err := c.checkSecret("security.node_key_file", nodeKey); err != nil {
		return nil, err
	}
	var err error
	if sec.NodeKey, err = engine.LoadNodeKey(nodeKey); err != nil {
		return nil, c.keyErr("security.node_key_file", "%s", keyErrText(err))
	}
	owner := map[engine.PublicKey]NodeNum{}
	for i, e := range c.Nodes {
		field, name := fmt.Sprintf("nodes[%d].public_key_file", i), e.PublicKeyFile
		if name == "" {
			field, name = "security.public_key_file", c.Security.PublicKeyFile
		}
		path := c.resolve(name, e.Num)
		pub, err := c.readPublic(field, path, e.Num)
		if err != nil {
			return nil, err
		}
		if other, dup := owner[pub]; dup {
			return nil, c.errAt(field, "%s (node %d) holds the same public key as node %d's: every node needs its own key pair", path, e.Num, other)
		}
		owner[pub] = e.Num
		if e.Num == n {
			if pub != sec.NodeKey.Public {
				return nil, c.errAt(field, "%s (node %d) does not match the public half of %s", path, n, c.resolve(c.Security.NodeKeyFile, n))
			}
			continue
		}
		sec.PeerKeys[e.Num] = pub
	}
	s.Security = sec
	return s, nil
}

// resolve expands {node} and anchors a relative name at the config's
// directory, so that a path in an error can be used from the shell as is.
func (c *ClusterConfig) resolve(name string, n NodeNum) string {
	name = strings.ReplaceAll(name, NodePlaceholder, strconv.FormatUint(uint64(n), 10))
	if filepath.IsAbs(name) || c.dir == "" {
		return name
	}
	return filepath.Join(c.dir, name)
}

// checkSecret says, in the configuration's terms, what is wrong with a
// cluster or node key file that is missing or that its group or others may
// read (a leaked key lets anyone on the network join); the engine's loaders
// check the rest, the key's kind included.
func (c *ClusterConfig) checkSecret(field, path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return c.keyErr(field, "cannot read %s: %s", path, pathErrText(err))
	}
	if perm := st.Mode().Perm(); st.Mode().IsRegular() && perm&0o077 != 0 {
		return c.keyErr(field, "%s is readable by group or others (mode %04o): run chmod 600 %s", path, perm, path)
	}
	return nil
}

func (c *ClusterConfig) readPublic(field, path string, n NodeNum) (engine.PublicKey, error) {
	if _, err := os.Stat(path); err != nil {
		return engine.PublicKey{}, c.keyErr(field, "cannot read %s (node %d's public key): %s", path, n, pathErrText(err))
	}
	k, err := engine.LoadPublicKey(path)
	if err != nil {
		return k, c.keyErr(field, "node %d's public key: %s", n, keyErrText(err))
	}
	return k, nil
}

// keyErrText is an engine key error without its package prefix, which the
// configuration error's own would repeat.
func keyErrText(err error) string {
	return strings.TrimPrefix(err.Error(), engine.ErrKeyFile.Error()+": ")
}

func (c *ClusterConfig) keyErr(field, format string, args ...any) error {
	e := c.errAt(field, format, args...)
	e.Err = engine.ErrKeyFile
	return e
}

// pathErrText is an *os.PathError's reason without the operation and path,
// which the caller's message already says.
func pathErrText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// EngineConfig is engine.DefaultConfig with this node's number, cluster,
// listen address, peers and security filled in: Security from the keys, or
// Insecure in insecure mode.
func (s *NodeSettings) EngineConfig() engine.Config {
	cfg := engine.DefaultConfig()
	cfg.Node = s.Self.Num
	cfg.Cluster = s.Cluster
	cfg.ListenAddr = s.Self.Address
	cfg.Peers = make(map[NodeNum]string, len(s.Nodes))
	for _, e := range s.Nodes {
		if e.Num != s.Self.Num {
			cfg.Peers[e.Num] = e.Address
		}
	}
	cfg.Security = s.Security
	cfg.Insecure = s.Security == nil // security.mode = "insecure", said on purpose in the file
	return cfg
}

func cloneEntry(e NodeEntry) NodeEntry {
	e.KeyServices = slices.Clone(e.KeyServices)
	return e
}

// errAt builds a ConfigError for field, at the key's position in the file
// or, for a missing key, at the table that should hold it.
func (c *ClusterConfig) errAt(field, format string, args ...any) *ConfigError {
	e := &ConfigError{File: c.file, Field: field, Msg: fmt.Sprintf(format, args...)}
	if e.File == "" {
		e.File = "cluster.toml"
	}
	e.Line, e.Column = c.pos.near(field)
	return e
}

// errorList keeps every problem found and reports the first in the file,
// so that fixing errors top to bottom converges. Problems without a line
// come last.
type errorList []*ConfigError

func (l *errorList) add(e *ConfigError) { *l = append(*l, e) }

func (l errorList) first() error {
	if len(l) == 0 {
		return nil
	}
	key := func(e *ConfigError) int {
		if e.Line == 0 {
			return math.MaxInt
		}
		return e.Line
	}
	sort.SliceStable(l, func(i, j int) bool { return key(l[i]) < key(l[j]) })
	return l[0]
}

// The file's shape, as go-toml decodes it in strict mode. Durations stay
// strings so that a bad one is reported with its field and position.

type fileConfig struct {
	Name        string           `toml:"name"`
	Fencing     string           `toml:"fencing,omitempty"`
	KeyPanic    string           `toml:"key_service_panic,omitempty"`
	Security    fileSecurity     `toml:"security,omitempty"`
	Timing      fileTiming       `toml:"timing,omitempty"`
	KeyServices []fileKeyService `toml:"key_services,omitempty"`
	Nodes       []fileNode       `toml:"nodes,omitempty"`
	Compaction  *fileCompaction  `toml:"compaction,omitempty"`
}

type fileCompaction struct {
	SnapshotEvery int64 `toml:"snapshot_every,omitempty"`
	LogMargin     int64 `toml:"log_margin,omitempty"`
	HistoryKeep   int64 `toml:"history_keep,omitempty"`
	APIHistory    int64 `toml:"api_history,omitempty"`
}

// maxAPIHistory bounds compaction.api_history: ~60 bytes a transition, 1 GiB.
const maxAPIHistory = 1 << 24

type fileSecurity struct {
	Mode            string   `toml:"mode,omitempty"`
	ClusterKeyFiles []string `toml:"cluster_key_files,omitempty"`
	NodeKeyFile     string   `toml:"node_key_file,omitempty"`
	PublicKeyFile   string   `toml:"public_key_file,omitempty"`
}

type fileTiming struct {
	Profile         string `toml:"profile,omitempty"`
	Tick            string `toml:"tick,omitempty"`
	Heartbeat       string `toml:"heartbeat,omitempty"`
	LeaseTimeout    string `toml:"lease_timeout,omitempty"`
	LeaseMargin     string `toml:"lease_margin,omitempty"`
	ProbeAfter      string `toml:"probe_after,omitempty"`
	ElectionTimeout string `toml:"election_timeout,omitempty"`
	RaftHeartbeat   string `toml:"raft_heartbeat,omitempty"`
	CallbackTimeout string `toml:"callback_timeout,omitempty"`
	JoinTimeout     string `toml:"join_timeout,omitempty"`
}

type fileKeyService struct {
	Name     string `toml:"name"`
	Critical bool   `toml:"critical,omitempty"`
}

type fileNode struct {
	Number         int64    `toml:"number"`
	Address        string   `toml:"address"`
	Admin          string   `toml:"admin,omitempty"`
	MasterEligible bool     `toml:"master_eligible,omitempty"`
	KeyServices    []string `toml:"key_services,omitempty"`
	PublicKeyFile  string   `toml:"public_key_file,omitempty"`
}

// knownKeys lists each table's keys, for the message about an unknown one.
var knownKeys = map[string]string{
	"":             "name, fencing, key_service_panic, [security], [timing], [compaction], [[key_services]], [[nodes]]",
	"compaction":   "snapshot_every, log_margin, history_keep, api_history",
	"security":     "mode, cluster_key_files, node_key_file, public_key_file",
	"timing":       "profile, " + strings.Join(timingFieldNames, ", "),
	"key_services": "name, critical",
	"nodes":        "number, address, admin, master_eligible, key_services, public_key_file",
}

var timingFieldNames = []string{"tick", "heartbeat", "lease_timeout", "lease_margin", "probe_after",
	"election_timeout", "raft_heartbeat", "callback_timeout", "join_timeout"}

// timingField pairs an override in the file with the Timing field it sets.
type timingField struct {
	name string
	s    *string
	d    *time.Duration
}

// fields lists ft's overrides beside t's fields, in timingFieldNames order.
func (ft *fileTiming) fields(t *Timing) []timingField {
	return []timingField{
		{"tick", &ft.Tick, &t.Tick}, {"heartbeat", &ft.Heartbeat, &t.Heartbeat},
		{"lease_timeout", &ft.LeaseTimeout, &t.LeaseTimeout}, {"lease_margin", &ft.LeaseMargin, &t.LeaseMargin},
		{"probe_after", &ft.ProbeAfter, &t.ProbeAfter}, {"election_timeout", &ft.ElectionTimeout, &t.ElectionTimeout},
		{"raft_heartbeat", &ft.RaftHeartbeat, &t.RaftHeartbeat}, {"callback_timeout", &ft.CallbackTimeout, &t.CallbackTimeout},
		{"join_timeout", &ft.JoinTimeout, &t.JoinTimeout},
	}
}

// convert turns the decoded file into c, reporting what only the file form
// can get wrong: profiles, durations, node numbers out of range.
func (fc *fileConfig) convert(c *ClusterConfig, errs *errorList) {
	at := func(field, format string, args ...any) { errs.add(c.errAt(field, format, args...)) }
	c.Name = fc.Name
	c.Fencing = FencingPolicy(fc.Fencing)
	if fc.Fencing == "" && !c.pos.has("fencing") {
		c.Fencing = DefaultFencing
	}
	c.KeyServicePanic = PanicPolicy(fc.KeyPanic)
	if fc.KeyPanic == "" && !c.pos.has("key_service_panic") {
		c.KeyServicePanic = PanicHalt // the core's default too: see KeyConfig.Panic
	}
	c.Security = SecurityConfig{
		Mode:            SecurityMode(fc.Security.Mode),
		ClusterKeyFiles: nilIfEmpty(fc.Security.ClusterKeyFiles),
		NodeKeyFile:     fc.Security.NodeKeyFile,
		PublicKeyFile:   fc.Security.PublicKeyFile,
	}

	c.Profile = fc.Timing.Profile
	if c.Profile == "" && !c.pos.has("timing.profile") {
		c.Profile = "default"
	}
	t, err := TimingProfile(c.Profile)
	if err != nil || c.Profile == "" {
		at("timing.profile", `unknown profile %q: want "default" or "lan-fast"`, c.Profile)
	}
	for _, f := range fc.Timing.fields(&t) {
		if *f.s == "" && !c.pos.has("timing."+f.name) {
			continue
		}
		d, err := time.ParseDuration(*f.s)
		switch {
		case err != nil:
			at("timing."+f.name, `%q is not a duration: want a Go duration such as "250ms" or "2s"`, *f.s)
		case d <= 0:
			at("timing."+f.name, "%q: must be positive", *f.s)
		default:
			*f.d = d
		}
	}
	c.Timing = t

	if fc.Compaction != nil {
		fcomp := fc.Compaction
		for _, f := range []struct {
			name string
			v    int64
		}{{"snapshot_every", fcomp.SnapshotEvery}, {"log_margin", fcomp.LogMargin}, {"history_keep", fcomp.HistoryKeep}, {"api_history", fcomp.APIHistory}} {
			if f.v < 0 || f.v > math.MaxInt32 {
				at("compaction."+f.name, "%d is out of range: want a count of entries (0: the default)", f.v)
			}
		}
		c.Compaction = Compaction{SnapshotEvery: uint64(max(0, fcomp.SnapshotEvery)), LogMargin: uint64(max(0, fcomp.LogMargin)),
			HistoryKeep: int(min(max(0, fcomp.HistoryKeep), math.MaxInt32))}
		c.APIHistory = int(min(max(0, fcomp.APIHistory), math.MaxInt32))
	}

	for _, ks := range fc.KeyServices {
		c.KeyServices = append(c.KeyServices, KeyServiceEntry(ks))
	}
	for i, n := range fc.Nodes {
		if n.Number < 0 || n.Number > math.MaxUint32 {
			at(fmt.Sprintf("nodes[%d].number", i), "%d is out of range: node numbers are 1..%d", n.Number, uint32(math.MaxUint32))
			n.Number = 0
		}
		c.Nodes = append(c.Nodes, NodeEntry{
			Num:            NodeNum(n.Number),
			Address:        n.Address,
			Admin:          n.Admin,
			MasterEligible: n.MasterEligible,
			KeyServices:    nilIfEmpty(n.KeyServices),
			PublicKeyFile:  n.PublicKeyFile,
		})
	}
}

// nilIfEmpty makes `key_services = []` and a missing key the same, as they
// mean the same.
func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

// MarshalTOML writes c back as a cluster.toml that parses to the same
// configuration: timing as its profile plus the fields that differ from it.
func (c *ClusterConfig) MarshalTOML() ([]byte, error) {
	fc := fileConfig{
		Name:     c.Name,
		Fencing:  string(c.Fencing),
		KeyPanic: string(c.KeyServicePanic),
		Security: fileSecurity{
			Mode:            string(c.Security.Mode),
			ClusterKeyFiles: c.Security.ClusterKeyFiles,
			NodeKeyFile:     c.Security.NodeKeyFile,
			PublicKeyFile:   c.Security.PublicKeyFile,
		},
		Timing: fileTiming{Profile: c.Profile},
	}
	if c.Compaction != (Compaction{}) || c.APIHistory != 0 {
		fc.Compaction = &fileCompaction{SnapshotEvery: int64(c.Compaction.SnapshotEvery), LogMargin: int64(c.Compaction.LogMargin),
			HistoryKeep: int64(c.Compaction.HistoryKeep), APIHistory: int64(c.APIHistory)}
	}
	base, err := TimingProfile(c.Profile)
	if err != nil {
		return nil, err
	}
	want := c.Timing
	var unused fileTiming
	wantFields := unused.fields(&want)
	for i, f := range fc.Timing.fields(&base) {
		if d := *wantFields[i].d; d != *f.d {
			*f.s = d.String()
		}
	}
	for _, ks := range c.KeyServices {
		fc.KeyServices = append(fc.KeyServices, fileKeyService(ks))
	}
	for _, n := range c.Nodes {
		fc.Nodes = append(fc.Nodes, fileNode{
			Number: int64(n.Num), Address: n.Address, Admin: n.Admin, MasterEligible: n.MasterEligible,
			KeyServices: n.KeyServices, PublicKeyFile: n.PublicKeyFile,
		})
	}
	var buf bytes.Buffer
	enc := toml.NewEncoder(&buf)
	enc.SetIndentTables(true)
	if err := enc.Encode(fc); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// decodeError turns go-toml's error into one located line, naming the
// field with array indices (nodes[1].adress) found through the position
// index, and its message in the file's terms rather than Go's.
func decodeError(name string, pos *posIndex, err error) error {
	var strict *toml.StrictMissingError
	var de *toml.DecodeError
	switch {
	case errors.As(err, &strict) && len(strict.Errors) > 0:
		de = &strict.Errors[0]
		line, col := de.Position()
		field := pos.fieldAt(line, col, de.Key())
		parent, _ := splitField(field)
		msg := "unknown field"
		if strings.Contains(de.Error(), "table") {
			msg = "unknown table"
		}
		if known, ok := knownKeys[stripIndices(parent)]; ok {
			msg += " (known here: " + known + ")"
		}
		return &ConfigError{File: name, Line: line, Column: col, Field: field, Msg: msg}
	case errors.As(err, &de):
		line, col := de.Position()
		field := pos.fieldAt(line, col, de.Key())
		msg := friendlyDecodeMsg(de.Error())
		if parent, key := splitField(field); parent == "timing" && key != "profile" && strings.HasPrefix(msg, "want a string") {
			msg = strings.Replace(msg, "want a string", `want a duration in quotes, such as "250ms" or "2s"`, 1)
		}
		return &ConfigError{File: name, Line: line, Column: col, Field: field, Msg: msg}
	}
	return &ConfigError{File: name, Msg: err.Error()}
}

var cannotDecode = regexp.MustCompile(`^cannot decode TOML (\S+) into .* of type (\S+)$`)

func friendlyDecodeMsg(msg string) string {
	msg = strings.TrimPrefix(msg, "toml: ")
	m := cannotDecode.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	want := "a table"
	switch goType := m[2]; {
	case goType == "string":
		want = "a string"
	case goType == "int64":
		want = "an integer"
	case goType == "bool":
		want = "true or false"
	case goType == "[]string":
		want = "an array of strings"
	case strings.HasPrefix(goType, "[]"):
		want = "an array of tables"
	}
	return fmt.Sprintf("want %s, not a TOML %s", want, m[1])
}

// splitField splits "nodes[1].adress" into "nodes[1]" and "adress".
func splitField(f string) (string, string) {
	if i := strings.LastIndexByte(f, '.'); i >= 0 {
		return f[:i], f[i+1:]
	}
	return "", f
}

var indices = regexp.MustCompile(`\[\d+\]`)

func stripIndices(f string) string { return indices.ReplaceAllString(f, "") }

// posIndex records where each key of a cluster.toml is, by its field path
// with array indices ("nodes[1].address"), since go-toml's decoder gives
// positions only for its own errors and the checks after decoding must
// point at a line too.
type posIndex struct {
	keys map[string]position // field -> its key, or its table's header
	at   map[position]string // a key's or value's position -> its field
}

type position struct{ line, col int }

func (p *posIndex) has(field string) bool {
	if p == nil {
		return false
	}
	_, ok := p.keys[field]
	return ok
}

// near is field's position or, for a missing key, its closest enclosing
// table's.
func (p *posIndex) near(field string) (int, int) {
	if p == nil {
		return 0, 0
	}
	for f := field; f != ""; {
		if pos, ok := p.keys[f]; ok {
			return pos.line, pos.col
		}
		if i := strings.LastIndexAny(f, ".["); i >= 0 {
			f = f[:i]
		} else {
			f = ""
		}
	}
	return 0, 0
}

// fieldAt names the key or value at line:col, falling back on the key
// go-toml reported (which has no array indices).
func (p *posIndex) fieldAt(line, col int, key toml.Key) string {
	if p != nil {
		if f, ok := p.at[position{line, col}]; ok {
			return f
		}
	}
	return strings.Join(key, ".")
}

// indexPositions walks the document with go-toml's parser. On a syntax
// error it returns what it indexed before it, and the error.
func indexPositions(data []byte) (*posIndex, error) {
	x := &indexer{
		idx:    &posIndex{keys: map[string]position{}, at: map[position]string{}},
		arrays: map[string]int{},
	}
	for i, b := range data {
		if b == '\n' {
			x.lineStarts = append(x.lineStarts, i+1)
		}
	}
	var p unstable.Parser
	p.Reset(data)
	current := ""
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			parts, pos := x.keyParts(e.Key())
			if len(parts) == 0 {
				continue
			}
			if e.Kind == unstable.Table {
				current = x.resolve("", parts)
			} else {
				arr := joinField(x.resolve("", parts[:len(parts)-1]), parts[len(parts)-1])
				i := x.arrays[arr]
				x.arrays[arr] = i + 1
				current = fmt.Sprintf("%s[%d]", arr, i)
				x.record(arr, pos)
			}
			x.record(current, pos)
		case unstable.KeyValue:
			x.keyValue(current, e)
		}
	}
	return x.idx, p.Error()
}

type indexer struct {
	idx        *posIndex
	arrays     map[string]int // array of tables -> elements seen so far
	lineStarts []int          // offsets where lines 2, 3... start
}

func (x *indexer) position(r unstable.Range) position {
	off := int(r.Offset)
	line := sort.Search(len(x.lineStarts), func(i int) bool { return x.lineStarts[i] > off })
	start := 0
	if line > 0 {
		start = x.lineStarts[line-1]
	}
	return position{line + 1, off - start + 1}
}

// record keeps the first position of a field (a later duplicate is the
// decoder's error to report).
func (x *indexer) record(field string, pos position) {
	if _, ok := x.idx.keys[field]; !ok {
		x.idx.keys[field] = pos
	}
	if _, ok := x.idx.at[pos]; !ok {
		x.idx.at[pos] = field
	}
}

func (x *indexer) keyParts(it unstable.Iterator) ([]string, position) {
	var parts []string
	var pos position
	for it.Next() {
		k := it.Node()
		if len(parts) == 0 {
			pos = x.position(k.Raw)
		}
		parts = append(parts, string(k.Data))
	}
	return parts, pos
}

// resolve joins parts onto base, entering the last element of each array
// of tables on the way, as TOML does for [nodes.sub] after [[nodes]].
func (x *indexer) resolve(base string, parts []string) string {
	path := base
	for _, part := range parts {
		path = joinField(path, part)
		if n, ok := x.arrays[path]; ok {
			path = fmt.Sprintf("%s[%d]", path, n-1)
		}
	}
	return path
}

func (x *indexer) keyValue(table string, kv *unstable.Node) {
	parts, pos := x.keyParts(kv.Key())
	field := table
	for _, p := range parts {
		field = joinField(field, p)
	}
	x.record(field, pos)
	x.value(field, kv.Value())
}

func (x *indexer) value(field string, v *unstable.Node) {
	switch v.Kind {
	case unstable.Array: // has no range of its own; its key stands for it
		i := 0
		for it := v.Children(); it.Next(); {
			el := it.Node()
			if el.Kind == unstable.Comment {
				continue
			}
			sub := fmt.Sprintf("%s[%d]", field, i)
			i++
			if el.Kind != unstable.Array {
				x.record(sub, x.position(el.Raw))
			}
			x.value(sub, el)
		}
	case unstable.InlineTable:
		x.idx.at[x.position(v.Raw)] = field
		for it := v.Children(); it.Next(); {
			if kv := it.Node(); kv.Kind == unstable.KeyValue {
				x.keyValue(field, kv)
			}
		}
	case unstable.Comment:
	default:
		if pos := x.position(v.Raw); x.idx.at[pos] == "" {
			x.idx.at[pos] = field
		}
	}
}

func joinField(base, part string) string {
	if base == "" {
		return part
	}
	return base + "." + part
}
