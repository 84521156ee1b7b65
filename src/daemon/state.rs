//! The state directories (`spool_dir`, `mailbox_dir`) at start-up: created while still root
//! and owned by the user postling will run as, then checked as that user, so a directory the
//! daemon cannot write is a start-up error that names it, its owner and mode, and the fix,
//! instead of a stream of 4xx replies later.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::StartError;
use super::privilege::{Account, name_of_uid};

/// Mode of a state directory postling creates: mail is private to its user.
const STATE_DIR_MODE: u32 = 0o700;
/// Mode of missing parents created on the way (like `mkdir -p`): they must stay searchable.
const PARENT_DIR_MODE: u32 = 0o755;

/// Creates `path` (the value of config key `key`) if it is missing: parents 0755 owned by the
/// running user, the directory itself 0700 and, when `owner` is given (a privilege drop is
/// coming), owned by that account. An existing directory is left exactly as it is.
pub fn prepare(key: &str, path: &Path, owner: Option<&Account>) -> Result<(), StartError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(StartError::os(format!(
                "{key} {} exists but is not a directory; remove it or change {key}",
                path.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(StartError::os(format!(
                "cannot check {key} {}: {e}; every parent must be a directory searchable by the user starting postling",
                path.display()
            )));
        }
    }
    let create_hint = |e: io::Error| {
        let chown = owner.map_or(String::new(), |a| {
            format!(" && chown {} {}", a.name, path.display())
        });
        StartError::os(format!(
            "cannot create {key} {}: {e}; create it by hand (mkdir -p -m 700 {}{chown}) or change {key}",
            path.display(),
            path.display()
        ))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PARENT_DIR_MODE)
            .create(parent)
            .map_err(create_hint)?;
    }
    match std::fs::DirBuilder::new().mode(STATE_DIR_MODE).create(path) {
        Ok(()) => {}
        // Created by someone else meanwhile: theirs, leave it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(create_hint(e)),
    }
    // The creation mode went through the umask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(STATE_DIR_MODE))
        .map_err(create_hint)?;
    if let Some(a) = owner {
        std::os::unix::fs::chown(path, Some(a.uid), Some(a.gid)).map_err(create_hint)?;
    }
    ::log::info!(
        "created {key} {} (mode 0700{})",
        path.display(),
        owner.map_or(String::new(), |a| format!(", owner {}", a.name))
    );
    Ok(())
}

/// Checks, as the running user `(name, uid)`, that `path` is a directory it can create files
/// in; otherwise an error that names the directory, its owner and mode, and the fix.
pub fn check_writable(
    key: &str,
    path: &Path,
    running: &(String, libc::uid_t),
) -> Result<(), StartError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        StartError::config(format!("{key} {}: a path has no NUL byte", path.display()))
    })?;
    // SAFETY: access reads the NUL-terminated path; after the drop real and effective ids are
    // the same, so it answers for the user who will write.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    let meta = std::fs::metadata(path)
        .ok()
        .map(|m| (m.uid(), m.gid(), m.mode() & 0o7777));
    Err(StartError::os(unwritable_message(
        key, path, running, meta, &error,
    )))
}

