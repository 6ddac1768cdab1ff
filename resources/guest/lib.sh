# shellcheck shell=bash
# Shared helpers for kvmrun's artifact scripts (resources/guest/*.sh, resources/testhost/*.sh).
# Sourced, not executed. Conventions: progress goes to stderr, one line per step; the script's
# result path(s) go to stdout on the last line.

KVMRUN_RESOURCES=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KVMRUN_CACHE:-$HOME/.cache/kvmrun}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)

log() { printf '%s: %s\n' "${LOG_NAME:-$(basename "$0" .sh)}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- apt: install a package only when something it provides is missing ------------------------
apt_install() {
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  log "installing missing package(s): $*"
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q)
  if ! "${apt[@]}" install "$@" >&2; then
    "${apt[@]}" update >&2 || true
    "${apt[@]}" install "$@" >&2 || die "apt-get install $* failed"
  fi
}
# need_cmd COMMAND PACKAGE: install PACKAGE if COMMAND is not on PATH (or /sbin, /usr/sbin).
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] || apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] ||
    die "$1 still missing after installing $2"
}
# need_file PATH PACKAGE: install PACKAGE if PATH does not exist.
need_file() {
  [ -e "$1" ] || apt_install "$2"
  [ -e "$1" ] || die "$1 still missing after installing $2"
}
pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# ---- cache keys and atomic, locked builds ------------------------------------------------------
# input_hash FILE... -- STRING...: a short hash over the files' contents and the strings.
input_hash() {
  {
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
      printf 'file %s\n' "$(basename "$1")"; sha256sum <"$1"; shift
    done
    [ $# -gt 0 ] && shift
    printf 'str %s\n' "$@"
  } | sha256sum | cut -c1-16
}

_tmp_dirs=()
_cleanup_tmp() { local d; for d in "${_tmp_dirs[@]}"; do [ -z "$d" ] || rm -rf "$d"; done; return 0; }
trap _cleanup_tmp EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# cached_build NAME KEY FUNCTION: makes sure $CACHE/NAME-KEY exists, building it at most once
# even when several scripts race: FUNCTION TMPDIR fills a fresh temp dir, which is then renamed
# into place. $CACHE/NAME is a stable symlink to the newest build. Sets OUT to the directory.
cached_build() {
  local name=$1 key=$2 fn=$3
  OUT=$CACHE/$name-$key
  if [ ! -d "$OUT" ]; then
    local lockfd
    exec {lockfd}>"$CACHE/.$name.lock"
    if ! flock -n "$lockfd"; then
      log "waiting for another build of $name (lock $CACHE/.$name.lock)"
      flock "$lockfd"
    fi
    if [ ! -d "$OUT" ]; then
      local tmp
      tmp=$(mktemp -d "$CACHE/.$name-$key.tmp.XXXXXX")
      _tmp_dirs+=("$tmp")
      chmod 755 "$tmp"
      "$fn" "$tmp"
      mv -T "$tmp" "$OUT"
    else
      log "$name-$key was built by another process"
    fi
    exec {lockfd}>&-
  fi
  ln -sfn "$name-$key" "$CACHE/.$name.link.$$"
  mv -T "$CACHE/.$name.link.$$" "$CACHE/$name"
}

# ---- initramfs pieces --------------------------------------------------------------------------
# stage_busybox DIR: a busybox-static userland with applet symlinks and a minimal /etc.
stage_busybox() {
  local root=$1 bb=/bin/busybox
  need_file /usr/share/doc/busybox-static busybox-static
  file_is_static "$bb" || die "$bb is not statically linked (is busybox-static installed?)"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,mnt,var/tmp,lib}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  cp "$bb" "$root/bin/busybox"
  local applet
  for applet in $("$bb" --list-full); do
    [ "$applet" = bin/busybox ] && continue
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
  printf 'kvmrun\n' >"$root/etc/hostname"
  printf '127.0.0.1 localhost kvmrun\n' >"$root/etc/hosts"
  printf 'export PS1='\''\\h:\\w\\$ '\''\n' >"$root/etc/profile"
}

