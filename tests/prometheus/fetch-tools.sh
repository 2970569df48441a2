#!/usr/bin/env bash
# promtool and amtool for the rule and Alertmanager checks of `make unit`, taken from Debian's own packages
# (prometheus, prometheus-alertmanager: the versions the prometheus role installs with its package method)
# without installing them: apt-get download, then dpkg-deb -x, into .cache/tools. Nothing is started.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.cache/tools
[ -x "$dest/promtool" ] && [ -x "$dest/amtool" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && apt-get download prometheus prometheus-alertmanager >/dev/null 2>&1); then
  apt-get update -qq
  (cd "$work" && apt-get download prometheus prometheus-alertmanager >/dev/null)
fi
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
mkdir -p "$dest"
install -m 0755 "$work/root/usr/bin/promtool" "$work/root/usr/bin/amtool" "$dest/"
"$dest/promtool" --version 2>&1 | head -1
