package clms_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/engine"
	"github.com/clusterinfra/ci/engine/enginetest"
)

// baseDoc is a valid configuration; the rejection cases each change one
// thing in it, so that the expected line numbers below refer to it.
const baseDoc = `name = "test"
fencing = "halt"

[security]
mode = "encrypt"
cluster_key_files = ["keys/cluster.key"]
node_key_file = "keys/node{node}.key"
public_key_file = "keys/node{node}.pub"

[timing]
profile = "lan-fast"
heartbeat = "90ms"

[[key_services]]
name = "demo"
critical = true

[[nodes]]
number = 1
address = "127.0.0.1:7100"
admin = "127.0.0.1:9100"
master_eligible = true
key_services = ["demo"]

[[nodes]]
number = 2
address = "127.0.0.2:7100"
master_eligible = true

[[nodes]]
number = 3
address = "127.0.0.3:7100"
public_key_file = "other/three.pub"
`

// edit applies pairs of (old, new) replacements to baseDoc, failing the
// test if an old string is not there.
func edit(t *testing.T, pairs ...string) string {
	t.Helper()
	doc := baseDoc
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(doc, pairs[i]) {
			t.Fatalf("baseDoc has no %q", pairs[i])
		}
		doc = strings.Replace(doc, pairs[i], pairs[i+1], 1)
	}
	return doc
}

func TestParseConfigBase(t *testing.T) {
	c, err := clms.ParseConfig("conf/cluster.toml", []byte(baseDoc))
	if err != nil {
		t.Fatal(err)
	}
	want := clms.LANFastTiming()
	want.Heartbeat = 90 * time.Millisecond
	if c.Name != "test" || c.Fencing != clms.FenceHalt || c.KeyServicePanic != clms.PanicHalt || c.Profile != "lan-fast" || c.Timing != want {
		t.Fatalf("parsed %+v", c)
	}
	wantSec := clms.SecurityConfig{Mode: clms.SecurityEncrypt, ClusterKeyFiles: []string{"keys/cluster.key"},
		NodeKeyFile: "keys/node{node}.key", PublicKeyFile: "keys/node{node}.pub"}
	if !reflect.DeepEqual(c.Security, wantSec) {
		t.Fatalf("security %+v", c.Security)
	}
	wantNodes := []clms.NodeEntry{
		{Num: 1, Address: "127.0.0.1:7100", Admin: "127.0.0.1:9100", MasterEligible: true, KeyServices: []string{"demo"}},
		{Num: 2, Address: "127.0.0.2:7100", MasterEligible: true},
		{Num: 3, Address: "127.0.0.3:7100", PublicKeyFile: "other/three.pub"},
	}
	if !reflect.DeepEqual(c.Nodes, wantNodes) {
		t.Fatalf("nodes %+v", c.Nodes)
	}
	if !reflect.DeepEqual(c.KeyServices, []clms.KeyServiceEntry{{Name: "demo", Critical: true}}) {
		t.Fatalf("key services %+v", c.KeyServices)
	}
	if c.MaxNodes() != 3 || !reflect.DeepEqual(c.MasterEligible(), []clms.NodeNum{1, 2}) || c.File() != "conf/cluster.toml" {
		t.Fatalf("MaxNodes %d, MasterEligible %v, File %q", c.MaxNodes(), c.MasterEligible(), c.File())
	}
}

