# tpckv - replicated key-value store
#
#   make            build ./serve and ./clie (warnings are errors)
#   make run        install missing packages, build, start a local 3-replica
#                   cluster + demo
#   make test       install missing packages, build, unit tests (plain, under
#                   ASan+UBSan and under TSan), the fuzz corpus replay, each
#                   fuzz target for FUZZ_CI_SECONDS (15), the 2PC simulator,
#                   serve under valgrind, ./test.sh against serve built with
#                   ASan+UBSan and with TSan (smaller workload), ./test.sh
#                   against the release build, make powercut, then make chaos
#   make unit       unit tests only;  make e2e   ./test.sh only
#   make sim        the 2PC simulator over SIM_SEEDS seeds (tests/sim/sim.c) and
#                   the view simulator over VSIM_SEEDS (tests/sim/vsim.c)
#   make chaos      fault injection (tests/chaos/chaos.py): every scenario (kill,
#                   pause, partition, netslow, disk, clock skew, mixed) for
#                   CHAOS_SECONDS (20) each, then a linearizability check and
#                   a comparison of the replicas' stored states (stats
#                   digest); as root (network namespace, nftables, tmpfs).
#                   The replicas run with tests/chaos/clockshim.so preloaded
#   make chaos-short  the same for CHAOS_SHORT_SECONDS (8) each
#   make powercut   power cuts modelled (tests/powercut/powercut.py, tests/powercut/pcshim.c):
#                   only what was fsynced survives, holes in unsynced pages;
#                   every acknowledged write must read back, each --fsync mode
#   make bench      tpckv against memcached (bench/bench.sh: installs memcached
#                   if missing; BENCH_SECONDS, BENCH_ROUNDS...). bench/bench_wal.sh
#                   and bench/bench_repl.sh (fsyncs per set, 1 connection) run alone
#   make fuzz       libFuzzer targets (tests/fuzz/, built with clang into
#                   build/fuzz/), each run FUZZ_SECONDS; crashes are saved
#                   in tests/fuzz/crashes/<target>/. make fuzz-merge adds
#                   what a run found to tests/fuzz/corpus/ (minimized);
#                   make fuzz-replay runs every corpus and crash file once
#                   (gcc ASan+UBSan; part of make test); make fuzz-seeds
#                   writes the seed inputs again with the real encoders
#   make e2e-valgrind  serve under valgrind memcheck on a small workload
#   make deps       install the Debian packages the build and tests need
#   make install    copy serve and clie to $(PREFIX)/bin
#   make clean
#
# Options: SANITIZE=address,undefined (sanitized build in build/san;
#          SANITIZE=thread builds in build/tsan),
#          DEBUG=1 (-O0, build in build/debug), CC=clang, V=1 (show commands).

PREFIX ?= /usr/local
CC ?= cc

DEB_PKGS := gcc make pkg-config libuv1-dev libcunit1-dev libssl-dev openssl \
            python3 python3-pymemcache libmemcached-tools procps coreutils \
            clang libclang-rt-14-dev valgrind nftables iproute2 util-linux

ifdef FUZZ
  # libFuzzer's coverage hooks in every object; the targets link libFuzzer.
  BUILD := build/fuzz
  SAN_FLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
               -fno-sanitize-recover=all
else ifeq ($(SANITIZE),thread)
  BUILD := build/tsan
  SAN_FLAGS := -fsanitize=thread -fno-omit-frame-pointer
else ifdef SANITIZE
  BUILD := build/san
  SAN_FLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
else ifdef DEBUG
  BUILD := build/debug
else
  BUILD := build/rel
endif

ifdef DEBUG
  OPT := -O0 -g3
else
  OPT := -O2 -g
endif

WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes \
        -Wmissing-prototypes -Wvla -Wpointer-arith -Wcast-align
