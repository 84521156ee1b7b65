//! The one table of config keys: name, documented default, expected form, meaning, and the
//! function that parses the value. The parser (unknown keys, suggestions, the "expected" part
//! of every error) and all generated documentation read this table, so they cannot drift.

use std::path::Path;

use super::Config;
use super::values::{
    RelayHost, count, domain_name, duration, duration_with_zero, escape_controls, format_duration,
    list_items, listen_list, optional_path, port, quoted, relay_host, relay_tls, required_path,
    size, yes_no,
};
use crate::durable::SyncMode;
use crate::limits;

/// What a key is when the file does not set it, as documented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    /// A literal value, written as it would be in the file.
    Text(&'static str),
    /// Empty: the feature is off.
    Empty,
    /// Derived at start-up; `example` is a value the example file shows instead.
    Derived {
        text: &'static str,
        example: &'static str,
    },
}

/// One config key. `form` is the "expected ..." text of its errors and of the documentation.
pub struct KeySpec {
    pub name: &'static str,
    pub default: DefaultValue,
    pub form: &'static str,
    /// One paragraph; `backticks` mark literal text (rendered bold in the man page).
    pub meaning: &'static str,
    pub(super) apply: Apply,
}

/// Parses `value` into its field of the config, or says what is wrong with it.
pub(super) type Apply = fn(&mut Config, &str, &mut ValueCtx<'_>) -> Result<(), String>;

/// What a value parser needs beside the value: where relative paths start, and a place for
/// warnings about the line being parsed.
pub(super) struct ValueCtx<'a> {
    pub base: &'a Path,
    pub warnings: Vec<String>,
}

const DURATION_FORM: &str =
    "a duration: a whole number with s, m, h or d (a plain number is seconds), 1s to 3650d";
const PATH_FORM: &str = "a path (relative to the directory of the config file)";
const OPTIONAL_PATH_FORM: &str = "a path (relative to the directory of the config file), or empty";
const LISTEN_FORM: &str =
    "a comma-separated list of IP:PORT or [IPv6]:PORT (port 1-65535), or empty for off";
const COUNT_FORM: &str = "a whole number from 1 to 1000000";
const RELAY_HOST_FORM: &str = "HOST or HOST:PORT, HOST a host name, an IPv4 address or an \
                               [IPv6] address (brackets optional around the others), or empty";

/// Characters that may separate a subaddress. `#` is left out because it starts a comment.
pub const RECIPIENT_DELIMITERS: &str = "+-_=.~";

