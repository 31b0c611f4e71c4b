#!/usr/bin/env bash
# Installs Ceph's monitor, OSD and RADOS Gateway (Debian/Ubuntu packages) for tests/services/rgw.py, unless
# radosgw is already on PATH. Idempotent and quiet; needs root or sudo. No daemon is started or enabled here:
# the tests start their own cluster under a temporary directory.
set -euo pipefail

if command -v radosgw >/dev/null 2>&1; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    ceph-mon ceph-osd radosgw >/dev/null
command -v radosgw >/dev/null
