//! The agents' memory: round trips, search ranking, compaction, refusals, and the audit
//! trail every write leaves (digests, never text).

use covenant_supervisor::store::memory::{Tier, MAX_TEXT_BYTES};
use covenant_supervisor::store::Store;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        &dir.path().join("covenant.db"),
        &dir.path().join("supervisor.key"),
    )
    .unwrap();
    (dir, s)
}

#[test]
fn put_get_list_and_remove_round_trip() {
    let (_d, mut s) = store();
    let id = s
        .mem_put(
            "proj",
            Tier::Episodic,
            "the build needs libssl-dev",
            Some(r#"{"source": "ci", "run": 3}"#),
            None,
        )
        .unwrap();
    let child = s
        .mem_put(
            "proj",
            Tier::Working,
            "retry with --locked",
            None,
            Some(&id),
        )
        .unwrap();
    let item = s.mem_get(&id).unwrap().unwrap();
    assert_eq!(
        (item.namespace.as_str(), item.tier, item.text.as_str()),
        ("proj", Tier::Episodic, "the build needs libssl-dev")
    );
    assert_eq!(item.metadata["source"], "ci");
    assert_eq!(
        s.mem_get(&child).unwrap().unwrap().parent.as_deref(),
        Some(id.as_str())
    );
    assert_eq!(s.mem_list(Some("proj"), None).unwrap().len(), 2);
    assert_eq!(
        s.mem_list(Some("proj"), Some(Tier::Working)).unwrap().len(),
        1
    );
    assert!(s.mem_remove(&child).unwrap());
    assert!(!s.mem_remove(&child).unwrap());
    assert!(s.mem_get(&child).unwrap().is_none());
}

#[test]
fn search_ranks_the_best_match_first_and_stays_in_its_namespace() {
    let (_d, mut s) = store();
    s.mem_put(
        "proj",
        Tier::LongTerm,
        "tokio runtime panics when nested",
        None,
        None,
    )
    .unwrap();
    let best = s
        .mem_put(
            "proj",
            Tier::LongTerm,
            "landlock landlock landlock ABI notes",
            None,
            None,
        )
        .unwrap();
    s.mem_put(
        "proj",
        Tier::LongTerm,
        "a note that mentions landlock once among many other words here",
        None,
        None,
    )
    .unwrap();
    s.mem_put(
        "other",
        Tier::LongTerm,
        "landlock landlock landlock landlock",
        None,
        None,
    )
    .unwrap();
    let hits = s.mem_search("proj", "landlock", 10).unwrap();
    assert_eq!(hits.len(), 2, "one namespace only");
    assert_eq!(hits[0].id, best);
    assert!(s.mem_search("proj", "zebra", 10).unwrap().is_empty());
    // Query syntax is not interpreted: quotes and operators are plain words.
    assert!(s.mem_search("proj", "landlock\" OR \"tokio", 10).is_ok());
}

#[test]
fn compaction_reports_before_it_deletes() {
    let (_d, mut s) = store();
    let old = s
        .mem_put("proj", Tier::Working, "stale scratch", None, None)
        .unwrap();
    let keep = s
        .mem_put("proj", Tier::LongTerm, "forever", None, None)
        .unwrap();
    let now = covenant_supervisor::store::audit::now_ms();
    s.mem_touch(&old, now - 2 * 24 * 3600 * 1000).unwrap();
    s.mem_touch(&keep, now - 400 * 24 * 3600 * 1000).unwrap();
    let dry = s.mem_compact(false, now).unwrap();
    assert_eq!(dry.expired.len(), 1);
    assert!(
        !dry.applied && s.mem_get(&old).unwrap().is_some(),
        "a dry run deletes nothing"
    );
    let applied = s.mem_compact(true, now).unwrap();
    assert!(applied.applied && s.mem_get(&old).unwrap().is_none());
    assert!(
        s.mem_get(&keep).unwrap().is_some(),
        "long-term items have no TTL"
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_nothing_stored() {
    let (_d, mut s) = store();
    let huge = "x".repeat(MAX_TEXT_BYTES + 1);
    assert!(s
        .mem_put("proj", Tier::Working, &huge, None, None)
        .unwrap_err()
        .to_string()
        .contains("text"));
    assert!(s
        .mem_put("proj", Tier::Working, "t", Some("{not json"), None)
        .unwrap_err()
        .to_string()
        .contains("metadata is not valid JSON"));
    assert!(s
        .mem_put("proj", Tier::Working, "t", Some("[1]"), None)
        .unwrap_err()
        .to_string()
        .contains("JSON object"));
    assert!(Tier::parse("forever")
        .unwrap_err()
        .to_string()
        .contains("tier `forever`"));
    assert!(s
        .mem_put("bad ns", Tier::Working, "t", None, None)
        .unwrap_err()
        .to_string()
        .contains("namespace"));
    assert!(s
        .mem_put("proj", Tier::Working, "t", None, Some("mem-nope"))
        .unwrap_err()
        .to_string()
        .contains("parent"));
    assert!(s.mem_list(None, None).unwrap().is_empty());
}

#[test]
fn every_write_is_audited_with_a_digest_not_the_text() {
    let (_d, mut s) = store();
    let id = s
        .mem_put("proj", Tier::Working, "a secret plan", None, None)
        .unwrap();
    s.mem_remove(&id).unwrap();
    let rows = s.tail(10).unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["memory.put", "memory.removed"]);
    for r in &rows {
        assert!(
            r.body.contains("sha256:") && !r.body.contains("secret"),
            "{}",
            r.body
        );
    }
}
