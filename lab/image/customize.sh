#!/bin/sh
# Turn a debootstrap tree into a lab host: systemd as PID 1, sshd with per-host keys.
# Run on the controller as root, with the tree as the only argument. Part of the image recipe:
# editing this file changes the recipe hash, so the image is rebuilt on the next `inv lab.up`.
set -eu
root="$1"
[ -d "$root/etc" ] || { echo "customize.sh: $root is not a root tree" >&2; exit 2; }

# Every container must generate its own SSH host keys at first boot, not share the image's.
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate this host's own SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
ln -sf /etc/systemd/system/ssh-hostkeys.service \
  "$root/etc/systemd/system/multi-user.target.wants/ssh-hostkeys.service"

# An empty machine-id makes systemd create a distinct one on each container's first boot.
: > "$root/etc/machine-id"
mkdir -p "$root/var/lib/dbus"
ln -sf /etc/machine-id "$root/var/lib/dbus/machine-id"

# The full set of bookworm suites, so hosts get security updates like real ones.
rm -f "$root/etc/apt/sources.list.d/"*
cat > "$root/etc/apt/sources.list" <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES

# Empty package lists with an old mtime: apt's cache_valid_time must not skip the first update.
rm -rf "$root"/var/lib/apt/lists/*
rm -f "$root/var/lib/apt/periodic/update-success-stamp"
rm -f "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
touch -d @0 "$root/var/lib/apt/lists"

# Units that have no place in a container.
for unit in systemd-logind.service getty.target console-getty.service getty@tty1.service \
            systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

# systemd-in-container: PrivateUsers + ProtectProc=invisible + a non-root User= fails with 217/USER.
mkdir -p "$root/etc/systemd/system/service.d"
cat > "$root/etc/systemd/system/service.d/zz-container.conf" <<'DROPIN'
# Lab image only: see DESIGN.md (systemd-in-container ProtectProc bug).
[Service]
ProtectProc=default
DROPIN

# A UTF-8 locale, as on a real host.
sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' "$root/etc/locale.gen"
chroot "$root" /usr/sbin/locale-gen >/dev/null
echo 'LANG=en_US.UTF-8' > "$root/etc/default/locale"

# Root logs in with the lab key only (installed at lab.up through docker exec).
install -d -m 0700 "$root/root/.ssh"
