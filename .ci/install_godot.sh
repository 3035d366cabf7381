#!/usr/bin/env bash
# Fetch a headless-capable Godot 4 for camstream's Godot tests, without touching the host's dpkg.
#
# Debian 12 (bookworm) only packages Godot 3; Debian unstable (sid) has Godot 4 but needs sid's
# libc. So this script asks apt to *download* sid's `godot` package and its whole dependency
# closure into a private directory (an empty dpkg status file makes apt fetch everything),
# unpacks the .debs with `dpkg-deb -x`, and writes a wrapper that runs the binary through sid's
# own dynamic loader. Nothing is installed on the host, /etc/apt is not modified.
# Details and measurements: the project's Godot research notes (section 1.1).
#
# Usage:   bash .ci/install_godot.sh            # prints the wrapper's path on the last stdout line
#          GODOT_BIN=$(bash .ci/install_godot.sh | tail -n1) || true
#
# Environment (all optional):
#   GODOT_CACHE_DIR     where to put it                       (default: $HOME/.cache/godot-sid)
#   GODOT_DEB_PACKAGE   apt package spec, e.g. godot=4.6.3+ds-3 to pin a version (default: godot)
#   GODOT_DEBIAN_MIRROR Debian mirror URL (default: read from this machine's apt sources)
#   GODOT_WITH_GL=1     also fetch sid's Mesa (software llvmpipe) and write a `godot-gl` wrapper,
#                       and install the host's `xvfb` package with apt, for a real window under
#                       xvfb-run (only needed for screenshots; the tests are headless)
#
# Idempotent: an existing, working cache is reused (a few ms). Safe to run concurrently (flock).
# Exit status 0 and the wrapper path on the last stdout line on success; non-zero and a message on
# stderr on failure (CI then lets the Godot tests skip).
set -euo pipefail

DEST=${GODOT_CACHE_DIR:-$HOME/.cache/godot-sid}
PACKAGE=${GODOT_DEB_PACKAGE:-godot}
WITH_GL=${GODOT_WITH_GL:-0}
GL_PACKAGES=(libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libegl-mesa0)

log() { echo "install_godot: $*" >&2; }
die() {
    log "ERROR: $*"
    log "The Godot tests will be skipped. Set GODOT_BIN to a Godot 4 binary to run them anyway."
    exit 1
}

# Run a wrapper and check it reports a Godot 4 version (timeout: a broken loader must not hang CI).
works() {
    local version
    version=$(timeout 60 "$1" --headless --version 2>/dev/null | tail -n1) || return 1
    [[ $version == 4.* ]]
}

ready() {
    works "$DEST/godot" || return 1
    if [[ $WITH_GL == 1 ]]; then
        [[ -x $DEST/godot-gl ]] || return 1
        command -v xvfb-run >/dev/null || return 1
    fi
    return 0
}

install_xvfb() {
    command -v xvfb-run >/dev/null && return 0
    log "installing xvfb with apt (needed only for screenshots)"
    if [[ $(id -u) == 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xvfb xauth >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends xvfb xauth >&2; } \
            || die "apt-get install xvfb failed"
    else
        sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            xvfb xauth >&2 || die "xvfb is missing and could not be installed (not root, no sudo)"
    fi
}

# The Debian mirror this machine already uses: the first non-security "URIs:" (deb822) or
# "deb URL suite" (one-line format) entry whose path ends in /debian. No host name is hard-coded.
find_mirror() {
    local file uri
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file ]] || continue
        uri=$(awk '
            /^[[:space:]]*$/ { if (u != "" && s !~ /security/) { print u; exit } u = ""; s = ""; next }
            /^URIs:/ { u = $2 } /^Suites:/ { s = $0 }
            END { if (u != "" && s !~ /security/) print u }' "$file" | grep -E '/debian/?$' | head -n1)
        [[ -n $uri ]] && { echo "${uri%/}"; return 0; }
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file ]] || continue
        uri=$(awk '$1 == "deb" {
                  for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i, $(i + 1); break }
              }' "$file" | grep -v security | awk '{print $1}' | grep -E '/debian/?$' | head -n1)
        [[ -n $uri ]] && { echo "${uri%/}"; return 0; }
    done
    return 1
}

