//! The privilege drop (`user`): who postling becomes after binding, the switch itself
//! (supplementary groups, then gid, then uid: the only order in which each step is still
//! permitted) and the proof that it worked, since a half-done drop must never keep running.
//! The account comes from /etc/passwd and /etc/group read directly (`accounts`), never
//! through NSS: see there why.

use std::io;

use super::StartError;
use super::accounts::{self, Files};

/// A local account as /etc/passwd and /etc/group describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// For setgroups: the primary gid, then every group that lists the user.
    pub groups: Vec<libc::gid_t>,
}

/// What start-up does about `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// `user` is empty (or names root): keep the identity postling was started with.
    AsStarted,
    /// Started as root: become this account once the ports are bound.
    DropTo(Account),
    /// Started by the configured user itself (no root needed when every port is >= 1024).
    AlreadyUser(Account),
}

impl Identity {
    /// The account that must own the state directories postling creates, when that is not
    /// simply the running user.
    pub fn owner(&self) -> Option<&Account> {
        match self {
            Identity::DropTo(a) => Some(a),
            _ => None,
        }
    }
}

/// Decides, before anything is bound, what `user` means for this start.
pub fn plan(user: Option<&str>) -> Result<Identity, StartError> {
    plan_with(&Files::system(), user)
}

/// `plan` with the account files given.
pub fn plan_with(files: &Files, user: Option<&str>) -> Result<Identity, StartError> {
    let Some(name) = user.filter(|u| !u.is_empty()) else {
        return Ok(Identity::AsStarted);
    };
    let account = lookup(files, name)?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if account.uid == 0 {
        return Ok(Identity::AsStarted);
    }
    if euid == account.uid {
        return Ok(Identity::AlreadyUser(account));
    }
    if euid == 0 {
        return Ok(Identity::DropTo(account));
    }
    Err(StartError::os(format!(
        "user = {name} (uid {}), but postling was started as {} (uid {euid}), which cannot switch users; \
         start it as root (it drops to {name} after binding) or as {name} itself, or leave user empty",
        account.uid,
        accounts::name_of_uid(files, euid).unwrap_or_else(|| "another user".into()),
    )))
}

/// Looks `name` up in the local account files: its uid and gid in the passwd file, its
/// groups in the group file. Malformed group lines that list the user are logged and skipped.
pub fn lookup(files: &Files, name: &str) -> Result<Account, StartError> {
    if name.contains('\0') {
        return Err(StartError::config(format!(
            "user = {name:?}: a user name has no NUL byte"
        )));
    }
    let user = accounts::find_user(files, name)
        .map_err(|e| StartError::os(format!("user = {name}: {e}")))?
        .ok_or_else(|| {
            StartError::os(format!(
                "user = {name}: no such user in {} (postling reads local accounts from {} and {} \
                 only, not LDAP, NIS or other NSS sources); create it (e.g. `adduser --system --group \
                 --no-create-home {name}`, BusyBox: `adduser -S -D -H {name}`) or change user",
                files.passwd.display(),
                files.passwd.display(),
                files.group.display(),
            ))
        })?;
    let groups = accounts::groups_of(files, name, user.gid)
        .map_err(|e| StartError::os(format!("user = {name}: {e}")))?;
    for skipped in &groups.skipped {
        ::log::warn!("{skipped}");
    }
    Ok(Account {
        name: name.to_string(),
        uid: user.uid,
        gid: user.gid,
        groups: groups.gids,
    })
}

/// The name of `uid` in /etc/passwd, for messages; None when it has no entry.
pub fn name_of_uid(uid: libc::uid_t) -> Option<String> {
    accounts::name_of_uid(&Files::system(), uid)
}

/// The running (real) user, for messages about what it can write.
pub fn running_user() -> (String, libc::uid_t) {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    (
        name_of_uid(uid).unwrap_or_else(|| format!("uid {uid}")),
        uid,
    )
}

