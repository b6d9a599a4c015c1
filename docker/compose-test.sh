#!/usr/bin/env bash
# docker/compose-test.sh: build the ckd image and run docker-compose.yml for real, on an engine
# that touches nothing but loopback. `make compose-test` runs it; tests/test_docker.py too.
#
#   docker/compose-test.sh [all|tools|engine|build|up|check]   (default: all = engine, build, up, check)
#
# 0. tools (not part of all): as root with apt, install what is missing of docker.io, docker-compose
#    and debootstrap, with a policy-rc.d that keeps the package from starting a daemon; elsewhere
#    say why not and exit 0 (the tests then skip, saying so).
# 1. engine: use the engine `docker info` reaches; where none answers, start dockerd with no
#    bridge, no iptables, no forwarding or masquerading, its own data root, exec root, pid file
#    and socket, and stop it (by its PID) on exit.
# 2. build: the base image from Debian bookworm with python3 (debootstrap --variant=minbase, the
#    rootfs tarball cached), then docker/Dockerfile on it, built with the host's network and the
#    host's CA bundle. torch comes from PyTorch's CPU wheels (the Dockerfile's default) where
#    download.pytorch.org answers, else from PyPI (CKD_TORCH_INDEX_URL chooses).
# 3. up: docker-compose.yml with docker/compose.hostnet.yml (every container in the host's network
#    namespace, on 127.0.0.1 only) and a small configuration, results into $CKD_RESULTS.
# 4. check: results.json says ok, every peer was evaluated, accuracies plausible.
#
# Needs root, dockerd (Debian's docker.io), docker-compose (v1) or `docker compose`, and, for the
# base image, debootstrap. Settings (environment):
#   CKD_DOCKER_WORK   exec root, socket, pid file and logs of a started engine (/tmp/ckd-docker)
#   CKD_DOCKER_CACHE  the engine's data root and the base rootfs tarball (/var/cache/ckd-docker)
#   CKD_BASE_IMAGE    a base image to build on instead of the debootstrapped one
#   CKD_IMAGE         the image's tag (ckd:test)
#   CKD_TORCH_INDEX_URL  where torch comes from (default: the CPU wheels, else PyPI)
#   CKD_RESULTS       the coordinator writes results.json into a directory in it (runs/compose-test)
#   CKD_ROUNDS, CKD_TRAIN_PER_PEER, CKD_TEST_LIMIT, CKD_EPOCHS, CKD_RETRAIN_EPOCHS, CKD_MAX_PER_STUDENT,
#   CKD_LEARNERS: the run's size (defaults: 1 round, 1000 training images per peer, 3 epochs, 1 retrain
#   epoch, at most 20 instances taught per teacher and student, 1000 test images)
#   CKD_COMPOSE_FILES extra compose files (-f) after the host-network override, space separated
#   CKD_MIN_ACCURACY  lowest median accuracy after that passes the check (0.5)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${CKD_DOCKER_WORK:-/tmp/ckd-docker}
CACHE=${CKD_DOCKER_CACHE:-/var/cache/ckd-docker}
BASE_TAG=ckd-base:bookworm
export CKD_IMAGE=${CKD_IMAGE:-ckd:test}
export CKD_RESULTS=${CKD_RESULTS:-$ROOT/runs/compose-test}
export CKD_ROUNDS=${CKD_ROUNDS:-1}
export CKD_TRAIN_PER_PEER=${CKD_TRAIN_PER_PEER:-1000}
export CKD_TEST_LIMIT=${CKD_TEST_LIMIT:-1000}
export CKD_EPOCHS=${CKD_EPOCHS:-3}
export CKD_RETRAIN_EPOCHS=${CKD_RETRAIN_EPOCHS:-1}
# with 300 images a peer, what 9 teachers send outweighs its own data and accuracy drops; a cap keeps it small
export CKD_MAX_PER_STUDENT=${CKD_MAX_PER_STUDENT:-20}
export CKD_THREADS=${CKD_THREADS:-1}
export CKD_FMNIST_DIR=${CKD_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-ckdtest}
MIN_ACCURACY=${CKD_MIN_ACCURACY:-0.5}
STEP=${1:-all}
PORTS="50051 50100 50101 50102 50103 50104 50105 50106 50107 50108 50109"

