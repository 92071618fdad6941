#!/bin/sh
# Install the Debian packages given as arguments when any is missing.
# As root with apt-get available it installs them; otherwise it prints the
# exact command to run and fails.
set -eu
missing=""
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing:$missing"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
    exit 0
fi
echo "cweb needs these Debian packages:$missing" >&2
echo "install them with: sudo apt-get install$missing" >&2
exit 1
