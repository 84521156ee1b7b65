//! Frames between the reactor and the helper, and the io_uring probe's verdict: pure
//! functions, no process or ring needed.

use super::{ALICE_HASH, c};
use crate::exec::uring::all_supported;
use crate::exec::*;
use crate::limits;

/// Every request survives the trip through a frame; a frame whose length prefix lies is
/// refused; a malformed body is answered (EINVAL) rather than dropped.
#[test]
fn frames_round_trip_and_refuse_lies() {
    let ops = vec![
        DiskOp::Open {
            dir: None,
            path: c("/x/y"),
            flags: 0o1234,
            mode: 0o640,
        },
        DiskOp::Open {
            dir: Some(Handle(5)),
            path: c("y"),
            flags: 1,
            mode: 2,
        },
        DiskOp::Write {
            file: Handle(3),
            offset: 1 << 40,
            data: vec![1, 2, 3],
        },
        DiskOp::Fdatasync { file: Handle(4) },
        DiskOp::Fsync { file: Handle(4) },
        DiskOp::Close { file: Handle(4) },
        DiskOp::Rename {
            from_dir: Some(Handle(1)),
            from: c("a"),
            to_dir: None,
            to: c("b"),
        },
        DiskOp::RenameNoReplace {
            from_dir: Some(Handle(1)),
            from: c("a:2,"),
            to_dir: Some(Handle(3)),
            to: c("b"),
        },
        DiskOp::WireSize {
            dir: Handle(6),
            paths: vec![c("1.m,W=3"), c(&"n".repeat(255))],
        },
        DiskOp::WireSize {
            dir: Handle(6),
            paths: vec![],
        },
        DiskOp::MaildirCopy {
            dir: Handle(7),
            name: c("1.M2P3Q4.h"),
            head: b"Return-Path: <a@b>\nDelivered-To: c@d\n"[..].into(),
            source: Box::new(crate::maildir::CopySource {
                path: c("/spool/queue/X"),
                offset: 1 << 33,
                len: u64::MAX,
                lf_form: true,
            }),
            sync: false,
        },
        DiskOp::MaildirCopy {
            dir: Handle(7),
            name: c("n"),
            head: vec![b'h'; limits::EXEC_COPY_HEAD_MAX].into(),
            source: Box::new(crate::maildir::CopySource {
                path: c(&"p".repeat(limits::EXEC_PATH_MAX - 1)),
                offset: 0,
                len: 0,
                lf_form: false,
            }),
            sync: true,
        },
        DiskOp::Warm {
            file: Handle(11),
            offset: u64::MAX - 5,
            len: limits::EXEC_WARM_MAX,
        },
        DiskOp::Link {
            from_dir: None,
            from: c("a"),
            to_dir: Some(Handle(2)),
            to: c("b"),
        },
        DiskOp::Unlink {
            dir: Some(Handle(9)),
            path: c("z"),
        },
        DiskOp::Mkdir {
            dir: None,
            path: c("d"),
            mode: 0o700,
        },
        DiskOp::ReadDir {
            dir: Handle(8),
            cursor: u64::MAX - 1,
            max: 3,
        },
        DiskOp::VerifyPassword {
            hash: None,
            password: b"p".to_vec(),
        },
        DiskOp::VerifyPassword {
            hash: Some(crate::auth::Credential::Plain(b"s".to_vec())),
            password: vec![],
        },
        DiskOp::VerifyPassword {
            hash: Some(crate::auth::Credential::Sha512Crypt(ALICE_HASH.into())),
            password: b"q".to_vec(),
        },
    ];
    for (seq, op) in ops.iter().enumerate() {
        let frame = wire::encode_request(seq as u64, op, false);
        assert!(frame.len() <= limits::EXEC_FRAME_MAX);
        let req = wire::decode_request(&frame).unwrap_or_else(|_| panic!("{op:?}"));
        assert_eq!(req.seq, seq as u64);
        assert_eq!(format!("{:?}", req.op), format!("{op:?}"));
        let mut lying = frame.clone();
        lying.push(0);
        assert!(matches!(wire::decode_request(&lying), Err(None)));
        let mut short = frame.clone();
        short.pop();
        let len = (short.len() - 4) as u32;
        short[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            wire::decode_request(&short).err(),
            Some(Some(seq as u64)),
            "{op:?}"
        );
    }
    let replies = vec![
        Err(Errno(libc::ELOOP)),
        Ok(Outcome::Done),
        Ok(Outcome::Opened(Handle(12))),
        Ok(Outcome::Written(Vec::new())),
        Ok(Outcome::Names {
            names: vec![b"a".to_vec(), vec![b'n'; 255]],
            kinds: vec![libc::DT_REG, libc::DT_LNK],
            next: Some(77),
        }),
        Ok(Outcome::Names {
            names: vec![],
            kinds: vec![],
            next: None,
        }),
        Ok(Outcome::Sizes(vec![
            Ok(u64::MAX),
            Err(Errno(libc::ELOOP)),
            Ok(0),
        ])),
        Ok(Outcome::Sizes(vec![])),
        Ok(Outcome::Verified(true)),
        Ok(Outcome::Copied {
            size: 1 << 40,
            wire: u64::MAX,
        }),
    ];
    for r in replies {
        let frame = wire::encode_reply(3, &r);
        assert_eq!(wire::decode_reply(&frame), Some((3, r)));
    }
    // The biggest reply (a full batch of the longest names) fits a frame.
    let names = vec![vec![b'n'; 255]; limits::EXEC_READDIR_MAX_NAMES];
    let frame = wire::encode_reply(
        1,
        &Ok(Outcome::Names {
            kinds: vec![libc::DT_REG; names.len()],
            names,
            next: Some(1),
        }),
    );
    assert!(frame.len() <= limits::EXEC_FRAME_MAX);
    let write = DiskOp::Write {
        file: Handle(1),
        offset: 0,
        data: vec![0; limits::EXEC_WRITE_MAX],
    };
    assert!(wire::encode_request(1, &write, false).len() <= limits::EXEC_FRAME_MAX);
}

#[test]
fn the_probe_names_missing_opcodes() {
    assert_eq!(all_supported(|_| true), Ok(()));
    let no_close = all_supported(|code| code != io_uring::opcode::Close::CODE);
    assert_eq!(
        no_close,
        Err("the kernel's io_uring lacks CLOSE".to_string())
    );
    assert_eq!(
        all_supported(|_| false),
        Err(
            "the kernel's io_uring lacks OPENAT, WRITE, FSYNC, RENAMEAT, LINKAT, UNLINKAT, \
             MKDIRAT, CLOSE"
                .to_string()
        )
    );
}
