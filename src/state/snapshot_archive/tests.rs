//! Tests of the snapshot archive: a round trip, and every way a hostile archive is refused.

use super::*;
use crate::state::command::{apply, Command, RestoredState};
use crate::state::jobs::spec::Job;
use std::sync::Arc;

fn job(id: &str) -> Job {
    let mut j = Job::from_json(serde_json::json!({"ID": id, "TaskGroups": [{"Name": "g",
        "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
        "Config": {"command": "/bin/true"}}]}]}))
    .unwrap();
    j.canonicalize("global");
    j
}

fn state() -> ServerState {
    let mut s = ServerState::default();
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let cmd = Command::JobSubmit {
            job: Box::new(job(id)),
            eval_id: format!("e{i}"),
            now: i as i64,
            submission: None,
        };
        apply(&mut s, &cmd, i as u64 + 1).unwrap();
    }
    s
}

/// A gzip tar of these records, written as given (names, types and sizes unchecked).
fn archive_of(records: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
    let gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, data, kind) in records {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(*kind);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// The three files of a good archive of `state()`.
fn good_files() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let a = write(&state(), 0, 1_700_000_000_000_000_000).unwrap();
    let f = read_files(&a.bytes).unwrap();
    (f.meta.unwrap(), f.state.unwrap(), f.sums.unwrap())
}

fn reg() -> tar::EntryType {
    tar::EntryType::Regular
}

#[test]
fn an_archive_round_trips_to_the_same_state_and_its_digest_is_of_its_bytes() {
    let s = state();
    let a = write(&s, 7, 1_700_000_000_123_456_789).unwrap();
    assert_eq!(a.sha256, sha256(&a.bytes));
    let (meta, back) = read(&a.bytes).unwrap();
    assert_eq!(meta.index, s.index);
    assert_eq!(meta.term, 7);
    assert_eq!(meta.version, ARCHIVE_VERSION);
    assert!(meta.timestamp.starts_with("2023-11-14T22:13:20.123456789"));
    assert_eq!(back.to_bytes().unwrap(), s.to_bytes().unwrap());
    assert_eq!(back.jobs.len(), 3);
    // Derived indexes are rebuilt: the pending evals are there, allocs-by-job equals a rebuild.
    assert_eq!(back.evals.len(), s.evals.len());
}

#[test]
fn restore_command_replaces_the_state_and_replays_identically_from_its_json() {
    let s = state();
    let mut other = ServerState::default();
    apply(
        &mut other,
        &Command::JobSubmit {
            job: Box::new(job("zzz")),
            eval_id: "ez".into(),
            now: 1,
            submission: None,
        },
        1,
    )
    .unwrap();
    let cmd = Command::RestoreSnapshot {
        state: RestoredState(Arc::new(s.clone())),
    };
    let json = serde_json::to_vec(&cmd).unwrap();
    let replayed: Command = serde_json::from_slice(&json).unwrap();
    let mut a = other.clone();
    let mut b = other;
    apply(&mut a, &cmd, 50).unwrap();
    apply(&mut b, &replayed, 50).unwrap();
    assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
    assert_eq!(a.index, 50, "the state's index is the command's");
    assert!(!a.jobs.contains_key(&("default".into(), "zzz".into())));
    let job_a = a.jobs.get(&("default".into(), "a".into())).unwrap();
    assert_eq!(
        job_a.modify_index,
        s.jobs[&("default".into(), "a".into())].modify_index,
        "restored objects keep their indexes"
    );
    // Everything but the index is the snapshot's.
    let mut want = s;
    want.index = 50;
    assert_eq!(a.to_bytes().unwrap(), want.to_bytes().unwrap());
}

#[test]
fn a_file_whose_checksum_differs_is_refused() {
    let (meta, body, sums) = good_files();
    let mut bad = body.clone();
    bad[10] ^= 1;
    let a = archive_of(&[
        (META_FILE, &meta, reg()),
        (STATE_FILE, &bad, reg()),
        (SUMS_FILE, &sums, reg()),
    ]);
    let e = read(&a).err().unwrap();
    assert!(matches!(e, ArchiveError::Checksum(STATE_FILE)), "{e}");
    assert!(e.to_string().contains("sha256 hash mismatch"), "{e}");
    let mut meta2 = meta.clone();
    meta2[2] ^= 1;
    let a = archive_of(&[
        (META_FILE, &meta2, reg()),
        (STATE_FILE, &body, reg()),
        (SUMS_FILE, &sums, reg()),
    ]);
    assert!(matches!(read(&a), Err(ArchiveError::Checksum(META_FILE))));
}

