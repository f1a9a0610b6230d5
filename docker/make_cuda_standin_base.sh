#!/usr/bin/env bash
# Stand-in for nvidia/cuda:13.0.2-base-ubuntu24.04 where that image cannot be pulled but an Ubuntu
# mirror answers: Ubuntu 24.04 (noble, minbase) from debootstrap, imported into podman with the
# NVIDIA_*/CUDA_* settings of the real base. It lacks NVIDIA's apt packages (cuda-cudart-13-0,
# cuda-compat-13-0) and NVIDIA's apt source, so it proves the image build, not a GPU run
# (docs/deployment.md, "GPU image build with a stand-in CUDA base"). Root; not part of CI.
#
#   sudo docker/make_cuda_standin_base.sh     # then: podman build ... --build-arg BASE_IMAGE=localhost/cuda-standin:13.0.2-base-ubuntu24.04
#
# Environment: WORK (default /var/tmp/cuda-standin), UBUNTU_MIRROR (default http://archive.ubuntu.com/ubuntu).
set -euo pipefail
WORK=${WORK:-/var/tmp/cuda-standin}
MIRROR=${UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}
IMAGE=localhost/cuda-standin:13.0.2-base-ubuntu24.04
rootfs=$WORK/rootfs
mkdir -p "$WORK"

# Ubuntu's archive key, checked by fingerprint (Ubuntu Archive Automatic Signing Key (2018)).
keyring_deb=$WORK/ubuntu-keyring_2023.11.28.1_all.deb
[ -f "$keyring_deb" ] || curl -fsS -o "$keyring_deb" "$MIRROR/pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb"
rm -rf "$WORK/keyring" && dpkg-deb -x "$keyring_deb" "$WORK/keyring"
keyring=$WORK/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg
gpg --no-default-keyring --keyring "$keyring" --with-colons --fingerprint 2>/dev/null \
  | grep -q '^fpr:*F6ECB3762474EDA9D21B7022871920D1991BC93C:' || { echo "unexpected Ubuntu keyring" >&2; exit 1; }

# debootstrap in Debian 12 has no "noble" script; noble uses the same one as every Ubuntu release.
rm -rf "$rootfs"
debootstrap --variant=minbase --keyring="$keyring" noble "$rootfs" "$MIRROR" \
  /usr/share/debootstrap/scripts/gutsy > "$WORK/debootstrap.log" 2>&1
cat > "$rootfs/etc/apt/sources.list.d/ubuntu.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: noble noble-updates noble-security
Components: main restricted universe multiverse
Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg
EOF
: > "$rootfs/etc/apt/sources.list"
# Like the ubuntu:24.04 image (a "minimized" one): no man pages or docs from later installs.
printf '%s\n' 'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/doc/*' \
  'path-include=/usr/share/doc/*/copyright' 'path-exclude=/usr/share/info/*' \
  > "$rootfs/etc/dpkg/dpkg.cfg.d/excludes"
# Also like it: apt keeps no package caches (without this each apt-get layer carries ~120 MB of
# /var/cache/apt/*.bin), and downloads no translations.
cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' > "$rootfs/etc/apt/apt.conf.d/docker-no-languages"
# Only for this build environment: apt's _apt sandbox user cannot drop privileges under chroot
# isolation, and HTTPS here passes through a proxy whose CA only the host trusts (pip reads PIP_CERT).
printf 'APT::Sandbox::User "root";\n' > "$rootfs/etc/apt/apt.conf.d/99standin"
mkdir -p "$rootfs/etc/ssl" && cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/host-ca.pem"
# The point-release updates the ubuntu:24.04 image carries.
mount -t proc proc "$rootfs/proc"
trap 'umount "$rootfs/proc" 2>/dev/null || true' EXIT
chroot "$rootfs" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq dist-upgrade' \
  >> "$WORK/debootstrap.log" 2>&1
umount "$rootfs/proc"; trap - EXIT
# The real base's ld.so entries for the libraries the NVIDIA container toolkit mounts.
printf '/usr/local/nvidia/lib\n/usr/local/nvidia/lib64\n' > "$rootfs/etc/ld.so.conf.d/nvidia.conf"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true

# The real base's environment (nvidia/cuda 13.0.2 image config).
require="cuda>=13.0"
for drv in 535 550 565 570 575; do
  for brand in unknown grid tesla nvidia quadro quadrortx nvidiartx vapps vpc vcs vws cloudgaming; do
    require+=" brand=$brand,driver>=$drv,driver<$((drv + 1))"
  done
done
tar -C "$rootfs" -c . | podman import \
  --change 'ENV PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV NVARCH=x86_64' \
  --change "ENV NVIDIA_REQUIRE_CUDA=\"$require\"" \
  --change 'ENV NV_CUDA_CUDART_VERSION=13.0.96-1' \
  --change 'ENV CUDA_VERSION=13.0.2' \
  --change 'ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64' \
  --change 'ENV NVIDIA_VISIBLE_DEVICES=all' \
  --change 'ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility' \
  --change 'ENV PIP_CERT=/etc/ssl/host-ca.pem' \
  --change 'CMD ["/bin/bash"]' - "$IMAGE" > /dev/null
rm -rf "$rootfs"
podman image inspect --format '{{.Id}} {{.Size}}' "$IMAGE"
