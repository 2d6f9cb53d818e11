#!/usr/bin/env bash
# Packs this machine's gdb for the lent GPU machine, which has none: gdb with every library it
# links (ld-linux included, so it runs whatever the other machine's libc), its Python standard
# library without the large parts gdb does not need, and its data directory. About 25 MB; carry
# it in an ignored folder and pass it to scripts/device-tests.sh as GDB_TAR.
# Usage: bash scripts/pack-gdb.sh .dev/gdb.tar.xz
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT.tar.xz" >&2; exit 2; }
out=$(realpath -m "$1")
tmp=$(mktemp -d)
mkdir -p "$tmp/g" "$tmp/py/lib"
cp /usr/bin/gdb "$tmp/g/"
for lib in $(ldd /usr/bin/gdb | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do cp -L "$lib" "$tmp/g/"; done
py=$(ldd /usr/bin/gdb | grep -o 'libpython3\.[0-9]*' | head -1 | sed 's/lib//')
tar cf - -C /usr/lib --exclude="$py/test" --exclude="$py/idlelib" --exclude="$py/tkinter" \
    --exclude="$py/ensurepip" --exclude="$py/lib2to3" --exclude="$py/site-packages" \
    --exclude="$py/dist-packages" --exclude="$py/unittest" --exclude="$py/distutils" \
    --exclude="$py/pydoc_data" --exclude="$py/config-*" --exclude="__pycache__" "$py" | tar xf - -C "$tmp/py/lib"
cp -r /usr/share/gdb "$tmp/gdbdata"
tar cJf "$out" -C "$tmp" g py gdbdata
rm -rf "$tmp"
ls -la "$out"
