# Turnpike: the two set-up commands are `make run` and `make test`.
BUILD        ?= build
TEST_BUILD   ?= build-test
BENCH_BUILD  ?= build-release
FUZZ_BUILD   ?= build-fuzz
TSAN_BUILD   ?= build-tsan
FUZZ_SECONDS ?= 60
LISTEN       ?= 127.0.0.1:8420
DATA         ?= ./var

.PHONY: all deps build run test bench fuzz clean

all: build

deps:
	@./scripts/deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) --buildtype=release -Db_ndebug=if-release >/dev/null

build: deps $(BUILD)/build.ninja
	@ninja -C $(BUILD) turnpike

run: build
	./$(BUILD)/turnpike serve --listen $(LISTEN) --data $(DATA)

$(TEST_BUILD)/build.ninja:
	meson setup $(TEST_BUILD) --buildtype=debugoptimized -Db_sanitize=address,undefined -Db_lundef=false >/dev/null

test: deps $(TEST_BUILD)/build.ninja
	ninja -C $(TEST_BUILD)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  meson test -C $(TEST_BUILD) --print-errorlogs --num-processes 2
	./tests/tsan.sh $(TSAN_BUILD)

$(BENCH_BUILD)/build.ninja:
	meson setup $(BENCH_BUILD) --buildtype=release -Db_ndebug=true >/dev/null

bench: deps $(BENCH_BUILD)/build.ninja
	@ninja -C $(BENCH_BUILD) turnpike
	./bench/run.sh $(BENCH_BUILD)
	./bench/orchestration.sh $(BENCH_BUILD)

$(FUZZ_BUILD)/build.ninja:
	CC=clang meson setup $(FUZZ_BUILD) -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false >/dev/null

fuzz: deps $(FUZZ_BUILD)/build.ninja
	ninja -C $(FUZZ_BUILD)
	@for f in $$(find $(FUZZ_BUILD)/tests/fuzz -maxdepth 1 -name 'fuzz_*' -type f -executable); do \
	  n=$$(basename $$f | sed 's/^fuzz_//'); mkdir -p fuzz-out/$$n; \
	  echo "== $$n ($(FUZZ_SECONDS)s)"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 fuzz-out/$$n tests/fuzz/corpus/$$n 2>&1 | grep -E 'stat::|ERROR|SUMMARY' ; \
	done

clean:
	rm -rf $(BUILD) $(TEST_BUILD) $(BENCH_BUILD) $(FUZZ_BUILD) $(TSAN_BUILD)
