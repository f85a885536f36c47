#!/usr/bin/env bash
# Installs the Debian packages Mailfleet runs and tests with, only those missing.
set -euo pipefail
# chromium: the browser tests drive Debian's build (Playwright's own download cannot work offline).
# postgresql: the tests run the panel on PostgreSQL too, a throw-away server started from its programs (devserver/postgres.py).
# unar: rarfile reads RAR archives (list imports) through it.
# bind9, bind9-utils, bind9-dnsutils: a real authoritative DNS taking signed updates for the domain tests (devserver/bind.py), dig for the dns role's molecule checks.
# spamassassin, spamd, spamc: a local spamd scores the default templates (tests/deliverability).
# wrk: bench/clicks.py loads the click endpoint.
# debootstrap … iproute2: test hosts (devserver/testhost.py), Debian trees booted with systemd-nspawn.
packages=(exim4-daemon-light swaks python3-venv sqlite3 postgresql openssl chromium unar bind9 bind9-utils bind9-dnsutils
  spamassassin spamd spamc wrk debootstrap systemd-container tinyproxy openssh-client sshpass iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing Debian packages: ${missing[*]}. Run 'make system-deps' as root (apt-get install)." >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian's package starts a system Exim on port 25 where services may start; ours run with their own configs.
