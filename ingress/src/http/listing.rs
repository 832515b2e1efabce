//! `GET /v1/skus`: the catalogue, a bounded page at a time.
//!
//! SKUs keep the position they were created at (they are never removed), so a page is the
//! SKUs at positions `cursor..cursor + limit`, read with one `Query::SkuAt` each. The queries
//! go through the ring like any read, so every SKU on a page is as the engine held it at that
//! query's place in sequence order; a page is not one atomic picture of the catalogue (the
//! figures of two SKUs on it may be a few commands apart). The answer is `{"skus": [...],
//! "next_cursor": "N"}`, with `next_cursor` null after the last SKU (and after position
//! `u32::MAX`, the last a SKU can have). A page may hold fewer than `limit` SKUs when the node
//! was too busy to take every query, or when the caller's in-flight budgets (per connection,
//! per source address) had room for fewer queries; `next_cursor` then continues where it
//! stopped.

use ringfence_core::{Outcome, Rejection};
use serde::Serialize;

use super::Response;
use super::api::invalid;
use super::views::SkuJson;
use crate::backend::Refusal;

/// Most SKUs on one page: each costs a query through the ring and an in-flight slot.
pub const PAGE_LIMIT_MAX: u16 = 100;

/// SKUs on a page when the request does not say.
pub const PAGE_LIMIT_DEFAULT: u16 = 20;

/// Which page: the position of its first SKU and how many SKUs at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Catalogue position of the first SKU.
    pub cursor: u32,
    /// SKUs asked for, `1..=PAGE_LIMIT_MAX`.
    pub limit: u16,
}

/// Reads `cursor` and `limit` from a query string; other parameters, and one given twice, are
/// refused by name.
pub fn parse_page_request(query: &str) -> Result<PageRequest, Response> {
    let mut page = PageRequest { cursor: 0, limit: PAGE_LIMIT_DEFAULT };
    let mut seen = (false, false);
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let twice = match name {
            "cursor" => std::mem::replace(&mut seen.0, true),
            "limit" => std::mem::replace(&mut seen.1, true),
            _ => false,
        };
        if twice {
            return Err(invalid(name, &format!("`{name}` given twice: give it once")));
        }
        let digits =
            !value.is_empty() && value.len() <= 10 && value.bytes().all(|b| b.is_ascii_digit());
        match name {
            "cursor" => {
                page.cursor = value.parse().ok().filter(|_| digits).ok_or_else(|| {
                    invalid("cursor", "`cursor` must be a `next_cursor` of an earlier page")
                })?;
            }
            "limit" => {
                page.limit = value
                    .parse()
                    .ok()
                    .filter(|limit| digits && (1..=PAGE_LIMIT_MAX).contains(limit))
                    .ok_or_else(|| {
                        invalid("limit", &format!("`limit` must be 1 to {PAGE_LIMIT_MAX}"))
                    })?;
            }
            _ => {
                let shown: String = name.chars().take(64).collect();
                return Err(invalid(
                    &shown,
                    &format!("unknown query parameter `{shown}`: use cursor and limit"),
                ));
            }
        }
    }
    Ok(page)
}

/// One page being assembled from its queries' answers, which may arrive in any order.
#[derive(Debug)]
pub struct Page {
    cursor: u32,
    parts: Vec<Option<Result<Outcome, Refusal>>>,
    missing: usize,
}

/// What a complete page answers.
#[derive(Debug)]
pub enum PageAnswer {
    /// The page.
    Page(Response),
    /// Not even the first SKU could be read: the refusal, as for any other read.
    Refused(Refusal),
}

#[derive(Serialize)]
struct PageJson {
    skus: Vec<SkuJson>,
    next_cursor: Option<String>,
}

impl Page {
    /// A page starting at `cursor` whose `parts` queries, one per position, were submitted.
    #[must_use]
    pub fn new(cursor: u32, parts: u16) -> Page {
        assert!(parts > 0 && parts <= PAGE_LIMIT_MAX, "a page has 1 to {PAGE_LIMIT_MAX} parts");
        let last = u64::from(cursor) + u64::from(parts) - 1;
        assert!(last <= u64::from(u32::MAX), "every part of a page is a position");
        Page { cursor, parts: vec![None; usize::from(parts)], missing: usize::from(parts) }
    }

    /// Takes the answer to query `part`; `true` once every part has its answer.
    pub fn fill(&mut self, part: u16, result: Result<Outcome, Refusal>) -> bool {
        let slot = &mut self.parts[usize::from(part)];
        assert!(slot.is_none(), "page part {part} answered twice");
        *slot = Some(result);
        self.missing -= 1;
        self.missing == 0
    }

