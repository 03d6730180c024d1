package minimal

import (
	"context"
	"errors"

	eng "github.com/clusterinfra/ci/engine"
)

// ErrNoSuchJob is returned by Status for an unknown job.
var ErrNoSuchJob = errors.New("minimal: no such job")

// State is a job's state: a named basic type.
type State uint8

// Job is a nested struct with a slice.
type Job struct {
	ID    uint64
	Args  []string
	State State
}

// Jobs runs jobs on a node. The engine package is imported under another
// name, and the channel is CLMS's.
//
//icsgen:service name=jobs channel=6 subservice=4 version=3 max=2 min=0
//icsgen:errors ErrNoSuchJob
type Jobs interface {
	// Start starts a job.
	//
	//icsgen:proc 1
	Start(ctx context.Context, from eng.NodeNum, job Job) (id uint64, err error)

	// Status reports a job's state. Its parameter is named like the client's
	// receiver and its second like a type: both are renamed in the stub.
	//
	//icsgen:proc 2
	Status(ctx context.Context, c uint64, Job string) (State, error)

	// Cancel asks for a job to end, not waiting.
	//
	//icsgen:proc 4
	//icsgen:oneway
	Cancel(ctx context.Context, ids []uint64)
}
