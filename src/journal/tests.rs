use super::*;
use crate::calls::{Provider, RecordingState, Tracked};
use chrono::DateTime;

fn event(key: &str) -> NewEvent {
    NewEvent {
        provider: "jas",
        name: "call_status".into(),
        dedupe_key: key.into(),
        content_type: Some("application/json".into()),
        body: Bytes::from_static(b"{}"),
        received_at: Utc::now(),
    }
}

/// Appends `e` and creates `job` for it, as the processor does when it applies the event.
async fn append_with_job(j: &Journal, e: NewEvent, job: Option<NewJob>) -> Appended {
    let appended = j.append(e).await.unwrap();
    if let (Appended::Accepted(id), Some(job)) = (appended, job) {
        j.write_state(StateWrite {
            new_jobs: vec![NewJob {
                event_id: id,
                ..job
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    appended
}

#[tokio::test]
async fn duplicates_are_refused_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/j.db");
    let j = Journal::open(&path).await.unwrap();
    let first = j.append(event("a")).await.unwrap();
    assert!(matches!(first, Appended::Accepted(_)));
    assert_eq!(j.append(event("a")).await.unwrap(), Appended::Duplicate);
    j.close().await.unwrap();

    let j = Journal::open(&path).await.unwrap();
    assert_eq!(j.append(event("a")).await.unwrap(), Appended::Duplicate);
    assert!(matches!(
        j.append(event("b")).await.unwrap(),
        Appended::Accepted(_)
    ));
    assert_eq!(j.count_events().await.unwrap(), 2);
}

#[tokio::test]
async fn concurrent_appends_are_grouped_and_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    let mut tasks = vec![];
    for i in 0..200 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            j.append(event(&format!("k{}", i % 150))).await.unwrap()
        }));
    }
    let mut accepted = 0;
    let mut dup = 0;
    for t in tasks {
        match t.await.unwrap() {
            Appended::Accepted(_) => accepted += 1,
            Appended::Duplicate => dup += 1,
        }
    }
    assert_eq!((accepted, dup), (150, 50));
    assert!(*j.committed().borrow() > 0);
    let rows = j.events_after(0, 1000).await.unwrap();
    assert_eq!(rows.len(), 150);
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id));
}

#[tokio::test]
async fn state_and_cursor_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    let key = ParticipantKey::new(Provider::Jas, "101", "1");
    let t = Tracked::new(key.clone(), Utc::now());
    let call = crate::calls::Call::new(CallKey::new(Provider::Jas, "26"));
    j.write_state(StateWrite {
        participants: vec![(key.clone(), Some(t.clone()))],
        calls: vec![(call.key.clone(), Some((call.clone(), Utc::now())))],
        jobs: vec![],
        new_jobs: vec![],
        call_events: vec![],
        deliveries: vec![],
        replays: vec![],
        cursor: Some(42),
    })
    .await
    .unwrap();
    let r = j
        .restore(Utc::now() - chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(r.cursor, 42);
    assert_eq!(r.participants, vec![t]);
    assert_eq!(r.calls.len(), 1);
    assert_eq!(j.call(call.key.clone()).await.unwrap(), Some(call));
}