#[test]
fn missing_duplicate_unknown_and_non_regular_records_are_refused() {
    let (meta, body, sums) = good_files();
    let a = archive_of(&[(META_FILE, &meta, reg()), (STATE_FILE, &body, reg())]);
    assert!(matches!(read(&a), Err(ArchiveError::Missing(SUMS_FILE))));
    let a = archive_of(&[
        (META_FILE, &meta, reg()),
        (META_FILE, &meta, reg()),
        (STATE_FILE, &body, reg()),
    ]);
    assert!(matches!(read(&a), Err(ArchiveError::Duplicate(META_FILE))));
    let a = archive_of(&[("etc/passwd", b"x", reg())]);
    assert!(matches!(read(&a), Err(ArchiveError::UnexpectedEntry(_))));
    let a = archive_of(&[(STATE_FILE, b"", tar::EntryType::Symlink)]);
    assert!(matches!(read(&a), Err(ArchiveError::UnexpectedEntry(_))));
    // A pax record (tar would otherwise read it into memory itself) is refused as a record.
    let a = archive_of(&[("pax", b"30 path=state.bin\n", tar::EntryType::XHeader)]);
    assert!(matches!(read(&a), Err(ArchiveError::UnexpectedEntry(_))));
    let a = archive_of(&[
        (META_FILE, &meta, reg()),
        (STATE_FILE, &body, reg()),
        (SUMS_FILE, &sums, reg()),
        ("extra", b"", reg()),
    ]);
    assert!(matches!(read(&a), Err(ArchiveError::UnexpectedEntry(_))));
}

#[test]
fn truncated_or_corrupt_gzip_and_garbage_are_refused() {
    let a = write(&state(), 0, 0).unwrap().bytes;
    for cut in [0, 5, a.len() / 2, a.len() - 4, a.len() - 1] {
        let e = read(&a[..cut]).err().unwrap();
        assert!(matches!(e, ArchiveError::Stream(_)), "cut {cut}: {e}");
    }
    let mut flipped = a.clone();
    let n = flipped.len();
    flipped[n - 6] ^= 0xff; // the CRC of the gzip trailer
    assert!(matches!(read(&flipped), Err(ArchiveError::Stream(_))));
    assert!(matches!(
        read(b"not a gzip stream at all"),
        Err(ArchiveError::Stream(_))
    ));
}

#[test]
fn a_huge_declared_size_is_refused_before_anything_is_read() {
    // A header that declares 1 TiB for state.bin, followed by nothing.
    let mut h = tar::Header::new_ustar();
    h.set_path(STATE_FILE).unwrap();
    h.set_size(1 << 40);
    h.set_mode(0o600);
    h.set_entry_type(reg());
    h.set_cksum();
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, h.as_bytes()).unwrap();
    let a = gz.finish().unwrap();
    let e = read(&a).err().unwrap();
    assert!(
        matches!(e, ArchiveError::TooLarge { name: STATE_FILE, size, .. } if size == 1 << 40),
        "{e}"
    );
}

#[test]
fn the_inflated_stream_is_bounded_as_a_whole() {
    let data = [7u8; 100];
    let mut r = Bounded {
        inner: &data[..],
        left: 60,
    };
    let mut out = Vec::new();
    let e = r.read_to_end(&mut out).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert_eq!(out.len(), 60);
    // Exactly at the bound is fine.
    let mut r = Bounded {
        inner: &data[..],
        left: 100,
    };
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert_eq!(out.len(), 100);
}

#[test]
fn bad_sums_meta_versions_and_deep_state_are_refused() {
    let (meta, body, _) = good_files();
    let sums_of = |m: &[u8], s: &[u8]| {
        format!(
            "{}  {META_FILE}\n{}  {STATE_FILE}\n",
            hex(&sha256(m)),
            hex(&sha256(s))
        )
    };
    // SHA256SUMS without the state's line.
    let partial = format!("{}  {META_FILE}\n", hex(&sha256(&meta)));
    let a = archive_of(&[
        (META_FILE, &meta, reg()),
        (STATE_FILE, &body, reg()),
        (SUMS_FILE, partial.as_bytes(), reg()),
    ]);
    assert!(matches!(read(&a), Err(ArchiveError::BadSums(_))));
    // Another version.
    let mut m: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    m["Version"] = 2.into();
    let m2 = serde_json::to_vec(&m).unwrap();
    let a = archive_of(&[
        (META_FILE, &m2, reg()),
        (STATE_FILE, &body, reg()),
        (SUMS_FILE, sums_of(&m2, &body).as_bytes(), reg()),
    ]);
    assert!(matches!(read(&a), Err(ArchiveError::Version { .. })));
    // A state nested past the bound (checksums right): refused before serde sees it.
    let deep = format!(
        "{}{}",
        "[".repeat(STATE_MAX_DEPTH + 1),
        "]".repeat(STATE_MAX_DEPTH + 1)
    );
    let mut m3 = m.clone();
    m3["Version"] = ARCHIVE_VERSION.into();
    m3["Size"] = deep.len().into();
    let m3 = serde_json::to_vec(&m3).unwrap();
    let a = archive_of(&[
        (META_FILE, &m3, reg()),
        (STATE_FILE, deep.as_bytes(), reg()),
        (SUMS_FILE, sums_of(&m3, deep.as_bytes()).as_bytes(), reg()),
    ]);
    let e = read(&a).err().unwrap();
    assert!(matches!(e, ArchiveError::Depth(_)), "{e}");
    // Meta and state that disagree on the index.
    let mut m4 = m;
    m4["Version"] = ARCHIVE_VERSION.into();
    m4["Index"] = 999.into();
    let m4 = serde_json::to_vec(&m4).unwrap();
    let a = archive_of(&[
        (META_FILE, &m4, reg()),
        (STATE_FILE, &body, reg()),
        (SUMS_FILE, sums_of(&m4, &body).as_bytes(), reg()),
    ]);
    assert!(matches!(read(&a), Err(ArchiveError::Inconsistent(_))));
}