say() { printf 'compose-test: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }
now() { date +%s; }

tools() {
    local missing=() tool
    for tool in dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap; do
        command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool#*:}")
    done
    if [ ${#missing[@]} = 0 ]; then say "docker.io, docker-compose and debootstrap are installed"; return 0; fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "not installing ${missing[*]}: needs root and apt-get; the docker tests will skip"
        return 0
    fi
    # Debian's docker.io starts a daemon with default networking on install unless policy-rc.d says no
    local policy=/usr/sbin/policy-rc.d made=""
    if ! { [ -x "$policy" ] && grep -q 'exit 101' "$policy"; }; then
        [ ! -e "$policy" ] || mv "$policy" "$policy.ckd-saved"
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made=1
    fi
    say "installing ${missing[*]} with apt"
    local rc=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
        >"${TMPDIR:-/tmp}/ckd-docker-apt.log" 2>&1 || rc=$?
    if [ -n "$made" ]; then
        rm -f "$policy"
        [ ! -e "$policy.ckd-saved" ] || mv "$policy.ckd-saved" "$policy"
    fi
    [ "$rc" = 0 ] || die "apt-get install ${missing[*]} failed: $(tail -n 3 "${TMPDIR:-/tmp}/ckd-docker-apt.log")"
}

if [ "$STEP" != tools ] && [ "$STEP" != check ]; then
    [ "$(id -u)" = 0 ] || die "needs root (it may start dockerd and debootstrap a base image)"
fi

compose() {
    local files=(-f "$ROOT/docker-compose.yml" -f "$ROOT/docker/compose.hostnet.yml")
    local extra
    for extra in ${CKD_COMPOSE_FILES:-}; do files+=(-f "$extra"); done
    if command -v docker-compose >/dev/null 2>&1; then
        docker-compose --project-directory "$ROOT" "${files[@]}" "$@"
    elif docker compose version >/dev/null 2>&1; then
        docker compose --project-directory "$ROOT" "${files[@]}" "$@"
    else
        die "neither docker-compose nor \`docker compose\` is installed (apt-get install docker-compose)"
    fi
}

STARTED_PID=""
stop_engine() {
    [ -n "$STARTED_PID" ] || return 0
    say "stopping the dockerd it started (PID $STARTED_PID)"
    kill -TERM "$STARTED_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$STARTED_PID" 2>/dev/null || { STARTED_PID=""; return 0; }
        sleep 0.5
    done
    say "dockerd $STARTED_PID did not stop in 30 s; killing it"
    kill -KILL "$STARTED_PID" 2>/dev/null || true
    STARTED_PID=""
}

engine() {
    if docker info >/dev/null 2>&1; then
        say "using the running engine ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))"
        return 0
    fi
    export DOCKER_HOST="unix://$WORK/docker.sock"
    if docker info >/dev/null 2>&1; then
        say "using the engine on $DOCKER_HOST"
        return 0
    fi
    command -v dockerd >/dev/null 2>&1 || die "no Docker engine answers and dockerd is not installed \
(as root: keep /usr/sbin/policy-rc.d exiting 101, then apt-get install docker.io docker-compose debootstrap)"
    mkdir -p "$WORK" "$CACHE/engine"
    if [ -f "$WORK/dockerd.pid" ] && kill -0 "$(cat "$WORK/dockerd.pid")" 2>/dev/null; then
        die "a dockerd (PID $(cat "$WORK/dockerd.pid")) holds $WORK but does not answer on $DOCKER_HOST"
    fi
    rm -f "$WORK/dockerd.pid" "$WORK/docker.sock"
    say "starting dockerd on $DOCKER_HOST (no bridge, no iptables; log $WORK/dockerd.log)"
    dockerd --iptables=false --ip6tables=false --bridge=none --ip-forward=false --ip-masq=false \
        --data-root "$CACHE/engine" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
        -H "$DOCKER_HOST" >"$WORK/dockerd.log" 2>&1 &
    STARTED_PID=$!
    for _ in $(seq 1 120); do
        if docker info >/dev/null 2>&1; then return 0; fi
        kill -0 "$STARTED_PID" 2>/dev/null || { STARTED_PID=""; die "dockerd exited: $(tail -n 3 "$WORK/dockerd.log")"; }
        sleep 0.5
    done
    die "dockerd did not answer within 60 s: $(tail -n 3 "$WORK/dockerd.log")"
}

base_image() {
    if [ -n "${CKD_BASE_IMAGE:-}" ]; then
        echo "$CKD_BASE_IMAGE"
        return 0
    fi
    if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
        echo "$BASE_TAG"
        return 0
    fi
    local tarball="$CACHE/bookworm-python3.tar.gz"
    if [ ! -f "$tarball" ]; then
        command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install debootstrap), \
or give CKD_BASE_IMAGE"
        local rootfs="$CACHE/rootfs.tmp"
        rm -rf "$rootfs"
        say "debootstrap bookworm with python3 into $rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$rootfs" "${CKD_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 \
            || die "debootstrap failed: $(tail -n 3 "$CACHE/debootstrap.log")"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" --numeric-owner -czf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    say "importing $tarball as $BASE_TAG"
    docker import --change 'CMD ["python3"]' "$tarball" "$BASE_TAG" >/dev/null
    echo "$BASE_TAG"
}

build() {
    local base args=() start
    base=$(base_image)
    args+=(--build-arg "BASE=$base")
    if [ -n "${CKD_TORCH_INDEX_URL:-}" ]; then
        args+=(--build-arg "TORCH_INDEX_URL=$CKD_TORCH_INDEX_URL")
    elif ! python3 -c 'import urllib.request as u; u.urlopen("https://download.pytorch.org/whl/cpu/", timeout=10)' \
            >/dev/null 2>&1; then
        # PyPI's torch for Linux is the CUDA build: the same code on the CPU, a larger image
        say "download.pytorch.org is out of reach: torch from PyPI (its CUDA build) instead of the CPU wheels"
        args+=(--build-arg "TORCH_INDEX_URL=https://pypi.org/simple")
    fi
    mkdir -p "$ROOT/docker/ca"
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$ROOT/docker/ca/host-ca-certificates.crt"
    fi
    say "building $CKD_IMAGE on $base (log $WORK/build.log)"
    start=$(now)
    local rc=0
    docker build --force-rm --network host -f "$ROOT/docker/Dockerfile" -t "$CKD_IMAGE" "${args[@]}" "$ROOT" \
        >"$WORK/build.log" 2>&1 || rc=$?
    rm -f "$ROOT/docker/ca/host-ca-certificates.crt"
    [ "$rc" = 0 ] || die "docker build failed (exit $rc): $(tail -n 5 "$WORK/build.log")"
    local size
    size=$(docker image inspect --format '{{.Size}}' "$CKD_IMAGE")
    say "built $CKD_IMAGE in $(( $(now) - start )) s, $(( size / 1000000 )) MB"
}

up() {
    local port busy=""
    for port in $PORTS; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then busy="$busy $port"; fi
    done
    [ -z "$busy" ] || die "port(s)$busy on 127.0.0.1 are in use; the host-network run needs $PORTS"
    [ -d "$CKD_FMNIST_DIR" ] || die "no Fashion-MNIST in $CKD_FMNIST_DIR (apt-get install dataset-fashion-mnist, \
or set CKD_FMNIST_DIR)"
    rm -rf "$CKD_RESULTS"
    mkdir -p "$CKD_RESULTS"
    compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    say "docker-compose up: 10 peers, $CKD_ROUNDS round(s), $CKD_TRAIN_PER_PEER training images per peer, \
$CKD_EPOCHS epochs, at most $CKD_MAX_PER_STUDENT taught per pair \
(log $WORK/compose.log)"
    local start rc=0
    start=$(now)
    compose up --no-build --no-color >"$WORK/compose.log" 2>&1 || rc=$?
    say "compose run took $(( $(now) - start )) s"
    local states
    states=$(docker ps -a --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
        --format '{{.Names}} {{.Status}}')
    compose down --volumes --remove-orphans >/dev/null 2>&1 || true
    [ "$rc" = 0 ] || die "docker-compose up failed (exit $rc): $(tail -n 5 "$WORK/compose.log")"
    if echo "$states" | grep -v 'Exited (0)' | grep -q .; then
        die "containers that did not exit 0: $(echo "$states" | grep -v 'Exited (0)' | tr '\n' ';') \
(log $WORK/compose.log)"
    fi
}

check() {
    python3 - "$CKD_RESULTS" "$MIN_ACCURACY" <<'EOF'
import json
import statistics
import sys
from pathlib import Path

found, low = sorted(Path(sys.argv[1]).glob("*/results.json")), float(sys.argv[2])
if len(found) != 1:
    sys.exit(f"compose-test: error: expected one results.json in a directory of {sys.argv[1]}, found {found}")
path = found[0]
try:
    r = json.loads(path.read_text())
except (OSError, ValueError) as exc:
    sys.exit(f"compose-test: error: {path} is not readable JSON ({exc})")
ids = sorted(p["id"] for p in r["peers"])
problems = []
if r.get("status") != "ok":
    problems.append(f"status {r.get('status')!r}: errors {r.get('errors')}, skipped {r.get('skipped')}")
if ids != [f"peer-{k}" for k in range(10)]:
    problems.append(f"peers evaluated: {ids}")
after = [p["accuracy_after"] for p in r["peers"]]
if not all(0.0 <= a <= 1.0 for a in after) or statistics.median(after) < low:
    problems.append(f"accuracies after {after} (median below {low})")
if not r["counterfactuals"]["made"]:
    problems.append("no counterfactual was made")
if problems:
    sys.exit("compose-test: error: " + "; ".join(problems))
print(f"compose-test: ok: {len(ids)} peers, median accuracy {r['median_accuracy_before']:.3f} -> "
      f"{r['median_accuracy_after']:.3f}, {r['counterfactuals']['made']} counterfactuals, "
      f"{r['wall_seconds']} s; {path}")
EOF
}

trap stop_engine EXIT

case "$STEP" in
    tools) tools ;;
    engine) engine ;;
    build) engine; build ;;
    up) engine; up ;;
    check) check ;;
    all) engine; build; up; check ;;
    *) die "unknown step $STEP; give all, tools, engine, build, up or check" ;;
esac
