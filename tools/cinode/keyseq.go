package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/keyseq"
)

// KeyseqState is GET /v1/keyseq: keyseq as this node sees it.
type KeyseqState struct {
	Schema string `json:"schema"`
	Owner  uint32 `json:"owner"` // the ready owner this node applied; 0: none
	Epoch  uint64 `json:"epoch"`
	Ready  bool   `json:"ready"`
	// Seen is the highest id this node saw reserved or handed out.
	Seen    uint64 `json:"seen"`
	Serving bool   `json:"serving"` // this node owns keyseq and serves
	// Assembled is what this node's last takeover continued from: the
	// highest id each survivor reported (pulled), the largest (base), and
	// when the pull finished (at, host clock).
	Assembled *KeyseqAssembled `json:"assembled,omitempty"`
}

// KeyseqAssembled is keyseq.Assembled in JSON.
type KeyseqAssembled struct {
	Epoch    uint64            `json:"epoch"`
	Handover bool              `json:"handover"`
	Pulled   map[string]uint64 `json:"pulled"` // node number -> highest id it saw
	Base     uint64            `json:"base"`   // the first id served is base+1
	At       time.Time         `json:"at"`
}

// KeyseqRange is the reply of POST /v1/keyseq/next: ids first..last,
// handed out by the owner in epoch.
type KeyseqRange struct {
	Schema string `json:"schema"`
	Epoch  uint64 `json:"epoch"`
	First  uint64 `json:"first"`
	Count  uint64 `json:"count"`
	Last   uint64 `json:"last"`
}

// keyseqRoutes are the admin endpoint's keyseq routes: its state, and ids
// for a script (or cibench demo) that is not a cluster member and so cannot
// call keyseq over ICS.
func keyseqRoutes(seq *keyseq.Service, timeout time.Duration) map[string]http.HandlerFunc {
	reply := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	fail := func(w http.ResponseWriter, code int, short string, err error) {
		reply(w, code, admin.Error{Schema: admin.SchemaVersion, Error: err.Error(), Code: short})
	}
	return map[string]http.HandlerFunc{
		"GET /v1/keyseq": func(w http.ResponseWriter, _ *http.Request) {
			st := seq.Stats()
			owner, epoch, ready := seq.Owner()
			out := KeyseqState{Schema: admin.SchemaVersion, Owner: uint32(owner), Epoch: epoch, Ready: ready,
				Seen: st.Seen, Serving: st.Serving}
			if a := st.Assembled; a != nil {
				out.Assembled = &KeyseqAssembled{Epoch: a.Epoch, Handover: a.Handover, Base: a.Base, At: a.At.UTC(),
					Pulled: make(map[string]uint64, len(a.Pulled))}
				for n, v := range a.Pulled {
					out.Assembled.Pulled[strconv.FormatUint(uint64(n), 10)] = v
				}
			}
			reply(w, http.StatusOK, out)
		},
		// POST: it hands ids out, so a prefetch must not take any.
		"POST /v1/keyseq/next": func(w http.ResponseWriter, r *http.Request) {
			count := uint64(1)
			if v := r.URL.Query().Get("count"); v != "" {
				c, err := strconv.ParseUint(v, 10, 64)
				if err != nil || c == 0 || c > keyseq.MaxCount {
					fail(w, http.StatusBadRequest, "bad_request", keyseq.ErrBadRequest)
					return
				}
				count = c
			}
			ctx, cancel := context.WithTimeout(r.Context(), timeout)
			defer cancel()
			rg, err := seq.Next(ctx, count)
			if err != nil {
				fail(w, http.StatusServiceUnavailable, "timed_out", err)
				return
			}
			reply(w, http.StatusOK, KeyseqRange{Schema: admin.SchemaVersion, Epoch: rg.Epoch, First: rg.First, Count: rg.Count, Last: rg.Last()})
		},
	}
}