CPPFLAGS += -D_GNU_SOURCE -Ilib
CFLAGS ?=
CFLAGS += -std=c11 $(OPT) $(WARN) $(SAN_FLAGS) -MMD -MP
LDFLAGS += $(SAN_FLAGS)

# pkg-config runs only when a rule needs it (lazy =).
UV_CFLAGS = $(shell pkg-config --cflags libuv 2>/dev/null)
UV_LIBS = $(shell pkg-config --libs libuv 2>/dev/null || echo -luv)
CUNIT_LIBS = $(shell pkg-config --libs cunit 2>/dev/null || echo -lcunit)
CRYPTO_LIBS = $(shell pkg-config --libs libcrypto 2>/dev/null || echo -lcrypto)

ifeq ($(V),1)
  Q :=
else
  Q := @
endif

LIB_SRC := $(wildcard lib/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
SERVE_OBJ := $(BUILD)/server/main.o
CLIE_OBJ := $(BUILD)/client/main.o $(BUILD)/client/bench.o $(BUILD)/client/bench_conn.o \
            $(BUILD)/client/bench_report.o
UNIT_SRC := $(wildcard tests/unit/*.c)
UNIT_OBJ := $(UNIT_SRC:%.c=$(BUILD)/%.o)
UNIT_BIN := $(BUILD)/unit
SIM_OBJ := $(BUILD)/tests/sim/sim.o
SIM_BIN := $(BUILD)/sim
VSIM_OBJ := $(BUILD)/tests/sim/vsim.o
VSIM_BIN := $(BUILD)/vsim
VSIM_SEEDS ?= 300
SIM_SEEDS ?= 2000
FUZZ_TARGETS := fuzz_proto fuzz_udp fuzz_peer fuzz_wal
FUZZ_SECONDS ?= 60
# Each target's budget when make test runs them.
FUZZ_CI_SECONDS ?= 15
FUZZ_CC ?= clang
FUZZ_SUPPORT_OBJ := $(BUILD)/tests/fuzz/fuzz_util.o
FUZZ_OBJ := $(FUZZ_TARGETS:%=$(BUILD)/tests/fuzz/%.o) $(FUZZ_SUPPORT_OBJ) \
            $(BUILD)/tests/fuzz/replay_main.o $(BUILD)/tests/fuzz/gen_corpus.o
FUZZ_BINS := $(FUZZ_TARGETS:%=$(BUILD)/%)
FUZZ_REPLAY_BINS := $(FUZZ_TARGETS:%=$(BUILD)/fuzz-replay/%)

.PHONY: all run test check-layers unit unit-run unit-san unit-tsan sim e2e e2e-san e2e-tsan bench deps install clean check-deps \
        fuzz fuzz-bins fuzz-merge fuzz-replay fuzz-replay-run fuzz-seeds e2e-valgrind chaos chaos-short chaos-unit \
        powercut

all: check-deps serve clie

# Binaries live at the top so `./serve --help` works right after `make`.
# A sanitized or debug build leaves them in its build dir instead.
ifeq ($(BUILD),build/rel)
# Copied by rename, so a rebuild works while ./serve is running.
serve: $(BUILD)/serve
	$(Q)cp $< $@.tmp && mv -f $@.tmp $@
clie: $(BUILD)/clie
	$(Q)cp $< $@.tmp && mv -f $@.tmp $@
else
serve: $(BUILD)/serve
clie: $(BUILD)/clie
endif
.PHONY: serve clie

$(BUILD)/serve: $(SERVE_OBJ) $(BUILD)/libtpckv.a
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(UV_LIBS) $(CRYPTO_LIBS) -lm

$(BUILD)/clie: $(CLIE_OBJ) $(BUILD)/libtpckv.a
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ -lm

$(BUILD)/libtpckv.a: $(LIB_OBJ)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(UNIT_BIN): $(UNIT_OBJ) $(BUILD)/libtpckv.a
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(CUNIT_LIBS) $(UV_LIBS) $(CRYPTO_LIBS) -lm

$(SIM_BIN): $(SIM_OBJ) $(BUILD)/libtpckv.a
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(UV_LIBS) $(CRYPTO_LIBS) -lm

$(VSIM_BIN): $(VSIM_OBJ) $(BUILD)/libtpckv.a
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(UV_LIBS) $(CRYPTO_LIBS) -lm

# libFuzzer binaries: make FUZZ=1 CC=clang (what make fuzz runs).
$(FUZZ_BINS): $(BUILD)/%: $(BUILD)/tests/fuzz/%.o $(FUZZ_SUPPORT_OBJ) $(BUILD)/libtpckv.a
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(UV_LIBS) $(CRYPTO_LIBS) -lm

# The same targets with a main() that runs each file once, for any build.
$(FUZZ_REPLAY_BINS): $(BUILD)/fuzz-replay/%: $(BUILD)/tests/fuzz/%.o $(FUZZ_SUPPORT_OBJ) \
                     $(BUILD)/tests/fuzz/replay_main.o $(BUILD)/libtpckv.a
	@mkdir -p $(dir $@)
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(UV_LIBS) $(CRYPTO_LIBS) -lm

$(BUILD)/tests/fuzz/gen_corpus: $(BUILD)/tests/fuzz/gen_corpus.o $(BUILD)/libtpckv.a
	@echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(UV_LIBS) $(CRYPTO_LIBS) -lm

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CPPFLAGS) $(UV_CFLAGS) $(CFLAGS) -c -o $@ $<

# Fails early, with the fix, when a build dependency is missing.
check-deps:
	@pkg-config --exists libuv 2>/dev/null || \
	  { echo "libuv1-dev (and pkg-config) missing: run 'make deps' first" >&2; exit 1; }
	@pkg-config --exists libcrypto 2>/dev/null || \
	  { echo "libssl-dev (libcrypto) missing: run 'make deps' first" >&2; exit 1; }

deps:
	@missing=""; \
	for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' \
	    || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "make deps: all packages present"; \
	fi

run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)./server/demo.sh

unit-run: $(UNIT_BIN)
	@echo "== unit tests ($(BUILD))"
	$(Q)$(UNIT_BIN)

unit: check-deps
	$(Q)$(MAKE) --no-print-directory unit-run
	$(Q)$(MAKE) --no-print-directory unit-san
	$(Q)$(MAKE) --no-print-directory unit-tsan

unit-san:
	$(Q)$(MAKE) --no-print-directory SANITIZE=address,undefined unit-run

# The server suites run serve's connection threads: any data race fails.
unit-tsan:
	$(Q)TSAN_OPTIONS="halt_on_error=1 exitcode=66 $(TSAN_OPTIONS)" \
		$(MAKE) --no-print-directory SANITIZE=thread unit-run

# The deterministic 2PC simulator over many seeds (a failing seed is printed
# with the command that replays it).
sim: check-deps $(SIM_BIN) $(VSIM_BIN)
	@echo "== 2PC simulator, $(SIM_SEEDS) seeds"
	$(Q)$(SIM_BIN) --seeds $(SIM_SEEDS)
	@echo "== 2PC simulator with a bug planted (its checker must catch it)"
	$(Q)if $(SIM_BIN) --seeds 20 --inject-bug >$(BUILD)/sim-inject.out 2>&1; then \
	  echo "the simulator did not catch the planted bug" >&2; exit 1; \
	else echo "caught: $$(tail -n 1 $(BUILD)/sim-inject.out)"; fi
	@echo "== 2PC simulator with the fence ignored (a replica on an emptied directory must be caught)"
	$(Q)if $(SIM_BIN) --seeds 20 --inject-bug=no-fence >$(BUILD)/sim-inject.out 2>&1; then \
	  echo "the simulator did not catch a replica whose data is behind" >&2; exit 1; \
	else echo "caught: $$(tail -n 1 $(BUILD)/sim-inject.out)"; fi
	@echo "== views, leases and settlement (tests/sim/vsim.c), $(VSIM_SEEDS) seeds"
	$(Q)$(VSIM_BIN) --seeds $(VSIM_SEEDS)
	@echo "== the same with each bug planted (each must be caught)"
	$(Q)for b in no-lease-wait long-lease no-freeze no-settle; do \
	  if $(VSIM_BIN) --seeds 1000 --until-fail --inject-bug=$$b >$(BUILD)/vsim-inject.out 2>&1; then \
	    echo "the view simulator did not catch $$b" >&2; exit 1; \
	  else echo "caught $$b: $$(grep FAILED $(BUILD)/vsim-inject.out | head -n 1)"; fi; \
	done

e2e: all
	$(Q)./test.sh

# The end-to-end test again, against a serve built with ASan+UBSan (any
# report aborts it), on a smaller workload.
e2e-san: all
	$(Q)$(MAKE) --no-print-directory SANITIZE=address,undefined build/san/serve
	@echo "== end-to-end test against serve built with ASan+UBSan"
	$(Q)SERVE=build/san/serve E2E_KEYS=200 E2E_CRASH_ROUNDS=2 ./test.sh

# And against a serve built with ThreadSanitizer: a data race anywhere in
# the run stops that server (halt_on_error), which fails the check using it.
e2e-tsan: all
	$(Q)$(MAKE) --no-print-directory SANITIZE=thread build/tsan/serve
	@echo "== end-to-end test against serve built with ThreadSanitizer"
	$(Q)SERVE=build/tsan/serve E2E_KEYS=100 E2E_CRASH_ROUNDS=1 \
		TSAN_OPTIONS=halt_on_error=1 ./test.sh

test: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(MAKE) --no-print-directory check-layers
	$(Q)$(MAKE) --no-print-directory unit
	$(Q)$(MAKE) --no-print-directory fuzz-replay
	$(Q)$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_CI_SECONDS)
	$(Q)$(MAKE) --no-print-directory sim
	$(Q)$(MAKE) --no-print-directory e2e-valgrind
	$(Q)$(MAKE) --no-print-directory e2e-san
	$(Q)$(MAKE) --no-print-directory e2e-tsan
	$(Q)./test.sh
	$(Q)$(MAKE) --no-print-directory powercut
	$(Q)$(MAKE) --no-print-directory chaos

# The server's files keep the order lib/srv.h gives them (calls point down),
# no server file over 900 lines, no function over 120 (tests/check_layers.py).
check-layers:
	@echo "== layering and sizes (tests/check_layers.py)"
	$(Q)python3 tests/check_layers.py

# The linearizability checker fed histories whose verdict is known.
chaos-unit:
	@echo "== chaos checker unit tests"
	$(Q)python3 tests/chaos/test_chaos_check.py

# Fault injection against a 3-replica cluster (tests/chaos/chaos.py); the last
# line is "N passed, N failed". CHAOS_SECONDS: seconds of faults per scenario.
# The replicas run with tests/chaos/clockshim.so preloaded (the clock-skew nemesis
# shifts each one's wall clock through it).
CHAOS_SECONDS ?= 20
CHAOS_SHORT_SECONDS ?= 8
CLOCKSHIM := $(BUILD)/tests/chaos/clockshim.so
chaos: all chaos-unit $(CLOCKSHIM)
	@echo "== chaos: every scenario, $(CHAOS_SECONDS)s of faults each"
	$(Q)python3 tests/chaos/chaos.py --seconds $(CHAOS_SECONDS) --clock-shim $(CLOCKSHIM)

chaos-short: all chaos-unit $(CLOCKSHIM)
	@echo "== chaos (short): every scenario, $(CHAOS_SHORT_SECONDS)s of faults each"
	$(Q)python3 tests/chaos/chaos.py --seconds $(CHAOS_SHORT_SECONDS) --clock-shim $(CLOCKSHIM)

# Power cuts, modelled (tests/powercut/powercut.py): serve under tests/powercut/pcshim.so,
# which records what each fsync made durable; after a kill -9 the image a
# power cut could leave (holes included) must start by itself and hold every
# acknowledged write, under each --fsync mode. POWERCUT_ROUNDS per mode.
POWERCUT_ROUNDS ?= 2
PCSHIM := $(BUILD)/tests/powercut/pcshim.so
powercut: all $(PCSHIM)
	@echo "== power cuts: only what was fsynced survives"
	$(Q)python3 tests/powercut/powercut.py --serve ./serve --shim $(PCSHIM) --rounds $(POWERCUT_ROUNDS)

$(PCSHIM): tests/powercut/pcshim.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) $(CPPFLAGS) -std=gnu11 -O2 -g $(WARN) -fPIC -shared -o $@ $< -ldl -lpthread

# Test-only LD_PRELOAD library (tests/chaos/clockshim.c): CLOCK_REALTIME shifted by
# the milliseconds in the file $TPCKV_CLOCK_OFFSET_FILE names. Built without
# the sanitizers: it goes into a release serve.
$(CLOCKSHIM): tests/chaos/clockshim.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	$(Q)$(CC) $(CPPFLAGS) -std=c11 -O2 -g $(WARN) -fPIC -shared -o $@ $< -ldl

# ---- fuzzing (tests/fuzz/; TESTING.md says how to use it)

fuzz-bins: $(FUZZ_BINS)

# Each target for FUZZ_SECONDS, one after the other (one core each). New
# inputs go to build/fuzz/corpus/<target>/, crashes to
# tests/fuzz/crashes/<target>/.
fuzz: check-deps
	$(Q)$(MAKE) --no-print-directory FUZZ=1 CC=$(FUZZ_CC) fuzz-bins
	$(Q)FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh fuzz build/fuzz $(FUZZ_TARGETS)

# Minimizes what fuzz runs found, with the committed corpus, into
# tests/fuzz/corpus/<target>/ (libFuzzer -merge=1: only inputs that add
# coverage are kept).
fuzz-merge: check-deps
	$(Q)$(MAKE) --no-print-directory FUZZ=1 CC=$(FUZZ_CC) fuzz-bins
	$(Q)tests/fuzz/run.sh merge build/fuzz $(FUZZ_TARGETS)

# Every corpus and crash file through every target once, under gcc's
# ASan+UBSan (no clang needed): a regression fails make test.
fuzz-replay: check-deps
	$(Q)$(MAKE) --no-print-directory SANITIZE=address,undefined fuzz-replay-run

fuzz-replay-run: $(FUZZ_REPLAY_BINS)
	@echo "== fuzz corpus and crash replay ($(BUILD))"
	$(Q)tests/fuzz/run.sh replay $(BUILD)/fuzz-replay $(FUZZ_TARGETS)

# The seed inputs, written again by tests/fuzz/gen_corpus.c with the real
# encoders (seed-* files in tests/fuzz/corpus/<target>/).
fuzz-seeds: check-deps $(BUILD)/tests/fuzz/gen_corpus
	$(Q)$(BUILD)/tests/fuzz/gen_corpus tests/fuzz/corpus

# serve under valgrind memcheck on a small workload: no error and no
# definite leak (tests/e2e/e2e_valgrind.sh).
e2e-valgrind: all
	$(Q)tests/e2e/e2e_valgrind.sh

# Figures, not a test: tpckv against memcached, the issue-5 targets.
bench: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)bench/bench.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 serve clie $(DESTDIR)$(PREFIX)/bin/

clean:
	rm -rf build serve clie

-include $(LIB_OBJ:.o=.d) $(SERVE_OBJ:.o=.d) $(CLIE_OBJ:.o=.d) $(UNIT_OBJ:.o=.d) $(SIM_OBJ:.o=.d) \
         $(FUZZ_OBJ:.o=.d)
