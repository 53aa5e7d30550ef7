use super::*;
use crate::calls::{Provider, Tracked};

fn event(key: &str) -> NewEvent {
    NewEvent {
        provider: "jas",
        name: "call_status".into(),
        dedupe_key: key.into(),
        content_type: Some("application/json".into()),
        body: Bytes::from_static(b"{}"),
        received_at: Utc::now(),
        job: None,
    }
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
    let call = crate::calls::Call::new(&CallKey::new(Provider::Jas, "26"));
    j.write_state(StateWrite {
        participants: vec![(key.clone(), Some(t.clone()))],
        calls: vec![(call.key(), Some((call.clone(), Utc::now())))],
        jobs: vec![],
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
    assert_eq!(j.call(call.key()).await.unwrap(), Some(call));
}
