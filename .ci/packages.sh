#!/usr/bin/env bash
# The Debian packages `make test` needs, each with a command that shows it is installed.
# The missing ones are installed when run as root (apt-get, non-interactive); otherwise
# one line names them and the command that installs them, and the exit is 2.
# `make test` and .ci/run both come here: this is the one list.
set -euo pipefail

# package:command (the command is looked up in SCHOOLFLEET_TOOLS_PATH)
needs=(
  iproute2:ip                 # network namespaces: rollout and probe hosts (tests/netns.py)
  iputils-ping:ping
  procps:ps
  systemd:systemd-analyze     # deploy/systemd's units are checked with it
  util-linux:setpriv          # rollouts start Ansible as its own user
  chromium:chromium           # the lesson launcher shows a page in it (headless)
  openssh-server:sshd         # the rollout tests' SSH hosts (tests/ssh_hosts.py)
  openssh-client:ssh          # Ansible's connection
  python3:python3             # what Ansible's modules run with on those hosts
  prometheus:promtool         # deploy/prometheus/'s rules, and the end-to-end scrape
  postgresql:initdb           # the PostgreSQL store's throwaway cluster (tests/pg_cluster.py)
  haproxy:haproxy             # the load balancer in front of controller replicas (tests/haproxy.py)
)
search="${SCHOOLFLEET_TOOLS_PATH:-$PATH:/usr/local/sbin:/usr/sbin:/sbin}"

missing_packages() {
  local need bindir search="$search"
  # Debian keeps each PostgreSQL version's server programs off PATH, in
  # /usr/lib/postgresql/<version>/bin (tests/pg_cluster.py takes them from there too);
  # looked for on every call: the check after an install must see the new folder. A
  # view given in SCHOOLFLEET_TOOLS_PATH (tests/test_debian_packages.py) is the whole
  # truth.
  if [ -z "${SCHOOLFLEET_TOOLS_PATH:-}" ]; then
    for bindir in /usr/lib/postgresql/*/bin; do
      if [ -x "$bindir/initdb" ]; then search="$search:$bindir"; fi
    done
  fi
  for need in "${needs[@]}"; do
    PATH="$search" command -v "${need#*:}" >/dev/null 2>&1 || printf '%s\n' "${need%%:*}"
  done
}

mapfile -t missing < <(missing_packages)
[ "${#missing[@]}" -eq 0 ] && exit 0

install="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "make test needs Debian packages that are not installed: ${missing[*]}; as root run: apt-get update && $install" >&2
  exit 2
fi
echo "installing the Debian packages the tests need: ${missing[*]} (apt-get; a minute or two)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
mapfile -t still < <(missing_packages)
if [ "${#still[@]}" -gt 0 ]; then
  echo "installed, but still not found: ${still[*]}" >&2
  exit 2
fi