write_wrappers() {
    local root=$1
    # The wrappers find root/ next to themselves, so the cache directory can be moved.
    cat >"$root/../godot" <<'EOF'
#!/bin/sh
# Runs Debian sid's Godot 4 through sid's own loader and libraries (see .ci/install_godot.sh).
D=$(dirname "$(readlink -f "$0")")
R=$D/root
L=$R/usr/lib/x86_64-linux-gnu
exec "$L/ld-linux-x86-64.so.2" --library-path "$L:$L/pulseaudio" "$R/usr/bin/godot" "$@"
EOF
    cat >"$root/../godot-gl" <<'EOF'
#!/bin/sh
# Like ./godot, plus sid's Mesa (software llvmpipe) for the OpenGL renderer under Xvfb.
D=$(dirname "$(readlink -f "$0")")
R=$D/root
L=$R/usr/lib/x86_64-linux-gnu
export LIBGL_DRIVERS_PATH="$L/dri" __EGL_VENDOR_LIBRARY_DIRS="$R/usr/share/glvnd/egl_vendor.d"
export LIBGL_ALWAYS_SOFTWARE=1 GALLIUM_DRIVER=llvmpipe
exec "$L/ld-linux-x86-64.so.2" --library-path "$L:$L/pulseaudio" "$R/usr/bin/godot" "$@"
EOF
    chmod +x "$root/../godot" "$root/../godot-gl"
    [[ $WITH_GL == 1 ]] || rm -f "$root/../godot-gl"
}

build() {
    local mirror apt_dir root debs
    [[ $(uname -m) == x86_64 ]] || die "only x86_64 is supported (this is $(uname -m))"
    for tool in apt-get dpkg-deb timeout; do
        command -v "$tool" >/dev/null || die "'$tool' not found: this script needs a Debian-based system"
    done
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] \
        || die "/usr/share/keyrings/debian-archive-keyring.gpg missing (apt-get install debian-archive-keyring)"
    mirror=${GODOT_DEBIAN_MIRROR:-$(find_mirror)} \
        || die "no Debian mirror found in /etc/apt/sources*; set GODOT_DEBIAN_MIRROR=http://<mirror>/debian"
    log "fetching $PACKAGE from Debian sid via $mirror into $DEST (about 160 MB, once)"

    work=$(mktemp -d "$(dirname "$DEST")/.godot-sid.build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    apt_dir=$work/apt
    root=$work/root
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$root"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" \
        >"$apt_dir/sources.list"
    : >"$apt_dir/status" # empty dpkg status: apt downloads the full dependency closure
    local opts=(
        -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=/dev/null"
        -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
        -o "Dir::State::status=$apt_dir/status"
        -o APT::Architecture=amd64 -o APT::Architectures=amd64
        -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)"
    )
    apt-get "${opts[@]}" -qq --error-on=any update >&2 || die "apt-get update of Debian sid from $mirror failed"
    local pkgs=("$PACKAGE")
    [[ $WITH_GL == 1 ]] && pkgs+=("${GL_PACKAGES[@]}")
    apt-get "${opts[@]}" -qq install -y --download-only --no-install-recommends "${pkgs[@]}" >&2 \
        || die "apt could not download ${pkgs[*]} from sid (sid may be mid-transition; retry later or pin GODOT_DEB_PACKAGE=godot=<version>)"
    debs=("$apt_dir"/cache/archives/*.deb)
    [[ -f ${debs[0]} ]] || die "apt downloaded no .deb files"
    log "unpacking ${#debs[@]} packages"
    for deb in "${debs[@]}"; do
        dpkg-deb -x "$deb" "$root" || die "dpkg-deb -x $deb failed"
    done
    [[ -x $root/usr/bin/godot ]] || die "the package has no usr/bin/godot"
    rm -rf "$apt_dir" # 160 MB of .debs, no longer needed
    write_wrappers "$root"
    works "$work/godot" || die "the unpacked Godot does not run ($work/godot --headless --version failed)"

    # Swap in atomically-ish: old cache out of the way, new one in, old one removed.
    if [[ -e $DEST ]]; then
        mv "$DEST" "$work.old"
    fi
    mv "$work" "$DEST"
    trap - EXIT
    rm -rf "$work.old"
}

main() {
    mkdir -p "$(dirname "$DEST")"
    exec 9>"$DEST.lock"
    flock -w 900 9 || die "timed out waiting for another install_godot.sh (lock $DEST.lock)"
    [[ $WITH_GL == 1 ]] && install_xvfb
    if ready; then
        log "reusing $DEST ($("$DEST/godot" --headless --version 2>/dev/null | tail -n1))"
    else
        build
        log "installed $("$DEST/godot" --headless --version 2>/dev/null | tail -n1)"
    fi
    echo "$DEST/godot"
}

main "$@"
