#!/usr/bin/env bash
# Build check without a Docker engine: build the CPU image from docker/Dockerfile with
# `podman build --isolation chroot --format docker` (Docker format keeps SHELL and HEALTHCHECK) on a
# Debian base made with debootstrap, start the server inside the built image's filesystem with
# chroot (as the image's non-root user), and query /readyz, /v1/models and /v1/predict. Needs root,
# network access to a Debian mirror and to PyPI, and a few GB of disk. Slow (debootstrap + pip install): not part of CI.
#
#   sudo docker/smoke.sh            # report in $SMOKE_DIR/report.txt (default /var/tmp/hevitpose-smoke)
#
# Environment:
#   SMOKE_DIR          work folder (rootfs, index, report)        default /var/tmp/hevitpose-smoke
#   DEBIAN_MIRROR      mirror for debootstrap                      default http://deb.debian.org/debian
#   TORCH_WHEEL        a local CPU torch wheel (cp311) to install instead of downloading one from
#                      the PyTorch CPU index; default: /opt/wheels/torch-2.13.0+cpu-cp311-*.whl if present
#   SMOKE_PORT         port the server listens on (127.0.0.1)     default 18000
#   SMOKE_READY_S      how long to wait for /readyz                default 600
# The base image and the built image stay in podman's store (the next run reuses the base); the
# container, its mounts and the server are removed at exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
SMOKE_DIR=${SMOKE_DIR:-/var/tmp/hevitpose-smoke}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SMOKE_PORT=${SMOKE_PORT:-18000}
SMOKE_READY_S=${SMOKE_READY_S:-600}
BASE=localhost/hevitpose-smoke-base:bookworm
IMAGE=localhost/hevitpose-serve:cpu-smoke
report="$SMOKE_DIR/report.txt"