/// Becomes `account` for good: setgroups (its groups), setgid, setuid, then verifies. Any
/// failure is fatal to the start, never a warning.
pub fn drop_to(account: &Account) -> Result<(), StartError> {
    let fail = |what: &str, e: io::Error| {
        StartError::os(format!(
            "cannot switch to user {} (uid {}, gid {}): {what}: {e}; not started (refusing to keep running as root)",
            account.name, account.uid, account.gid
        ))
    };
    // SAFETY: plain system calls; the pointer and length describe `account.groups`; the
    // process is single-threaded, so setgroups/setgid/setuid apply to it all.
    unsafe {
        if libc::setgroups(account.groups.len(), account.groups.as_ptr()) != 0 {
            return Err(fail("setgroups", io::Error::last_os_error()));
        }
        if libc::setgid(account.gid) != 0 {
            return Err(fail("setgid", io::Error::last_os_error()));
        }
        if libc::setuid(account.uid) != 0 {
            return Err(fail("setuid", io::Error::last_os_error()));
        }
    }
    // SAFETY: the get*id calls have no preconditions; setuid(0) is the probe that must fail.
    let now = unsafe {
        Ids {
            uid: libc::getuid(),
            euid: libc::geteuid(),
            gid: libc::getgid(),
            egid: libc::getegid(),
            regained_root: account.uid != 0 && libc::setuid(0) == 0,
        }
    };
    verify(account, &now)
}

/// The process's identity after the switch.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub uid: libc::uid_t,
    pub euid: libc::uid_t,
    pub gid: libc::gid_t,
    pub egid: libc::gid_t,
    /// setuid(0) succeeded afterwards: the drop is not permanent.
    pub regained_root: bool,
}

