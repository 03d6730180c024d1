package wiretest

import (
	"context"

	"github.com/clusterinfra/ci/engine"
)

// Named types of every underlying kind icsgen accepts.
type (
	Level int8
	Name  string
	Blob  []byte
	Tags  []string
	Index map[uint16]Name
	Alias = Point // an alias marshals as its target
)

// Point is a small fixed-size struct.
type Point struct {
	X, Y int32
}

// Group nests slices and maps of structs and of named types.
type Group struct {
	Name    Name
	Members []Point
	Attrs   map[string]Point
	Sub     []Tags
}

// All has a field of every kind.
type All struct {
	B     bool
	I8    int8
	U8    uint8
	I16   int16
	U16   uint16
	I32   int32
	U32   uint32
	I64   int64
	U64   uint64
	I     int
	U     uint
	F32   float32
	F64   float64
	S     string
	Bs    []byte
	R     rune
	By    byte
	Lvl   Level
	Nm    Name
	Bl    Blob
	Tg    Tags
	Ix    Index
	Pts   []Point
	Grid  [][]int16
	ByKey map[int64][]Point
	Flags map[bool]string
	Group Group
}

//go:generate go run ../../../icsgen -i wire.go -t Wire -o wire_ics.go --check-decoders

// Wire is served inline, with procedure numbers that leave gaps, no
// declared errors, and handles min=0.
//
//icsgen:service name=wire channel=9 subservice=5 version=7 min=0 max=4 inline=true
type Wire interface {
	// Echo returns a unchanged.
	//
	//icsgen:proc 0
	Echo(ctx context.Context, a All) (All, error)

	// Many takes and returns several values, and the caller's node.
	//
	//icsgen:proc 2
	Many(ctx context.Context, from engine.NodeNum, b bool, n int, s string, m map[string][]byte, groups []Group) (Level, Name, Tags, error)

	//icsgen:proc 3
	Nothing(ctx context.Context) error

	//icsgen:proc 7
	//icsgen:oneway
	Notify(ctx context.Context, p Alias)
}
