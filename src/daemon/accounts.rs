//! The local account files, read directly: `/etc/passwd` and `/etc/group`. Owns the one user
//! lookup the privilege drop needs (name → uid, primary gid and the groups that list the user
//! as a member) and uid → name for messages.
//!
//! Why not getpwnam_r/initgroups: the released binary links glibc statically, and static glibc
//! still follows /etc/nsswitch.conf by dlopen()ing modules such as libnss_systemd.so.2 (named
//! for `group` on a stock Debian 12); the module brings a second, dynamic libc into the
//! process, which crashed the daemon at start (issue 10). So postling only knows accounts in
//! the local files, never LDAP, NIS, systemd's dynamic users or any other NSS source.
//!
//! The parser is strict: a line that is not exactly `name:password:uid:gid:gecos:home:shell`
//! (passwd) or `name:password:gid:members` (group), with decimal ids, is skipped; when the
//! skipped line is the entry being looked up the lookup fails naming file, line and defect
//! rather than guessing. Blank lines, `#` comments and NIS `+`/`-` lines are not entries.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::limits;

/// Where the account files are; tests point these at sample files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub passwd: PathBuf,
    pub group: PathBuf,
}

impl Files {
    /// The system's: /etc/passwd and /etc/group.
    pub fn system() -> Files {
        Files {
            passwd: PathBuf::from("/etc/passwd"),
            group: PathBuf::from("/etc/group"),
        }
    }
}

/// A passwd entry: what the privilege drop needs of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// A user's groups: the primary gid first, then every group that lists the user, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    pub gids: Vec<libc::gid_t>,
    /// Malformed /etc/group lines that name the user, skipped (file, line, defect), to log.
    pub skipped: Vec<String>,
}

/// The entry named `name` in the passwd file: Ok(None) when there is none; Err (naming the
/// file, and the line where there is one) when the file cannot be read or the user's own
/// entry is malformed.
pub fn find_user(files: &Files, name: &str) -> Result<Option<User>, String> {
    let text = read(&files.passwd)?;
    for (n, line) in lines(&text) {
        let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
        if fields.first() != Some(&name.as_bytes()) {
            continue;
        }
        return match parse_passwd(line) {
            Ok(Some((_, user))) => Ok(Some(user)),
            // A NIS `+`/`-` line whose first field happens to be `name`.
            Ok(None) => continue,
            Err(defect) => Err(format!(
                "{}:{n}: the entry for user {name} is malformed ({defect}); \
                 expected name:password:uid:gid:gecos:home:shell",
                files.passwd.display()
            )),
        };
    }
    Ok(None)
}

/// The name of the first well-formed passwd entry with `uid`; None when there is none or
/// the file cannot be read (this is only for messages).
pub fn name_of_uid(files: &Files, uid: libc::uid_t) -> Option<String> {
    let text = read(&files.passwd).ok()?;
    lines(&text).find_map(|(_, line)| match parse_passwd(line) {
        Ok(Some((name, user))) if user.uid == uid => Some(String::from_utf8_lossy(name).into()),
        _ => None,
    })
}

/// `name`'s groups for setgroups: `primary` first, then the gid of every well-formed group
/// line whose member list names the user, in file order, each once.
pub fn groups_of(files: &Files, name: &str, primary: libc::gid_t) -> Result<Groups, String> {
    let text = read(&files.group)?;
    let mut groups = Groups {
        gids: vec![primary],
        skipped: Vec::new(),
    };
    for (n, line) in lines(&text) {
        match parse_group(line) {
            Ok(Some(g)) => {
                if g.members.contains(&name.as_bytes()) && !groups.gids.contains(&g.gid) {
                    groups.gids.push(g.gid);
                }
            }
            Ok(None) => {}
            Err(defect) => {
                let names_user = line
                    .split(|&b| b == b':' || b == b',')
                    .skip(1)
                    .any(|f| f == name.as_bytes());
                if names_user {
                    groups.skipped.push(format!(
                        "{}:{n}: skipped a malformed group line that lists user {name} ({defect}); \
                         expected name:password:gid:member,member",
                        files.group.display()
                    ));
                }
            }
        }
    }
    Ok(groups)
}