file_is_static() { ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; }

# stage_modules ROOT KVER MODULE...: copies MODULE... and their dependencies (in load order,
# decompressed) from /lib/modules/KVER to ROOT/lib/modules/KVER and writes the load order to
# ROOT/lib/modules/load.list (lines: path-in-initramfs [params]).
stage_modules() {
  local root=$1 kver=$2; shift 2
  need_cmd modprobe kmod
  need_cmd xz xz-utils
  local mdir=/lib/modules/$kver
  [ -f "$mdir/modules.dep" ] || die "$mdir/modules.dep missing (is linux-image-$kver installed?)"
  mkdir -p "$root/lib/modules/$kver"
  local list="$root/lib/modules/load.list" m line ko rel dst params
  : >"$list"
  declare -A seen=()
  for m in "$@"; do
    local deps
    deps=$(modprobe -S "$kver" --show-depends "$m" 2>&1) || die "modprobe --show-depends $m: $deps"
    while IFS= read -r line; do
      case $line in
        builtin\ *) continue ;;
        insmod\ *) ;;
        *) die "unexpected modprobe output for $m: $line" ;;
      esac
      line=${line#insmod }
      ko=${line%% *}
      while [ "${ko#//}" != "$ko" ]; do ko=${ko#/}; done
      params=
      [ "$ko" = "$line" ] || params=${line#* }
      [ -n "${seen[$ko]:-}" ] && continue
      seen[$ko]=1
      rel=${ko#"$mdir"/}
      [ "$rel" != "$ko" ] || rel=${ko#/usr"$mdir"/}
      dst=$root/lib/modules/$kver/$rel
      mkdir -p "$(dirname "$dst")"
      case $ko in
        *.ko.xz) dst=${dst%.xz}; xz -dc "$ko" >"$dst" ;;
        *.ko.zst) need_cmd zstd zstd; dst=${dst%.zst}; zstd -qdc "$ko" >"$dst" ;;
        *.ko.gz) dst=${dst%.gz}; gzip -dc "$ko" >"$dst" ;;
        *.ko) cp "$ko" "$dst" ;;
        *) die "unexpected module file $ko" ;;
      esac
      printf '%s%s\n' "${dst#"$root"}" "${params:+ $params}" >>"$list"
    done <<<"$deps"
  done
  log "modules: $(wc -l <"$list") files for: $*"
}

# pack_initramfs ROOT OUT.cpio.gz: a gzip'd newc archive owned by root, plus /dev/console
# (a character device node, written by hand so that no root rights are needed).
pack_initramfs() {
  local root=$1 out=$2
  need_cmd cpio cpio
  need_cmd gzip gzip
  {
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0)
    cpio_newc_entry dev 040755 0 0
    cpio_newc_entry dev/console 020600 5 1
    cpio_newc_entry TRAILER!!! 0 0 0
  } | gzip -6 -n >"$out"
}
# cpio_newc_entry NAME MODE(octal) RDEVMAJOR RDEVMINOR: one empty-bodied newc header + name.
_cpio_ino=900000
cpio_newc_entry() {
  local name=$1 mode=$((8#$2)) maj=$3 min=$4 namesize=$((${#1} + 1)) pad
  _cpio_ino=$((_cpio_ino + 1))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    "$_cpio_ino" "$mode" 0 0 1 0 0 0 0 "$maj" "$min" "$namesize" 0
  printf '%s\0' "$name"
  pad=$(((4 - (110 + namesize) % 4) % 4))
  head -c "$pad" /dev/zero
}

# distro_kver: the kernel version of the installed linux-image-amd64 (or $KVMRUN_DISTRO_KVER).
distro_kver() {
  if [ -n "${KVMRUN_DISTRO_KVER:-}" ]; then echo "$KVMRUN_DISTRO_KVER"; return; fi
  local dep
  dep=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null || true)
  if [ -z "$dep" ]; then
    apt_install linux-image-amd64
    dep=$(dpkg-query -W -f='${Depends}' linux-image-amd64)
  fi
  dep=${dep%% *}
  echo "${dep#linux-image-}"
}
