//! The id alphabet. Channel ids (`room:<id>`, `group:<id>`) and the user ids
//! that group membership and ingest's dev tokens accept are 1–64 characters
//! of `[A-Za-z0-9_-]`: safe in URL paths, metrics labels and logs without
//! escaping. (A token minted by an app backend may carry a longer `sub`; the
//! protocol only bounds it.)

/// Longest id.
pub const MAX_ID_LEN: usize = 64;

/// Whether `id` is 1–[`MAX_ID_LEN`] characters of `[A-Za-z0-9_-]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::is_valid_id;

    #[test]
    fn ids() {
        assert!(is_valid_id("alice"));
        assert!(is_valid_id("A_b-9"));
        assert!(is_valid_id(&"x".repeat(64)));
        for bad in ["", "a b", "é", "a:b", &"x".repeat(65)] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
