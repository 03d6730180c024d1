# CI in Go. `make demo` runs a local cluster; `make test` is what CI runs.
GO        ?= go
PKGS      ?= ./...
# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# report a spurious "context deadline exceeded" at the deadline when the
# machine is loaded (go.dev/issue/75804, fixed in Go 1.27). make fuzz
# FUZZTIME=10m still works for long runs by hand.
FUZZTIME  ?= 50000x
BIN       := bin

.PHONY: all build test test-long vet lint fuzz-short fuzz bench bench-report demo generate check-generate clean

all: build

build:
	$(GO) build -o $(BIN)/ ./tools/...

vet:
	$(GO) vet $(PKGS)

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# Generated code must match its sources: regenerate and fail if that changed
# anything (new files included), comparing the tree before and after so that
# it also works in a working copy with other uncommitted edits.
check-generate:
	@before=$$( (git status --porcelain; git diff) | sha256sum ); \
	$(GO) generate $(PKGS) || exit 1; \
	after=$$( (git status --porcelain; git diff) | sha256sum ); \
	if [ "$$before" != "$$after" ]; then \
	  echo "go generate changed files: commit the regenerated code"; git status --short; exit 1; fi

# The whole suite under the race detector, then the allocation tests
# without it (the race detector allocates, so they skip under -race), plus
# each fuzz target briefly. The engine's suite runs again with gnet's event
# loops, the read mode that is not the default (engine.ReadMode).
test: lint check-generate
	$(GO) test -race -count=1 -timeout 10m $(PKGS)
	CI_ENGINE_READ_MODE=loops $(GO) test -race -count=1 -timeout 10m ./engine/
	$(GO) test -count=1 -run 'Alloc' $(PKGS)
	CI_ENGINE_READ_MODE=loops $(GO) test -count=1 -run 'Alloc' ./engine/
	$(MAKE) fuzz-short

# The CLMS randomized fault run over many seeds (make test runs a handful).
CLMS_SEEDS ?= 300
test-long:
	CLMS_SEEDS=$(CLMS_SEEDS) $(GO) test -count=1 -timeout 60m -run '^TestRandomized$$' ./clms/

# Every fuzz target for FUZZTIME each (a Go fuzz run takes one target at a time).
fuzz-short:
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# A longer fuzz run for humans: make fuzz FUZZTIME=10m
fuzz: fuzz-short

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

# BENCHMARKS.md from one cibench all run (about 15 minutes; wants a quiet
# machine). The JSON stays in BENCH_RESULT for the record. To check the
# pipeline in two minutes: make bench-report BENCH_FLAGS=--quick (and do not
# commit the BENCHMARKS.md it writes).
BENCH_RESULT ?= bench/results/latest.json
BENCH_FLAGS  ?=
bench-report: build
	@mkdir -p $(dir $(BENCH_RESULT))
	$(BIN)/cibench --quiet all $(BENCH_FLAGS) --out=$(BENCH_RESULT)
	$(BIN)/benchreport --in=$(BENCH_RESULT) --out=BENCHMARKS.md --plots=docs/bench

demo: build
	$(BIN)/cibench demo

generate:
	$(GO) generate $(PKGS)

clean:
	rm -rf $(BIN)