/// Every key, in the order the documentation lists them.
pub static KEYS: &[KeySpec] = &[
    KeySpec {
        name: "hostname",
        default: DefaultValue::Derived {
            text: "the system host name (gethostname(2), never DNS)",
            example: "mail.example.org",
        },
        form: "a domain name, e.g. mail.example.org",
        meaning: "The name postling uses for itself: in the SMTP greeting, in Received headers \
                  and as the domain of the sender of bounces. A name without a dot works but \
                  draws a start-up warning. Nothing at start-up looks it up in the DNS.",
        apply: set_hostname,
    },
    KeySpec {
        name: "domains",
        default: DefaultValue::Derived {
            text: "the part of `hostname` after its first dot (`hostname` itself if it has none)",
            example: "example.org, example.net",
        },
        form: "a comma-separated list of domain names",
        meaning: "The mail domains delivered here. Mail to a known user or alias at one of them \
                  is accepted; mail to any other domain is refused (`550 5.7.1 Relay access \
                  denied`) unless the client is in `relay_networks` or logged in on a \
                  submission port. Names are compared ignoring ASCII case only (A-Z); other \
                  characters must match exactly.",
        apply: set_domains,
    },
    KeySpec {
        name: "smtp_listen",
        default: DefaultValue::Text("0.0.0.0:25"),
        form: LISTEN_FORM,
        meaning: "Addresses that accept SMTP. Only IP literals: a host name here is an error, \
                  because start-up never uses DNS. IPv6 sockets are IPv6-only, so \
                  `0.0.0.0:25, [::]:25` listens on both families. Empty turns SMTP off.",
        apply: set_smtp_listen,
    },
    KeySpec {
        name: "pop3_listen",
        default: DefaultValue::Text("0.0.0.0:110"),
        form: LISTEN_FORM,
        meaning: "Addresses that accept POP3 (RFC 1939), written like `smtp_listen`. Empty \
                  turns POP3 off.",
        apply: set_pop3_listen,
    },
    KeySpec {
        name: "pop2_listen",
        default: DefaultValue::Empty,
        form: LISTEN_FORM,
        meaning: "Addresses that accept POP2 (RFC 937), for old clients, written like \
                  `smtp_listen`. Off unless set.",
        apply: set_pop2_listen,
    },
    KeySpec {
        name: "smtps_listen",
        default: DefaultValue::Empty,
        form: LISTEN_FORM,
        meaning: "Addresses that accept SMTP over implicit TLS (RFC 8314, usually port 465), \
                  written like `smtp_listen`: the TLS handshake comes first and nothing is \
                  ever written there in plaintext. Needs `tls_cert` and `tls_key`. Off unless \
                  set.",
        apply: set_smtps_listen,
    },
    KeySpec {
        name: "submission_listen",
        default: DefaultValue::Empty,
        form: LISTEN_FORM,
        meaning: "Addresses that accept message submission from users' mail programs (RFC \
                  6409, usually port 587, e.g. `0.0.0.0:587`), written like `smtp_listen`. \
                  Clients log in with AUTH PLAIN or LOGIN (a user of `users_file`) before MAIL, \
                  after STARTTLS unless the client is loopback or `allow_plaintext_auth` is \
                  yes; they may then send to any address, from their own addresses only. \
                  `smtps_listen` is a submission port too (RFC 8314). Off unless set.",
        apply: set_submission_listen,
    },
    KeySpec {
        name: "relay_networks",
        default: DefaultValue::Text("127.0.0.0/8, ::1/128"),
        form: "a comma-separated list of address blocks (`10.0.0.0/8`, `2001:db8::/32`, a \
               bare address); may be empty",
        meaning: "Clients that may send mail to other domains through `smtp_listen` (port \
                  25) without logging in, such as programs on this machine. Everybody else \
                  gets `550 5.7.1 Relay access denied` for a recipient outside `domains` \
                  there; users relay by logging in on `submission_listen` or `smtps_listen`. \
                  Empty: nobody relays without AUTH.",
        apply: set_relay_networks,
    },
    KeySpec {
        name: "pop3s_listen",
        default: DefaultValue::Empty,
        form: LISTEN_FORM,
        meaning: "Addresses that accept POP3 over implicit TLS (RFC 8314, usually port 995), \
                  written like `smtp_listen`. Needs `tls_cert` and `tls_key`. Off unless set.",
        apply: set_pop3s_listen,
    },
    KeySpec {
        name: "tls_cert",
        default: DefaultValue::Empty,
        form: OPTIONAL_PATH_FORM,
        meaning: "PEM file with the server certificate, then any intermediate certificates. \
                  With `tls_key` it turns on STARTTLS (SMTP), STLS (POP3) and the implicit-TLS \
                  listeners; set both or neither. Read again on SIGHUP: new connections get the \
                  new certificate, open ones keep theirs, and a new one that does not load \
                  keeps the old one. A certificate that expires within 14 days draws a warning \
                  at start and on reload.",
        apply: set_tls_cert,
    },
    KeySpec {
        name: "tls_key",
        default: DefaultValue::Empty,
        form: OPTIONAL_PATH_FORM,
        meaning: "PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1; RSA, \
                  ECDSA P-256/P-384 or Ed25519). `postling -t` checks that it matches the \
                  certificate.",
        apply: set_tls_key,
    },
    KeySpec {
        name: "tls_handshake_timeout",
        default: DefaultValue::Text("10s"),
        form: DURATION_FORM,
        meaning: "How long a client has to complete a TLS handshake, on the implicit-TLS \
                  ports and after STARTTLS or STLS; a client that stalls, trickles or sends \
                  garbage is closed then.",
        apply: set_tls_handshake_timeout,
    },
    KeySpec {
        name: "max_tls_handshakes",
        default: DefaultValue::Text("64"),
        form: COUNT_FORM,
        meaning: "TLS handshakes in progress at once. While this many are in progress, new \
                  connections to `smtps_listen` and `pop3s_listen` wait in the kernel's listen \
                  backlog, so a crowd that opens connections and stalls costs neither memory \
                  nor CPU beyond this; plaintext ports are served meanwhile. STARTTLS and STLS \
                  count too but are never held back.",
        apply: set_max_tls_handshakes,
    },
    KeySpec {
        name: "allow_plaintext_auth",
        default: DefaultValue::Text("no"),
        form: "yes or no",
        meaning: "Whether POP3 USER/PASS and AUTH PLAIN, POP2 logins and SMTP AUTH on the \
                  submission ports are accepted without TLS from clients other than loopback \
                  (127.0.0.0/8, ::1). With `no` such a POP login is refused with `-ERR \
                  [AUTH] TLS required` and CAPA lists USER and SASL PLAIN only where a login \
                  would be accepted: after STLS or on `pop3s_listen`; such an SMTP client is \
                  not offered AUTH and gets `538 5.7.11` until it uses STARTTLS.",
        apply: set_allow_plaintext_auth,
    },
    KeySpec {
        name: "spool_dir",
        default: DefaultValue::Text("/var/spool/postling"),
        form: PATH_FORM,
        meaning: "The queue: every accepted message lives here until each recipient is \
                  delivered or the message is bounced. Mail is acknowledged only once it is \
                  safely written here, so keep it on storage that survives a reboot. Created \
                  at start if missing.",
        apply: set_spool_dir,
    },
    KeySpec {
        name: "mailbox_dir",
        default: DefaultValue::Text("/var/mail/postling"),
        form: PATH_FORM,
        meaning: "One Maildir per user, `<mailbox_dir>/<user>/{tmp,new,cur}`, created with \
                  mode 0700 on first delivery. POP3 and POP2 read from here. Created at start \
                  if missing.",
        apply: set_mailbox_dir,
    },
    KeySpec {
        name: "fsync",
        default: DefaultValue::Text("file"),
        form: "`file` or `filesystem`",
        meaning: "How accepted and delivered mail is made durable before it is acknowledged. \
                  `file`: each file and directory is synced on its own (fdatasync, fsync), \
                  touching nothing but postling's files. `filesystem`: one syncfs per batch \
                  and filesystem makes all of a reactor turn's messages durable with a single \
                  wait for the disk, which is several times faster under load, but it also \
                  writes out whatever other programs have pending on that filesystem: use it \
                  when spool_dir and mailbox_dir are on a filesystem of their own or the rest \
                  of the machine writes little.",
        apply: set_fsync,
    },
    KeySpec {
        name: "disk_io",
        default: DefaultValue::Text("auto"),
        form: "`auto`, `uring` or `helper`",
        meaning: "How work that would make the server wait (password checks, opening and \
                  emptying POP mailboxes, the syncs and renames of the spool's commits and of \
                  Maildir deliveries) is done beside the one reactor thread. `auto`: \
                  the kernel's io_uring where it allows every operation used, else the helper \
                  process. `uring`: io_uring, and a start-up error where it is unusable \
                  (`kernel.io_uring_disabled`, a container's seccomp profile, an old kernel). \
                  `helper`: a helper process does everything with blocking calls. In every \
                  mode one helper process, forked at start after the privilege drop, checks \
                  the passwords, so `ps` shows two postling processes. The choice and its \
                  reason are logged at start. Read at start only.",
        apply: set_disk_io,
    },
    KeySpec {
        name: "users_file",
        default: DefaultValue::Text("/etc/postling/users"),
        form: PATH_FORM,
        meaning: "The users and their passwords, one `user:{SCHEME}hash` per line. Schemes: \
                  `SHA512-CRYPT` (`$6$...`, as printed by `postling passwd USER` or \
                  `openssl passwd -6`) and `PLAIN`. Re-read when it changes.",
        apply: set_users_file,
    },
    KeySpec {
        name: "aliases_file",
        default: DefaultValue::Text("/etc/postling/aliases"),
        form: PATH_FORM,
        meaning: "Aliases, one `local-part: target, target...` per line. A target is a local \
                  user, another alias or a full address; the local part `*` catches every \
                  unknown local part. Re-read when it changes.",
        apply: set_aliases_file,
    },
    KeySpec {
        name: "max_connections",
        default: DefaultValue::Text("512"),
        form: COUNT_FORM,
        meaning: "Connections open at once over all protocols. At the limit a newcomer \
                  takes the place of an idle connection that holds nothing (SMTP outside a \
                  mail transaction, POP not logged in), taken from the protocol and then the \
                  address with the most such connections, longest idle first; that session is \
                  told `421 4.3.2` (SMTP) or `-ERR [SYS/TEMP]` (POP3) and closed. With none of \
                  those, newcomers are refused politely the same way. If the descriptor limit is too low, postling raises it or says \
                  how many connections it will really serve.",
        apply: set_max_connections,
    },
    KeySpec {
        name: "max_connections_per_ip",
        default: DefaultValue::Text("16"),
        form: COUNT_FORM,
        meaning: "Connections open at once from one client address; more are refused like \
                  those past `max_connections`.",
        apply: set_max_connections_per_ip,
    },
    KeySpec {
        name: "max_message_size",
        default: DefaultValue::Text("10M"),
        form: "a size from 1 to 1G: a whole number of bytes, or with a K, M or G suffix \
               (1K = 1024)",
        meaning: "The largest message accepted, advertised with the SMTP SIZE extension. A \
                  larger message is read to its end and refused with `552 5.3.4`.",
        apply: set_max_message_size,
    },
    KeySpec {
        name: "smtp_timeout",
        default: DefaultValue::Text("5m"),
        form: DURATION_FORM,
        meaning: "How long an SMTP client may stay silent while postling waits for a command \
                  or message data (RFC 5321 section 4.5.3.2.7 asks for 5 minutes). Only \
                  progress resets it, and a whole session is capped at 1 hour.",
        apply: set_smtp_timeout,
    },
    KeySpec {
        name: "pop3_timeout",
        default: DefaultValue::Text("10m"),
        form: DURATION_FORM,
        meaning: "How long a POP3 or POP2 client may stay idle (before login, \
                  `pop3_login_timeout` ends it sooner). RFC 1939 section 3 asks for \
                  at least 10 minutes; a shorter value works but draws a warning. A whole \
                  session is capped at 2 hours.",
        apply: set_pop3_timeout,
    },
    KeySpec {
        name: "pop3_login_timeout",
        default: DefaultValue::Text("1m"),
        form: DURATION_FORM,
        meaning: "How long a POP3 or POP2 client has from connecting until it is logged in; \
                  then it gets `-ERR [SYS/TEMP]` (POP2: `-`) and is closed, whatever it sends \
                  meanwhile. RFC 1939's 10-minute autologout timer (`pop3_timeout`) is for \
                  logged-in sessions.",
        apply: set_pop3_login_timeout,
    },
    KeySpec {
        name: "log_file",
        default: DefaultValue::Empty,
        form: OPTIONAL_PATH_FORM,
        meaning: "Where log lines go. Empty: standard error in the foreground (`-f`), the \
                  system log (mail facility) when detached. SIGUSR1 reopens the file, for log \
                  rotation.",
        apply: set_log_file,
    },
    KeySpec {
        name: "log_level",
        default: DefaultValue::Text("info"),
        form: "one of error, warn, info, debug",
        meaning: "How much is logged: `info` writes a line per connection and per delivery, \
                  `debug` adds detail. The `-v` option means `debug`.",
        apply: set_log_level,
    },
    KeySpec {
        name: "pid_file",
        default: DefaultValue::Empty,
        form: OPTIONAL_PATH_FORM,
        meaning: "A file holding the daemon's process id, created and locked before privileges \
                  are dropped and removed at a clean exit; a second instance with the same pid \
                  file refuses to start. Empty: none.",
        apply: set_pid_file,
    },
    KeySpec {
        name: "recipient_delimiter",
        default: DefaultValue::Text("+"),
        form: "one of the characters + - _ = . ~, or empty for off",
        meaning: "Subaddressing: `user+tag@domain` is delivered to `user` unless `user+tag` \
                  is itself an alias. Empty turns subaddressing off.",
        apply: set_recipient_delimiter,
    },
    KeySpec {
        name: "retry_min",
        default: DefaultValue::Text("1m"),
        form: DURATION_FORM,
        meaning: "The wait before a failed delivery is first tried again; each further wait \
                  doubles, up to `retry_max`.",
        apply: set_retry_min,
    },
    KeySpec {
        name: "retry_max",
        default: DefaultValue::Text("1h"),
        form: DURATION_FORM,
        meaning: "The longest wait between two delivery attempts; not shorter than \
                  `retry_min`.",
        apply: set_retry_max,
    },
    KeySpec {
        name: "queue_lifetime",
        default: DefaultValue::Text("5d"),
        form: DURATION_FORM,
        meaning: "How long a message may stay undeliverable in the queue before it is \
                  returned to its sender with a delivery status notification.",
        apply: set_queue_lifetime,
    },
    KeySpec {
        name: "delay_warning_time",
        default: DefaultValue::Text("4h"),
        form: "a duration: a whole number with s, m, h or d (a plain number is seconds), up to \
               3650d, or 0 for never",
        meaning: "When a message is still queued this long after its arrival, its sender gets \
                  one delay warning (a delivery status notification with `Action: delayed`) \
                  listing the recipients still being retried, their last error, and until when \
                  they are retried (the arrival plus `queue_lifetime`). At most one per \
                  message; none to the null sender. `0` sends none.",
        apply: set_delay_warning_time,
    },
    KeySpec {
        name: "auth_failure_delay",
        default: DefaultValue::Text("2s"),
        form: "a duration of at least 1s: a whole number with s, m, h or d (a plain number is \
               seconds)",
        meaning: "How long a wrong password waits for its `-ERR`; an unknown user waits the \
                  same, and so do a right password for a POP mailbox in use (`[IN-USE]`) and a \
                  login refused because its address made too many failed logins or too many \
                  logins. Other clients are served meanwhile. Not below 1s, which keeps \
                  password guessing slow and login loops cheap.",
        apply: set_auth_failure_delay,
    },
    KeySpec {
        name: "login_attempts_per_client",
        default: DefaultValue::Text("30"),
        form: "a whole number from 0 to 100000",
        meaning: "Logins of any outcome (right or wrong password, `[IN-USE]`) one client \
                  address (IPv4, or IPv6 /64) may make at once over POP3, POP2 and SMTP AUTH, \
                  and then each minute. Past it a login is refused without checking the \
                  password, after `auth_failure_delay`, and the connection closes. Raise it \
                  for a host that submits mail over many authenticated connections; `0` turns \
                  the limit off (failed logins are limited all the same).",
        apply: set_login_attempts_per_client,
    },
    KeySpec {
        name: "user",
        default: DefaultValue::Empty,
        form: "a user name (letters, digits, . _ -), or empty",
        meaning: "After binding its ports as root, postling drops to this user and its group, \
                  and refuses to go on as root if that fails. Empty: keep running as the user \
                  that started it. The user must be a local account in /etc/passwd; its groups \
                  come from /etc/group (NSS sources such as LDAP are not consulted).",
        apply: set_user,
    },
    KeySpec {
        name: "relay_host",
        default: DefaultValue::Empty,
        form: RELAY_HOST_FORM,
        meaning: "The smarthost: when set, all mail for other domains (forwarding aliases, \
                  relayed and submitted mail, bounces to outside senders) is handed to this \
                  server, as a provider or an office mail server expects; no MX is looked up. \
                  A host name, an IPv4 address or an `[IPv6]` address, with an optional \
                  `:PORT`; `[name]` is accepted as in Postfix and means the same as `name`. \
                  Without a port: 25, or 465 with `relay_tls = implicit`. For a provider's \
                  submission port: `relay_host = smtp.example.net:587` with \
                  `relay_auth_file = /etc/postling/relay_auth`. Empty: deliver by MX \
                  (`outbound_port`, `dns_servers`).",
        apply: set_relay_host,
    },
    KeySpec {
        name: "relay_tls",
        default: DefaultValue::Text("starttls"),
        form: "`starttls`, `implicit` or `none`",
        meaning: "How mail to `relay_host` is encrypted. `starttls`: STARTTLS is required; a \
                  relay that does not offer it or fails the handshake gets no mail (it waits \
                  in the queue and is retried). `implicit`: TLS from the first byte (RFC \
                  8314), usually port 465. `none`: plain text, for a relay on this machine \
                  or a trusted network; not with `relay_auth_file`. Delivery by MX always \
                  uses STARTTLS when offered, without verification.",
        apply: set_relay_tls,
    },
    KeySpec {
        name: "relay_tls_verify",
        default: DefaultValue::Text("yes"),
        form: "yes or no",
        meaning: "Whether the certificate of `relay_host` must chain to a CA of \
                  `tls_ca_file` and name the host as written in `relay_host` (an IP literal \
                  must be in the certificate as an IP address). A relay whose certificate \
                  fails gets no mail (it is retried). `no` encrypts without checking who \
                  answers, which a man in the middle can read and, with `relay_auth_file`, \
                  learn the password from: use it only for a relay you reach over a network \
                  you trust.",
        apply: set_relay_tls_verify,
    },
    KeySpec {
        name: "tls_ca_file",
        default: DefaultValue::Empty,
        form: OPTIONAL_PATH_FORM,
        meaning: "PEM file of the CA certificates `relay_host`'s certificate is verified \
                  against, e.g. a private CA's. Empty: the system's bundle. `postling -t` \
                  checks that it holds a certificate.",
        apply: set_tls_ca_file,
    },
    KeySpec {
        name: "relay_auth_file",
        default: DefaultValue::Empty,
        form: OPTIONAL_PATH_FORM,
        meaning: "A file with the user name and password postling logs in to `relay_host` \
                  with (AUTH PLAIN or LOGIN, only after TLS is up): one line `user password`, \
                  the user being the first word and the password the rest of the line, \
                  surrounding spaces trimmed; blank lines and lines starting with `#` are \
                  ignored. It must be readable by its owner only (`chmod 600`) and owned by \
                  the user postling runs as (`user`), since it is read again on SIGHUP; \
                  otherwise postling does not start. Needs `relay_host` and a `relay_tls` other \
                  than `none`. Empty: no AUTH.",
        apply: set_relay_auth_file,
    },
    KeySpec {
        name: "outbound_port",
        default: DefaultValue::Text("25"),
        form: "a port from 1 to 65535",
        meaning: "The port of the MX hosts mail is delivered to when `relay_host` is empty \
                  (Postfix's `smtp_tcp_port`). Other mail servers listen on 25; another value \
                  is for tests. `relay_host` carries its own port.",
        apply: set_outbound_port,
    },
    KeySpec {
        name: "dns_servers",
        default: DefaultValue::Empty,
        form: "IP, IP:PORT, [IPv6] or [IPv6]:PORT, separated by commas or spaces (port 53 by \
               default, at most 3 servers), or empty",
        meaning: "The recursive nameservers asked for MX and address records. Empty: the \
                  `nameserver` lines of /etc/resolv.conf, read again when the file changes. \
                  Only IP addresses: the resolver cannot look up its own servers. A box \
                  without a working nameserver still starts; mail by MX then waits in the \
                  queue.",
        apply: set_dns_servers,
    },
    KeySpec {
        name: "outbound_allow_private",
        default: DefaultValue::Text("no"),
        form: "yes or no",
        meaning: "Whether delivery by MX may connect to loopback, private (10/8, 172.16/12, \
                  192.168/16, fc00::/7) and link-local addresses. With `no` an MX record \
                  that points there is skipped, so a hostile DNS answer cannot send mail into \
                  the local network. `relay_host` may always name such an address.",
        apply: set_outbound_allow_private,
    },
    KeySpec {
        name: "outbound_concurrency",
        default: DefaultValue::Text("4"),
        form: "a whole number from 1 to 100",
        meaning: "Outbound connections to one destination (the relay, or one domain's MX \
                  hosts) at once. One connection carries every recipient of a message there, \
                  and further messages after it. Not more than `outbound_max_connections`.",
        apply: set_outbound_concurrency,
    },
    KeySpec {
        name: "outbound_max_connections",
        default: DefaultValue::Text("32"),
        form: "a whole number from 1 to 1000",
        meaning: "Outbound connections at once over all destinations. They are counted apart \
                  from `max_connections`, so outgoing mail never takes a slot from a client, \
                  and local delivery goes on while they are busy.",
        apply: set_outbound_max_connections,
    },
    KeySpec {
        name: "outbound_connect_timeout",
        default: DefaultValue::Text("30s"),
        form: DURATION_FORM,
        meaning: "How long a TCP connection to a relay or MX host may take to be established; \
                  then the next address is tried, or the delivery is retried later.",
        apply: set_outbound_connect_timeout,
    },
    KeySpec {
        name: "outbound_greeting_timeout",
        default: DefaultValue::Text("5m"),
        form: DURATION_FORM,
        meaning: "How long a remote server has for its `220` greeting (RFC 5321 section \
                  4.5.3.2.1). This and the other `outbound_*_timeout` keys default to the \
                  RFC's figures; a timeout defers the mail (retried later), never bounces it.",
        apply: set_outbound_greeting_timeout,
    },
    KeySpec {
        name: "outbound_command_timeout",
        default: DefaultValue::Text("5m"),
        form: DURATION_FORM,
        meaning: "How long a remote server has to answer EHLO, HELO, STARTTLS (and finish its \
                  handshake), AUTH, RSET and QUIT.",
        apply: set_outbound_command_timeout,
    },
    KeySpec {
        name: "outbound_mail_timeout",
        default: DefaultValue::Text("5m"),
        form: DURATION_FORM,
        meaning: "How long a remote server has to answer MAIL FROM (RFC 5321 section \
                  4.5.3.2.2).",
        apply: set_outbound_mail_timeout,
    },
    KeySpec {
        name: "outbound_rcpt_timeout",
        default: DefaultValue::Text("5m"),
        form: DURATION_FORM,
        meaning: "How long a remote server has to answer each RCPT TO (RFC 5321 section \
                  4.5.3.2.3).",
        apply: set_outbound_rcpt_timeout,
    },
    KeySpec {
        name: "outbound_data_init_timeout",
        default: DefaultValue::Text("2m"),
        form: DURATION_FORM,
        meaning: "How long a remote server has to answer DATA with `354` (RFC 5321 section \
                  4.5.3.2.4).",
        apply: set_outbound_data_init_timeout,
    },
    KeySpec {
        name: "outbound_data_block_timeout",
        default: DefaultValue::Text("3m"),
        form: DURATION_FORM,
        meaning: "How long a remote server may take to accept each block of message data \
                  (RFC 5321 section 4.5.3.2.5).",
        apply: set_outbound_data_block_timeout,
    },
    KeySpec {
        name: "outbound_data_end_timeout",
        default: DefaultValue::Text("10m"),
        form: DURATION_FORM,
        meaning: "How long a remote server has to answer the end of the message data (RFC \
                  5321 section 4.5.3.2.6). It may be filtering or storing a large message; \
                  giving up early risks the message being delivered twice.",
        apply: set_outbound_data_end_timeout,
    },
];

