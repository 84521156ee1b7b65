#!/bin/sh
# Installs postling: the binary, a production config, users and aliases templates,
# /etc/default/postling, the init script, the systemd unit, the man page, the `postling`
# system user and its spool and mail directories, and the links /usr/sbin/sendmail and
# /usr/sbin/mailq -> postling (only where no other mail system's sendmail or mailq exists).
#
#   scripts/install.sh                            build (scripts/build-release: static), then install
#   POSTLING_BIN=/path/to/postling scripts/install.sh    install a prebuilt binary
#   DESTDIR=/tmp/image scripts/install.sh         only stage the files under DESTDIR
#
# Idempotent. A config file that differs from what this script ships (you edited it) is
# never overwritten: the shipped version goes beside it as FILE.new. With DESTDIR set it
# creates no user, changes no owner and enables no service (for a firmware image); it
# prints what the target system needs instead.
#
# The shipped conf/postling.conf is a demo (loopback ports, users alice and bob), so the
# production config and the users/aliases templates are written from the templates below.
set -eu

USER_NAME=postling
SPOOL_DIR=/var/spool/postling
MAIL_DIR=/var/mail/postling
DESTDIR=${DESTDIR:-}

here=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'install: %s\n' "$*"; }
die() {
    printf 'install: %s\n' "$*" >&2
    exit 1
}

if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    die "run as root to install, or set DESTDIR to stage the files"
fi

# ---- the binary -------------------------------------------------------------------------
if [ -n "${POSTLING_BIN:-}" ]; then
    bin=$POSTLING_BIN
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust, or set POSTLING_BIN to a built postling"
    bin=$("$here/scripts/build-release")
fi
[ -x "$bin" ] || die "$bin is not an executable postling binary"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Copies $1 to $2 with mode $3 unless it is already there; a temporary name and a rename,
# so a running binary is replaced, not overwritten in place.
put() {
    mkdir -p "$(dirname "$2")"
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        chmod "$3" "$2"
        return 0
    fi
    cp "$1" "$2.tmp.$$"
    chmod "$3" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
    say "installed $2"
}

# A config file: installed if absent; if it differs from the shipped one, left alone and
# the shipped one written as $2.new. Readable by the postling group (the daemon re-reads
# configs on SIGHUP after its privilege drop).
put_config() {
    if [ ! -e "$2" ]; then
        put "$1" "$2" "$3"
        own_config "$2"
    elif cmp -s "$1" "$2"; then
        :
    else
        put "$1" "$2.new" "$3"
        own_config "$2.new"
        say "kept your edited $2; the shipped version is $2.new (compare: diff $2 $2.new)"
    fi
}