// TestParseConfigRejects: every rejection, with its exact one-line message.
func TestParseConfigRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		want string
	}{
		// What go-toml finds while decoding, in the file's terms.
		{"unknown field", edit(t, "number = 2\n", "number = 2\nadress = \"x\"\n"),
			`cluster.toml:27:1: nodes[1].adress: unknown field (known here: number, address, admin, master_eligible, key_services, public_key_file)`},
		{"unknown table", edit(t, "[timing]", "[timings]"),
			`cluster.toml:10:2: timings: unknown table (known here: name, fencing, key_service_panic, [security], [timing], [compaction], [[key_services]], [[nodes]])`},
		{"unknown top-level key", edit(t, "fencing = \"halt\"\n", "fencing = \"halt\"\nmaster = 1\n"),
			`cluster.toml:3:1: master: unknown field (known here: name, fencing, key_service_panic, [security], [timing], [compaction], [[key_services]], [[nodes]])`},
		{"unknown field in an inline table", edit(t, "[[nodes]]\nnumber = 3\naddress = \"127.0.0.3:7100\"\npublic_key_file = \"other/three.pub\"\n",
			"[[nodes]]\nnumber = 3\naddress = \"127.0.0.3:7100\"\npublic_key_file = \"other/three.pub\"\n[[nodes]]\nnumber = 4\naddress = \"127.0.0.4:7100\"\nsub = {x = 1}\n"),
			`cluster.toml:37:1: nodes[3].sub: unknown field (known here: number, address, admin, master_eligible, key_services, public_key_file)`},
		{"wrong type", edit(t, "number = 2", `number = "two"`),
			`cluster.toml:26:10: nodes[1].number: want an integer, not a TOML string`},
		{"wrong type of array", edit(t, `key_services = ["demo"]`, `key_services = "demo"`),
			`cluster.toml:23:16: nodes[0].key_services: want an array of strings, not a TOML string`},
		{"bool as string", edit(t, "master_eligible = true\n\n[[nodes]]\nnumber = 3", "master_eligible = \"yes\"\n\n[[nodes]]\nnumber = 3"),
			`cluster.toml:28:19: nodes[1].master_eligible: want true or false, not a TOML string`},
		{"duplicate key", edit(t, "number = 2\n", "number = 2\nnumber = 4\n"),
			`cluster.toml:27:1: nodes[1].number: key number is already defined`},
		{"syntax", edit(t, `mode = "encrypt"`, `mode = `),
			`cluster.toml:5:8: unexpected character U+000A at start of value`},
		{"integer too large", edit(t, "number = 2", "number = 99999999999999999999"),
			`cluster.toml:26:10: nodes[1].number: decimal number is too large to fit in a 64-bit signed integer`},

		// Node table.
		{"duplicate node number", edit(t, "number = 3", "number = 1"),
			`cluster.toml:31:1: nodes[2].number: 1 is also nodes[0].number`},
		{"node number 0", edit(t, "number = 2", "number = 0"),
			`cluster.toml:26:1: nodes[1].number: 0 is not a node number: they start at 1`},
		{"node number missing", edit(t, "number = 2\n", ""),
			`cluster.toml:25:3: nodes[1].number: missing: every node needs a number (1 or more)`},
		{"node number negative", edit(t, "number = 2", "number = -2"),
			`cluster.toml:26:1: nodes[1].number: -2 is out of range: node numbers are 1..4294967295`},
		{"node number past 32 bits", edit(t, "number = 2", "number = 4294967296"),
			`cluster.toml:26:1: nodes[1].number: 4294967296 is out of range: node numbers are 1..4294967295`},
		{"address without port", edit(t, `"127.0.0.3:7100"`, `"127.0.0.3"`),
			`cluster.toml:32:1: nodes[2].address: "127.0.0.3" has no port (want host:port)`},
		{"address with named port", edit(t, `"127.0.0.3:7100"`, `"127.0.0.3:http"`),
			`cluster.toml:32:1: nodes[2].address: "127.0.0.3:http" has port "http": want a number 1..65535`},
		{"address with port 0", edit(t, `"127.0.0.3:7100"`, `"127.0.0.3:0"`),
			`cluster.toml:32:1: nodes[2].address: "127.0.0.3:0" has port "0": want a number 1..65535`},
		{"address with port past 65535", edit(t, `"127.0.0.3:7100"`, `"127.0.0.3:65536"`),
			`cluster.toml:32:1: nodes[2].address: "127.0.0.3:65536" has port "65536": want a number 1..65535`},
		{"address without host", edit(t, `"127.0.0.3:7100"`, `":7100"`),
			`cluster.toml:32:1: nodes[2].address: ":7100" has no host: the other nodes dial this address`},
		{"address with bare IPv6", edit(t, `"127.0.0.3:7100"`, `"::1:7100"`),
			`cluster.toml:32:1: nodes[2].address: "::1:7100" is not host:port (too many colons in address)`},
		{"address missing", edit(t, "address = \"127.0.0.2:7100\"\n", ""),
			`cluster.toml:25:3: nodes[1].address: missing: want host:port`},
		{"duplicate address", edit(t, `"127.0.0.3:7100"`, `"127.0.0.1:7100"`),
			`cluster.toml:32:1: nodes[2].address: "127.0.0.1:7100" is also nodes[0].address`},
		{"admin without port", edit(t, `admin = "127.0.0.1:9100"`, `admin = "localhost"`),
			`cluster.toml:21:1: nodes[0].admin: "localhost" has no port (want host:port) (or unix:/path/to/socket)`},
		{"admin unix without path", edit(t, `admin = "127.0.0.1:9100"`, `admin = "unix:"`),
			`cluster.toml:21:1: nodes[0].admin: "unix:" names no socket: want unix:/path/to/socket`},
		{"admin on the ICS address", edit(t, `admin = "127.0.0.1:9100"`, `admin = "127.0.0.1:7100"`),
			`cluster.toml:21:1: nodes[0].admin: "127.0.0.1:7100" is also the node's ICS address`},
		{"no master-eligible node", edit(t, "master_eligible = true", "master_eligible = false", "master_eligible = true", "master_eligible = false"),
			`cluster.toml:18:3: nodes: no node is master_eligible: at least one must be, to run the CLMS master`},
		{"empty node table", baseDoc[:strings.Index(baseDoc, "[[key_services]]")],
			`cluster.toml: nodes: the node table is empty: add a [[nodes]] table per node`},

		// Timing.
		{"unknown profile", edit(t, `"lan-fast"`, `"fast"`),
			`cluster.toml:11:1: timing.profile: unknown profile "fast": want "default" or "lan-fast"`},
		{"empty profile", edit(t, `"lan-fast"`, `""`),
			`cluster.toml:11:1: timing.profile: unknown profile "": want "default" or "lan-fast"`},
		{"bad duration", edit(t, `"90ms"`, `"90 ms"`),
			`cluster.toml:12:1: timing.heartbeat: "90 ms" is not a duration: want a Go duration such as "250ms" or "2s"`},
		{"duration without unit", edit(t, `"90ms"`, `"90"`),
			`cluster.toml:12:1: timing.heartbeat: "90" is not a duration: want a Go duration such as "250ms" or "2s"`},
		{"duration as a number", edit(t, `"90ms"`, `90`),
			`cluster.toml:12:13: timing.heartbeat: want a duration in quotes, such as "250ms" or "2s", not a TOML integer`},
		{"negative duration", edit(t, `"90ms"`, `"-90ms"`),
			`cluster.toml:12:1: timing.heartbeat: "-90ms": must be positive`},
		{"timing that fails Validate", edit(t, `"90ms"`, `"200ms"`),
			`cluster.toml:12:1: timing.heartbeat: lease_timeout (300ms) must cover at least two heartbeats (200ms)`},
		{"timing that fails Validate on a field the file does not set", edit(t, `heartbeat = "90ms"`, `lease_timeout = "200ms"`),
			`cluster.toml:12:1: timing.lease_timeout: probe_after (200ms) must come before the lease runs out (200ms)`},
		{"timing that fails Validate with the profile alone", edit(t, `heartbeat = "90ms"`, `tick = "1s"`),
			`cluster.toml:12:1: timing.tick: heartbeat (100ms) must be at least one tick (1s)`},

		// Security.
		{"mode missing", edit(t, "mode = \"encrypt\"\n", ""),
			`cluster.toml:4:2: security.mode: missing: say "encrypt", "authenticate" or "insecure" (no default: running without authentication must be a choice)`},
		{"security table missing", edit(t, "[security]\nmode = \"encrypt\"\ncluster_key_files = [\"keys/cluster.key\"]\nnode_key_file = \"keys/node{node}.key\"\npublic_key_file = \"keys/node{node}.pub\"\n", ""),
			`cluster.toml: security.mode: missing: say "encrypt", "authenticate" or "insecure" (no default: running without authentication must be a choice)`},
		{"mode unknown", edit(t, `"encrypt"`, `"tls"`),
			`cluster.toml:5:1: security.mode: "tls": want "encrypt", "authenticate" or "insecure"`},
		{"no cluster key", edit(t, `cluster_key_files = ["keys/cluster.key"]`, `cluster_key_files = []`),
			`cluster.toml:6:1: security.cluster_key_files: missing: mode "encrypt" needs the cluster key file (make one with: cikey cluster -o FILE)`},
		{"empty cluster key name", edit(t, `["keys/cluster.key"]`, `["keys/cluster.key", ""]`),
			`cluster.toml:6:42: security.cluster_key_files[1]: empty file name`},
		{"no node key", edit(t, "node_key_file = \"keys/node{node}.key\"\n", ""),
			`cluster.toml:4:2: security.node_key_file: missing: mode "encrypt" needs this node's key file (make one with: cikey node -o FILE)`},
		{"public key pattern without {node}", edit(t, `"keys/node{node}.pub"`, `"keys/node.pub"`),
			`cluster.toml:8:1: security.public_key_file: "keys/node.pub" would be every node's public key: put {node} in it (keys/node{node}.pub) or name one per node`},
		{"node without public key", edit(t, "public_key_file = \"keys/node{node}.pub\"\n", ""),
			`cluster.toml:17:3: nodes[0]: no public key file: set security.public_key_file or this node's public_key_file (mode "encrypt")`},
		{"fencing unknown", edit(t, `fencing = "halt"`, `fencing = "reboot"`),
			`cluster.toml:2:1: fencing: "reboot": want "halt" or "debug"`},
		{"key service panic unknown", edit(t, "fencing = \"halt\"\n", "fencing = \"halt\"\nkey_service_panic = \"ignore\"\n"),
			`cluster.toml:3:1: key_service_panic: "ignore": want "halt" or "degraded"`},
		{"key service panic empty", edit(t, "fencing = \"halt\"\n", "fencing = \"halt\"\nkey_service_panic = \"\"\n"),
			`cluster.toml:3:1: key_service_panic: "": want "halt" or "degraded"`},

		// Name and key services.
		{"name missing", edit(t, "name = \"test\"\n", ""),
			`cluster.toml: name: missing: the cluster's name, 1..255 bytes`},
		{"name too long", edit(t, `name = "test"`, `name = "`+strings.Repeat("n", 256)+`"`),
			`cluster.toml:1:1: name: "` + strings.Repeat("n", 256) + `" is 256 bytes; at most 255`},
		{"undeclared key service", edit(t, `key_services = ["demo"]`, `key_services = ["demo", "dmeo"]`),
			`cluster.toml:23:25: nodes[0].key_services[1]: "dmeo" is not a declared key service (add a [[key_services]] table with name = "dmeo")`},
		{"key service listed twice", edit(t, `key_services = ["demo"]`, `key_services = ["demo", "demo"]`),
			`cluster.toml:23:25: nodes[0].key_services[1]: "demo" is listed twice`},
		{"duplicate key service", edit(t, "critical = true\n", "critical = true\n\n[[key_services]]\nname = \"demo\"\n"),
			`cluster.toml:19:1: key_services[1].name: "demo" is also key_services[0].name`},
		{"key service without name", edit(t, "name = \"demo\"\n", ""),
			`cluster.toml:14:3: key_services[0].name: missing: every key service needs a name`},
		{"key service name with a space", edit(t, `name = "demo"`, `name = "de mo"`, `["demo"]`, `["de mo"]`),
			`cluster.toml:15:1: key_services[0].name: "de mo": want 1..64 bytes without spaces or control characters`},
		{"critical key service nobody may run", edit(t, `key_services = ["demo"]`, `key_services = []`),
			`cluster.toml:16:1: key_services[0].critical: critical key service "demo" has no node that may run it: the cluster could never form (list it in some node's key_services)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := clms.ParseConfig("cluster.toml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.doc)
			}
			if err.Error() != tc.want {
				t.Fatalf("error\n got: %s\nwant: %s", err, tc.want)
			}
			if !errors.Is(err, clms.ErrClusterConfig) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q: not one line wrapping ErrClusterConfig", err)
			}
		})
	}
}

// TestParseConfigInlineTables: a node table written inline gets the same
// positions and field names as [[nodes]] tables.
func TestParseConfigInlineTables(t *testing.T) {
	doc := `name = "t"
security = { mode = "insecure" }
nodes = [
  { number = 1, address = "127.0.0.1:7100", master_eligible = true },
  { number = 2, adress = "127.0.0.2:7100" },
]
`
	_, err := clms.ParseConfig("c.toml", []byte(doc))
	want := `c.toml:5:17: nodes[1].adress: unknown field (known here: number, address, admin, master_eligible, key_services, public_key_file)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	doc = strings.Replace(doc, "adress", "address", 1)
	doc = strings.Replace(doc, `number = 2`, `number = 1`, 1)
	_, err = clms.ParseConfig("c.toml", []byte(doc))
	want = `c.toml:5:5: nodes[1].number: 1 is also nodes[0].number`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

// TestParseConfigDefaults: what a minimal file leaves to defaults.
func TestParseConfigDefaults(t *testing.T) {
	c, err := clms.ParseConfig("c.toml", []byte("name = \"one\"\n[security]\nmode = \"insecure\"\n[[nodes]]\nnumber = 7\naddress = \"10.0.0.7:7100\"\nmaster_eligible = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Fencing != clms.FenceHalt || c.KeyServicePanic != clms.PanicHalt || c.Profile != "default" || c.Timing != clms.DefaultTiming() || c.MaxNodes() != 7 {
		t.Fatalf("defaults: %+v", c)
	}
}

// TestKeyServicePanicDegraded: key_service_panic = "degraded" is read,
// reaches the node's settings and is written back.
func TestKeyServicePanicDegraded(t *testing.T) {
	c, err := clms.ParseConfig("c.toml", []byte("name = \"one\"\nkey_service_panic = \"degraded\"\n[security]\nmode = \"insecure\"\n[[nodes]]\nnumber = 1\naddress = \"10.0.0.1:7100\"\nmaster_eligible = true\n"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.ForNode(1)
	if err != nil {
		t.Fatal(err)
	}
	if c.KeyServicePanic != clms.PanicDegraded || s.KeyServicePanic != clms.PanicDegraded {
		t.Fatalf("panic policy: file %q, node %q", c.KeyServicePanic, s.KeyServicePanic)
	}
	out, err := c.MarshalTOML()
	if err != nil {
		t.Fatal(err)
	}
	if c2, err := clms.ParseConfig("x.toml", out); err != nil || c2.KeyServicePanic != clms.PanicDegraded {
		t.Fatalf("round trip: %v %+v\n%s", err, c2, out)
	}
}

// TestDeployExampleRoundTrip: deploy/cluster.toml parses, says what its
// comments say, and writes back to a file that parses to the same.
func TestDeployExampleRoundTrip(t *testing.T) {
	c, err := clms.LoadConfig("../deploy/cluster.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "demo" || c.Security.Mode != clms.SecurityEncrypt || c.Profile != "default" || c.Timing != clms.DefaultTiming() || len(c.Nodes) != 3 {
		t.Fatalf("example: %+v", c)
	}
	for i, n := range c.Nodes {
		if addr := fmt.Sprintf("127.0.0.%d:7100", i+1); n.Num != clms.NodeNum(i+1) || n.Address != addr || !n.MasterEligible {
			t.Fatalf("node %d: %+v", i, n)
		}
	}
	out, err := c.MarshalTOML()
	if err != nil {
		t.Fatal(err)
	}
	c2, err := clms.ParseConfig("../deploy/cluster.toml", out)
	if err != nil {
		t.Fatalf("%v in\n%s", err, out)
	}
	if !reflect.DeepEqual(exported(c), exported(c2)) {
		t.Fatalf("round trip changed the configuration:\n%+v\n%+v", exported(c), exported(c2))
	}

	// Overrides survive the trip too, and only they are written.
	c.Timing.LeaseTimeout = 5 * time.Second
	if out, err = c.MarshalTOML(); err != nil {
		t.Fatal(err)
	}
	if c2, err = clms.ParseConfig("x.toml", out); err != nil || c2.Timing.LeaseTimeout != 5*time.Second || c2.Timing.Heartbeat != time.Second {
		t.Fatalf("override: %v %+v", err, c2)
	}
	if strings.Count(string(out), "= '") == 0 || strings.Contains(string(out), "heartbeat") {
		t.Fatalf("written timing should hold only the override:\n%s", out)
	}
}

func exported(c *clms.ClusterConfig) clms.ClusterConfig {
	return clms.ClusterConfig{Name: c.Name, Security: c.Security, Profile: c.Profile, Timing: c.Timing,
		Fencing: c.Fencing, KeyServicePanic: c.KeyServicePanic, KeyServices: c.KeyServices, Nodes: c.Nodes}
}

func TestLoadConfigErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := clms.LoadConfig(filepath.Join(dir, "none.toml"))
	if want := filepath.Join(dir, "none.toml") + ": cannot read: no such file or directory"; err == nil || err.Error() != want {
		t.Fatalf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, make([]byte, clms.MaxConfigSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := clms.LoadConfig(big); err == nil || !strings.HasSuffix(err.Error(), "not a cluster configuration") {
		t.Fatalf("huge file: %v", err)
	}
}

// keyDir writes the key files of baseDoc's nodes into dir: keys/cluster.key,
// keys/nodeN.key and .pub, node 3's public key at other/three.pub.
func keyDir(t *testing.T, dir string) map[clms.NodeNum]engine.NodeKey {
	t.Helper()
	for _, d := range []string{"keys", "other"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ck, err := engine.GenerateClusterKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := engine.WriteClusterKeyFile(filepath.Join(dir, "keys/cluster.key"), ck); err != nil {
		t.Fatal(err)
	}
	keys := map[clms.NodeNum]engine.NodeKey{}
	for n := clms.NodeNum(1); n <= 3; n++ {
		k, err := engine.GenerateNodeKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[n] = k
		if err := engine.WriteNodeKeyFile(filepath.Join(dir, fmt.Sprintf("keys/node%d.key", n)), k); err != nil {
			t.Fatal(err)
		}
		pub := filepath.Join(dir, fmt.Sprintf("keys/node%d.pub", n))
		if n == 3 {
			pub = filepath.Join(dir, "other/three.pub")
		}
		if err := engine.WritePublicKeyFile(pub, k.Public); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func writeConfig(t *testing.T, dir, doc string) *clms.ClusterConfig {
	t.Helper()
	path := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := clms.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestForNode(t *testing.T) {
	dir := t.TempDir()
	keys := keyDir(t, dir)
	c := writeConfig(t, dir, baseDoc)
	s, err := c.ForNode(2)
	if err != nil {
		t.Fatal(err)
	}
	if s.Self.Num != 2 || s.Cluster != "test" || s.MaxNodes != 3 || len(s.Nodes) != 3 || s.Timing != c.Timing || s.Fencing != clms.FenceHalt {
		t.Fatalf("settings %+v", s)
	}
	sec := s.Security
	if sec == nil || sec.Mode != engine.SecurityEncrypt || sec.NodeKey != keys[2] || len(sec.ClusterKeys) != 1 ||
		!reflect.DeepEqual(sec.PeerKeys, map[clms.NodeNum]engine.PublicKey{1: keys[1].Public, 3: keys[3].Public}) {
		t.Fatalf("security %+v", sec)
	}
	ec := s.EngineConfig()
	if ec.Node != 2 || ec.Cluster != "test" || ec.ListenAddr != "127.0.0.2:7100" || ec.Security != sec || ec.Insecure ||
		!reflect.DeepEqual(ec.Peers, map[clms.NodeNum]string{1: "127.0.0.1:7100", 3: "127.0.0.3:7100"}) ||
		ec.MaxChannels != engine.DefaultConfig().MaxChannels {
		t.Fatalf("engine config %+v", ec)
	}

	// Insecure: no keys are read, Security is nil.
	c = writeConfig(t, dir, edit(t, `mode = "encrypt"`, `mode = "insecure"`))
	if s, err = c.ForNode(1); err != nil || s.Security != nil || s.EngineConfig().Security != nil || !s.EngineConfig().Insecure {
		t.Fatalf("insecure: %+v %v", s, err)
	}
	c = writeConfig(t, dir, edit(t, `mode = "encrypt"`, `mode = "authenticate"`))
	if s, err = c.ForNode(3); err != nil || s.Security.Mode != engine.SecurityAuthenticate || s.Security.NodeKey != keys[3] {
		t.Fatalf("authenticate: %+v %v", s, err)
	}
}

// TestForNodeRejects: a node not in the table and every key file problem,
// each naming the setting that points at the file.
func TestForNodeRejects(t *testing.T) {
	dir := t.TempDir()
	keyDir(t, dir)
	k := func(name string) string { return filepath.Join(dir, name) }
	for _, tc := range []struct {
		name  string
		doc   string
		node  clms.NodeNum
		setup func(t *testing.T)
		want  string
		key   bool // wraps engine.ErrKeyFile
	}{
		{"node not in the table", baseDoc, 7, nil,
			`DIR/cluster.toml:18:3: nodes: node 7 is not in the node table (it lists 1, 2, 3)`, false},
		{"cluster key missing", edit(t, "keys/cluster.key", "keys/nope.key"), 1, nil,
			`DIR/cluster.toml:6:22: security.cluster_key_files[0]: cannot read DIR/keys/nope.key: no such file or directory`, true},
		{"second cluster key missing", edit(t, `["keys/cluster.key"]`, `["keys/cluster.key", "keys/old.key"]`), 1, nil,
			`DIR/cluster.toml:6:42: security.cluster_key_files[1]: cannot read DIR/keys/old.key: no such file or directory`, true},
		{"node key readable by others", baseDoc, 2, func(t *testing.T) { chmod(t, k("keys/node2.key"), 0o644) },
			`DIR/cluster.toml:7:1: security.node_key_file: DIR/keys/node2.key is readable by group or others (mode 0644): run chmod 600 DIR/keys/node2.key`, true},
		{"cluster key readable by group", baseDoc, 2, func(t *testing.T) { chmod(t, k("keys/cluster.key"), 0o640) },
			`DIR/cluster.toml:6:22: security.cluster_key_files[0]: DIR/keys/cluster.key is readable by group or others (mode 0640): run chmod 600 DIR/keys/cluster.key`, true},
		{"node key malformed", baseDoc, 1, func(t *testing.T) { write(t, k("keys/node1.key"), "xyz\n", 0o600) },
			`DIR/cluster.toml:7:1: security.node_key_file: DIR/keys/node1.key: key in the old untyped format: want 64 hex digits (32 bytes), got 3 characters`, true},
		{"public key missing", baseDoc, 1, func(t *testing.T) { os.Remove(k("other/three.pub")) },
			`DIR/cluster.toml:33:1: nodes[2].public_key_file: cannot read DIR/other/three.pub (node 3's public key): no such file or directory`, true},
		{"public key malformed", baseDoc, 1, func(t *testing.T) { write(t, k("keys/node2.pub"), "zz", 0o644) },
			`DIR/cluster.toml:8:1: security.public_key_file: node 2's public key: DIR/keys/node2.pub: key in the old untyped format: want 64 hex digits (32 bytes), got 2 characters`, true},
		{"node key given as the cluster key", edit(t, `["keys/cluster.key"]`, `["keys/node1.key"]`), 1, nil,
			`DIR/cluster.toml:6:22: security.cluster_key_files[0]: DIR/keys/node1.key is a node private key, not a cluster key (cikey cluster -o FILE writes one)`, true},
		{"public key given as the node key", edit(t, `"keys/node{node}.key"`, `"keys/node{node}.pub"`), 1, func(t *testing.T) { chmod(t, k("keys/node1.pub"), 0o600) },
			`DIR/cluster.toml:7:1: security.node_key_file: DIR/keys/node1.pub is a node public key, not a node private key (cikey node -o FILE writes one)`, true},
		{"private key given as a public key", edit(t, `"keys/node{node}.pub"`, `"keys/node{node}.key"`), 1, nil,
			`DIR/cluster.toml:8:1: security.public_key_file: node 1's public key: DIR/keys/node1.key is a node private key, not a node public key (cikey node prints one; cikey public NODEKEY prints it again)`, true},
		{"public key of another node", baseDoc, 1, func(t *testing.T) { copyFile(t, k("keys/node2.pub"), k("keys/node1.pub")) },
			`DIR/cluster.toml:8:1: security.public_key_file: DIR/keys/node1.pub (node 1) does not match the public half of DIR/keys/node1.key`, false},
		{"two nodes with one key", baseDoc, 1, func(t *testing.T) { copyFile(t, k("keys/node2.pub"), k("other/three.pub")) },
			`DIR/cluster.toml:33:1: nodes[2].public_key_file: DIR/other/three.pub (node 3) holds the same public key as node 2's: every node needs its own key pair`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			os.RemoveAll(filepath.Join(dir, "keys"))
			os.RemoveAll(filepath.Join(dir, "other"))
			keyDir(t, dir)
			if tc.setup != nil {
				tc.setup(t)
			}
			c := writeConfig(t, dir, tc.doc)
			_, err := c.ForNode(tc.node)
			want := strings.ReplaceAll(tc.want, "DIR", dir)
			if err == nil || err.Error() != want {
				t.Fatalf("error\n got: %v\nwant: %s", err, want)
			}
			if !errors.Is(err, clms.ErrClusterConfig) || errors.Is(err, engine.ErrKeyFile) != tc.key {
				t.Fatalf("%v: errors.Is ErrClusterConfig %v, ErrKeyFile %v", err, errors.Is(err, clms.ErrClusterConfig), errors.Is(err, engine.ErrKeyFile))
			}
		})
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, path, s string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	write(t, to, string(b), 0o644)
}

// TestEngineConfigRuns: two nodes started from one cluster.toml reach each
// other in every security mode, so the keys, peers, names and the explicit
// insecure mode ForNode maps are what the engine needs.
func TestEngineConfigRuns(t *testing.T) {
	for _, mode := range []string{"encrypt", "authenticate", "insecure"} {
		t.Run(mode, func(t *testing.T) {
			// Registered first, so it runs after the nodes' Close: the
			// package's TestMain is the core's to write (one per binary).
			t.Cleanup(func() { goleak.VerifyNone(t, enginetest.LeakOptions()...) })
			dir := t.TempDir()
			keyDir(t, dir)
			c := writeConfig(t, dir, edit(t, `mode = "encrypt"`, `mode = "`+mode+`"`))
			var nodes []*engine.Node
			for n := clms.NodeNum(1); n <= 2; n++ {
				s, err := c.ForNode(n)
				if err != nil {
					t.Fatal(err)
				}
				cfg := s.EngineConfig()
				cfg.ListenAddr = fmt.Sprintf("127.0.0.%d:0", n) // the file's fixed ports may be taken on a test machine
				cfg.EventLoops = 1
				node, err := engine.New(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if err := node.Start(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { node.Close() })
				nodes = append(nodes, node)
			}
			for i, n := range nodes {
				if err := n.SetPeer(nodes[1-i].Num(), nodes[1-i].Addr()); err != nil {
					t.Fatal(err)
				}
			}
			svc := engine.ServiceOn(engine.ChanFirstService, 0)
			if err := nodes[1].Register(engine.Service{ID: svc, Inline: true, Procs: []engine.Handler{
				func(_ context.Context, req *engine.Request, resp *engine.Response) error {
					resp.Body = append(resp.Body, byte(req.From))
					return nil
				},
			}}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got, err := nodes[0].Call(ctx, 2, engine.Method{Service: svc}, nil, nil)
			if err != nil || len(got) != 1 || got[0] != 1 {
				t.Fatalf("call over the configured security: %v %v", got, err)
			}
		})
	}
}

// FuzzParseConfig: no input makes ParseConfig panic, and whatever it
// accepts validates and writes back to a file that parses the same.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(baseDoc))
	if b, err := os.ReadFile("../deploy/cluster.toml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("name = \"t\"\nsecurity = { mode = \"insecure\" }\nnodes = [{ number = 1, address = \"a:1\", master_eligible = true }]\n"))
	f.Add([]byte("[[nodes]]\n[[nodes.x]]\n[nodes.y]\na.b.c = [[1], {d = 2}]\n"))
	f.Add([]byte("[a]\n[[a.b]]\n[a.b.c]\nx = 1\n[[a.b]]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := clms.ParseConfig("f.toml", b)
		if err != nil {
			if strings.Contains(err.Error(), "\n") || !errors.Is(err, clms.ErrClusterConfig) {
				t.Fatalf("error not one line wrapping ErrClusterConfig: %q", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted, then Validate: %v", err)
		}
		out, err := c.MarshalTOML()
		if err != nil {
			t.Fatalf("accepted, then MarshalTOML: %v", err)
		}
		c2, err := clms.ParseConfig("f.toml", out)
		if err != nil {
			t.Fatalf("written form rejected: %v\n%s", err, out)
		}
		if !reflect.DeepEqual(exported(c), exported(c2)) {
			t.Fatalf("written form differs:\n%+v\n%+v", exported(c), exported(c2))
		}
	})
}

func ExampleLoadConfig() {
	c, err := clms.LoadConfig("../deploy/cluster.toml")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.Name, c.Security.Mode, c.Profile, len(c.Nodes), "nodes, master-eligible:", c.MasterEligible())
	// With the key files in place, cinode would go on:
	//	s, err := c.ForNode(2)
	//	node, err := engine.New(s.EngineConfig())

	_, err = clms.ParseConfig("cluster.toml", []byte("name = \"demo\"\nsecurity = { mode = \"insecure\" }\n[[nodes]]\nnumber = 1\naddress = \"127.0.0.3\"\nmaster_eligible = true\n"))
	fmt.Println(err)
	// Output:
	// demo encrypt default 3 nodes, master-eligible: [1 2 3]
	// cluster.toml:5:1: nodes[0].address: "127.0.0.3" has no port (want host:port)
}

// TestCompactionConfig: the [compaction] table is read, reaches the node's
// settings, is written back, and a bad value is an error naming its key.
func TestCompactionConfig(t *testing.T) {
	const head = "name = \"one\"\n[security]\nmode = \"insecure\"\n[[nodes]]\nnumber = 1\naddress = \"10.0.0.1:7100\"\nmaster_eligible = true\n"
	c, err := clms.ParseConfig("c.toml", []byte(head+"[compaction]\nsnapshot_every = 1000\nhistory_keep = 500\napi_history = 9000\n"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.ForNode(1)
	if err != nil {
		t.Fatal(err)
	}
	want := clms.Compaction{SnapshotEvery: 1000, HistoryKeep: 500}
	if c.Compaction != want || s.Compaction != want || s.APIHistory != 9000 {
		t.Fatalf("compaction: file %+v, node %+v (api history %d)", c.Compaction, s.Compaction, s.APIHistory)
	}
	out, err := c.MarshalTOML()
	if err != nil {
		t.Fatal(err)
	}
	if c2, err := clms.ParseConfig("x.toml", out); err != nil || c2.Compaction != want || c2.APIHistory != 9000 {
		t.Fatalf("round trip: %v %+v\n%s", err, c2, out)
	}
	for doc, msg := range map[string]string{
		"[compaction]\nhistory_keep = 5\n":      "history_keep (Compaction.HistoryKeep) 5 is outside 16..32768 records",
		"[compaction]\nsnapshot_every = 2\n":    "snapshot_every (Compaction.SnapshotEvery) 2 is below 8 entries",
		"[compaction]\napi_history = -1\n":      "compaction.api_history: -1 is out of range",
		"[compaction]\nsnapshot_evry = 2000\n":  "known here: snapshot_every, log_margin, history_keep, api_history",
		"[compaction]\nlog_margin = 99999999\n": "log_margin (Compaction.LogMargin) 99999999 is above 1048576 entries",
	} {
		if _, err := clms.ParseConfig("c.toml", []byte(head+doc)); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%q: %v, want %q", doc, err, msg)
		}
	}
}