/// The spec of a key, if it is one.
pub fn spec(name: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|k| k.name == name)
}

/// The known key closest to `name` by edit distance (ties: the earlier in the table).
pub fn nearest_key(name: &str) -> &'static str {
    // Suggestions only need the start of a long line; bounds the work on garbage.
    let name: String = name
        .chars()
        .take(64)
        .collect::<String>()
        .to_ascii_lowercase();
    let mut best = ("hostname", usize::MAX);
    for k in KEYS {
        let d = edit_distance(&name, k.name);
        if d < best.1 {
            best = (k.name, d);
        }
    }
    best.0
}

/// Levenshtein distance over characters, with one row of memory.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row.first().copied().unwrap_or(0);
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
        for (j, &cb) in b.iter().enumerate() {
            let above = row.get(j + 1).copied().unwrap_or(usize::MAX);
            let left = row.get(j).copied().unwrap_or(usize::MAX);
            let substitute = diagonal + usize::from(ca != cb);
            let best = substitute
                .min(above.saturating_add(1))
                .min(left.saturating_add(1));
            diagonal = above;
            if let Some(cell) = row.get_mut(j + 1) {
                *cell = best;
            }
        }
    }
    row.last().copied().unwrap_or(0)
}

// ---- appliers, one per key ------------------------------------------------------------------