/// The numbered lines of a file (1-based), without their line ends.
fn lines(text: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    text.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

/// True for what is not an entry: blank, a `#` comment, or NIS compat (`+...`, `-...`).
fn not_an_entry(line: &[u8]) -> bool {
    matches!(
        line.iter().find(|b| !b.is_ascii_whitespace()),
        None | Some(b'#' | b'+' | b'-')
    )
}

/// `name:password:uid:gid:gecos:home:shell`. Ok(None): not an entry; Err: what is wrong.
fn parse_passwd(line: &[u8]) -> Result<Option<(&[u8], User)>, String> {
    if not_an_entry(line) {
        return Ok(None);
    }
    let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
    let [name, _password, uid, gid, _gecos, _home, _shell] = fields.as_slice() else {
        return Err(format!("{} fields, not 7", fields.len()));
    };
    check_name(name)?;
    Ok(Some((
        name,
        User {
            uid: id("uid", uid)?,
            gid: id("gid", gid)?,
        },
    )))
}

/// A well-formed /etc/group line: its gid and member names.
struct GroupLine<'a> {
    gid: libc::gid_t,
    members: Vec<&'a [u8]>,
}

/// `name:password:gid:member,member`. Ok(None): not an entry; Err: what is wrong.
fn parse_group(line: &[u8]) -> Result<Option<GroupLine<'_>>, String> {
    if not_an_entry(line) {
        return Ok(None);
    }
    let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
    let [name, _password, gid, members] = fields.as_slice() else {
        return Err(format!("{} fields, not 4", fields.len()));
    };
    check_name(name)?;
    let gid = id("gid", gid)?;
    let members = members
        .split(|&b| b == b',')
        .filter(|m| !m.is_empty())
        .collect();
    Ok(Some(GroupLine { gid, members }))
}

fn check_name(name: &[u8]) -> Result<(), String> {
    if name.is_empty() {
        return Err("an empty name".into());
    }
    if let Some(b) = name
        .iter()
        .find(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("a name with the byte {b:#04x}"));
    }
    Ok(())
}

/// A decimal id. (uid_t)-1 is refused: to setuid/setgid it means "leave unchanged".
fn id(what: &str, field: &[u8]) -> Result<u32, String> {
    let shown = || String::from_utf8_lossy(field).into_owned();
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return Err(format!("{what} {:?} is not a decimal number", shown()));
    }
    match std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        Some(n) if n != u32::MAX => Ok(n),
        _ => Err(format!("{what} {} is out of range", shown())),
    }
}

