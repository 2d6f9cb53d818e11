# Sourced by the device scripts: the Vulkan loader and glvnd (through which NVIDIA's driver
# loads) from .gl/ where the machine lacks either (as the lent GPU machines do), NVIDIA's driver
# manifest where the loader would not find it, and a runtime directory for wgpu.
if ! ldconfig -p | grep -q libvulkan.so.1 || ! ldconfig -p | grep -q libGLdispatch.so.0; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if [ ! -e /usr/share/vulkan/icd.d/nvidia_icd.json ] && [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export XDG_RUNTIME_DIR=/tmp