fn set_hostname(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.hostname = domain_name(v)?;
    c.hostname_from_system = false;
    Ok(())
}

fn set_domains(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    let mut domains: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    for item in list_items(v) {
        match domain_name(item) {
            Ok(d) => {
                let d = d.to_ascii_lowercase();
                if domains.contains(&d) {
                    ctx.warnings.push(format!("{d} is listed twice"));
                } else {
                    domains.push(d);
                }
            }
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    if domains.is_empty() {
        return Err("no domain given".to_string());
    }
    c.domains = domains;
    Ok(())
}

fn set_smtp_listen(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.smtp_listen = listen_list(v, &mut ctx.warnings)?;
    Ok(())
}

fn set_pop3_listen(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.pop3_listen = listen_list(v, &mut ctx.warnings)?;
    Ok(())
}

fn set_pop2_listen(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.pop2_listen = listen_list(v, &mut ctx.warnings)?;
    Ok(())
}

fn set_smtps_listen(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.smtps_listen = listen_list(v, &mut ctx.warnings)?;
    Ok(())
}

fn set_submission_listen(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.submission_listen = listen_list(v, &mut ctx.warnings)?;
    Ok(())
}

fn set_relay_networks(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.relay_networks = super::values::cidr_list(v)?;
    Ok(())
}

fn set_pop3s_listen(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.pop3s_listen = listen_list(v, &mut ctx.warnings)?;
    Ok(())
}

fn set_tls_cert(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.tls_cert = optional_path(v, ctx.base);
    Ok(())
}

fn set_tls_key(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.tls_key = optional_path(v, ctx.base);
    Ok(())
}

fn set_tls_handshake_timeout(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.tls_handshake_timeout = duration(v)?;
    Ok(())
}

fn set_max_tls_handshakes(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.max_tls_handshakes = count(v, 1, limits::CONFIG_MAX_CONNECTIONS)?;
    Ok(())
}

fn set_allow_plaintext_auth(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.allow_plaintext_auth = match v {
        "yes" => true,
        "no" => false,
        _ => return Err(format!("{} is not yes or no", quoted(v))),
    };
    Ok(())
}

fn set_spool_dir(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.spool_dir = required_path(v, ctx.base)?;
    Ok(())
}

fn set_mailbox_dir(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.mailbox_dir = required_path(v, ctx.base)?;
    Ok(())
}

fn set_users_file(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.users_file = required_path(v, ctx.base)?;
    Ok(())
}

fn set_aliases_file(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.aliases_file = required_path(v, ctx.base)?;
    Ok(())
}

fn set_max_connections(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.max_connections = count(v, 1, limits::CONFIG_MAX_CONNECTIONS)?;
    Ok(())
}

fn set_max_connections_per_ip(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.max_connections_per_ip = count(v, 1, limits::CONFIG_MAX_CONNECTIONS)?;
    Ok(())
}

fn set_max_message_size(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    let n = size(v)?;
    if n == 0 {
        return Err(format!("{} would refuse every message", quoted(v)));
    }
    if n > limits::MAX_MESSAGE_SIZE_LIMIT {
        return Err(format!("{} is more than the limit of 1G", quoted(v)));
    }
    c.max_message_size = n;
    Ok(())
}

fn set_smtp_timeout(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.smtp_timeout = duration(v)?;
    Ok(())
}

fn set_pop3_timeout(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.pop3_timeout = duration(v)?;
    Ok(())
}

fn set_pop3_login_timeout(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.pop3_login_timeout = duration(v)?;
    Ok(())
}

fn set_log_file(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.log_file = optional_path(v, ctx.base);
    Ok(())
}

fn set_log_level(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.log_level = match v.to_ascii_lowercase().as_str() {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        _ => return Err(format!("{} is not a log level", quoted(v))),
    };
    Ok(())
}

fn set_fsync(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.fsync = match v.to_ascii_lowercase().as_str() {
        "file" => SyncMode::File,
        "filesystem" => SyncMode::Filesystem,
        _ => return Err(format!("{} is not a sync mode", quoted(v))),
    };
    Ok(())
}

fn set_disk_io(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.disk_io = crate::exec::DiskIo::parse(&v.to_ascii_lowercase())
        .ok_or_else(|| format!("{} is not a disk_io mode", quoted(v)))?;
    Ok(())
}

fn set_pid_file(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.pid_file = optional_path(v, ctx.base);
    Ok(())
}

fn set_recipient_delimiter(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    let mut chars = v.chars();
    c.recipient_delimiter = match (chars.next(), chars.next()) {
        (None, _) => None,
        (Some(d), None) if RECIPIENT_DELIMITERS.contains(d) => Some(d),
        (Some(_), None) => {
            return Err(format!(
                "{} cannot separate a subaddress from a user name",
                quoted(v)
            ));
        }
        (Some(_), Some(_)) => return Err(format!("{} is more than one character", quoted(v))),
    };
    Ok(())
}

fn set_retry_min(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.retry_min = duration(v)?;
    Ok(())
}

fn set_retry_max(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.retry_max = duration(v)?;
    Ok(())
}

fn set_queue_lifetime(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.queue_lifetime = duration(v)?;
    Ok(())
}

fn set_delay_warning_time(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.delay_warning_time = duration_with_zero(v)?;
    Ok(())
}

fn set_login_attempts_per_client(
    c: &mut Config,
    v: &str,
    _: &mut ValueCtx<'_>,
) -> Result<(), String> {
    c.login_attempts_per_client = count(v, 0, limits::AUTH_ATTEMPTS_PER_CLIENT_MAX)? as u32;
    Ok(())
}

fn set_auth_failure_delay(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    let d = duration_with_zero(v)?;
    if d < limits::AUTH_FAILURE_DELAY_MIN {
        return Err(format!(
            "{} is below the minimum of {}: a quicker answer helps password guessing",
            quoted(v),
            format_duration(limits::AUTH_FAILURE_DELAY_MIN)
        ));
    }
    c.auth_failure_delay = d;
    Ok(())
}

fn set_user(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    if v.is_empty() {
        c.user = None;
        return Ok(());
    }
    let valid_char = |ch: char| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-');
    if v.len() > 32 || v.starts_with('-') || !v.chars().all(valid_char) {
        return Err(format!("{} is not a user name", quoted(v)));
    }
    c.user = Some(v.to_string());
    Ok(())
}

fn set_relay_host(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    // Port 0 stands for "not written" until the whole file is read: the default depends on
    // relay_tls, which may come later (see `config::parse_with`).
    c.relay_host = relay_host(v)?.map(|(host, port)| RelayHost {
        host,
        port: port.unwrap_or(0),
    });
    Ok(())
}

fn set_relay_tls(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.relay_tls = relay_tls(v)?;
    Ok(())
}

fn set_relay_tls_verify(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.relay_tls_verify = yes_no(v)?;
    Ok(())
}

fn set_tls_ca_file(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.tls_ca_file = optional_path(v, ctx.base);
    Ok(())
}

fn set_relay_auth_file(c: &mut Config, v: &str, ctx: &mut ValueCtx<'_>) -> Result<(), String> {
    c.relay_auth_file = optional_path(v, ctx.base);
    Ok(())
}

fn set_outbound_port(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.outbound_port = port(v)?;
    Ok(())
}

fn set_dns_servers(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    // Its messages show the items as written: escaped, so an error stays one clean line.
    c.dns_servers = crate::dns::parse_dns_servers(v).map_err(|p| escape_controls(&p))?;
    Ok(())
}

fn set_outbound_allow_private(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.outbound_allow_private = yes_no(v)?;
    Ok(())
}

fn set_outbound_concurrency(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.outbound_concurrency = count(v, 1, limits::OUTBOUND_CONCURRENCY_MAX)?;
    Ok(())
}

fn set_outbound_max_connections(
    c: &mut Config,
    v: &str,
    _: &mut ValueCtx<'_>,
) -> Result<(), String> {
    c.outbound_max_connections = count(v, 1, limits::OUTBOUND_MAX_CONNECTIONS_MAX)?;
    Ok(())
}

fn set_outbound_connect_timeout(
    c: &mut Config,
    v: &str,
    _: &mut ValueCtx<'_>,
) -> Result<(), String> {
    c.outbound_connect_timeout = duration(v)?;
    Ok(())
}

fn set_outbound_greeting_timeout(
    c: &mut Config,
    v: &str,
    _: &mut ValueCtx<'_>,
) -> Result<(), String> {
    c.outbound_timeouts.greeting = duration(v)?;
    Ok(())
}

fn set_outbound_command_timeout(
    c: &mut Config,
    v: &str,
    _: &mut ValueCtx<'_>,
) -> Result<(), String> {
    c.outbound_timeouts.command = duration(v)?;
    Ok(())
}

fn set_outbound_mail_timeout(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.outbound_timeouts.mail = duration(v)?;
    Ok(())
}

fn set_outbound_rcpt_timeout(c: &mut Config, v: &str, _: &mut ValueCtx<'_>) -> Result<(), String> {
    c.outbound_timeouts.rcpt = duration(v)?;
    Ok(())
}

fn set_outbound_data_init_timeout(
    c: &mut Config,
    v: &str,
    _: &mut ValueCtx<'_>,
) -> Result<(), String> {
    c.outbound_timeouts.data_init = duration(v)?;
    Ok(())
}

fn set_outbound_data_block_timeout(
    c: &mut Config,
    v: &str,
    _: &mut ValueCtx<'_>,
) -> Result<(), String> {
    c.outbound_timeouts.data_block = duration(v)?;
    Ok(())
}

fn set_outbound_data_end_timeout(
    c: &mut Config,
    v: &str,
    _: &mut ValueCtx<'_>,
) -> Result<(), String> {
    c.outbound_timeouts.data_end = duration(v)?;
    Ok(())
}