    /// The answer once every part is in: the SKUs up to the end of the catalogue or the
    /// first query that was refused, and where the next page starts.
    #[must_use]
    pub fn answer(&self) -> PageAnswer {
        assert_eq!(self.missing, 0, "a page is answered once complete");
        let mut skus = Vec::with_capacity(self.parts.len());
        // After the last position a SKU can have there is no next page.
        let end = u64::from(self.cursor) + self.parts.len() as u64;
        let mut next = u32::try_from(end).ok();
        for (index, part) in self.parts.iter().enumerate() {
            match part.as_ref().expect("every part is in") {
                Ok(Outcome::Sku(view)) => skus.push(SkuJson::from(view)),
                Ok(Outcome::Rejected(Rejection::UnknownSku)) => {
                    next = None;
                    break;
                }
                Err(refusal) if index == 0 => return PageAnswer::Refused(refusal.clone()),
                other => {
                    // A refused query (busy, failed): the page stops there, and the next one
                    // starts at it, a position (`Page::new`).
                    assert!(other.is_err(), "a catalogue query answered {other:?}");
                    next = Some(self.cursor + index as u32);
                    break;
                }
            }
        }
        let page = PageJson { skus, next_cursor: next.map(|n| n.to_string()) };
        PageAnswer::Page(Response::body(200, &page))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringfence_core::{SkuId, SkuView};

    fn sku(id: u64) -> Result<Outcome, Refusal> {
        Ok(Outcome::Sku(SkuView {
            sku: SkuId(id),
            stock: 1,
            available: 1,
            reserved: 0,
            sold: 0,
            price_cents: 1,
            per_user_limit: 0,
            open: true,
            payment_timeout_ms: 1,
            sale_start: None,
            sale_end: None,
        }))
    }

    fn body(answer: PageAnswer) -> serde_json::Value {
        let PageAnswer::Page(response) = answer else { panic!("refused: {answer:?}") };
        serde_json::from_slice(&response.body).unwrap()
    }

    #[test]
    fn a_page_ends_at_the_catalogue_end_or_at_the_first_refusal() {
        // Goal: answers in any order make one page; the cursor continues exactly where the
        // page stopped, and is null after the last SKU.
        let mut full = Page::new(10, 2);
        assert!(!full.fill(1, sku(12)));
        assert!(full.fill(0, sku(11)));
        let value = body(full.answer());
        assert_eq!(value["skus"][1]["sku"], "12");
        assert_eq!(value["next_cursor"], "12");
        let mut last = Page::new(0, 3);
        last.fill(0, sku(1));
        last.fill(2, Ok(Outcome::Rejected(Rejection::UnknownSku)));
        last.fill(1, Ok(Outcome::Rejected(Rejection::UnknownSku)));
        let value = body(last.answer());
        assert_eq!(
            (value["skus"].as_array().unwrap().len(), value["next_cursor"].is_null()),
            (1, true)
        );
        let mut busy = Page::new(5, 3);
        busy.fill(0, sku(1));
        busy.fill(1, Err(Refusal::Busy));
        busy.fill(2, sku(3));
        assert_eq!(body(busy.answer())["next_cursor"], "6");
        let mut refused = Page::new(5, 1);
        refused.fill(0, Err(Refusal::Busy));
        assert!(matches!(refused.answer(), PageAnswer::Refused(Refusal::Busy)));
    }

    #[test]
    fn a_page_at_the_last_position_has_no_next_cursor() {
        // Goal: a page ending at position `u32::MAX`, the last a SKU can have, answers with
        // `next_cursor` null whether that position holds a SKU or not, and no arithmetic
        // overflows; a page stopped by a refusal there still names it as the next cursor.
        let mut last = Page::new(u32::MAX, 1);
        assert!(last.fill(0, sku(1)));
        assert_eq!(body(last.answer())["next_cursor"], serde_json::Value::Null);
        let mut unknown = Page::new(u32::MAX, 1);
        unknown.fill(0, Ok(Outcome::Rejected(Rejection::UnknownSku)));
        assert_eq!(body(unknown.answer())["next_cursor"], serde_json::Value::Null);
        let mut busy = Page::new(u32::MAX - 1, 2);
        busy.fill(0, sku(1));
        busy.fill(1, Err(Refusal::Busy));
        assert_eq!(body(busy.answer())["next_cursor"], u32::MAX.to_string());
    }

    #[test]
    fn page_requests_are_bounded_and_name_what_is_wrong() {
        // Goal: defaults apply, limits are enforced, and a bad parameter is named.
        assert_eq!(
            parse_page_request(""),
            Ok(PageRequest { cursor: 0, limit: PAGE_LIMIT_DEFAULT })
        );
        assert_eq!(
            parse_page_request("cursor=7&limit=100"),
            Ok(PageRequest { cursor: 7, limit: 100 })
        );
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("cursor=-1", "cursor"),
            ("cursor=+1", "cursor"),
            ("cursor=99999999999", "cursor"),
            ("page=2", "page"),
            ("limit=5&limit=6", "limit"),
            ("cursor=1&limit=2&cursor=3", "cursor"),
        ] {
            let response = parse_page_request(query).unwrap_err();
            let value: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!((response.status, value["field"].as_str()), (400, Some(field)), "{query}");
        }
    }
}
