#!/usr/bin/env bash
# Builds the Debian package from a built binary, with Debian's own dpkg-deb:
#
#   scripts/deb.sh target/x86_64-unknown-linux-gnu/release/quorumd
#
# prints target/debian/quorumd_<version>_<arch>.deb (`make deb` builds the
# static release binary first and runs this). The version is the binary's
# own (`quorumd --version`, from Cargo.toml); the architecture is dpkg's.
#
# The package holds the binary in /usr/bin, the template unit, an example
# /etc/quorumd/cluster.toml (a conffile), a sysusers.d entry that the
# postinst turns into the quorumd system user, the man pages (quorumd(1)
# made from the binary's --help, quorumd.toml(5) from packaging/man/), and
# the README.

set -euo pipefail

usage() { echo "usage: $0 QUORUMD_BINARY" >&2; exit 2; }
[[ $# -eq 1 ]] || usage
bin=$1
[[ -x $bin ]] || { echo "$0: $bin is not an executable; run \`make build\` first" >&2; exit 2; }
for tool in dpkg dpkg-deb gzip; do
    command -v "$tool" >/dev/null || { echo "$0: needs $tool (Debian's dpkg)" >&2; exit 2; }
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
pkg=$root/packaging
out=$root/target/debian
stage=$out/stage

version=$("$bin" --version | awk '{print $2}')
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || { echo "$0: unexpected version '$version' from $bin --version" >&2; exit 1; }
arch=$(dpkg --print-architecture)
# Reproducible output: file times from the last commit, if there is one.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}

rm -rf "$stage"
install -D -m 755 "$bin" "$stage/usr/bin/quorumd"
install -D -m 644 "$pkg/systemd/quorumd@.service" "$stage/usr/lib/systemd/system/quorumd@.service"
install -D -m 644 "$pkg/cluster.toml" "$stage/etc/quorumd/cluster.toml"
install -D -m 644 "$pkg/sysusers.d/quorumd.conf" "$stage/usr/lib/sysusers.d/quorumd.conf"
install -D -m 644 "$pkg/debian/copyright" "$stage/usr/share/doc/quorumd/copyright"
# Shell completions, from the binary itself, where Debian's shells look.
install -d -m 755 "$stage/usr/share/bash-completion/completions" \
    "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$bin" completions bash >"$stage/usr/share/bash-completion/completions/quorumd"
"$bin" completions zsh >"$stage/usr/share/zsh/vendor-completions/_quorumd"
"$bin" completions fish >"$stage/usr/share/fish/vendor_completions.d/quorumd.fish"
chmod 644 "$stage/usr/share/bash-completion/completions/quorumd" \
    "$stage/usr/share/zsh/vendor-completions/_quorumd" \
    "$stage/usr/share/fish/vendor_completions.d/quorumd.fish"
install -d -m 755 "$stage/usr/share/man/man1" "$stage/usr/share/man/man5"
gzip -9n <"$root/README.md" >"$stage/usr/share/doc/quorumd/README.md.gz"

# The man page: the binary's own --help, one section per subcommand, and the
# few facts --help does not carry. Text is escaped for roff: backslashes,
# and a leading dot or quote that would read as a request.
roff() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/" -e 's/-/\\-/g'; }
commands=$("$bin" --help | awk '/^Commands:/ {on=1; next} on && NF == 0 {on=0} on {print $1}' | grep -vx help)
{
    echo ".TH QUORUMD 1 \"$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)\" \"quorumd $version\" \"User Commands\""
    echo ".SH NAME"
    echo "quorumd \\- $("$bin" --help | head -n 1 | roff)"
    echo ".SH SYNOPSIS"
    echo ".nf"
    "$bin" --help | sed -n 's/^Usage: //p' | roff
    for c in $commands; do "$bin" "$c" --help | sed -n 's/^Usage: //p' | roff; done
    echo ".fi"
    echo ".SH COMMANDS"
    for c in $commands; do
        echo ".SS $c"
        echo ".nf"
        "$bin" "$c" --help | roff
        echo ".fi"
    done
    cat <<'EOF'
.SH EXIT STATUS
.TP
0
clean shutdown after SIGTERM or SIGINT
.TP
1
runtime error: a port in use, a locked or damaged data dir, a storage failure; for status, kv and member, a cluster that is unwell or a request that failed
.TP
2
usage or config error: the cluster file, a TLS file, a data dir of another cluster or node, a member whose state is lost or that was removed (systemd does not restart it)
.TP
3
quorum not reached within quorum_wait_timeout
.SH ENVIRONMENT
.TP
RUST_LOG
log level (default info)
.TP
NOTIFY_SOCKET, WATCHDOG_USEC
set by systemd for Type=notify: READY=1 after bootstrap, STATUS= on role, term or leader change, STOPPING=1, WATCHDOG=1 while the Raft replica answers
.TP
JOURNAL_STREAM
set by systemd when stderr is the journal: log lines then carry a <N> syslog priority and no timestamp
.SH FILES
.TP
/etc/quorumd/cluster.toml
the cluster file, the same on every node
.TP
/var/lib/quorumd/node-N
node N's Raft state
.TP
/usr/share/doc/quorumd/README.md.gz
the user's guide
.SH SEE ALSO
quorumd.toml(5), systemctl(1), journalctl(1)
EOF
} | gzip -9n >"$stage/usr/share/man/man1/quorumd.1.gz"
# The cluster file's page is written by hand; it gets the same date.
sed "1s/^\.TH QUORUMD.TOML 5 \"\"/.TH QUORUMD.TOML 5 \"$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)\"/" \
    "$pkg/man/quorumd.toml.5" | gzip -9n >"$stage/usr/share/man/man5/quorumd.toml.5.gz"

mkdir -p "$stage/DEBIAN"
install -m 755 "$pkg/debian/postinst" "$pkg/debian/prerm" "$pkg/debian/postrm" "$stage/DEBIAN/"
echo /etc/quorumd/cluster.toml >"$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: quorumd
Version: $version
Architecture: $arch
Maintainer: quorumd maintainers <quorumd@localhost>
Installed-Size: $installed_size
Depends: systemd | systemd-standalone-sysusers | systemd-sysusers
Section: net
Priority: optional
Description: small, fast Raft cluster for edge boxes, with Consul's KV API
 quorumd runs one Raft node per box, in a few MiB of memory. The boxes share
 one cluster file, elect a leader, watch each other's health, and replicate
 a linearizable key-value store that speaks Consul's KV API (blocking
 queries, check-and-set, transactions), so Consul clients work unchanged.
 Membership changes at runtime, peers and clients can use mutual TLS, and
 every node serves an HTTP admin API, Prometheus metrics and a dashboard.
 .
 The package runs a node as the systemd service quorumd@ID, with its
 state in /var/lib/quorumd; quorumd(1) and quorumd.toml(5) document it.
EOF
find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

deb=$out/quorumd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
