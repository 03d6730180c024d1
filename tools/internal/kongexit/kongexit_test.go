package kongexit

import (
	"io"
	"testing"

	"github.com/alecthomas/kong"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func parse(args ...string) (code int) {
	code = -1
	defer Recover(&code)
	var cli struct {
		N int `help:"a number"`
	}
	p, err := kong.New(&cli, Option(), kong.Writers(io.Discard, io.Discard))
	if err != nil {
		panic(err)
	}
	if _, err := p.Parse(args); err != nil {
		return 2
	}
	return 0
}

func TestExitCodeReturned(t *testing.T) {
	if c := parse("--help"); c != 0 {
		t.Fatalf("--help: %d", c)
	}
	if c := parse("--n", "x"); c != 2 {
		t.Fatalf("bad flag: %d", c)
	}
	if c := parse("--n", "3"); c != 0 {
		t.Fatalf("good flag: %d", c)
	}
}

func TestOtherPanicsGoOn(t *testing.T) {
	defer func() {
		if r := recover(); r != "boom" {
			t.Fatalf("recovered %v", r)
		}
	}()
	var code int
	func() {
		defer Recover(&code)
		panic("boom")
	}()
	t.Fatal("the panic was swallowed")
}