log() { printf '[smoke %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$report" >&2; }
die() { log "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || { echo "docker/smoke.sh: run as root (podman image mounts and chroot need it)" >&2; exit 2; }
mkdir -p "$SMOKE_DIR"
: > "$report"

for tool in podman debootstrap curl; do
  if ! command -v "$tool" >/dev/null; then
    log "installing $tool"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
  fi
done

# ---- 1. base image: Debian bookworm from debootstrap, imported into podman -------------------------
# It stands in for debian:bookworm-slim (the Dockerfile's CPU base), which cannot be pulled here.
if podman image exists "$BASE"; then
  log "base image $BASE exists; reusing it (podman rmi $BASE to rebuild)"
else
  rootfs="$SMOKE_DIR/rootfs"
  rm -rf "$rootfs"
  log "debootstrap bookworm (minbase) from $DEBIAN_MIRROR"
  t0=$(date +%s)
  debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" > "$SMOKE_DIR/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $SMOKE_DIR/debootstrap.log"
  echo "deb $DEBIAN_MIRROR bookworm main" > "$rootfs/etc/apt/sources.list"
  # Only for this build environment, not part of the image recipe: a mirror snapshot may carry
  # expired Release files, apt's _apt sandbox user cannot drop privileges under chroot isolation,
  # and HTTPS may pass through a proxy whose CA only the host trusts (pip reads PIP_CERT).
  printf 'Acquire::Check-Valid-Until "false";\nAPT::Sandbox::User "root";\n' > "$rootfs/etc/apt/apt.conf.d/99smoke"
  mkdir -p "$rootfs/etc/ssl"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/host-ca.pem"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'ENV PIP_CERT=/etc/ssl/host-ca.pem' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  log "base image $BASE imported in $(( $(date +%s) - t0 ))s"
fi

ls "$repo"/weights/*.safetensors >/dev/null 2>&1 \
  || die "no weights/*.safetensors in $repo: the image copies weights/ (create the default bundle first)"

# ---- 2. build the CPU image with the repository's Dockerfile ----------------------------------------
build_args=(--build-arg "BASE_IMAGE=$BASE")
volumes=()
TORCH_WHEEL=${TORCH_WHEEL:-$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -1 || true)}
if [ -n "$TORCH_WHEEL" ]; then
  # A small PEP 503 index (pip wants index.html in a file:// index) holding the local CPU wheel
  # and its dependencies for the image's Python (3.11), as the PyTorch CPU index would serve them.
  index="$SMOKE_DIR/torch-index"
  rm -rf "$index" "$SMOKE_DIR/wheels"; mkdir -p "$index" "$SMOKE_DIR/wheels"
  python3 -m pip download -q --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$SMOKE_DIR/wheels" "$TORCH_WHEEL" >/dev/null \
    || die "could not gather torch's dependencies"
  for wheel in "$SMOKE_DIR"/wheels/*.whl; do
    name=$(basename "$wheel")
    project=$(echo "${name%%-*}" | tr 'A-Z_.' 'a-z--')
    mkdir -p "$index/$project"
    mv "$wheel" "$index/$project/"
    printf '<a href="%s">%s</a>\n' "${name//+/%2B}" "$name" >> "$index/$project/index.html"
  done
  name=$(basename "$TORCH_WHEEL")
  volumes+=(--volume "$index:/torch-index:ro")
  build_args+=(--build-arg "TORCH_INDEX_URL=file:///torch-index")
  log "torch from local wheel $name"
else
  build_args+=(--build-arg "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu")
  log "torch from the PyTorch CPU index"
fi

log "podman build --isolation chroot --format docker -f docker/Dockerfile -t $IMAGE"
t0=$(date +%s)
podman build --isolation chroot --format docker -f "$repo/docker/Dockerfile" -t "$IMAGE" \
  "${build_args[@]}" "${volumes[@]}" "$repo" > "$SMOKE_DIR/build.log" 2>&1 \
  || { tail -30 "$SMOKE_DIR/build.log" | tee -a "$report" >&2; die "podman build failed; see $SMOKE_DIR/build.log"; }
log "built $IMAGE in $(( $(date +%s) - t0 ))s; size $(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec)"
grep -E "^torch " "$SMOKE_DIR/build.log" | tail -1 | sed 's/^/[smoke] builder: /' | tee -a "$report" >&2 || true

# What the image says about itself: user, entrypoint, healthcheck, environment.
podman image inspect --format 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}}' "$IMAGE" \
  | tee -a "$report" >&2
podman image inspect --format 'healthcheck={{.Config.Healthcheck}}' "$IMAGE" | tee -a "$report" >&2 || true

# ---- 3. run the server inside the image's filesystem ------------------------------------------------
# `podman run` needs rlimits and namespaces this machine refuses, so: a container's writable rootfs
# (podman create + mount), /proc, /dev and a fresh /tmp bound in, and chroot as the image's user.
ctr=$(podman create "$IMAGE")
mnt=$(podman mount "$ctr")
server_pid=""
cleanup() {
  set +e
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
  for m in tmp dev proc; do umount -l "$mnt/$m" 2>/dev/null; done
  podman umount "$ctr" >/dev/null 2>&1
  podman rm -f "$ctr" >/dev/null 2>&1
}
trap cleanup EXIT
mount -t proc proc "$mnt/proc"
mount --rbind /dev "$mnt/dev"
mount -t tmpfs -o mode=1777 tmpfs "$mnt/tmp"

# The image's own environment (PATH, HEVITPOSE_WEIGHTS, ...), as `podman run` would set it.
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep .)
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
log "starting: chroot --userspec=$user <image> hevitpose serve --host 127.0.0.1 --port $SMOKE_PORT (HEVITPOSE_DEVICE=cpu)"
env -i "${image_env[@]}" HOME=/home/hevitpose HEVITPOSE_DEVICE=cpu \
  chroot --userspec="$user" "$mnt" /bin/sh -c "cd /home/hevitpose && exec hevitpose serve --host 127.0.0.1 --port $SMOKE_PORT" \
  > "$SMOKE_DIR/server.log" 2>&1 &
server_pid=$!

base_url="http://127.0.0.1:$SMOKE_PORT"
t0=$(date +%s)
ready=""
while [ $(( $(date +%s) - t0 )) -lt "$SMOKE_READY_S" ]; do
  kill -0 "$server_pid" 2>/dev/null || { tail -30 "$SMOKE_DIR/server.log" | tee -a "$report" >&2; die "server exited"; }
  code=$(curl -s -o /dev/null -w '%{http_code}' "$base_url/readyz" || true)
  if [ "$code" = 200 ]; then ready=1; break; fi
  sleep 2
done
[ -n "$ready" ] || { tail -30 "$SMOKE_DIR/server.log" | tee -a "$report" >&2; die "/readyz not 200 after ${SMOKE_READY_S}s"; }
log "/readyz 200 after $(( $(date +%s) - t0 ))s: $(curl -s "$base_url/readyz")"

# The image's HEALTHCHECK command, run the way the engine would (inside the image, as its user).
env -i "${image_env[@]}" HOME=/home/hevitpose chroot --userspec="$user" "$mnt" \
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$SMOKE_PORT/readyz', timeout=4)" \
  && log "HEALTHCHECK command (on port $SMOKE_PORT): exit 0" || die "HEALTHCHECK command failed"

log "/v1/models: $(curl -s "$base_url/v1/models" | head -c 400)"

# A test picture made with the image's own OpenCV: a bright stick figure on a dark background.
env -i "${image_env[@]}" HOME=/home/hevitpose chroot --userspec="$user" "$mnt" python3 -c '
import cv2, numpy as np
img = np.full((480, 640, 3), 40, np.uint8)
c = (230, 230, 230)
cv2.circle(img, (320, 90), 30, c, -1)
for a, b in [((320, 120), (320, 290)), ((320, 160), (250, 240)), ((320, 160), (390, 240)),
             ((320, 290), (280, 420)), ((320, 290), (360, 420))]:
    cv2.line(img, a, b, c, 12)
cv2.imwrite("/tmp/person.jpg", img)
'
for detector in nanodet whole_image; do
  t1=$(date +%s%N)
  code=$(curl -s -o "$SMOKE_DIR/predict-$detector.json" -w '%{http_code}' \
    -F "image=@$mnt/tmp/person.jpg;type=image/jpeg" -F "detector=$detector" "$base_url/v1/predict")
  ms=$(( ($(date +%s%N) - t1) / 1000000 ))
  log "POST /v1/predict detector=$detector: HTTP $code in ${ms} ms: $(head -c 600 "$SMOKE_DIR/predict-$detector.json")"
  [ "$code" = 200 ] || die "/v1/predict detector=$detector answered $code"
done

code=$(curl -s -o "$SMOKE_DIR/predict-bad.json" -w '%{http_code}' -F "image=@$repo/pyproject.toml" "$base_url/v1/predict")
log "POST /v1/predict with a non-image: HTTP $code: $(head -c 300 "$SMOKE_DIR/predict-bad.json")"
case "$code" in 4??) ;; *) die "a non-image should get a 4xx, got $code" ;; esac

log "/metrics: $(curl -s "$base_url/metrics" | grep -c '^hevitpose_') hevitpose_* samples"
log "OK"