/// The text of `check_writable`'s error, separate so every case is tested without needing an
/// unprivileged process.
pub fn unwritable_message(
    key: &str,
    path: &Path,
    running: &(String, libc::uid_t),
    meta: Option<(libc::uid_t, libc::gid_t, u32)>,
    error: &io::Error,
) -> String {
    let (user, uid) = running;
    let p = path.display();
    if error.raw_os_error() == Some(libc::EROFS) {
        return format!(
            "{key} {p} is on a read-only file system; move it to a writable one (or, under systemd, add it to ReadWritePaths=)"
        );
    }
    match meta {
        Some((owner_uid, owner_gid, mode)) => {
            let owner = name_of_uid(owner_uid).unwrap_or_else(|| owner_uid.to_string());
            format!(
                "{key} {p} is not writable by user {user} (uid {uid}): it is owned by {owner} (uid {owner_uid}, gid {owner_gid}) \
                 with mode {mode:04o} ({error}); fix: chown -R {user} {p} (or change {key})"
            )
        }
        None => format!(
            "{key} {p} cannot be reached by user {user} (uid {uid}): {error}; \
             check that it exists and that every parent directory is searchable by {user} (chmod o+x)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Account {
        let uid = unsafe { libc::geteuid() };
        let gid = unsafe { libc::getegid() };
        Account {
            name: name_of_uid(uid).unwrap_or_else(|| "me".into()),
            uid,
            gid,
            groups: vec![gid],
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn creates_missing_parents_0755_and_the_directory_0700() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("var/spool/postling");
        let me = me();
        prepare("spool_dir", &spool, Some(&me)).unwrap();
        assert!(spool.is_dir());
        assert_eq!(mode(&spool), 0o700);
        assert_eq!(mode(&dir.path().join("var/spool")), 0o755);
        assert_eq!(mode(&dir.path().join("var")), 0o755);
        let m = std::fs::metadata(&spool).unwrap();
        assert_eq!((m.uid(), m.gid()), (me.uid, me.gid));
        check_writable("spool_dir", &spool, &(me.name.clone(), me.uid)).unwrap();
    }

    #[test]
    fn existing_directory_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).unwrap();
        std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o750)).unwrap();
        prepare("mailbox_dir", &mail, None).unwrap();
        assert_eq!(mode(&mail), 0o750);
    }

    #[test]
    fn a_file_in_the_way_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::write(&spool, "").unwrap();
        let err = prepare("spool_dir", &spool, None).unwrap_err();
        assert_eq!(err.status, 71);
        assert_eq!(
            err.message,
            format!(
                "spool_dir {} exists but is not a directory; remove it or change spool_dir",
                spool.display()
            )
        );
    }

    #[test]
    fn a_file_as_parent_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "").unwrap();
        let spool = dir.path().join("f/spool");
        let err = prepare("spool_dir", &spool, None).unwrap_err();
        assert!(
            err.message.starts_with(&format!(
                "cannot check spool_dir {}: Not a directory",
                spool.display()
            )),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("every parent must be a directory"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_directory_that_cannot_be_created_gets_the_mkdir_hint() {
        // /proc refuses new directories, for root too.
        let spool = Path::new("/proc/postling-test/spool");
        let me = me();
        let err = prepare("spool_dir", spool, Some(&me)).unwrap_err();
        assert_eq!(err.status, 71);
        assert!(
            err.message
                .starts_with("cannot create spool_dir /proc/postling-test/spool: "),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains("mkdir -p -m 700 /proc/postling-test/spool"),
            "{}",
            err.message
        );
        assert!(
            err.message
                .contains(&format!("chown {} /proc/postling-test/spool", me.name)),
            "{}",
            err.message
        );
    }

    #[test]
    fn missing_directory_is_not_writable() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let err = check_writable("mailbox_dir", &gone, &("root".into(), 0)).unwrap_err();
        assert!(err.message.contains("cannot be reached"), "{}", err.message);
        assert!(err.message.contains("mailbox_dir"), "{}", err.message);
    }

    #[test]
    fn messages_name_directory_owner_mode_and_fix() {
        let p = Path::new("/var/spool/postling");
        let m = unwritable_message(
            "spool_dir",
            p,
            &("nobody".into(), 65534),
            Some((0, 0, 0o700)),
            &io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(m.starts_with("spool_dir /var/spool/postling is not writable by user nobody (uid 65534): it is owned by root (uid 0, gid 0) with mode 0700"), "{m}");
        assert!(
            m.ends_with("fix: chown -R nobody /var/spool/postling (or change spool_dir)"),
            "{m}"
        );

        let m = unwritable_message(
            "spool_dir",
            p,
            &("nobody".into(), 65534),
            None,
            &io::Error::from_raw_os_error(libc::EACCES),
        );
        assert!(m.contains("cannot be reached by user nobody"), "{m}");
        assert!(m.contains("parent directory is searchable"), "{m}");

        let m = unwritable_message(
            "mailbox_dir",
            p,
            &("nobody".into(), 65534),
            Some((0, 0, 0o755)),
            &io::Error::from_raw_os_error(libc::EROFS),
        );
        assert!(
            m.starts_with("mailbox_dir /var/spool/postling is on a read-only file system"),
            "{m}"
        );
    }
}