# Files under /etc/postling belong to group postling; anything else stays root's.
own_config() {
    if [ -z "$DESTDIR" ]; then
        case "$1" in
            /etc/postling | /etc/postling/*) chgrp "$USER_NAME" "$1" ;;
        esac
    fi
}

# ---- the system user --------------------------------------------------------------------
ensure_user() {
    if id "$USER_NAME" >/dev/null 2>&1; then
        return 0
    fi
    nologin=$(command -v nologin 2>/dev/null || echo /bin/false)
    if command -v adduser >/dev/null 2>&1 && adduser --help 2>&1 | grep -q -- '--system'; then
        # Debian's adduser.
        adduser --system --group --no-create-home --home /nonexistent --shell "$nologin" \
            --quiet "$USER_NAME"
    elif command -v useradd >/dev/null 2>&1; then
        getent group "$USER_NAME" >/dev/null 2>&1 || groupadd -r "$USER_NAME"
        useradd -r -g "$USER_NAME" -d /nonexistent -M -s "$nologin" "$USER_NAME"
    elif command -v adduser >/dev/null 2>&1; then
        # BusyBox.
        addgroup -S "$USER_NAME" 2>/dev/null || true
        adduser -S -D -H -h /nonexistent -s "$nologin" -G "$USER_NAME" "$USER_NAME"
    else
        die "cannot create the system user $USER_NAME (no adduser or useradd); create it and run again"
    fi
    say "created the system user and group $USER_NAME"
}

if [ -z "$DESTDIR" ]; then
    ensure_user
fi

# ---- templates --------------------------------------------------------------------------
cat >"$tmp/postling.conf" <<'EOF'
# /etc/postling/postling.conf, written by postling's scripts/install.sh.
# Every key and its default: postling.conf(5), and postling.conf.example beside this file.
# Check after an edit: postling -t      Apply: /etc/init.d/postling reload
#                                       (or systemctl reload postling)

# The name in greetings and Received: headers; default: the system's host name.
#hostname = mail.example.org
# Local mail domains; default: the host name's domain part.
#domains = example.org

# Add [::]:25 and [::]:110 to listen on IPv6 too.
smtp_listen = 0.0.0.0:25
pop3_listen = 0.0.0.0:110
pop2_listen =

spool_dir = /var/spool/postling
mailbox_dir = /var/mail/postling
users_file = /etc/postling/users
aliases_file = /etc/postling/aliases

# Started as root by init, postling binds its ports, then runs as this user.
user = postling
# Must match PIDFILE in /etc/default/postling and PIDFile= in the systemd unit.
pid_file = /run/postling.pid
# Empty: syslog, mail facility (Debian: /var/log/mail.log or the journal).
log_file =
log_level = info
EOF

cat >"$tmp/users" <<'EOF'
# /etc/postling/users: one mail user per line, `name:{SCHEME}secret`.
#   {SHA512-CRYPT}  a $6$ hash: `openssl passwd -6` or `mkpasswd -m sha-512`
#   {PLAIN}         the password itself (for tests only)
# Each user receives mail in the Maildir <mailbox_dir>/<name>/.
# Apply changes: /etc/init.d/postling reload
#alice:{SHA512-CRYPT}$6$salt$hash
EOF

cat >"$tmp/aliases" <<'EOF'
# /etc/postling/aliases: `local-part: target, target, ...`; `*` is a catch-all.
# Mail for postmaster must reach a person (RFC 5321 section 4.5.1): point it at a user.
#postmaster: alice
#abuse: postmaster
EOF

# ---- files ------------------------------------------------------------------------------
etc=$DESTDIR/etc/postling
mkdir -p "$etc"
# Searchable, and the config readable by everyone: sendmail runs as any user and reads it.
# The users file (password hashes) and the aliases stay 0640.
chmod 0755 "$etc"
own_config "$etc"

put "$bin" "$DESTDIR/usr/sbin/postling" 0755
put_config "$tmp/postling.conf" "$etc/postling.conf" 0644
put_config "$tmp/users" "$etc/users" 0640
put_config "$tmp/aliases" "$etc/aliases" 0640
put_config "$here/scripts/default.postling" "$DESTDIR/etc/default/postling" 0644
put "$here/scripts/postling.init" "$DESTDIR/etc/init.d/postling" 0755
put "$here/scripts/postling.service" "$DESTDIR/lib/systemd/system/postling.service" 0644
if [ -f "$here/conf/postling.conf.example" ]; then
    # A reference, never edited: always the current one.
    put "$here/conf/postling.conf.example" "$etc/postling.conf.example" 0644
fi
if [ -f "$here/doc/postling.8" ]; then
    put "$here/doc/postling.8" "$DESTDIR/usr/share/man/man8/postling.8" 0644
fi
if [ -f "$here/doc/postling.conf.5" ]; then
    put "$here/doc/postling.conf.5" "$DESTDIR/usr/share/man/man5/postling.conf.5" 0644
fi

# ---- sendmail and mailq -----------------------------------------------------------------
# Programs on the box (cron, scripts) send mail through /usr/sbin/sendmail. The link is made
# only where no other mail system put its own sendmail (or mailq): that one is left alone.
link_tool() {
    link=$DESTDIR/usr/sbin/$1
    if [ -L "$link" ] && [ "$(readlink "$link")" = postling ]; then
        return 0
    fi
    for other in "$DESTDIR/usr/sbin/$1" "$DESTDIR/usr/bin/$1" "$DESTDIR/usr/lib/$1"; do
        if [ -e "$other" ] || [ -L "$other" ]; then
            say "kept the existing $other (another mail system's); postling's own is: postling $2"
            return 0
        fi
    done
    ln -s postling "$link"
    say "linked /usr/sbin/$1 -> postling"
}
link_tool sendmail "sendmail [flags] [recipients]"
link_tool mailq "sendmail -bp (or postling -q)"

# ---- state directories ------------------------------------------------------------------
# The spool is searchable by everyone (0711) so that sendmail can reach spool/maildrop/
# (mode 1733: anyone may drop a file, nobody but postling may list or read it); everything
# else in it stays 0700. The daemon sets the same modes when it starts.
for d in "$SPOOL_DIR:0711" "$SPOOL_DIR/maildrop:1733" "$SPOOL_DIR/maildrop/bad:0700" "$MAIL_DIR:0700"; do
    mkdir -p "$DESTDIR${d%:*}"
    chmod "${d#*:}" "$DESTDIR${d%:*}"
    if [ -z "$DESTDIR" ]; then
        chown "$USER_NAME:$USER_NAME" "${d%:*}"
    fi
done

# ---- done -------------------------------------------------------------------------------
if [ -n "$DESTDIR" ]; then
    cat <<EOF
install: staged into $DESTDIR. The target system needs:
install:   a system user and group '$USER_NAME' (Debian: adduser --system --group --no-create-home $USER_NAME;
install:     BusyBox: addgroup -S $USER_NAME && adduser -S -D -H -G $USER_NAME $USER_NAME)
install:   chown $USER_NAME:$USER_NAME $SPOOL_DIR $SPOOL_DIR/maildrop $SPOOL_DIR/maildrop/bad $MAIL_DIR
install:     (modes 0711, 1733, 0700, 0700: postling sets them again at its start)
install:   chgrp $USER_NAME /etc/postling /etc/postling/postling.conf /etc/postling/users /etc/postling/aliases
install:   then /etc/init.d/postling linked into the init's start-up (or: systemctl enable postling)
EOF
    exit 0
fi

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    systemctl enable --quiet postling.service
    say "enabled postling.service; start it: systemctl start postling"
elif command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d postling defaults >/dev/null
    say "enabled /etc/init.d/postling; start it: /etc/init.d/postling start"
else
    say "start it with /etc/init.d/postling start, and add that to your init's start-up (e.g. a link in /etc/rc.d)"
fi
say "edit /etc/postling/postling.conf (hostname, domains), users and aliases, then check with: postling -t"
