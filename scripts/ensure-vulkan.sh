#!/usr/bin/env bash
# Makes sure a Vulkan driver is present: on a machine with no GPU driver (CI, a fresh Debian
# box) it installs lavapipe, Mesa's software Vulkan. Does nothing where a driver is installed.
set -euo pipefail
for dir in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
    if compgen -G "$dir/*.json" >/dev/null; then
        exit 0
    fi
done
echo "ensure-vulkan: no Vulkan driver found, installing lavapipe (mesa-vulkan-drivers)" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq mesa-vulkan-drivers >/dev/null
