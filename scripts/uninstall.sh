#!/bin/sh
# Reverses scripts/install.sh: stops postling and removes the binary, the init script, the
# systemd unit, the man page and the /usr/sbin/sendmail and /usr/sbin/mailq links (if postling's). Keeps the configuration (/etc/postling, /etc/default/postling),
# the queue and the mail, and the postling user, unless --purge is given.
#
#   scripts/uninstall.sh [--purge]
#   DESTDIR=/tmp/image scripts/uninstall.sh [--purge]    only remove staged files
set -eu

USER_NAME=postling
SPOOL_DIR=/var/spool/postling
MAIL_DIR=/var/mail/postling
DESTDIR=${DESTDIR:-}

say() { printf 'uninstall: %s\n' "$*"; }

purge=
case "${1-}" in
    --purge) purge=yes ;;
    '') ;;
    *)
        echo "usage: $0 [--purge]" >&2
        exit 2
        ;;
esac

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    echo "uninstall: run as root, or set DESTDIR" >&2
    exit 1
fi

if [ -z "$DESTDIR" ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl stop postling.service 2>/dev/null || true
        systemctl disable --quiet postling.service 2>/dev/null || true
    elif [ -x /etc/init.d/postling ]; then
        /etc/init.d/postling stop || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d -f postling remove >/dev/null 2>&1 || true
    fi
fi

for f in /usr/sbin/postling /etc/init.d/postling /lib/systemd/system/postling.service \
    /usr/share/man/man8/postling.8 /usr/share/man/man5/postling.conf.5; do
    if [ -e "$DESTDIR$f" ]; then
        rm -f "$DESTDIR$f"
        say "removed $DESTDIR$f"
    fi
done
# The sendmail and mailq links, only if they are postling's (another mail system's stay).
for f in /usr/sbin/sendmail /usr/sbin/mailq; do
    if [ -L "$DESTDIR$f" ] && [ "$(readlink "$DESTDIR$f")" = postling ]; then
        rm -f "$DESTDIR$f"
        say "removed the link $DESTDIR$f"
    elif [ -e "$DESTDIR$f" ]; then
        say "kept $DESTDIR$f (not postling's)"
    fi
done
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
fi

if [ -z "$purge" ]; then
    say "kept $DESTDIR/etc/postling, $DESTDIR/etc/default/postling, $DESTDIR$SPOOL_DIR (the queue) and $DESTDIR$MAIL_DIR (the mail); --purge removes them"
    exit 0
fi

rm -rf "$DESTDIR/etc/postling" "$DESTDIR/etc/default/postling" "$DESTDIR$SPOOL_DIR" "$DESTDIR$MAIL_DIR"
say "purged the configuration, the queue and the mail"
if [ -z "$DESTDIR" ] && id "$USER_NAME" >/dev/null 2>&1; then
    if command -v deluser >/dev/null 2>&1; then
        deluser --quiet --system "$USER_NAME" 2>/dev/null || deluser "$USER_NAME"
    elif command -v userdel >/dev/null 2>&1; then
        userdel "$USER_NAME"
    fi
    if getent group "$USER_NAME" >/dev/null 2>&1; then
        if command -v delgroup >/dev/null 2>&1; then
            delgroup --quiet "$USER_NAME" 2>/dev/null || delgroup "$USER_NAME" || true
        elif command -v groupdel >/dev/null 2>&1; then
            groupdel "$USER_NAME" || true
        fi
    fi
    say "removed the system user $USER_NAME"
fi
