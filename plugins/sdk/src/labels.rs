//! Runner and workload labels: `list<tuple<string, string>>`.

/// The value of label `key` (the first one if given twice).
pub fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Whether `labels` carries every `(key, value)` of `wanted` (an empty `wanted` matches all).
pub fn has_labels<K: AsRef<str>, V: AsRef<str>>(
    labels: &[(String, String)],
    wanted: &[(K, V)],
) -> bool {
    wanted.iter().all(|(k, v)| {
        labels
            .iter()
            .any(|(lk, lv)| lk == k.as_ref() && lv == v.as_ref())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<(String, String)> {
        vec![
            ("tenant".into(), "blue".into()),
            ("wan".into(), "allow".into()),
        ]
    }

    #[test]
    fn label_lookup() {
        assert_eq!(label(&labels(), "tenant"), Some("blue"));
        assert_eq!(label(&labels(), "rack"), None);
        assert_eq!(label(&[], "tenant"), None);
    }

    #[test]
    fn has_labels_needs_every_pair() {
        let l = labels();
        assert!(has_labels(&l, &[("tenant", "blue")]));
        assert!(has_labels(&l, &[("tenant", "blue"), ("wan", "allow")]));
        assert!(!has_labels(&l, &[("tenant", "blue"), ("wan", "deny")]));
        assert!(!has_labels(&l, &[("tenant", "red")]));
        assert!(has_labels::<&str, &str>(&l, &[]));
        assert!(!has_labels(&[], &[("tenant", "blue")]));
    }
}
