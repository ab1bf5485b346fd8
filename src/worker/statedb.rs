//! `-S/--statedb FILE`: revoked ids kept across restarts (Celery's
//! `Persistent`). Celery writes a Python `shelve` of pickles, which no other
//! language can read safely; ours is JSON (`{"revoked": [...], "clock": n}`),
//! written atomically (temp file + rename).

use std::path::Path;

/// What a state file holds.
#[derive(Debug, Default, PartialEq)]
pub struct Saved {
    pub revoked: Vec<String>,
    pub clock: u64,
}

/// Reads the file; a missing file is an empty state, a bad one is reported.
pub fn load(path: &Path) -> Result<Saved, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a rust-celery-worker state file: {e}",
            path.display()
        )
    })?;
    Ok(Saved {
        revoked: v
            .get("revoked")
            .and_then(|r| r.as_array())
            .map(|ids| {
                ids.iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        clock: v.get("clock").and_then(|c| c.as_u64()).unwrap_or(0),
    })
}

pub fn save(path: &Path, saved: &Saved) -> Result<(), String> {
    let body = serde_json::json!({"revoked": saved.revoked, "clock": saved.clock}).to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_a_missing_file() {
        let dir = std::env::temp_dir().join(format!("rcw-statedb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.state");
        assert_eq!(load(&path).unwrap(), Saved::default());
        let s = Saved {
            revoked: vec!["a".into(), "b".into()],
            clock: 7,
        };
        save(&path, &s).unwrap();
        assert_eq!(load(&path).unwrap(), s);
        std::fs::write(&path, "{ not json").unwrap();
        assert!(load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
