#!/usr/bin/env bash
# Puts the collections the Mailfleet playbooks use where Ansible finds them, without Galaxy:
#   ansible/.collections/ansible_collections/ansible/posix      (authorized_key, from the `ansible` wheel)
#   ansible/.collections/ansible_collections/community/general  (from the `ansible` wheel)
#   ansible/.collections/ansible_collections/mailfleet/fleet -> ansible/  (this collection, by FQCN)
# Idempotent: the wheel is downloaded and unpacked only when the pinned version changes.
# Use: ANSIBLE_COLLECTIONS_PATH="$PWD/ansible/.collections" ansible-playbook …
set -euo pipefail
ANSIBLE_WHEEL_VERSION="${ANSIBLE_WHEEL_VERSION:-12.3.0}"  # the `ansible` release built on ansible-core 2.19
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
dest="$repo/ansible/.collections"
root="$dest/ansible_collections"
stamp="$dest/.ansible-$ANSIBLE_WHEEL_VERSION"

mkdir -p "$root/mailfleet"
# The collection itself: a relative link, so the checkout can move.
if [ "$(readlink "$root/mailfleet/fleet" 2>/dev/null)" != "../../.." ]; then
  rm -rf "$root/mailfleet/fleet"
  ln -s ../../.. "$root/mailfleet/fleet"
fi

if [ ! -e "$stamp" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  # Galaxy is unreachable: the `ansible` wheel on PyPI carries the same collections.
  "$py" -m pip download --quiet --no-deps --dest "$tmp" "ansible==$ANSIBLE_WHEEL_VERSION"
  wheel="$(ls "$tmp"/ansible-"$ANSIBLE_WHEEL_VERSION"-*.whl)"
  "$py" - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1:]
wanted = ("ansible_collections/ansible/posix/", "ansible_collections/community/general/")
with zipfile.ZipFile(wheel) as z:
    members = [n for n in z.namelist() if n.startswith(wanted)]
    z.extractall(out, members)
PY
  rm -rf "$root/ansible/posix" "$root/community/general"
  mkdir -p "$root/ansible" "$root/community"
  mv "$tmp/unpacked/ansible_collections/ansible/posix" "$root/ansible/posix"
  mv "$tmp/unpacked/ansible_collections/community/general" "$root/community/general"
  rm -f "$dest"/.ansible-*
  touch "$stamp"
fi
echo "$dest"
