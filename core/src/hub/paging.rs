//! Paged listings: a page of items in key order, and an opaque token to continue after it.
//!
//! A token is `base64url("p1:" + the last key of the page)`: the next page starts after that
//! key, so items added or removed meanwhile never shift the pages (nothing unchanged is
//! skipped or listed twice).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::HubError;

/// The page size of a request that gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: u32 = 5000;
/// A page ends early rather than grow beyond this many encoded bytes (clients refuse answers
/// over 4 MiB by default); it always holds at least one item.
pub const MAX_PAGE_BYTES: usize = 3 << 20;

const TOKEN_PREFIX: &str = "p1:";

/// One page of `items` (in key order, already filtered): up to `page_size` (0: the default;
/// at most [`MAX_PAGE_SIZE`]) of those after the key in `page_token`, and the token of the
/// next page (empty on the last page). A malformed token is INVALID_ARGUMENT, checked before
/// any item is read.
pub fn page<K, T>(
    items: impl IntoIterator<Item = (K, T)>,
    page_size: u32,
    page_token: &str,
) -> Result<(Vec<T>, String), HubError>
where
    K: AsRef<str>,
    T: prost::Message,
{
    let after = decode_token(page_token)?;
    let size = match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    } as usize;
    let mut items = items
        .into_iter()
        .skip_while(|(k, _)| {
            after
                .as_deref()
                .is_some_and(|a| AsRef::<str>::as_ref(k) <= a)
        })
        .peekable();
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut last = None;
    while out.len() < size {
        let Some((_, item)) = items.peek() else {
            break;
        };
        let len = item.encoded_len();
        if !out.is_empty() && bytes + len > MAX_PAGE_BYTES {
            break;
        }
        let Some((key, item)) = items.next() else {
            break;
        };
        bytes += len;
        last = Some(key);
        out.push(item);
    }
    let next = match (items.peek(), last) {
        (Some(_), Some(key)) => encode_token(AsRef::<str>::as_ref(&key)),
        _ => String::new(),
    };
    Ok((out, next))
}

fn encode_token(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PREFIX}{key}"))
}

/// The key a token continues after (`None` for the first page).
fn decode_token(token: &str) -> Result<Option<String>, HubError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        HubError::InvalidArgument(format!(
            "page_token: {} is not a token of this listing; pass a next_page_token unchanged (or none for the first page)",
            super::brief(token)
        ))
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    text.strip_prefix(TOKEN_PREFIX)
        .map(|k| Some(k.to_string()))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::v1 as pb;

    fn items(n: usize) -> Vec<(String, pb::Workload)> {
        (0..n)
            .map(|i| {
                let id = format!("w{i:05}");
                (
                    id.clone(),
                    pb::Workload {
                        workload_id: id,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn ids(v: &[pb::Workload]) -> Vec<&str> {
        v.iter().map(|w| w.workload_id.as_str()).collect()
    }

    #[test]
    fn pages_cover_every_item_once_in_key_order() {
        let all = items(5);
        let (p1, t1) = page(all.clone(), 2, "").unwrap();
        assert_eq!(ids(&p1), ["w00000", "w00001"]);
        let (p2, t2) = page(all.clone(), 2, &t1).unwrap();
        assert_eq!(ids(&p2), ["w00002", "w00003"]);
        let (p3, t3) = page(all.clone(), 2, &t2).unwrap();
        assert_eq!(ids(&p3), ["w00004"]);
        assert!(t3.is_empty());
        // A full last page has no next token either.
        let (p, t) = page(items(4), 2, &t1).unwrap();
        assert_eq!(p.len(), 2);
        assert!(t.is_empty());
        // An item removed meanwhile shifts nothing: the next page starts after the key.
        let mut fewer = all.clone();
        fewer.remove(0);
        let (p2, _) = page(fewer, 2, &t1).unwrap();
        assert_eq!(ids(&p2), ["w00002", "w00003"]);
        assert_eq!(
            page(Vec::<(String, pb::Workload)>::new(), 0, "")
                .unwrap()
                .0
                .len(),
            0
        );
    }

    #[test]
    fn page_sizes_default_to_1000_and_are_lowered_to_5000() {
        let all = items(6001);
        let (p, t) = page(all.clone(), 0, "").unwrap();
        assert_eq!(p.len(), 1000);
        assert!(!t.is_empty());
        let (p, _) = page(all.clone(), 100_000, "").unwrap();
        assert_eq!(p.len(), 5000);
        let (p, t) = page(all, u32::MAX, "").unwrap();
        assert_eq!(p.len(), 5000);
        assert!(!t.is_empty());
    }

    #[test]
    fn a_page_stops_before_it_grows_too_large() {
        let big: Vec<(String, pb::Workload)> = (0..400)
            .map(|i| {
                let id = format!("w{i:03}");
                let w = pb::Workload {
                    workload_id: id.clone(),
                    labels: [("k".to_string(), "v".repeat(16 << 10))].into(),
                    ..Default::default()
                };
                (id, w)
            })
            .collect();
        let (mut seen, mut token, mut pages) = (0, String::new(), 0);
        loop {
            let (p, next) = page(big.clone(), 0, &token).unwrap();
            let bytes: usize = p.iter().map(prost::Message::encoded_len).sum();
            assert!(
                bytes <= MAX_PAGE_BYTES && !p.is_empty(),
                "{} items",
                p.len()
            );
            seen += p.len();
            pages += 1;
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, 400);
        assert!(pages >= 3, "{pages} pages");
    }

    #[test]
    fn malformed_tokens_are_invalid_arguments() {
        for bad in ["!!!", "bm90LWEtdG9rZW4", &"A".repeat(10_000), "/w=="] {
            match page(items(3), 0, bad) {
                Err(HubError::InvalidArgument(m)) => {
                    assert!(m.starts_with("page_token: ") && m.len() < 400, "{m}")
                }
                other => panic!("{bad}: {:?}", other.map(|p| p.1)),
            }
        }
    }
}