/// Checks that every id is the account's and root is out of reach.
pub fn verify(account: &Account, now: &Ids) -> Result<(), StartError> {
    let wrong = now.uid != account.uid
        || now.euid != account.uid
        || now.gid != account.gid
        || now.egid != account.gid;
    if wrong || now.regained_root {
        return Err(StartError::os(format!(
            "the switch to user {} (uid {}, gid {}) did not hold: running as uid {}/{} gid {}/{}{}; not started",
            account.name,
            account.uid,
            account.gid,
            now.uid,
            now.euid,
            now.gid,
            now.egid,
            if now.regained_root {
                ", and setuid(0) still succeeds"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> Account {
        Account {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        }
    }

    /// Sample account files: root, nobody, the running user (so `plan` can see "already
    /// that user"), and postling with a supplementary group and a malformed group line.
    fn sample() -> (tempfile::TempDir, Files) {
        let t = tempfile::tempdir().unwrap();
        let euid = unsafe { libc::geteuid() };
        let me = if euid == 0 || euid == 65534 || euid == 4321 {
            String::new()
        } else {
            format!("me:x:{euid}:{euid}::/:/bin/sh\n")
        };
        std::fs::write(
            t.path().join("passwd"),
            format!(
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n\
                 postling:x:4321:4322::/nonexistent:/bin/false\nbad:x:x:1::/:/bin/false\n{me}"
            ),
        )
        .unwrap();
        std::fs::write(
            t.path().join("group"),
            "root:x:0:\npostling:x:4322:\nmail:x:8:postling,nobody\nbroken:x::postling\n",
        )
        .unwrap();
        let files = Files {
            passwd: t.path().join("passwd"),
            group: t.path().join("group"),
        };
        (t, files)
    }

    #[test]
    fn empty_user_keeps_the_identity() {
        let (_t, f) = sample();
        assert_eq!(plan(None).unwrap(), Identity::AsStarted);
        assert_eq!(plan(Some("")).unwrap(), Identity::AsStarted);
        assert_eq!(plan(Some("root")).unwrap(), Identity::AsStarted);
        assert_eq!(plan_with(&f, Some("root")).unwrap(), Identity::AsStarted);
    }

    #[test]
    fn lookup_reads_uid_gid_and_groups_from_the_files() {
        let (_t, f) = sample();
        assert_eq!(
            lookup(&f, "postling").unwrap(),
            Account {
                name: "postling".into(),
                uid: 4321,
                gid: 4322,
                groups: vec![4322, 8],
            }
        );
        assert_eq!(lookup(&f, "nobody").unwrap().groups, [65534, 8]);
        let root = lookup(&Files::system(), "root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(name_of_uid(0).as_deref(), Some("root"));
    }

    #[test]
    fn lookup_names_unknown_users_and_the_file() {
        let (_t, f) = sample();
        let err = lookup(&f, "no-such-postling-user").unwrap_err();
        assert_eq!(err.status, 71);
        assert_eq!(
            err.message,
            format!(
                "user = no-such-postling-user: no such user in {p} (postling reads local accounts \
                 from {p} and {g} only, not LDAP, NIS or other NSS sources); create it (e.g. \
                 `adduser --system --group --no-create-home no-such-postling-user`, BusyBox: \
                 `adduser -S -D -H no-such-postling-user`) or change user",
                p = f.passwd.display(),
                g = f.group.display()
            )
        );
        assert_eq!(lookup(&f, "a\0b").unwrap_err().status, 78);
        let err = lookup(&f, "bad").unwrap_err();
        assert_eq!(err.status, 71);
        assert!(
            err.message.starts_with(&format!(
                "user = bad: {}:4: the entry for user bad is malformed (uid \"x\" is not a decimal number)",
                f.passwd.display()
            )),
            "{}",
            err.message
        );
        let missing = Files {
            passwd: f.passwd.with_file_name("nope"),
            group: f.group.clone(),
        };
        let err = lookup(&missing, "postling").unwrap_err();
        assert!(
            err.message.starts_with(&format!(
                "user = postling: cannot read {}: ",
                missing.passwd.display()
            )),
            "{}",
            err.message
        );
        let missing = Files {
            passwd: f.passwd.clone(),
            group: f.group.with_file_name("nope"),
        };
        let err = lookup(&missing, "postling").unwrap_err();
        assert!(err.message.contains("cannot read"), "{}", err.message);
    }

    #[test]
    fn plan_depends_on_who_starts() {
        let (_t, f) = sample();
        let euid = unsafe { libc::geteuid() };
        if euid == 0 {
            assert_eq!(
                plan_with(&f, Some("postling")).unwrap(),
                Identity::DropTo(lookup(&f, "postling").unwrap())
            );
        } else {
            if euid != 4321 {
                // Already that user: fine. Another user: a clear refusal.
                if euid != 65534 {
                    assert!(matches!(
                        plan_with(&f, Some("me")).unwrap(),
                        Identity::AlreadyUser(_)
                    ));
                }
                let err = plan_with(&f, Some("postling")).unwrap_err();
                assert!(
                    err.message.contains("cannot switch users"),
                    "{}",
                    err.message
                );
            }
        }
    }

    #[test]
    fn verify_accepts_a_complete_drop() {
        let a = nobody();
        let ok = Ids {
            uid: 65534,
            euid: 65534,
            gid: 65534,
            egid: 65534,
            regained_root: false,
        };
        assert!(verify(&a, &ok).is_ok());
    }

    #[test]
    fn verify_refuses_every_partial_drop() {
        let a = nobody();
        let base = Ids {
            uid: 65534,
            euid: 65534,
            gid: 65534,
            egid: 65534,
            regained_root: false,
        };
        for bad in [
            Ids { uid: 0, ..base },
            Ids { euid: 0, ..base },
            Ids { gid: 0, ..base },
            Ids { egid: 0, ..base },
            Ids {
                regained_root: true,
                ..base
            },
        ] {
            let err = verify(&a, &bad).unwrap_err();
            assert_eq!(err.status, 71);
            assert!(err.message.contains("did not hold"), "{}", err.message);
            assert!(err.message.ends_with("not started"), "{}", err.message);
        }
        let err = verify(
            &a,
            &Ids {
                regained_root: true,
                ..base
            },
        )
        .unwrap_err();
        assert!(err.message.contains("setuid(0) still succeeds"));
    }

    #[test]
    fn owner_is_only_set_for_a_drop() {
        assert_eq!(Identity::AsStarted.owner(), None);
        assert_eq!(Identity::AlreadyUser(nobody()).owner(), None);
        assert_eq!(Identity::DropTo(nobody()).owner(), Some(&nobody()));
    }
}
