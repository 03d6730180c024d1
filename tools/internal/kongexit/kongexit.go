// Package kongexit lets a command's run function return kong's exit code
// (after --help, or a parse error kong exits on) instead of kong calling
// os.Exit, so that tests can call run in their own process:
//
//	func run(args []string, stdout, stderr io.Writer) (code int) {
//		defer kongexit.Recover(&code)
//		parser, err := kong.New(&cli, kongexit.Option(), ...)
package kongexit

import "github.com/alecthomas/kong"

// exit is what Option's exit function panics with.
type exit int

// Option makes kong exit by panicking with the code, for Recover.
func Option() kong.Option {
	return kong.Exit(func(code int) { panic(exit(code)) })
}

// Recover, deferred in the function that parses, stores kong's exit code
// in *code; any other panic goes on.
func Recover(code *int) {
	if r := recover(); r != nil {
		e, ok := r.(exit)
		if !ok {
			panic(r)
		}
		*code = int(e)
	}
}
