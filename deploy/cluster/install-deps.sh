#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Debian packages the local cluster runs on (idempotent: installs only what is missing).
# etcd and containerd are started by the project's own scripts, never as system services.
set -euo pipefail
pkgs=(etcd-server containerd runc containernetworking-plugins iptables conntrack iproute2 ethtool socat
      podman uidmap fuse-overlayfs gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && { echo "cluster packages: all installed"; exit 0; }
echo "cluster packages: installing ${missing[*]}"
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
# No service is started by the packages' maintainer scripts (policy-rc.d answers "forbidden").
pol=/usr/sbin/policy-rc.d; made_pol=""
if [ ! -e "$pol" ]; then printf '#!/bin/sh\nexit 101\n' | $sudo tee "$pol" >/dev/null; $sudo chmod +x "$pol"; made_pol=1; fi
trap '[ -n "$made_pol" ] && $sudo rm -f "$pol"' EXIT
$sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
