package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/clusterinfra/ci/clms"
	"github.com/clusterinfra/ci/services/admin"
	"github.com/clusterinfra/ci/services/admin/admintest"
)

// adminNode serves src's admin endpoint on a free loopback port until the
// test ends.
func adminNode(t *testing.T, src admin.Source) *admin.Client {
	t.Helper()
	srv, err := admin.New(admin.Config{Addr: "127.0.0.1:0"}, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	cl := admin.NewClient(srv.Addr(), "")
	t.Cleanup(func() {
		cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			t.Error(err)
		}
	})
	return cl
}

// TestFollowViews: followViews sends each node's view before a change, then
// the view a change makes, pushed by the long poll; and against a node
// without the long poll (an older cinode) it says so with errNoLongPoll.
func TestFollowViews(t *testing.T) {
	src, err := admintest.New("test", 1, []clms.NodeNum{1, 2})
	if err != nil {
		t.Fatal(err)
	}
	src.SetMaster(1)
	v := &adminView{cl: map[int]*admin.Client{1: adminNode(t, src)}, table: []int{1}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	views, stop, err := v.followViews(ctx, []int{1})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if e := <-views; e.err != nil || e.st == nil || e.st.Master != 1 {
		t.Fatalf("first view: %+v", e)
	}
	src.SetMaster(2)
	if e := <-views; e.err != nil || e.st == nil || e.st.Master != 2 || e.node != 1 {
		t.Fatalf("after the change: %+v", e)
	}
	stop()

	old := &adminView{cl: map[int]*admin.Client{1: adminNode(t, struct{ admin.Source }{src})}, table: []int{1}}
	if _, _, err := old.followViews(ctx, []int{1}); !errors.Is(err, errNoLongPoll) {
		t.Fatalf("no long poll: %v", err)
	}
}
