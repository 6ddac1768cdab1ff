#!/usr/bin/env bash
# Builds kvmrun's default guest kernel from Debian's linux-source-6.1:
#   make tinyconfig + kernel/configs/kvm_guest.config + kernel.config (this directory),
#   make olddefconfig, a check that every line of kernel.config took effect, make bzImage.
# Output: $KVMRUN_CACHE/kernel-<hash>/{bzImage,vmlinux,config} (vmlinux: the ELF, debug info
# stripped); $KVMRUN_CACHE/kernel links to the newest. <hash> covers kernel.config, this script,
# the linux-source and gcc versions: change any and the next run rebuilds (incrementally: the
# object directory $KVMRUN_CACHE/kernel-obj-<version> is kept).
# Last line of stdout: "<bzImage> <vmlinux>".
set -euo pipefail
# The whole script is one { ... } block: bash parses it completely before running any of it, so
# editing this file while a build runs (minutes) cannot make the running copy read garbage.
{
here=$(cd "$(dirname "$0")" && pwd)
LOG_NAME=build-kernel
# shellcheck source=lib.sh
. "$here/lib.sh"

fragment=$here/kernel.config
tarball=/usr/src/linux-source-6.1.tar.xz
need_file "$tarball" linux-source-6.1
for c in make:make gcc:gcc bc:bc flex:flex bison:bison xz:xz-utils objcopy:binutils perl:perl; do
  need_cmd "${c%%:*}" "${c#*:}"
done
need_file /usr/include/libelf.h libelf-dev
need_file /usr/include/openssl/opensslv.h libssl-dev

src_ver=$(pkg_version linux-source-6.1)
key=$(input_hash "$fragment" "$here/build-kernel.sh" -- "$src_ver" "$(gcc -dumpfullversion)" "$(uname -m)")

# The extracted source tree, shared by all kernel builds of one linux-source version.
extract_source() { # tmpdir
  log "extracting $tarball ($src_ver) into the cache"
  tar -C "$1" -xf "$tarball" --strip-components=1
}

build_kernel() { # tmpdir
  local out=$1 obj src=$SRC jobs
  jobs=$(nproc)
  # One object directory per source version, reused across configs so that a changed fragment
  # rebuilds incrementally; only the finished bzImage/vmlinux go into the (atomic) output dir.
  obj=$CACHE/kernel-obj-$src_ver
  mkdir -p "$obj"
  local mk=(make -C "$src" O="$obj" ARCH=x86_64 KBUILD_BUILD_USER=kvmrun KBUILD_BUILD_HOST=kvmrun)
  log "[1/5] make tinyconfig"
  "${mk[@]}" -s tinyconfig >"$obj/config.log" 2>&1 ||
    { cat "$obj/config.log" >&2; die "make tinyconfig failed"; }
  log "[2/5] merging kernel/configs/kvm_guest.config and $(basename "$fragment")"
  (cd "$obj" && "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" \
    "$src/kernel/configs/kvm_guest.config" "$fragment" >"$obj/merge.log" 2>&1) ||
    { cat "$obj/merge.log" >&2; die "merge_config.sh failed"; }
  log "[3/5] make olddefconfig"
  "${mk[@]}" -s olddefconfig >>"$obj/config.log" 2>&1 ||
    { cat "$obj/config.log" >&2; die "make olddefconfig failed"; }
  log "[4/5] checking that every option of $(basename "$fragment") is set"
  local line opt bad=0
  while IFS= read -r line; do
    case $line in
      CONFIG_*=*)
        grep -qxF -- "$line" "$obj/.config" ||
          { log "  wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$obj/.config" || echo unset)'"; bad=1; } ;;
      "# CONFIG_"*" is not set")
        opt=${line#\# }; opt=${opt%% *}
        if grep -q "^$opt=" "$obj/.config"; then log "  wanted '$line', got '$(grep "^$opt=" "$obj/.config")'"; bad=1; fi ;;
    esac
  done <"$fragment"
  [ "$bad" = 0 ] || die "the kernel config does not match $fragment (missing dependencies?)"
  log "[5/5] make -j$jobs bzImage (log: $obj/build.log)"
  local t0=$SECONDS n=0 l
  if ! "${mk[@]}" -j"$jobs" bzImage 2>&1 | tee "$obj/build.log" | while IFS= read -r l; do
    case $l in
      *warning:* | *error:* | *Error*) printf '%s\n' "$l" >&2 ;;
      "  "[A-Z]*)
        n=$((n + 1))
        if [ $((n % 100)) = 0 ]; then
          log "  kernel build: $n steps, $((SECONDS - t0))s (${l##* })"
        fi ;;
    esac
  done; then
    tail -n 30 "$obj/build.log" >&2
    die "kernel build failed (full log: $obj/build.log)"
  fi
  cp "$obj/arch/x86/boot/bzImage" "$out/bzImage"
  objcopy --strip-debug "$obj/vmlinux" "$out/vmlinux"
  cp "$obj/.config" "$out/config"
  log "built in $((SECONDS - t0))s: bzImage $(du -h "$out/bzImage" | cut -f1), vmlinux $(du -h "$out/vmlinux" | cut -f1)"
}

cached_build "linux-src-$src_ver" "$(printf %s "$src_ver" | sha256sum | cut -c1-8)" extract_source
SRC=$OUT
cached_build kernel "$key" build_kernel
log "kernel: $OUT"
echo "$OUT/bzImage $OUT/vmlinux"
exit 0
}