/// A `state.bin` nested exactly to [`STATE_MAX_DEPTH`] (inside a task's `Config`, the deepest
/// free-form value a state holds) is read by a caller on a 256 KiB stack, the size the other
/// nesting bounds are proven for (the decode runs on its own [`DECODE_STACK`]; in place it
/// needs about 384 KiB in a debug build): the bound is safe, not lucky.
#[test]
fn the_deepest_state_the_bound_admits_decodes_on_a_small_stack() {
    let s = state();
    let mut image: serde_json::Value = serde_json::from_slice(&s.to_bytes().unwrap()).unwrap();
    // state → jobs → [0] → TaskGroups → [0] → Tasks → [0] → Config: 8 levels to Config's
    // object; fill the rest with arrays.
    let base = 8;
    let mut deep = serde_json::json!([]);
    for _ in 0..STATE_MAX_DEPTH - base - 1 {
        deep = serde_json::json!([deep]);
    }
    image["jobs"][0]["TaskGroups"][0]["Tasks"][0]["Config"] = serde_json::json!({"x": deep});
    let body = serde_json::to_vec(&image).unwrap();
    crate::parse_bounds::check_json_depth(&body, STATE_MAX_DEPTH).expect("at the bound");
    crate::parse_bounds::check_json_depth(&body, STATE_MAX_DEPTH - 1).expect_err("exactly at it");
    let mut meta: serde_json::Value = serde_json::from_slice(&good_files().0).unwrap();
    meta["Size"] = body.len().into();
    let meta = serde_json::to_vec(&meta).unwrap();
    let sums = format!(
        "{}  {META_FILE}\n{}  {STATE_FILE}\n",
        hex(&sha256(&meta)),
        hex(&sha256(&body))
    );
    let a = archive_of(&[
        (META_FILE, &meta, reg()),
        (STATE_FILE, &body, reg()),
        (SUMS_FILE, sums.as_bytes(), reg()),
    ]);
    let decoded = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            // Read, then saved again (the encode runs on the caller's stack).
            let (_, s) = read(&a).map_err(|e| e.to_string())?;
            let again = write(&s, 0, 0).map_err(|e| e.to_string())?;
            read(&again.bytes)
                .map(|(_, s)| s.jobs.len())
                .map_err(|e| e.to_string())
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert_eq!(decoded, Ok(3));
}

/// Every single-byte corruption and every truncation of a real archive is either refused
/// or (a byte nobody checks: gzip's mtime or OS, a tar mode or mtime) read back as the very
/// same state; never a panic, never a different state.
#[test]
fn every_flipped_byte_and_every_truncation_is_refused_or_harmless() {
    let mut s = ServerState::default();
    apply(
        &mut s,
        &Command::JobSubmit {
            job: Box::new(job("x")),
            eval_id: "e".into(),
            now: 1,
            submission: None,
        },
        1,
    )
    .unwrap();
    let want = s.to_bytes().unwrap();
    let a = write(&s, 0, 0).unwrap().bytes;
    let (mut harmless, mut refused) = (0, 0);
    for i in 0..a.len() {
        for mask in [0x01u8, 0xff] {
            let mut bad = a.clone();
            bad[i] ^= mask;
            match read(&bad) {
                Ok((_, got)) => {
                    assert_eq!(got.to_bytes().unwrap(), want, "byte {i} ^ {mask:#x}");
                    harmless += 1;
                }
                Err(_) => refused += 1,
            }
        }
        if read(&a[..i]).is_ok() {
            panic!("a truncation at {i} of {} was accepted", a.len());
        }
    }
    assert!(
        refused > harmless * 10,
        "{refused} refused, {harmless} harmless"
    );
}