/// The whole file, refusing one larger than `limits::ACCOUNT_FILE_MAX_BYTES`.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut text = Vec::new();
    file.take(limits::ACCOUNT_FILE_MAX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > limits::ACCOUNT_FILE_MAX_BYTES {
        return Err(format!(
            "cannot read {}: larger than {} bytes",
            path.display(),
            limits::ACCOUNT_FILE_MAX_BYTES
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment:with:colons:1:2:3:4
+nisuser::::::

nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
broken:x:12:notanumber::/:/bin/false
short:x:13:13
postling:x:998:997::/nonexistent:/usr/sbin/nologin
postling:x:1:1::/dup:/bin/false
minus1:x:4294967295:1::/:/bin/false
big:x:4294967296:1::/:/bin/false
spaced:x: 14:14::/:/bin/false
trailing";

    const GROUP: &str = "\
root:x:0:
mail:x:8:
postling:x:997:
adm:x:4:syslog,postling
tty:x:5:
extra:x:1000:alice,postling,bob
again:x:1000:postling
notpostling:x:1001:postlingx,xpostling
bad:x:abc:postling
short:x:1002
badunrelated:x:oops:alice
+nisgroup:::postling
# commented:x:1003:postling";

    fn sample(passwd: impl AsRef<[u8]>, group: impl AsRef<[u8]>) -> (tempfile::TempDir, Files) {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("passwd"), passwd).unwrap();
        std::fs::write(t.path().join("group"), group).unwrap();
        let files = Files {
            passwd: t.path().join("passwd"),
            group: t.path().join("group"),
        };
        (t, files)
    }

    #[test]
    fn finds_users_by_name_first_entry_wins() {
        let (_t, f) = sample(PASSWD, GROUP);
        assert_eq!(
            find_user(&f, "root").unwrap(),
            Some(User { uid: 0, gid: 0 })
        );
        assert_eq!(
            find_user(&f, "postling").unwrap(),
            Some(User { uid: 998, gid: 997 })
        );
        assert_eq!(
            find_user(&f, "nobody").unwrap(),
            Some(User {
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(find_user(&f, "alice").unwrap(), None);
        assert_eq!(
            find_user(&f, "nisuser").unwrap(),
            None,
            "NIS compat is not an entry"
        );
        assert_eq!(find_user(&f, "+nisuser").unwrap(), None);
        assert_eq!(find_user(&f, "a comment").unwrap(), None);
    }

    #[test]
    fn a_malformed_entry_for_the_user_is_an_error_naming_file_and_line() {
        let (_t, f) = sample(PASSWD, GROUP);
        let p = f.passwd.display();
        let cases = [
            ("broken", 6, "gid \"notanumber\" is not a decimal number"),
            ("short", 7, "4 fields, not 7"),
            ("minus1", 10, "uid 4294967295 is out of range"),
            ("big", 11, "uid 4294967296 is out of range"),
            ("spaced", 12, "uid \" 14\" is not a decimal number"),
            ("trailing", 13, "1 fields, not 7"),
        ];
        for (name, line, defect) in cases {
            assert_eq!(
                find_user(&f, name).unwrap_err(),
                format!(
                    "{p}:{line}: the entry for user {name} is malformed ({defect}); \
                     expected name:password:uid:gid:gecos:home:shell"
                )
            );
        }
    }

    #[test]
    fn malformed_lines_of_other_users_do_not_matter() {
        let (_t, f) = sample(
            "junk\n::::\nx:y\n\u{0}:::::::\nbob:x:1000:1000::/home/bob:/bin/sh\n",
            "",
        );
        assert_eq!(
            find_user(&f, "bob").unwrap(),
            Some(User {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(name_of_uid(&f, 1000).as_deref(), Some("bob"));
    }

    #[test]
    fn names_uids_from_well_formed_entries_only() {
        let (_t, f) = sample(PASSWD, GROUP);
        assert_eq!(name_of_uid(&f, 0).as_deref(), Some("root"));
        assert_eq!(name_of_uid(&f, 998).as_deref(), Some("postling"));
        assert_eq!(
            name_of_uid(&f, 1).as_deref(),
            Some("postling"),
            "the duplicate's uid"
        );
        assert_eq!(name_of_uid(&f, 12), None, "broken's gid is malformed");
        assert_eq!(name_of_uid(&f, 4242), None);
    }

    #[test]
    fn groups_are_the_primary_then_every_group_listing_the_user_once() {
        let (_t, f) = sample(PASSWD, GROUP);
        let g = groups_of(&f, "postling", 997).unwrap();
        assert_eq!(g.gids, [997, 4, 1000]);
        let g = groups_of(&f, "postling", 4).unwrap();
        assert_eq!(g.gids, [4, 1000], "the primary group also listed: once");
        let g = groups_of(&f, "nobody", 65534).unwrap();
        assert_eq!(g.gids, [65534]);
        assert_eq!(g.skipped, Vec::<String>::new());
        assert_eq!(groups_of(&f, "alice", 100).unwrap().gids, [100, 1000]);
    }

    #[test]
    fn malformed_group_lines_naming_the_user_are_reported_and_skipped() {
        let (_t, f) = sample(PASSWD, GROUP);
        let g = groups_of(&f, "postling", 997).unwrap();
        let p = f.group.display();
        assert_eq!(
            g.skipped,
            [format!(
                "{p}:9: skipped a malformed group line that lists user postling \
                 (gid \"abc\" is not a decimal number); expected name:password:gid:member,member"
            )]
        );
        // alice is only named on a malformed line nobody else is: reported for her alone.
        let g = groups_of(&f, "alice", 100).unwrap();
        assert_eq!(g.skipped.len(), 1);
        assert!(g.skipped[0].contains(":11: skipped"), "{:?}", g.skipped);
    }

    #[test]
    fn missing_and_oversized_files_are_errors_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        let f = Files {
            passwd: t.path().join("nope"),
            group: t.path().join("nogroup"),
        };
        let e = find_user(&f, "root").unwrap_err();
        assert!(
            e.starts_with(&format!("cannot read {}: ", f.passwd.display())),
            "{e}"
        );
        let e = groups_of(&f, "root", 0).unwrap_err();
        assert!(
            e.starts_with(&format!("cannot read {}: ", f.group.display())),
            "{e}"
        );
        assert_eq!(name_of_uid(&f, 0), None);
        let big = t.path().join("big");
        std::fs::write(
            &big,
            vec![b'#'; limits::ACCOUNT_FILE_MAX_BYTES as usize + 1],
        )
        .unwrap();
        let f = Files {
            passwd: big.clone(),
            group: big,
        };
        assert!(find_user(&f, "root").unwrap_err().ends_with("bytes"));
    }

    #[test]
    fn crlf_and_non_utf8_lines_are_handled_without_panics() {
        let (_t, f) = sample(
            b"\xff\xfe:x:5:5::/:/bin/sh\nwin:x:7:7::/:/bin/sh\r\n",
            "g:x:9:win\r\n",
        );
        // The shell field carries the \r: still 7 fields, the ids are fine.
        assert_eq!(find_user(&f, "win").unwrap(), Some(User { uid: 7, gid: 7 }));
        assert_eq!(name_of_uid(&f, 5).as_deref(), Some("\u{fffd}\u{fffd}"));
        // "win\r" is not "win": a group file with CRLF line ends does not add the group.
        assert_eq!(groups_of(&f, "win", 7).unwrap().gids, [7]);
    }
}
