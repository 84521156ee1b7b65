//! The privilege drop (`user`): who postling becomes after binding, the switch itself
//! (supplementary groups, then gid, then uid: the only order in which each step is still
//! permitted) and the proof that it worked, since a half-done drop must never keep running.

use std::ffi::{CStr, CString};
use std::io;

use super::StartError;
use crate::limits;

/// A system account as `getpwnam_r` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
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
    let Some(name) = user.filter(|u| !u.is_empty()) else {
        return Ok(Identity::AsStarted);
    };
    let account = lookup(name)?;
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
        name_of_uid(euid).unwrap_or_else(|| "another user".into()),
    )))
}

/// Looks `name` up in the password database (getpwnam_r: /etc/passwd, or NSS).
pub fn lookup(name: &str) -> Result<Account, StartError> {
    let c_name = CString::new(name)
        .map_err(|_| StartError::config(format!("user = {name:?}: a user name has no NUL byte")))?;
    let found = with_passwd(|pwd, buf, len, result| {
        // SAFETY: every pointer is valid for the call; getpwnam_r fills `pwd` with pointers into `buf`.
        unsafe { libc::getpwnam_r(c_name.as_ptr(), pwd, buf, len, result) }
    })
    .map_err(|e| StartError::os(format!("cannot look up user {name}: {e}")))?;
    match found {
        Some((_, uid, gid)) => Ok(Account {
            name: name.to_string(),
            uid,
            gid,
        }),
        None => Err(StartError::os(format!(
            "user = {name}: no such user on this machine; create it (e.g. `adduser --system --group \
             --no-create-home {name}`, BusyBox: `adduser -S -D -H {name}`) or change user"
        ))),
    }
}

/// The name of `uid`, for messages; None when the database has no entry.
pub fn name_of_uid(uid: libc::uid_t) -> Option<String> {
    with_passwd(|pwd, buf, len, result| {
        // SAFETY: as in `lookup`.
        unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
    })
    .ok()
    .flatten()
    .map(|(name, _, _)| name)
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

/// Runs a getpw*_r call with a buffer that doubles on ERANGE (bounded), and copies out the
/// name, uid and gid.
fn with_passwd<F>(call: F) -> io::Result<Option<(String, libc::uid_t, libc::gid_t)>>
where
    F: Fn(
        *mut libc::passwd,
        *mut libc::c_char,
        libc::size_t,
        *mut *mut libc::passwd,
    ) -> libc::c_int,
{
    let mut size = limits::PASSWD_BUF_START;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: a zeroed passwd is a valid out-parameter (null pointers, zero ids).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = call(&mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        if rc == libc::ERANGE && size < limits::PASSWD_BUF_MAX {
            size *= 2;
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() || pwd.pw_name.is_null() {
            return Ok(None);
        }
        // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }
            .to_string_lossy()
            .into_owned();
        return Ok(Some((name, pwd.pw_uid, pwd.pw_gid)));
    }
}

/// Becomes `account` for good: initgroups (its supplementary groups), setgid, setuid, then
/// verifies. Any failure is fatal to the start, never a warning.
pub fn drop_to(account: &Account) -> Result<(), StartError> {
    let fail = |what: &str, e: io::Error| {
        StartError::os(format!(
            "cannot switch to user {} (uid {}, gid {}): {what}: {e}; not started (refusing to keep running as root)",
            account.name, account.uid, account.gid
        ))
    };
    let c_name = CString::new(account.name.as_str())
        .map_err(|_| fail("bad name", io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: plain system calls; the process is single-threaded, so setgid/setuid apply to it all.
    unsafe {
        if libc::initgroups(c_name.as_ptr(), account.gid) != 0 {
            return Err(fail("initgroups", io::Error::last_os_error()));
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
        }
    }

    #[test]
    fn empty_user_keeps_the_identity() {
        assert_eq!(plan(None).unwrap(), Identity::AsStarted);
        assert_eq!(plan(Some("")).unwrap(), Identity::AsStarted);
        assert_eq!(plan(Some("root")).unwrap(), Identity::AsStarted);
    }

    #[test]
    fn lookup_finds_root_and_names_unknown_users() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(name_of_uid(0).as_deref(), Some("root"));
        let err = lookup("no-such-postling-user").unwrap_err();
        assert_eq!(err.status, 71);
        assert!(
            err.message
                .starts_with("user = no-such-postling-user: no such user"),
            "{}",
            err.message
        );
        assert!(err.message.contains("adduser"), "says how to create it");
        assert_eq!(lookup("a\0b").unwrap_err().status, 78);
    }

    #[test]
    fn plan_depends_on_who_starts() {
        let euid = unsafe { libc::geteuid() };
        let me = name_of_uid(euid).unwrap();
        if euid == 0 {
            if let Ok(n) = lookup("nobody") {
                assert_eq!(plan(Some("nobody")).unwrap(), Identity::DropTo(n));
            }
        } else {
            // Already that user: fine. Another user: a clear refusal.
            assert!(matches!(plan(Some(&me)).unwrap(), Identity::AlreadyUser(_)));
            if me != "nobody" && lookup("nobody").is_ok() {
                let err = plan(Some("nobody")).unwrap_err();
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