/// A database of version 4 (every table in one file, as earlier versions left it) opens with its
/// state moved to the state file: the same calls, participants, jobs and cursor, the events
/// where they were, and a second start changes nothing.
#[tokio::test]
async fn a_version_4_database_moves_its_state_to_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let key = ParticipantKey::new(Provider::Jas, "101", "1");
    let t = Tracked::new(key.clone(), Utc::now());
    let call: crate::calls::Call = crate::calls::Call::new(CallKey::new(Provider::Jas, "26"));
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        schema::migrate(&mut conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 4, "migrate alone stops before the move");
        conn.execute(
            "INSERT INTO events (provider, name, dedupe_key, received_ms, body)
             VALUES ('jas', 'call_status', 'k1', 1, x'7b7d')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO participants (provider, dn, participant_id, activity_ms, doc)
             VALUES ('jas', '101', '1', ?1, ?2)",
            params![ms(Utc::now()), serde_json::to_string(&t).unwrap()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO calls (provider, call_id, state, activity_ms, doc)
             VALUES ('jas', '26', 'active', ?1, ?2)",
            params![ms(Utc::now()), serde_json::to_string(&call).unwrap()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO jobs (provider, recording_id, call_id, source, rel_path, state,
                               created_ms, updated_ms, next_attempt_ms)
             VALUES ('jas', 'r1', '26', 'a.wav', 'jas/a.wav', 'pending', 0, 0, 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('applied_cursor', '1')",
            [],
        )
        .unwrap();
    }
    for _ in 0..2 {
        let j = Journal::open(&path).await.unwrap();
        let r = j
            .restore(Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap();
        assert_eq!(r.cursor, 1);
        assert_eq!(r.participants, vec![t.clone()]);
        assert_eq!(r.calls.len(), 1);
        assert_eq!(j.queued_jobs(10).await.unwrap().len(), 1);
        assert_eq!(j.append(event("k1")).await.unwrap(), Appended::Duplicate);
        j.close().await.unwrap();
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::VERSION);
    let left: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
               AND name IN ('participants', 'calls', 'jobs', 'call_events', 'deliveries')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "the state tables left the journal file");
    assert!(dir.path().join("old-state.db").exists());
}

fn job(recording_id: &str) -> NewJob {
    NewJob {
        provider: Provider::Jas,
        recording_id: recording_id.into(),
        call_id: "26".into(),
        dn: Some("101".into()),
        source: format!("101/{recording_id}.wav"),
        rel_path: Some(format!("jas/101/{recording_id}.wav")),
        error: None,
        start_time: None,
        end_time: None,
        event_id: 0,
    }
}

fn ended_call(id: &str, ended: DateTime<Utc>) -> crate::calls::Call {
    let mut call = crate::calls::Call::new(CallKey::new(Provider::Jas, id));
    call.state = crate::calls::CallState::Ended;
    call.started_at = Some(ended - chrono::Duration::minutes(5));
    call.ended_at = Some(ended);
    call
}

fn member(dn: &str, call_id: &str, at: DateTime<Utc>) -> (ParticipantKey, Option<Tracked>) {
    let key = ParticipantKey::new(Provider::Jas, dn, "1");
    let mut t = Tracked::new(key.clone(), at);
    t.details = Some(crate::calls::Details {
        call_id: call_id.into(),
        ..Default::default()
    });
    (key, Some(t))
}

#[tokio::test]
async fn retention_sweep_deletes_old_rows_and_keeps_recent_and_active_ones() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    let now = Utc::now();
    let old = now - chrono::Duration::days(100);
    let append = |key: &str, at: DateTime<Utc>, job: Option<NewJob>| {
        let j = j.clone();
        let mut e = event(key);
        e.received_at = at;
        async move {
            match append_with_job(&j, e, job).await {
                Appended::Accepted(id) => id,
                Appended::Duplicate => unreachable!(),
            }
        }
    };
    append("old", old, None).await;
    append("old-downloaded", old, Some(job("done"))).await;
    append("old-pending", old, Some(job("waiting"))).await;
    let applied = append("recent", now, None).await;
    // Journaled but not applied yet: kept whatever its age.
    append("old-unapplied", old, None).await;

    let done = j.job(Provider::Jas, "done".into()).await.unwrap().unwrap();
    let mut active = crate::calls::Call::new(CallKey::new(Provider::Jas, "active"));
    active.started_at = Some(old);
    let rows = |c: &crate::calls::Call, at| (c.key.clone(), Some((c.clone(), at)));
    j.write_state(StateWrite {
        participants: vec![
            member("101", "old-ended", old),
            member("102", "active", old),
        ],
        calls: vec![
            rows(&ended_call("old-ended", old), old),
            rows(&ended_call("recent-ended", now), now),
            rows(&active, old),
        ],
        jobs: vec![],
        new_jobs: vec![],
        call_events: vec![],
        deliveries: vec![],
        replays: vec![],
        cursor: Some(applied),
    })
    .await
    .unwrap();
    // Finished long ago: `updated_ms` is set by the writer, so age it through SQL.
    j.write_state(StateWrite {
        jobs: vec![JobUpdate {
            id: done.id,
            state: RecordingState::Downloaded,
            attempts: 1,
            next_attempt_at: old,
            last_error: None,
            bytes: Some(10),
            sha256: Some("ab".into()),
            rel_path: None,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    {
        let conn = rusqlite::Connection::open(super::state_path(j.path())).unwrap();
        conn.execute(
            "UPDATE jobs SET updated_ms = ?1 WHERE id = ?2",
            params![ms(old), done.id],
        )
        .unwrap();
    }

    let swept = j.sweep(now - chrono::Duration::days(90)).await.unwrap();

    // old + old-downloaded + old-pending events, the old call, its participant, the old job.
    assert_eq!(swept, 6);
    let keys: Vec<String> = {
        let conn = rusqlite::Connection::open(j.path()).unwrap();
        let mut stmt = conn
            .prepare("SELECT dedupe_key FROM events ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(keys, vec!["recent", "old-unapplied"]);
    let key = |id: &str| CallKey::new(Provider::Jas, id);
    assert_eq!(j.call(key("old-ended")).await.unwrap(), None);
    assert!(j.call(key("recent-ended")).await.unwrap().is_some());
    assert!(j.call(key("active")).await.unwrap().is_some());
    let restored = j.restore(old - chrono::Duration::days(1)).await.unwrap();
    let dns: Vec<&str> = restored
        .participants
        .iter()
        .map(|t| t.key.dn.as_str())
        .collect();
    assert_eq!(dns, vec!["102"]);
    assert_eq!(j.job(Provider::Jas, "done".into()).await.unwrap(), None);
    let waiting = j
        .job(Provider::Jas, "waiting".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waiting.state, RecordingState::Pending);
}

#[tokio::test]
async fn job_queue_orders_by_due_time_and_retries_failed_once() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
        let mut e = event(name);
        e.received_at = Utc::now() - chrono::Duration::seconds(10 - i as i64);
        append_with_job(&j, e, Some(job(name))).await;
    }
    let refused = NewJob {
        rel_path: None,
        error: Some("refused: contains `..`".into()),
        ..job("evil")
    };
    append_with_job(&j, event("evil"), Some(refused)).await;

    let queued = j.queued_jobs(10).await.unwrap();
    let names: Vec<&str> = queued.iter().map(|j| j.recording_id.as_str()).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    assert!(queued.iter().all(|q| q.event_id.is_some()));
    assert_eq!(j.count_queued_jobs().await.unwrap(), 3);
    let evil = j.job(Provider::Jas, "evil".into()).await.unwrap().unwrap();
    assert_eq!(
        (evil.state, evil.rel_path.as_deref()),
        (RecordingState::Failed, None)
    );

    // a: pushed back; b: failed within its attempts; c: failed after its extra attempt.
    let update = |job: &Job, state, attempts, at| JobUpdate {
        id: job.id,
        state,
        attempts,
        next_attempt_at: at,
        last_error: None,
        bytes: None,
        sha256: None,
        rel_path: None,
    };
    let later = Utc::now() + chrono::Duration::minutes(5);
    j.write_state(StateWrite {
        jobs: vec![
            update(&queued[0], RecordingState::Pending, 1, later),
            update(&queued[1], RecordingState::Failed, 3, Utc::now()),
            update(&queued[2], RecordingState::Failed, 4, Utc::now()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let names: Vec<String> = j
        .queued_jobs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.recording_id)
        .collect();
    assert_eq!(names, vec!["a"]);
    let retry: Vec<String> = j
        .jobs_to_retry(3)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.recording_id)
        .collect();
    assert_eq!(retry, vec!["b"]);
}

#[tokio::test]
async fn a_job_row_this_version_cannot_read_stays_out_of_the_queue_or_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    append_with_job(&j, event("a"), Some(job("a"))).await;
    {
        // As a newer version would write them: another provider's job, and a state unknown here.
        let conn = rusqlite::Connection::open(super::state_path(j.path())).unwrap();
        conn.execute_batch(
            "INSERT INTO jobs (provider, recording_id, call_id, source, rel_path, state,
                               created_ms, updated_ms, next_attempt_ms)
             VALUES ('third', 'x', 'c', 'x.wav', 'third/x.wav', 'pending', 0, 0, 0),
                    ('third', 'y', 'c', 'y.wav', 'third/y.wav', 'failed', 0, 0, 0),
                    ('jas', 'odd', 'c', 'odd.wav', 'jas/odd.wav', 'skipped', 0, 0, 0)",
        )
        .unwrap();
    }
    // The other provider's jobs wait for the version that knows it; ours go on.
    let queued = j.queued_jobs(10).await.unwrap();
    let names: Vec<&str> = queued.iter().map(|j| j.recording_id.as_str()).collect();
    assert_eq!(names, vec!["a"]);
    assert_eq!(j.count_queued_jobs().await.unwrap(), 1);
    assert!(j.jobs_to_retry(3).await.unwrap().is_empty());
    assert_eq!(j.open_jobs(true).await.unwrap().len(), 1);
    // Read where it cannot be left out: an error that names what it could not read.
    let err = j.job(Provider::Jas, "odd".into()).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(r#"unknown recording state "skipped""#),
        "{err}"
    );
}

#[tokio::test]
async fn restore_loads_active_calls_and_leaves_ended_ones_for_a_late_event_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    let long_ago = Utc::now() - chrono::Duration::hours(10);
    let on_call = |dn: &str, call_id: &str| {
        let key = ParticipantKey::new(Provider::Jas, dn, "1");
        let mut t = Tracked::new(key, long_ago);
        t.details = Some(crate::calls::Details {
            call_id: call_id.into(),
            status: "Connected".into(),
            ..Default::default()
        });
        t
    };
    // Quiet for 10 h, on a call still in progress: restored.
    let active_member = on_call("100", "25");
    let active = crate::calls::Call::new(CallKey::new(Provider::Jas, "25"));
    // On a call that ended a minute ago (a late recording touched it): left on disk.
    let ended_member = on_call("101", "26");
    let mut ended = crate::calls::Call::new(CallKey::new(Provider::Jas, "26"));
    ended.state = crate::calls::CallState::Ended;
    // Not on any call yet (its lookup was in flight) and recent: restored.
    let waiting = Tracked::new(ParticipantKey::new(Provider::Jas, "102", "1"), Utc::now());
    let recently = Utc::now() - chrono::Duration::minutes(1);
    j.write_state(StateWrite {
        participants: [&active_member, &ended_member, &waiting]
            .into_iter()
            .map(|t| (t.key.clone(), Some(t.clone())))
            .collect(),
        calls: vec![
            (active.key.clone(), Some((active.clone(), recently))),
            (ended.key.clone(), Some((ended.clone(), recently))),
        ],
        jobs: vec![],
        new_jobs: vec![],
        call_events: vec![],
        deliveries: vec![],
        replays: vec![],
        cursor: None,
    })
    .await
    .unwrap();
    let r = j
        .restore(Utc::now() - chrono::Duration::hours(6))
        .await
        .unwrap();
    assert_eq!(r.calls, vec![(active, from_ms(ms(recently)))]);
    let mut restored = r.participants.clone();
    restored.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(restored, vec![active_member, waiting]);

    // What a late event for the ended call needs is one indexed read away.
    let (call, _, members) = j.stored_call(ended.key.clone()).await.unwrap().unwrap();
    assert_eq!(call, ended);
    assert_eq!(members, vec![ended_member.clone()]);
    let found = j
        .stored_participants(vec![
            ended_member.key.clone(),
            ParticipantKey::new(Provider::Jas, "999", "9"),
        ])
        .await
        .unwrap();
    assert_eq!(found, vec![ended_member]);
}

#[tokio::test]
async fn nothing_is_acknowledged_unless_the_wal_sync_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    // `fdatasync` of /dev/null fails (EINVAL): a stand-in for a disk that fails to sync.
    let j = tokio::task::spawn_blocking({
        let path = path.clone();
        move || Journal::open_syncing(path, Some("/dev/null".into()))
    })
    .await
    .unwrap()
    .unwrap();
    let committed = j.committed();
    let refused = j.append(event("a")).await.unwrap_err();
    assert!(refused.to_string().contains("sync"), "{refused}");
    assert!(j.ping().await.is_err(), "the watchdog must see it");
    assert!(j.problem().unwrap().contains("sync"), "/readyz must see it");
    // A failed sync poisons the journal: the kernel may have dropped the pages it could not
    // write, so a later sync that "succeeds" proves nothing.
    assert!(j.append(event("b")).await.is_err());
    assert!(
        !committed.has_changed().unwrap(),
        "the processor must not be told of events nobody was told are safe"
    );
    // Derived state does not wait for a sync (it is rebuilt from the journal after a crash).
    j.write_state(StateWrite {
        cursor: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_database_deleted_under_the_daemon_is_refused_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let j = Journal::open(&path).await.unwrap();
    assert!(matches!(
        j.append(event("a")).await,
        Ok(Appended::Accepted(_))
    ));
    assert_eq!(j.problem(), None);
    std::fs::remove_file(&path).unwrap();
    let refused = j.append(event("b")).await.unwrap_err();
    assert!(refused.to_string().contains("is gone"), "{refused}");
    assert!(j.problem().unwrap().contains("j.db"), "{:?}", j.problem());
    assert!(j.ping().await.is_err(), "the watchdog must see it");

    // The WAL alone, replaced by another file under its name, is caught the same way.
    let path = dir.path().join("k.db");
    let k = Journal::open(&path).await.unwrap();
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    std::fs::remove_file(&wal).unwrap();
    std::fs::write(&wal, b"").unwrap();
    let refused = k.append(event("c")).await.unwrap_err();
    assert!(refused.to_string().contains("replaced"), "{refused}");
}

#[tokio::test]
async fn one_journal_per_database_and_the_lock_names_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    let first = Journal::open(&path).await.unwrap();
    let second = Journal::open(&path)
        .await
        .err()
        .expect("the second open is refused");
    let message = second.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    first.close().await.unwrap();
    // Released with the writer, so a restart in the same process opens it.
    let again = Journal::open(&path).await.unwrap();
    again.close().await.unwrap();
}

#[tokio::test]
async fn a_second_path_to_the_same_database_meets_the_same_lock() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("data");
    std::fs::create_dir(&real).unwrap();
    let first = Journal::open(&real.join("j.db")).await.unwrap();
    // A link to the database file itself: `<link>.lock` would be another file.
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(real.join("j.db"), &link).unwrap();
    for other in [link, real.join("../data/j.db")] {
        let refused = Journal::open(&other)
            .await
            .err()
            .expect("a second path opened the database a daemon holds");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
    }
    first.close().await.unwrap();
}

#[tokio::test]
async fn an_attempts_outcome_does_not_undo_a_replay_made_while_it_was_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    let event = NewCallEvent {
        id: "evt_1".into(),
        kind: "call.ended",
        provider: "jas",
        call_id: "26".into(),
        body: "{}".into(),
        endpoints: vec!["crm".into()],
    };
    j.write_state(StateWrite {
        call_events: vec![event],
        ..Default::default()
    })
    .await
    .unwrap();
    let due = |j: &Journal| {
        let j = j.clone();
        async move { j.pending_deliveries("crm".into(), 0, 10).await }
    };
    let in_flight = due(&j).await.unwrap().remove(0);
    let outcome = |d: &Due| DeliveryUpdate {
        endpoint: "crm".into(),
        event_seq: d.event_seq,
        state: "delivered",
        attempts: d.attempts + 1,
        next_attempt_at: Utc::now(),
        last_error: None,
        read_version: Some(d.version),
        at_ms: ms(Utc::now()),
    };
    // A replay lands while the attempt is out; the attempt then reports it delivered.
    j.write_state(StateWrite {
        replays: vec![Replay {
            endpoint: "crm".into(),
            since: DateTime::UNIX_EPOCH,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    j.write_state(StateWrite {
        deliveries: vec![outcome(&in_flight)],
        ..Default::default()
    })
    .await
    .unwrap();
    // The replay stands: the event is due again, from its first attempt.
    let again = due(&j).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id.as_str(), again[0].attempts), ("evt_1", 0));
    // The next attempt read the row as it is now, so its outcome is written.
    j.write_state(StateWrite {
        deliveries: vec![outcome(&again[0])],
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(due(&j).await.unwrap().is_empty());
}

/// A call event for the endpoint `crm`, its call named as the event.
fn crm_event(id: &str) -> NewCallEvent {
    NewCallEvent {
        id: id.into(),
        kind: "call.started",
        provider: "jas",
        call_id: id.into(),
        body: "{}".into(),
        endpoints: vec!["crm".into()],
    }
}

/// `d`'s first attempt ended in `state` at `at`.
fn settled(d: &Due, state: &'static str, at: DateTime<Utc>) -> DeliveryUpdate {
    DeliveryUpdate {
        endpoint: "crm".into(),
        event_seq: d.event_seq,
        state,
        attempts: 1,
        next_attempt_at: at,
        last_error: None,
        read_version: Some(d.version),
        at_ms: ms(at),
    }
}

#[tokio::test]
async fn retention_sweeps_old_delivered_events_and_keeps_pending_and_failed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    j.write_state(StateWrite {
        call_events: ["delivered", "failed", "pending"].map(crm_event).to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let due = j.pending_deliveries("crm".into(), 0, 10).await.unwrap();
    j.write_state(StateWrite {
        deliveries: vec![
            settled(&due[0], "delivered", Utc::now()),
            settled(&due[1], "failed", Utc::now()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    // All of it long ago, as far as the sweep can tell.
    let old = ms(Utc::now() - chrono::Duration::days(100));
    {
        let conn = rusqlite::Connection::open(super::state_path(j.path())).unwrap();
        conn.execute("UPDATE deliveries SET updated_ms = ?1", params![old])
            .unwrap();
        conn.execute("UPDATE call_events SET created_ms = ?1", params![old])
            .unwrap();
    }
    // The delivered event and its delivery go; a failed one stays listed, a pending one due.
    assert_eq!(
        j.sweep(Utc::now() - chrono::Duration::days(90))
            .await
            .unwrap(),
        2
    );
    let left: Vec<String> = {
        let conn = rusqlite::Connection::open(super::state_path(j.path())).unwrap();
        let mut stmt = conn
            .prepare("SELECT id FROM call_events ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(left, ["failed", "pending"]);
    let due = j.pending_deliveries("crm".into(), 0, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, "pending");
}

#[tokio::test]
async fn an_endpoints_counts_and_pending_summary_follow_its_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    let before = Utc::now() - chrono::Duration::milliseconds(5);
    j.write_state(StateWrite {
        call_events: ["a", "b", "c", "d"].map(crm_event).to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (pending, oldest) = j.pending_summary("crm".into()).await.unwrap();
    assert_eq!(pending, 4);
    assert!(oldest.is_some_and(|t| t >= before && t <= Utc::now()));
    assert_eq!(j.pending_summary("other".into()).await.unwrap(), (0, None));

    let due = j.pending_deliveries("crm".into(), 0, 10).await.unwrap();
    let (failed_at, delivered_at) = (Utc::now() - chrono::Duration::seconds(30), Utc::now());
    j.write_state(StateWrite {
        deliveries: vec![
            settled(
                &due[0],
                "delivered",
                delivered_at - chrono::Duration::seconds(1),
            ),
            settled(&due[1], "delivered", delivered_at),
            settled(&due[2], "failed", failed_at),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let counts = j.endpoint_counts("crm".into()).await.unwrap();
    assert_eq!((counts.pending, counts.delivered, counts.failed), (1, 2, 1));
    assert_eq!(counts.last_success_at.map(ms), Some(ms(delivered_at)));
    assert_eq!(counts.last_failure_at.map(ms), Some(ms(failed_at)));
    assert_eq!(
        counts.oldest_pending_at,
        j.pending_summary("crm".into()).await.unwrap().1
    );
    assert_eq!(j.pending_summary("crm".into()).await.unwrap().0, 1);
}

#[tokio::test]
async fn stored_calls_reads_many_in_one_and_a_bad_row_costs_only_its_own_call() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(&dir.path().join("j.db")).await.unwrap();
    let now = Utc::now();
    let calls: Vec<crate::calls::Call> = ["1", "2", "3"]
        .into_iter()
        .map(|id| {
            let mut c = crate::calls::Call::new(CallKey::new(Provider::Jas, id));
            c.state = crate::calls::CallState::Ended;
            c
        })
        .collect();
    j.write_state(StateWrite {
        calls: calls
            .iter()
            .map(|c| (c.key.clone(), Some((c.clone(), now))))
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let keys = || {
        ["1", "2", "3", "never-stored"]
            .map(|id| CallKey::new(Provider::Jas, id))
            .to_vec()
    };
    let found: Vec<_> = j.stored_calls(keys()).await.unwrap();
    assert_eq!(
        found.into_iter().map(|(c, _, _)| c).collect::<Vec<_>>(),
        calls
    );
    // Call 2's row is damaged (another program, a newer schema): the other two still load.
    {
        let conn = rusqlite::Connection::open(super::state_path(j.path())).unwrap();
        conn.execute("UPDATE calls SET doc = 'not json' WHERE call_id = '2'", [])
            .unwrap();
    }
    let found: Vec<_> = j.stored_calls(keys()).await.unwrap();
    let ids: Vec<String> = found.into_iter().map(|(c, _, _)| c.key.call_id).collect();
    assert_eq!(ids, ["1", "3"]);
}
